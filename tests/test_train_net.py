"""Tests of openface_py.train.trainer, train.losses, train.data, cli.train.

`train-net`: training through the real command line on the aligned sample photos (loss, files,
the trained model's identity and threshold), exact resumption after SIGKILL, refusals, the five
objectives against references written here, the triplet miners against a brute-force search,
the seeded P x K sampler and person split, and the Siamese verifier with `compare`.

Runs are small (8 training people, batches of 4 people x 5 faces: 2 batches per epoch) so each
takes seconds on a CPU. Every training run uses ``--threads 1``: the same thread count keeps float
sums in the same order, which the exact-resume comparison needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, SAMPLE, cli, cli_process

from openface_py.errors import UsageError
from openface_py.jobs.batch import ALIGN_META
from openface_py.nets.modelfiles import weights_metadata
from openface_py.train.data import PKSampler, split_people
from openface_py.train.losses import LOSSES, MININGS, TRIPLET_MARGIN, make_objective, triplet_miner

ALIGNMENT = "openface-affine/96/outerEyesAndNose"
PARENT = "nn4.small2.distilled-v2"
PARENT_IDENTITY = f"{PARENT}|{ALIGNMENT}"
PARENT_FILE = ROOT / "models" / f"{PARENT}.pt"
SAMPLE_PEOPLE = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir())
# Why center loss for the run whose loss must fall: its loss is a mean over every face of the batch
# (cosine softmax + centre distance), so the epoch means of the same 8 people are comparable. The
# triplet loss is averaged only over the triplets mined in each batch (pml's AvgNonZeroReducer), a
# set that shrinks as the network learns: measured here, the mined triplets fell from ~1,100 to ~600
# per batch while the mean over those left barely moved, so its mean is no measure of progress.
# --parent-weight 0: the logged loss is then the metric loss alone (the pull towards the starting
# model's embeddings is 0 at the start and grows as the model moves, hiding the fall);
# --lr 1e-4 (10x the default) so that 4 steps change the trained blocks measurably.
TRAIN_ARGS = (
    "--loss", "center", "--parent-weight", "0", "--lr", "1e-4", "--epochs", "2",
    "--batch-people", "4", "--batch-images", "5", "--val-people", "0.2", "--threads", "1",
)  # fmt: skip
TRAIN_PEOPLE, HELD_OUT_PEOPLE, PHOTOS_EACH = 8, 2, 10  # 10 people: round(0.2 x 10) = 2 held out
BATCHES_PER_EPOCH = math.ceil(TRAIN_PEOPLE / 4)
# the blocks --freeze-blocks 3 (the default) keeps: the stem, inception 3a and 3b
FROZEN_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.", "incept3a.", "incept3b.")
TRAINED_PREFIXES = ("incept3c.", "incept4a.", "incept4e.", "incept5a.", "incept5b.", "ln.")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_log(out: Path) -> tuple[list, list]:
    """(batch records, epoch records) of training.jsonl."""
    recs = [json.loads(line) for line in (out / "training.jsonl").read_text().splitlines()]
    assert {r["type"] for r in recs} <= {"batch", "epoch"}
    return [r for r in recs if r["type"] == "batch"], [r for r in recs if r["type"] == "epoch"]


def state_dict(path: Path) -> dict:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj["state_dict"] if "state_dict" in obj else obj


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def trained(aligned_openface, tmp_path_factory):
    """One uninterrupted 2-epoch run through the CLI: (output folder, the process, its wall time)."""
    out = tmp_path_factory.mktemp("train-net") / "run"
    t0 = time.time()
    r = cli_process("-q", "train-net", str(aligned_openface), "-o", str(out), *TRAIN_ARGS, timeout=600)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr
    return out, r, wall


# ---- 1. a training run through the CLI --------------------------------------------------


def test_training_run_files_loss_and_trained_model(trained, aligned_openface, tmp_path):
    out, proc, wall = trained
    assert f"Model: {out / 'model.pt'}" in proc.stdout

    # training.jsonl: 2 batches per epoch (8 training people, 4 per batch); the loss falls
    batches, epochs = read_log(out)
    assert [(b["epoch"], b["batch"]) for b in batches] == [(e, k) for e in (1, 2) for k in range(BATCHES_PER_EPOCH)]
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and epochs[0]["loss"] is None
    mean = {e: float(np.mean([b["loss"] for b in batches if b["epoch"] == e])) for e in (1, 2)}
    assert mean[2] < mean[1], mean
    total_steps = 2 * BATCHES_PER_EPOCH
    for k, b in enumerate(batches):
        assert math.isfinite(b["loss"]) and b["loss"] == b["metric_loss"]  # --parent-weight 0: no parent term
        assert b["loss"] == pytest.approx(b["softmax"] + 0.1 * b["center"], rel=1e-5)  # center weight 0.1
        assert b["lr"] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * k / total_steps)), rel=1e-9)  # cosine

    # training.json
    s = json.loads((out / "training.json").read_text())
    st = s["settings"]
    assert (st["loss"], st["lr"], st["parent_weight"], st["epochs"], st["batch_people"], st["batch_images"]) == (
        "center", 1e-4, 0.0, 2, 4, 5,
    )  # fmt: skip
    assert st["val_people"] == 0.2 and st["threads"] == 1 and st["init"] == PARENT and st["freeze_blocks"] == 3
    assert Path(st["aligned_dir"]).resolve() == aligned_openface.resolve()
    d = s["data"]
    held = d["held_out_people"]
    assert len(held) == HELD_OUT_PEOPLE and set(held) <= set(SAMPLE_PEOPLE)
    assert (d["train"]["people"], d["train"]["photos"]) == (TRAIN_PEOPLE, TRAIN_PEOPLE * PHOTOS_EACH)
    assert (d["held_out"]["people"], d["held_out"]["photos"]) == (HELD_OUT_PEOPLE, HELD_OUT_PEOPLE * PHOTOS_EACH)
    # the folder's own count of the held-out people's faces; both parts together are all 10 people and
    # 100 photos, so no person is in both
    assert sum(len(list((aligned_openface / p).glob("*.png"))) for p in held) == d["held_out"]["photos"]
    assert d["train"]["people"] + d["held_out"]["people"] == len(SAMPLE_PEOPLE)
    assert d["train"]["photos"] + d["held_out"]["photos"] == len(list(aligned_openface.glob("*/*.png"))) == 100
    assert s["parent"] == {"init": PARENT, "name": PARENT, "sha256": sha256(PARENT_FILE)}
    assert len(s["epochs"]) == 3 and [e["epoch"] for e in s["epochs"]] == [0, 1, 2]
    for e, rec in zip(s["epochs"], epochs):
        assert e == {k: v for k, v in rec.items() if k != "type"}  # the log's epoch lines
        # every same-person pair of the 2 x 10 held-out faces, and all 10 x 10 different ones
        assert (e["val"]["pairs_same"], e["val"]["pairs_different"]) == (2 * 45, 100)
        assert 0.5 < e["val"]["auc"] <= 1.0 and 0.0 <= e["val"]["accuracy"] <= 1.0
    for e in (1, 2):
        assert s["epochs"][e]["loss"] == pytest.approx(mean[e], rel=1e-9)
    aucs = [e["val"]["auc"] for e in s["epochs"]]
    best = 1 + int(np.argmax(aucs[1:]))  # best held-out AUC among the trained epochs (first on a tie)
    assert s["best_epoch"] == best and s["selected_by"] == "held-out people AUC"
    assert 0 < s["wall_seconds"] <= wall
    assert s["device"] == "cpu" if not torch.cuda.is_available() else s["device"].startswith("cuda")
    assert s["torch_threads"] == 1
    assert "train-net" in s["command"] and str(out) in s["command"] and "--loss center" in s["command"]

    # training.png: a real PNG image
    from PIL import Image

    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "training.png") as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        im.verify()

    # model.pt: metadata, and what changed against the parent's weights
    meta = weights_metadata(out / "model.pt")
    assert meta["same_person_threshold"] == s["epochs"][best]["val"]["threshold"]
    assert meta["epoch"] == best and meta["parent"] == PARENT and meta["parent_sha256"] == sha256(PARENT_FILE)
    mine, parent = state_dict(out / "model.pt"), state_dict(PARENT_FILE)
    mine = {k: v for k, v in mine.items() if not k.endswith("num_batches_tracked")}  # the parent file has none
    assert mine.keys() == parent.keys()
    for k in mine:
        if k.startswith(FROZEN_PREFIXES) or "running_" in k:
            # frozen blocks untouched; batch-norm statistics fixed (pretrained weights: --bn auto = fixed)
            assert torch.equal(mine[k], parent[k]), k
    for prefix in TRAINED_PREFIXES:
        assert any(not torch.equal(mine[k], parent[k]) for k in mine if k.startswith(prefix)), prefix

    # represent with the trained weights: the output carries the trained model's own identity
    reps_dir = tmp_path / "reps"
    r = cli("represent", str(aligned_openface), str(reps_dir), "--model", str(out / "model.pt"))
    assert r.returncode == 0, r.stderr
    identity = json.loads((reps_dir / "embeddings.json").read_text())["identity"]
    assert identity == f"nn4.small2@sha256:{sha256(out / 'model.pt')[:16]}|{ALIGNMENT}" == s["identity"]
    assert identity != PARENT_IDENTITY

    # the best epoch's held-out AUC, recomputed by brute force from represent's embeddings of model.pt:
    # P(same-person distance < different-person distance) over every (same, different) pair of pairs
    reps = np.load(reps_dir / "reps.npy").astype(np.float64)
    labels = json.loads((reps_dir / "labels.json").read_text())["labels"]
    rows = [i for i, lab in enumerate(labels) if lab in held]
    same_d, diff_d = [], []
    for i, j in combinations(rows, 2):
        (same_d if labels[i] == labels[j] else diff_d).append(float(((reps[i] - reps[j]) ** 2).sum()))
    assert (len(same_d), len(diff_d)) == (90, 100)
    gap = np.array(same_d)[:, None] - np.array(diff_d)[None, :]
    brute = float(((gap < 0) + 0.5 * (gap == 0)).mean())
    # represent may run another backend (ONNX): float differences can only flip near-ties
    near_ties = int((np.abs(gap) < 1e-5).sum())
    assert abs(brute - s["epochs"][best]["val"]["auc"]) * gap.size <= near_ties + 1e-6, (brute, near_ties)


# ---- 2. resuming after SIGKILL ----------------------------------------------------------

KILL_MID_EPOCH_2 = """
import os, signal, sys
from openface_py.train import trainer
real_save, real_log = trainer.save_checkpoint, trainer.append_record
saved_at = sys.argv.pop(1)
def save_checkpoint(path, payload):
    real_save(path, payload)
    with open(saved_at, "a") as f:
        f.write(f"{payload['epoch']} {payload['batch']}\\n")
