"""Distil NN4-small2 from dlib's ResNet: complete weights without OpenFace's missing tensors.

The student is the exact NN4-small2 network. Every tensor present in OpenFace's per-layer CSV
export initialises it; the 5 missing convolution weights are He-initialised. It learns to
give, for OpenFace's 96x96 crop of a photo, the teacher's (dlib ResNet) embedding of dlib's
150x150 chip of the same face (label-free distillation). Loss per batch:

    mean(1 - cos(student, teacher)) + pair_weight * MSE(S S^T, T T^T)

(S, T: the batch's unit-length student / teacher embeddings; the second term matches all
pairwise cosine similarities inside the batch, i.e. the geometry that verification uses).
A mirrored crop is used only where the cache has the teacher's embedding of the mirrored chip.

Reproducible and resumable: every setting is a flag; the data order is a function of the seed
and the epoch; a checkpoint (model, optimiser, position) is written atomically at least every
``--checkpoint-minutes`` and at each epoch's end, and a rerun with the same ``--out`` continues
from it. After each epoch the student is scored on LFW's 10 folds from the cached LFW crops
(monitoring only: the exported model is the last epoch's, never the best on LFW). With
``--ema D`` an exponential moving average of the weights is kept; it is what is scored and
exported.

    python -m openface_py.train.prepare ...            # fill the cache first
    python -m openface_py.train.distill --cache DIR --init-csv DIR --out RUN [--epochs N ...]
    python -m openface_py.train.distill --out RUN --export models/nn4.small2.NAME.pt
"""

from __future__ import annotations

import argparse
import io as _io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from openface_py.io import atomic_write_bytes, atomic_write_text
from openface_py.nets.nn4 import L2Pool2d, NN4Small2, preprocess
from openface_py.nets.weights import csv_names, load_csv_folder, validate_state_dict
from openface_py.train import scaffold
from openface_py.train.prepare import LFW_SOURCE, load_shards

log = logging.getLogger(__name__)

#: Blocks trained at the higher learning rate as a whole (the missing tensors sit in them or feed them).
NEW_BLOCKS = ("incept5a.", "incept5b.", "ln.")
L2POOL_EPS = 1e-6


@dataclass
class Settings:
    """Every training setting (saved in the run folder and the checkpoint)."""

    cache: str
    init_csv: Optional[str]
    epochs: int = 12
    batch_size: int = 64
    lr_new: float = 1e-3
    lr_init: float = 2e-4
    weight_decay: float = 0.0
    pair_weight: float = 1.0
    flip: float = 0.5
    seed: int = 0
    threads: int = 0
    checkpoint_minutes: float = 10.0
    sources: str = ""  # comma-separated; empty = every training source in the cache
    eval_batch: int = 128
    freeze_blocks: int = 0  # leading blocks kept as initialised (0: none; 3: stem, 3a, 3b)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); evaluated + exported


# ---- data ------------------------------------------------------------------------------


@dataclass
class TrainSet:
    crops: np.ndarray  # (N, 96, 96, 3) uint8
    teacher: np.ndarray  # (N, 128) unit
    teacher_flip: np.ndarray  # (N, 128) unit, NaN where not computed
    names: list  # "source/relative path"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_train_set(cache: Path, sources: Optional[list[str]] = None) -> TrainSet:
    """The cached training photos that passed the leakage filter (``keep.json``)."""
    keep_file = cache / "keep.json"
    if not keep_file.is_file():
        raise FileNotFoundError(f"{keep_file}: run 'python -m openface_py.train.leakage --cache {cache}' first")
    keep = json.loads(keep_file.read_text())["keep"]
    names = sorted(sources or keep)
    crops, teach, teach_f, all_names = [], [], [], []
    for src in names:
        d = load_shards(cache / src)
        ok = set(keep[src])
        mask = np.array([n in ok for n in d["names"]])
        crops.append(d["crops"][mask])
        teach.append(_unit(d["teacher"][mask]))
        tf = d["teacher_flip"][mask]
        teach_f.append(np.where(np.isnan(tf).any(1, keepdims=True), np.nan, _unit(np.nan_to_num(tf) + 1e-12)))
        all_names += [f"{src}/{n}" for n in d["names"][mask]]
        log.info("%s: %d of %d photos kept", src, int(mask.sum()), len(mask))
    return TrainSet(np.concatenate(crops), np.concatenate(teach), np.concatenate(teach_f).astype(np.float32), all_names)