def append_log(path, record):
    real_log(path, record)
    if record["type"] == "batch" and (record["epoch"], record["batch"]) == (2, 1):
        os.kill(os.getpid(), signal.SIGKILL)
trainer.save_checkpoint = save_checkpoint
trainer.append_record = append_log
from openface_py.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_gives_the_uninterrupted_weights(trained, aligned_openface, tmp_path):
    """Run B checkpoints after every batch (``--checkpoint-minutes 0``, a setting a continuation may
    change) and kills itself with SIGKILL once the batch after the checkpoint in the middle of epoch
    2 is trained and logged, so the log holds a batch the checkpoint does not: the continuation must
    train it again and log it once. Rerunning the plain command must end with the weights of the
    uninterrupted run A (the ``trained`` fixture, same result-deciding settings)."""
    out_a = trained[0]
    out = tmp_path / "b"
    saved_at = tmp_path / "saved.txt"
    args = ["-q", "train-net", str(aligned_openface), "-o", str(out), *TRAIN_ARGS, "--checkpoint-minutes", "0"]
    r = subprocess.run([sys.executable, "-c", KILL_MID_EPOCH_2, str(saved_at), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    # checkpoints after batch 1 of epoch 1, at the end of epoch 1, after batch 1 of epoch 2
    assert saved_at.read_text().split("\n")[:-1] == ["1 1", "2 0", "2 1"]
    assert (out / "checkpoint.pt").is_file()
    assert not (out / "model.pt").exists() and not (out / "training.json").exists()
    batches, _ = read_log(out)
    assert [(b["epoch"], b["batch"]) for b in batches] == [(1, 0), (1, 1), (2, 0), (2, 1)]

    r = cli_process(*args, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = state_dict(out_a / "model.pt"), state_dict(out / "model.pt")
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    assert worst <= 1e-6, worst
    # one log record per batch and per epoch, with the uninterrupted run's values
    batches, epochs = read_log(out)
    batches_a, epochs_a = read_log(out_a)
    assert [(x["epoch"], x["batch"]) for x in batches] == [(e, k) for e in (1, 2) for k in range(BATCHES_PER_EPOCH)]
    assert [x["epoch"] for x in epochs] == [0, 1, 2]
    for x, y in zip(batches + epochs, batches_a + epochs_a):
        assert x.keys() == y.keys()
        if x["loss"] is not None:
            assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        if x["type"] == "epoch":
            assert x["val"]["auc"] == pytest.approx(y["val"]["auc"], abs=1e-9)
    sa, sb = (json.loads((d / "training.json").read_text()) for d in (out_a, out))
    assert sb["best_epoch"] == sa["best_epoch"]
    assert weights_metadata(out / "model.pt")["same_person_threshold"] == pytest.approx(
        weights_metadata(out_a / "model.pt")["same_person_threshold"], abs=1e-5
    )


# ---- 3. refusals ------------------------------------------------------------------------


def test_continuing_with_other_settings_or_another_alignment_is_refused(trained, aligned_openface, tmp_path):
    out = trained[0]
    before = {f: sha256(out / f) for f in ("model.pt", "training.json", "checkpoint.pt", "training.jsonl")}
    r = cli("train-net", str(aligned_openface), "-o", str(out), *TRAIN_ARGS, "--lr", "2e-4")
    assert r.returncode == 2, r.stderr
    assert "other settings" in r.stderr and "lr: 0.0001 -> 0.0002" in r.stderr
    assert {f: sha256(out / f) for f in before} == before  # nothing touched

    # a folder aligned for dlib's ResNet (150x150 chips): NN4-small2 cannot learn from it
    src = tmp_path / "photos"
    for person in SAMPLE_PEOPLE[:2]:
        (src / person).mkdir(parents=True)
        for f in sorted((SAMPLE / person).glob("*.jpg"))[:2]:
            shutil.copy(f, src / person / f.name)
    chips = tmp_path / "chips"
    r = cli("align", str(src), str(chips), "--model", "dlib-resnet-v1")
    assert r.returncode == 0, r.stderr
    assert json.loads((chips / ALIGN_META).read_text())["alignment"]["method"] != "openface-affine"
    r = cli("train-net", str(chips), "-o", str(tmp_path / "run"), *TRAIN_ARGS)
    assert r.returncode == 2, r.stderr
    assert "was aligned as" in r.stderr and ALIGNMENT in r.stderr
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


# ---- 4. the objectives against references ----------------------------------------------


def reference_loss(loss: str, obj, x: torch.Tensor, y: torch.Tensor, mining: str) -> float:
    """Each objective's loss written out from its paper's formula (float64), with pml's reductions:
    triplet and contrastive average over the terms that are > 0 (pml's AvgNonZeroReducer)."""
    e = x.detach().double()
    lab = y.numpy()
    n = len(lab)
    if loss == "triplet":
        d = torch.cdist(e, e).pow(2).numpy()
        terms = []
        for a, p, neg in product_triplets(lab):
            margin = d[a, neg] - d[a, p]
            if keep_triplet(margin, mining, TRIPLET_MARGIN):
                terms.append(d[a, p] - d[a, neg] + TRIPLET_MARGIN)
        terms = [t for t in terms if t > 0]
        return float(np.mean(terms)) if terms else 0.0
    if loss == "contrastive":
        d = torch.cdist(e, e).numpy()
        pos = [d[i, j] for i in range(n) for j in range(n) if i != j and lab[i] == lab[j]]
        neg = [max(0.0, 1.0 - d[i, j]) for i in range(n) for j in range(n) if lab[i] != lab[j]]
        pos, neg = [v for v in pos if v > 0], [v for v in neg if v > 0]
        return (float(np.mean(pos)) if pos else 0.0) + (float(np.mean(neg)) if neg else 0.0)
    if loss == "center":
        w = F.normalize(obj.softmax.W.detach().double(), dim=0)
        soft = F.cross_entropy(F.normalize(e, dim=1) @ w / 0.05, y)
        centre = 0.5 * ((e - obj.center.centers.detach().double()[y]) ** 2).sum(1).mean()
        return float(soft + 0.1 * centre)
    if loss == "siamese":
        i, j = np.triu_indices(n, 1)
        w, b = obj.head.linear.weight.detach().double()[0], float(obj.head.linear.bias)
        z = ((e[i] - e[j]).abs() @ w + b).numpy()
        same = lab[i] == lab[j]
        pw = (~same).sum() / same.sum()
        log_sig, log_1m = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        return float(np.mean(-(pw * same * log_sig + (~same) * log_1m)))
    if loss == "arcface":
        m, s = 0.5, 64.0
        cos = F.normalize(e, dim=1) @ F.normalize(obj.loss.W.detach().double(), dim=0)
        theta = torch.acos(cos.clamp(-1, 1))
        target = torch.where(theta <= math.pi - m, torch.cos(theta + m), cos - m * math.sin(m))
        logits = torch.where(F.one_hot(y, cos.shape[1]).bool(), target, cos) * s
        return float(F.cross_entropy(logits, y))
    raise AssertionError(loss)


CASES = [("triplet", m) for m in MININGS] + [(loss, "semihard") for loss in LOSSES if loss != "triplet"]
OWN_PARAMETERS = {
    "triplet": set(),
    "contrastive": set(),
    "center": {"softmax.W", "center.centers"},
    "siamese": {"head.linear.weight", "head.linear.bias"},
    "arcface": {"loss.W"},
}


@pytest.mark.parametrize("loss,mining", CASES, ids=[f"{a}-{b}" if a == "triplet" else a for a, b in CASES])
def test_objective_loss_gradients_and_own_parameters(loss, mining):
    """4 people x 3 random unit embeddings: a finite scalar equal to the reference formula, a finite
    nonzero gradient on the embeddings, and gradients on the objective's own parameters."""
    assert set(OWN_PARAMETERS) == set(LOSSES)
    torch.manual_seed(0)
    y = torch.arange(4).repeat_interleave(3)
    x = F.normalize(torch.randn(12, 128), dim=1).requires_grad_()
    obj = make_objective(loss, 4, mining)
    value, figures = obj(x, y)
    assert value.dim() == 0 and torch.isfinite(value) and isinstance(figures, dict)
    if loss == "triplet":
        assert figures["triplets"] > 0
    assert float(value.detach()) == pytest.approx(reference_loss(loss, obj, x, y, mining), rel=1e-4, abs=1e-6)
    value.backward()
    assert x.grad is not None and x.grad.shape == (12, 128)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    own = dict(obj.named_parameters())
    assert set(own) == OWN_PARAMETERS[loss]
    for name, p in own.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---- 5. the triplet miners against a brute-force search ---------------------------------


def product_triplets(labels: np.ndarray):
    """Every (anchor, positive, negative): anchor != positive of the same label, negative of another."""
    n = len(labels)
    for a in range(n):
        for p in range(n):
            if p != a and labels[p] == labels[a]:
                for neg in range(n):
                    if labels[neg] != labels[a]:
                        yield a, p, neg


def keep_triplet(margin: float, mining: str, alpha: float) -> bool:
    """pml's TripletMarginMiner (pytorch_metric_learning/miners/triplet_margin_miner.py) on
    m = d_an - d_ap (squared L2): all: m <= alpha; hard: m <= alpha and m <= 0 (d_an <= d_ap);
    semihard: m <= alpha and m > 0 (d_ap < d_an <= d_ap + alpha)."""
    if mining == "all":
        return margin <= alpha
    if mining == "hard":
        return margin <= 0
    if mining == "semihard":
        return 0 < margin <= alpha
    raise AssertionError(mining)


def clustered(seed: int, sizes: list, spread: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of people around close centres, so triplets fall in every region."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(128)
    centres = base + spread * rng.standard_normal((len(sizes), 128))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[labels] + noise * rng.standard_normal((len(labels), 128))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("seed", range(4))
def test_triplet_miners_equal_a_brute_force_search(seed):
    """The semihard, hard and all miners return exactly the triplets the definitions in
    ``keep_triplet`` select, found by checking every triplet in float64. Triplets within 1e-4 of a
    boundary (float32 distances may fall on either side) may go either way but must be few."""
    sizes = [1, 2, 3, 4, 5, 6][seed % 2 :]  # a person with one face is only ever a negative
    x, labels = clustered(seed, sizes, spread=(0.25, 0.3)[seed % 2], noise=0.55)
    x64 = x.astype(np.float64)
    d = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    every = np.array(list(product_triplets(labels)))
    m = d[every[:, 0], every[:, 2]] - d[every[:, 0], every[:, 1]]
    near = (np.abs(m) < 1e-4) | (np.abs(m - TRIPLET_MARGIN) < 1e-4)
    assert near.sum() <= 5
    regions = {"hard": m <= 0, "semihard": (m > 0) & (m <= TRIPLET_MARGIN), "easy": m > TRIPLET_MARGIN}
    assert all(r.sum() >= 20 for r in regions.values()), {k: int(r.sum()) for k, r in regions.items()}
    for mining in MININGS:
        a, p, n = triplet_miner(mining)(torch.from_numpy(x), torch.from_numpy(labels))
        got = {(int(i), int(j), int(k)) for i, j, k in zip(a, p, n)}
        assert len(got) == len(a)  # no triplet twice
        want = {tuple(t) for t, mm in zip(every.tolist(), m) if keep_triplet(mm, mining, TRIPLET_MARGIN)}
        unsure = {tuple(t) for t in every[near].tolist()}
        assert got - unsure == want - unsure, mining
        for i, j, k in got:  # each one on its own: a valid triplet within the definition
            assert i != j and labels[i] == labels[j] and labels[k] != labels[i]
            mm = d[i, k] - d[i, j]
            lo, hi = {"all": (-np.inf, 0.2), "hard": (-np.inf, 0.0), "semihard": (0.0, 0.2)}[mining]
            assert lo - 1e-4 <= mm <= hi + 1e-4, (mining, mm)


def test_triplet_miners_at_the_zero_boundary():
    """A negative equal to the positive (d_an == d_ap exactly): hard and all take it, semihard not."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[2] = x[1]  # face 2 (another person) is a copy of face 1
    labels = torch.tensor([0, 0, 1, 2])
    tie = (0, 1, 2)
    for mining, taken in (("hard", True), ("all", True), ("semihard", False)):
        a, p, n = triplet_miner(mining)(torch.from_numpy(x), labels)
        assert (tie in set(zip(a.tolist(), p.tolist(), n.tolist()))) == taken, mining


# ---- 6. the P x K sampler and the split by person ---------------------------------------


def test_pk_sampler_is_a_pure_function_of_seed_epoch_batch():
    counts = [1, 2, 3, 5, 8, 13, 4, 6, 2, 10]  # person 0 has a single face
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(0).shuffle(labels)
    people, images = 4, 4  # 9 persons with 2+ faces: the last batch is topped up
    sampler = PKSampler(labels, people, images, seed=5)
    eligible = {c for c, k in enumerate(counts) if k >= 2}
    assert len(sampler) == math.ceil(len(eligible) / people)
    seen = {}
    for epoch in (1, 2, 3):
        visited = set()
        for b in range(len(sampler)):
            rows = sampler.batch(epoch, b)
            seen[epoch, b] = rows
            assert rows.shape == (people * images,)
            who = labels[rows]
            persons = sorted(set(who.tolist()))
            assert len(persons) == people and set(persons) <= eligible
            for c in persons:
                mine = rows[who == c]
                assert len(mine) == images
                if counts[c] >= images:
                    assert len(set(mine.tolist())) == images  # drawn without replacement
                else:
                    assert set(mine.tolist()) == set(np.flatnonzero(labels == c).tolist())  # all, plus repeats
            visited |= set(persons)
        assert visited == eligible  # every epoch visits every person with 2+ faces
    again = PKSampler(labels, people, images, seed=5)
    for key in reversed(list(seen)):  # another instance, another order of calls: the same batches
        assert np.array_equal(again.batch(*key), seen[key])
        assert np.array_equal(sampler.batch(*key), seen[key])
    other = PKSampler(labels, people, images, seed=6)
    assert any(not np.array_equal(other.batch(*key), rows) for key, rows in seen.items())
    assert any(not np.array_equal(seen[1, b], seen[2, b]) for b in range(len(sampler)))
    # persons are dealt into batches in a new order each epoch
    deals = {tuple(frozenset(labels[seen[e, b]].tolist()) for b in range(len(sampler))) for e in (1, 2, 3)}
    assert len(deals) > 1


def test_split_people_is_seeded_and_never_puts_a_person_in_both_parts():
    people = [f"p{i:02d}" for i in range(20)]
    counts = np.array([1 if i % 4 == 0 else 3 + i for i in range(20)])
    splits = set()
    for seed in range(10):
        train, val = split_people(people, counts, 0.2, seed)
        assert not set(train) & set(val) and set(train) | set(val) == set(people)
        assert len(val) == round(0.2 * len(people)) and len(train) + len(val) == len(people)
        assert all(counts[people.index(p)] >= 2 for p in val)  # held-out people need same-person pairs
        assert train == [p for p in people if p not in val]  # training keeps the folder order
        assert split_people(people, counts, 0.2, seed) == (train, val)
        splits.add(tuple(val))
    assert len(splits) > 1
    assert split_people(people, counts, 0.0, 0) == (people, [])
    with pytest.raises(UsageError):
        split_people(people, counts, 1.0, 0)


# ---- 7. the Siamese verifier ------------------------------------------------------------


def test_siamese_verifier_with_compare(aligned_openface, tmp_path):
    out = tmp_path / "siamese"
    r = cli_process(
        "-q", "train-net", str(aligned_openface), "-o", str(out), "--loss", "siamese", "--epochs", "1",
        "--batch-people", "4", "--batch-images", "5", "--val-people", "0.2", "--threads", "1", timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "training.json").read_text())
    verifier = out / "verifier.pt"
    assert s["verifier"] == str(verifier)
    v = torch.load(str(verifier), map_location="cpu", weights_only=True)
    assert v["embedder_identity"] == s["identity"] != PARENT_IDENTITY and v["model_file"] == "model.pt"
    assert 0.0 <= v["threshold"] <= 1.0

    # two photos of a held-out person (never trained on) and one of the other held-out person
    a, b = s["data"]["held_out_people"]
    photos = [*sorted((SAMPLE / a).glob("*.jpg"))[:2], sorted((SAMPLE / b).glob("*.jpg"))[0]]
    r = cli("compare", "--verifier", str(verifier), *map(str, photos), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"] == s["identity"] and res["threshold"] == v["threshold"]
    p = {(Path(x["image1"]).name, Path(x["image2"]).name): x for x in res["pairs"]}
    assert len(p) == 3
    for x in p.values():
        assert 0.0 <= x["p_same"] <= 1.0 and x["same"] == (x["p_same"] >= v["threshold"])
    same = p[photos[0].name, photos[1].name]["p_same"]
    assert same > p[photos[0].name, photos[2].name]["p_same"], res
    assert same > p[photos[1].name, photos[2].name]["p_same"], res

    # the verifier belongs to the trained model: another model's embeddings are refused
    r = cli("compare", "--model", PARENT, "--verifier", str(verifier), *map(str, photos[:2]), "--json")
    assert r.returncode != 0 and "trained on embeddings of" in r.stderr
    assert not r.stdout.strip()


# ---- 8. MobileFaceNet (--arch mobilefacenet) ---------------------------------------------

MFN = "mobilefacenet-reid-0095"
MFN_FILE = ROOT / "models" / f"{MFN}.pt"
MFN_ALIGNMENT = "intel5-similarity/128/5points"
# --freeze-blocks 3 (the default) keeps MobileFaceNet's stem and its first two bottleneck stages
# (5 + 1 bottlenecks: blocks.0-5); the third stage on (blocks.6-), the head and the projection train
MFN_FROZEN_PREFIXES = ("input_", "stem.", "stem_dw.", *(f"blocks.{i}." for i in range(6)))
MFN_TRAINED_PREFIXES = ("blocks.6.", "blocks.14.", "head.", "gdc.", "embedding.")


@pytest.fixture(scope="module")
def aligned_intel5(tmp_path_factory) -> Path:
    """data/lfw-sample aligned for MobileFaceNet by the real command (Intel's 5 points, 128x128)."""
    out = tmp_path_factory.mktemp("aligned128")
    r = cli("align", str(SAMPLE), str(out), "--model", MFN)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / ALIGN_META).read_text())["alignment"]["method"] == "intel5-similarity"
    return out


def test_mobilefacenet_fine_tuning_and_its_model_everywhere(aligned_intel5, aligned_openface, tmp_path):
    out = tmp_path / "mfn"
    r = cli_process("-q", "train-net", str(aligned_intel5), "-o", str(out), "--arch", "mobilefacenet", *TRAIN_ARGS,
                    timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "training.json").read_text())
    assert s["settings"]["arch"] == "mobilefacenet" and s["settings"]["init"] == MFN
    assert s["parent"] == {"init": MFN, "name": MFN, "sha256": sha256(MFN_FILE)}
    # the shipped model scores the held-out people before training: a strong start
    assert s["epochs"][0]["val"]["auc"] > 0.95, s["epochs"][0]

    meta = weights_metadata(out / "model.pt")
    assert meta["network"] == "mobilefacenet" and meta["parent"] == MFN
    mine, parent = state_dict(out / "model.pt"), state_dict(MFN_FILE)
    last = torch.load(str(out / "checkpoint.pt"), map_location="cpu", weights_only=True)["model"]  # epoch 2's
    assert mine.keys() == parent.keys() == last.keys()  # the shipped file's layout: loadable like it
    for k in mine:
        if k.startswith(MFN_FROZEN_PREFIXES):
            assert torch.equal(mine[k], parent[k]) and torch.equal(last[k], parent[k]), k
    for prefix in MFN_TRAINED_PREFIXES:
        assert any(not torch.equal(last[k], parent[k]) for k in last if k.startswith(prefix)), prefix

    # the trained file is a MobileFaceNet wherever a model is named: 256-D, its own identity
    identity = f"mobilefacenet@sha256:{sha256(out / 'model.pt')[:16]}|{MFN_ALIGNMENT}"
    assert s["identity"] == identity
    reps_dir = tmp_path / "reps"
    r = cli("represent", str(aligned_intel5), str(reps_dir), "--model", str(out / "model.pt"))
    assert r.returncode == 0, r.stderr
    assert json.loads((reps_dir / "embeddings.json").read_text())["identity"] == identity
    reps = np.load(reps_dir / "reps.npy")
    assert reps.shape == (100, 256) and np.allclose(np.linalg.norm(reps, axis=1), 1.0, atol=1e-5)
    photos = sorted((SAMPLE / SAMPLE_PEOPLE[0]).glob("*.jpg"))[:2]
    r = cli("compare", "--model", str(out / "model.pt"), *map(str, photos), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["model"] == identity and res["threshold"] == pytest.approx(meta["same_person_threshold"])
    # NN4-small2's folder cannot train MobileFaceNet: refused before anything is written
    r = cli("train-net", str(aligned_openface), "-o", str(tmp_path / "wrong"), "--arch", "mobilefacenet", *TRAIN_ARGS)
    assert r.returncode == 2 and "was aligned as" in r.stderr and MFN_ALIGNMENT in r.stderr, r.stderr
    assert not (tmp_path / "wrong" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "args,says",
    [
        (("--init", MFN), "--init mobilefacenet-reid-0095 is not a nn4.small2 network (use --arch mobilefacenet"),
        (("--arch", "mobilefacenet", "--init", PARENT), "is not a mobilefacenet network (use --arch nn4.small2"),
        (("--arch", "mobilefacenet", "--init", str(PARENT_FILE)), "holds nn4.small2 weights, not mobilefacenet"),
        (("--init", str(MFN_FILE)), "holds mobilefacenet weights, not nn4.small2 (use --arch mobilefacenet)"),
        (("--arch", "mobilefacenet", "--freeze-blocks", "6"), "--freeze-blocks must be 0..5 for mobilefacenet"),
        (("--init", "dlib-resnet-v1"), "train-net trains nn4.small2, mobilefacenet"),
    ],
)
def test_a_network_and_weights_that_do_not_match_are_refused(args, says, tmp_path):
    out = tmp_path / "run"
    r = cli("train-net", str(SAMPLE), "-o", str(out), *args)
    assert r.returncode == 2, r.stderr
    assert says in r.stderr, r.stderr
    assert not out.exists()