# ---- model -----------------------------------------------------------------------------


def missing_keys(init_csv: Optional[Path]) -> list[str]:
    """State-dict keys of the tensors the CSV folder lacks (all of them without a folder)."""
    stems = csv_names()
    if init_csv is None:
        return list(stems)
    return [k for k, s in stems.items() if not (Path(init_csv) / f"{s}.csv").is_file()]


def build_student(init_csv: Optional[Path], seed: int) -> tuple[NN4Small2, list[str]]:
    """NN4-small2 with OpenFace's tensors where they exist and He-initialised convs elsewhere."""
    torch.manual_seed(seed)
    model = NN4Small2()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        if isinstance(m, L2Pool2d):
            m.eps = L2POOL_EPS
    missing = missing_keys(init_csv)
    if init_csv is not None:
        state, missing_stems = load_csv_folder(init_csv, allow_missing=True)
        fresh = model.state_dict()
        for k in missing:  # keep the He initialisation for what the CSVs lack
            state[k] = fresh[k]
        model.load_state_dict(state)
        log.info("initialised from %s; %d tensors missing there: %s", init_csv, len(missing_stems), missing_stems)
    return model, missing


def student_groups(model: NN4Small2, missing: list[str], lr_new: float, lr_init: float) -> list[dict]:
    """Higher learning rate for the missing tensors' layers (conv + its BN) and 5a/5b/dense."""
    new_prefixes = set(NEW_BLOCKS)
    for key in missing:
        conv = key.rsplit(".", 1)[0]  # e.g. incept3c.branches.0.3, or conv1
        new_prefixes.add(conv + ".")
        head, _, idx = conv.rpartition(".")
        if idx.isdigit():
            new_prefixes.add(f"{head}.{int(idx) + 1}.")  # the batch norm after it
        elif conv.startswith("conv"):
            new_prefixes.add("bn" + conv[len("conv") :] + ".")
    new, old = scaffold.split_params(model, lambda name: any(name.startswith(pre) for pre in new_prefixes))
    return [scaffold.param_group(new, lr_new), scaffold.param_group(old, lr_init)]


def distill_loss(s: torch.Tensor, t: torch.Tensor, pair_weight: float) -> tuple[torch.Tensor, dict]:
    """1 - cos(s, t) averaged, plus ``pair_weight`` x MSE between in-batch cosine matrices."""
    cos = (s * t).sum(1)
    loss_cos = (1 - cos).mean()
    loss_pair = ((s @ s.T - t @ t.T) ** 2).mean() if pair_weight else torch.zeros((), device=s.device)
    return loss_cos + pair_weight * loss_pair, {"cos": float(loss_cos.detach()), "pair": float(loss_pair.detach())}


# ---- evaluation on cached LFW crops ----------------------------------------------------------


def lfw_accuracy(model: NN4Small2, lfw: dict, pairs_path: Path, batch: int = 128, flip: bool = True) -> dict:
    """10-fold LFW accuracy (thresholds from the other 9 folds) on the cached crops ``lfw``
    (``load_shards`` of the cache's LFW source); with ``flip`` also with mirror-averaged embeddings."""
    from openface_py.eval.evaluate import evaluate, score_pairs
    from openface_py.eval.lfw import LfwEmbeddings
    from openface_py.eval.protocol import parse_pairs

    d = lfw
    crops = d["crops"]
    reps = scaffold.embed_faces(model, crops, batch=batch, channels_last=True)
    reps_flip = reps
    if flip:
        reps_flip = scaffold.embed_faces(
            model, np.ascontiguousarray(crops[:, :, ::-1]), batch=batch, channels_last=True
        )
    emb = LfwEmbeddings("student", list(d["names"]), reps, reps_flip, [])
    pairs, _, _ = parse_pairs(pairs_path)
    out = {}
    for use_flip in (False, True) if flip else (False,):
        res = evaluate(pairs, score_pairs(emb, pairs, "sqeuclidean", use_flip), "sqeuclidean", use_flip)
        out["flip" if use_flip else "plain"] = {"accuracy": res.mean, "std": res.std, "auc": res.auc}
    return out


# ---- training ----------------------------------------------------------------------------


class WeightAverage:
    """Exponential moving average of a model's state (parameters and batch-norm statistics).

    The average of the weights along the last few thousand steps generalises better than the
    last step's weights (Polyak averaging); the decay ramps up as ``(1 + t) / (10 + t)`` so early
    steps do not hold on to the initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, state: Optional[dict] = None, updates: int = 0) -> None:
        self.decay = decay
        self.updates = updates
        self.state = state if state is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    self.state[k].copy_(v)

    def model(self, like: NN4Small2) -> NN4Small2:
        """A copy of ``like`` carrying the averaged weights (for evaluation)."""
        import copy

        out = copy.deepcopy(like)
        out.load_state_dict(self.state)
        return out.eval()


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def checkpoint_payload(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    step: int,
    settings: Settings,
    average: Optional[WeightAverage] = None,
) -> dict:
    """What ``checkpoint.pt`` holds: the network, the optimiser, the position (``step`` batches
    into the 0-based ``epoch``), the settings, torch's RNG state and the weight average."""
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "epoch": epoch,
        "step": step,
        "settings": asdict(settings),
        "torch_rng": torch.get_rng_state(),
    }
    if average is not None:
        state["ema"] = {"state": average.state, "updates": average.updates}
    return state


#: What every distillation checkpoint holds (``checkpoint_payload``; ``ema`` only with ``--ema``).
CHECKPOINT_KEYS = {"model", "opt", "epoch", "step", "settings", "torch_rng"}


def train(
    settings: Settings,
    out: Path,
    pairs_path: Optional[Path],
    stop_after_steps: Optional[int] = None,
    stop_after_minutes: Optional[float] = None,
) -> Path:
    """Run (or continue) the distillation in ``out``; returns the last checkpoint path.

    ``stop_after_steps`` / ``stop_after_minutes`` end this call early with a checkpoint (for
    runs spread over several sessions); a later call with the same settings continues.
    """
    scaffold.set_threads(settings.threads)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(settings.cache)
    ckpt = out / "checkpoint.pt"
    data = load_train_set(cache, [s for s in settings.sources.split(",") if s] or None)
    n = len(data.crops)
    steps_per_epoch = n // settings.batch_size
    total = steps_per_epoch * settings.epochs
    model, missing = build_student(Path(settings.init_csv) if settings.init_csv else None, settings.seed)
    model = model.to(memory_format=torch.channels_last)
    frozen = scaffold.freeze(model, settings.freeze_blocks)
    opt = torch.optim.Adam(
        student_groups(model, missing, settings.lr_new, settings.lr_init), weight_decay=settings.weight_decay
    )
    average = WeightAverage(model, settings.ema) if settings.ema > 0 else None
    epoch, step, average = _resume(ckpt, settings, model, opt, average)
    atomic_write_text(out / "settings.json", json.dumps(asdict(settings), indent=2))
    log.info("%d training photos, %d steps per epoch, %d epochs", n, steps_per_epoch, settings.epochs)
    has_flip = ~np.isnan(data.teacher_flip[:, 0])
    lfw = load_shards(cache / LFW_SOURCE) if pairs_path is not None and (cache / LFW_SOURCE).is_dir() else None
    feats, feats_flip = _frozen_inputs(model, data, has_flip, settings)
    started = time.monotonic()
    timer = scaffold.CheckpointTimer(settings.checkpoint_minutes)
    steps_done, stop = 0, False
    scaffold.train_mode(model, frozen)  # frozen batch norms keep their running statistics
    while epoch < settings.epochs:
        order = epoch_order(n, settings.seed, epoch)
        t0, seen, sums = time.monotonic(), 0, {"loss": 0.0, "cos": 0.0, "pair": 0.0}
        for b in range(step, steps_per_epoch):
            idx = np.sort(order[b * settings.batch_size : (b + 1) * settings.batch_size])
            # mirror choice: a function of (seed, epoch, batch) so a resumed run makes the same choices
            mirror = np.random.default_rng([settings.seed, epoch, b]).random(len(idx)) < settings.flip
            mirror &= has_flip[idx]
            target = np.where(mirror[:, None], data.teacher_flip[idx], data.teacher[idx])
            scaffold.scale_rates(opt, scaffold.cosine_factor(epoch * steps_per_epoch + b, total))
            if feats is not None:
                f = feats[idx]
                if mirror.any() and feats_flip is not None:
                    f[mirror] = feats_flip[idx][mirror]
                x = torch.from_numpy(f).contiguous(memory_format=torch.channels_last)
                s = model.head(model.features(x, settings.freeze_blocks))
            else:
                crops = data.crops[idx].copy()
                crops[mirror] = crops[mirror][:, :, ::-1]
                s = model(preprocess(crops).contiguous(memory_format=torch.channels_last))
            loss, parts = distill_loss(s, torch.from_numpy(target), settings.pair_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} step {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update(model)
            seen += len(idx)
            sums["loss"] += float(loss.detach()) * len(idx)
            sums["cos"] += parts["cos"] * len(idx)
            sums["pair"] += parts["pair"] * len(idx)
            if b % 50 == 0:
                log.info(
                    "epoch %d step %d/%d loss %.4f (%.0f img/s)",
                    epoch + 1,
                    b,
                    steps_per_epoch,
                    float(loss.detach()),
                    seen / max(1e-9, time.monotonic() - t0),
                )
            steps_done += 1
            stop = (stop_after_steps is not None and steps_done >= stop_after_steps) or (
                stop_after_minutes is not None and time.monotonic() - started > stop_after_minutes * 60
            )
            if stop or timer.due():
                scaffold.save_checkpoint(ckpt, checkpoint_payload(model, opt, epoch, b + 1, settings, average))
                timer.reset()
            if stop and b + 1 < steps_per_epoch:
                log.info("stopping at epoch %d step %d (checkpoint written; rerun to continue)", epoch + 1, b + 1)
                return ckpt
        epoch, step = epoch + 1, 0
        elapsed = time.monotonic() - t0
        record = {
            "epoch": epoch,
            "seconds": round(elapsed, 1),
            "images_per_s": round(seen / elapsed, 1),
            "train": {k: v / max(1, seen) for k, v in sums.items()},
        }
        if lfw is not None:
            # mirrored too at the last epoch only (it doubles the evaluation time); the averaged
            # weights when averaging (what is exported), else the current ones
            scored = average.model(model) if average is not None else model
            record["lfw"] = lfw_accuracy(scored, lfw, pairs_path, settings.eval_batch, flip=epoch == settings.epochs)
            scaffold.train_mode(model, frozen)
        log.info("epoch %d done: %s", epoch, json.dumps(record))
        scaffold.append_record(out / "log.jsonl", record)
        scaffold.save_checkpoint(ckpt, checkpoint_payload(model, opt, epoch, 0, settings, average))
        timer.reset()
        if stop:
            break
    return ckpt


def _resume(
    ckpt: Path, settings: Settings, model: NN4Small2, opt: torch.optim.Optimizer, average: Optional[WeightAverage]
) -> tuple[int, int, Optional[WeightAverage]]:
    """(epoch, step, weight average) to start from: the checkpoint's, its weights, optimiser and
    RNG state loaded, or (0, 0, ``average``) without one; exits when it was made with other settings."""
    state = scaffold.load_checkpoint(ckpt, CHECKPOINT_KEYS, "distillation")
    if state is None:
        return 0, 0, average
    if state["settings"] != asdict(settings):
        raise SystemExit(
            f"{ckpt} was made with other settings; use another --out or the same flags:\n"
            f"{json.dumps(state['settings'], indent=1)}"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    if average is not None:
        average = WeightAverage(model, settings.ema, state["ema"]["state"], state["ema"]["updates"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming at epoch %d step %d", state["epoch"] + 1, state["step"])
    return state["epoch"], state["step"], average


def _frozen_inputs(
    model: NN4Small2, data: TrainSet, has_flip: np.ndarray, settings: Settings
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The frozen blocks' output for every crop (and its mirror image where the cache has the
    teacher's embedding of the mirrored chip), computed once; (None, None) without frozen blocks."""
    if settings.freeze_blocks <= 0:
        return None, None

    def run(crops: np.ndarray) -> np.ndarray:
        feats = scaffold.frozen_features(
            model, crops, settings.freeze_blocks, batch=settings.eval_batch, channels_last=True, progress=True
        )
        return feats.numpy()

    feats = run(data.crops)
    feats_flip = None
    if settings.flip > 0 and has_flip.any():
        feats_flip = run(np.ascontiguousarray(data.crops[:, :, ::-1]))
    log.info("frozen blocks 0..%d precomputed: %s", settings.freeze_blocks - 1, feats.shape)
    return feats, feats_flip


def export(ckpt: Path, dest: Path) -> str:
    """Write the checkpoint's network (its weight average when the run kept one) as a float32
    state dict; returns its sha256."""
    import hashlib

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    weights = state["ema"]["state"] if "ema" in state else state["model"]
    clean = {
        k: v.float().contiguous()
        for k, v in validate_state_dict(weights).items()
        if not k.endswith("num_batches_tracked")
    }
    buf = _io.BytesIO()
    torch.save(clean, buf)
    atomic_write_bytes(dest, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def main(argv: Optional[list[str]] = None) -> int:
    d = Settings(cache="", init_csv=None)
    ap = argparse.ArgumentParser(prog="python -m openface_py.train.distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoint.pt, log.jsonl, settings.json)")
    ap.add_argument("--cache", help="cache folder from openface_py.train.prepare")
    ap.add_argument("--init-csv", help="OpenFace per-layer CSV folder to initialise from (omit: random init)")
    ap.add_argument("--pairs", type=Path, help="LFW pairs.txt for the per-epoch score (omit: no LFW score)")
    for f in Settings.__dataclass_fields__:  # every setting is a flag
        if f in ("cache", "init_csv"):
            continue
        ap.add_argument("--" + f.replace("_", "-"), type=type(getattr(d, f)), default=getattr(d, f))
    ap.add_argument("--stop-after-minutes", type=float, help="checkpoint and stop after this long (resume later)")
    ap.add_argument("--stop-after-steps", type=int, help="checkpoint and stop after this many steps")
    ap.add_argument("--export", type=Path, help="write the run's last checkpoint as a .pt state dict and stop")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.export:
        sha = export(args.out / "checkpoint.pt", args.export)
        print(f"{args.export}  sha256 {sha}")
        return 0
    if not args.cache:
        ap.error("--cache is required for training")
    settings = Settings(**{f: getattr(args, f) for f in Settings.__dataclass_fields__})
    train(settings, args.out, args.pairs, args.stop_after_steps, args.stop_after_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
