"""Tests of openface_py.train.distill, train.prepare, train.leakage.

Distillation tooling on real photos: cache, leakage filter, training, resume, export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NN4_CSV, SAMPLE, needs_nn4_csv

from openface_py.train import distill, leakage, prepare, scaffold

# 2 folds, 1 same + 1 different pair each: 8 LFW images of 5 people.
PAIRS = "2\t1\nTony_Blair\t1\t2\nGeorge_W_Bush\t1\tHugo_Chavez\t1\nColin_Powell\t1\t2\nTony_Blair\t3\tColin_Powell\t3\n"
STRANGERS = ("Vladimir_Putin", "Jacques_Chirac", "Gerhard_Schroeder", "Donald_Rumsfeld")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A real cache: 8 LFW pairs images, and training photos with planted leaks."""
    import cv2

    from openface_py.io import load_image

    base = tmp_path_factory.mktemp("distill")
    (base / "pairs.txt").write_text(PAIRS)
    photos = base / "photos"
    photos.mkdir()
    for person in STRANGERS:
        for f in sorted((SAMPLE / person).glob("*.jpg"))[4:8]:
            shutil.copy(f, photos)
    for i in range(5, 8):  # other photos of a person in pairs.txt
        shutil.copy(SAMPLE / "Tony_Blair" / f"Tony_Blair_{i:04d}.jpg", photos)
    # an LFW test photo again, re-encoded inside a 40-pixel border (another crop of the same photo)
    rgb = load_image(SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg")
    framed = cv2.copyMakeBorder(rgb, 40, 40, 40, 40, cv2.BORDER_REFLECT)
    cv2.imwrite(
        str(photos / "copy_of_powell.jpg"), cv2.cvtColor(framed, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80]
    )
    cache = base / "cache"
    rc = prepare.main(
        [
            "--cache",
            str(cache),
            "--lfw",
            str(SAMPLE),
            "--pairs",
            str(base / "pairs.txt"),
            "--source",
            f"web={photos}",
            "--workers",
            "2",
            "--shard-size",
            "8",
        ]
    )
    assert rc == 0
    assert leakage.main(["--cache", str(cache)]) == 0
    return base


def test_cache_holds_crops_and_teacher(cache):
    lfw = prepare.load_shards(cache / "cache" / prepare.LFW_SOURCE)
    assert len(lfw["names"]) == 8 and "Tony_Blair/Tony_Blair_0001.jpg" in set(lfw["names"])
    web = prepare.load_shards(cache / "cache" / "web", chips=True)
    assert len(web["names"]) == 20 and len(list((cache / "cache" / "web").glob("shard-*.npz"))) == 3
    assert web["crops"].shape == (20, 96, 96, 3) and web["crops"].dtype == np.uint8
    assert web["detected"].all()
    # the teacher column is dlib's embedding of the stored chip
    from openface_py.nets.embedders import DlibResnetEmbedder

    again = DlibResnetEmbedder().embed(list(web["chips"][:3]))
    assert np.abs(again - web["teacher"][:3]).max() < 1e-5
    assert np.isnan(web["teacher_flip"]).all()  # not asked for


def test_leakage_filter_drops_lfw_people_and_copies(cache):
    keep = json.loads((cache / "cache" / "keep.json").read_text())
    dropped = {d["name"]: d for d in keep["dropped"]["web"]}
    # the identity check is a threshold on the teacher's distances: on LFW itself it finds 86% of
    # same-person photos (see MODEL_CARD.md), so 2 of these 3 are required, not all
    blair = [f"Tony_Blair_{i:04d}.jpg" for i in range(5, 8)]
    flagged = [n for n in blair if n in dropped]
    assert len(flagged) >= 2
    assert all(dropped[n]["nearest_lfw"].startswith("Tony_Blair/") for n in flagged)
    copy = dropped["copy_of_powell.jpg"]
    assert set(copy["reasons"]) == {"same-person", "near-duplicate"}
    assert copy["nearest_lfw"] == "Colin_Powell/Colin_Powell_0001.jpg"
    strangers = [f.name for p in STRANGERS for f in sorted((SAMPLE / p).glob("*.jpg"))[4:8]]
    assert set(strangers) <= set(keep["keep"]["web"])
    assert set(keep["keep"]["web"]) - set(strangers) <= set(blair)


def test_phash_and_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 50, dtype=np.uint64)
    b = rng.integers(0, 2**63, 70, dtype=np.uint64)
    brute = np.array([min(bin(int(x) ^ int(y)).count("1") for y in b) for x in a])
    assert np.array_equal(leakage.min_hamming(a, b, chunk=7), brute)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(40, 8))
    groups = np.arange(40) // 4
    d, j, other = leakage.min_distance(x, y, groups, chunk=7)
    full = np.linalg.norm(x[:, None] - y[None], axis=2)
    assert np.allclose(d, full.min(1)) and np.array_equal(j, full.argmin(1))
    for i in range(30):
        assert np.isclose(other[i], full[i][groups != groups[j[i]]].min())


def test_l2pool_eps_keeps_gradients_finite():
    from openface_py.nets.nn4 import L2Pool2d

    x = torch.zeros(1, 2, 6, 6, requires_grad=True)
    L2Pool2d(3, 3, eps=distill.L2POOL_EPS)(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    y = torch.rand(1, 2, 6, 6)
    assert torch.allclose(L2Pool2d(3, 3, eps=distill.L2POOL_EPS)(y), L2Pool2d(3, 3)(y), atol=1e-5)


@needs_nn4_csv
def test_student_init_uses_every_openface_tensor():
    model, missing = distill.build_student(NN4_CSV, seed=0)
    names = distill.csv_names()
    assert sorted(names[k] for k in missing) == sorted(
        [
            "inception_3c_3x3_conv2_w",
            "inception_4e_3x3_conv2_w",
            "inception_5a_1x1_conv_w",
            "inception_5a_3x3_conv2_w",
            "inception_5b_3x3_conv2_w",
        ]
    )
    from openface_py.nets.weights import load_csv_folder

    ref, _ = load_csv_folder(NN4_CSV, allow_missing=True)
    state = model.state_dict()
    for key in names:
        if key not in missing:
            assert torch.equal(state[key], ref[key]), key
    groups = distill.student_groups(model, missing, 1e-3, 2e-4)
    fast = {id(p) for p in groups[0]["params"]}
    named = dict(model.named_parameters())
    for key in (
        "incept3c.branches.0.3.weight",
        "incept3c.branches.0.4.weight",
        "incept4e.branches.0.3.weight",
        "incept5a.branches.0.0.weight",
        "ln.weight",
    ):
        assert id(named[key]) in fast, key
    for key in ("conv1.weight", "incept3c.branches.0.0.weight", "incept4a.branches.0.3.weight"):
        assert id(named[key]) not in fast, key


def test_training_resumes_exactly_and_exports(cache, tmp_path):
    settings = distill.Settings(
        cache=str(cache / "cache"),
        init_csv=str(NN4_CSV) if NN4_CSV.is_dir() else None,
        epochs=2,
        batch_size=4,
        threads=1,
        seed=3,
        ema=0.9,
    )
    pairs = cache / "pairs.txt"
    whole = distill.train(settings, tmp_path / "a", pairs)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert set(log[0]["lfw"]) == {"plain"} and set(log[-1]["lfw"]) == {"plain", "flip"}
    # the logged LFW figures are those of the weight average at the end: recomputed here from the
    # exported file, embedded by the library's NN4 embedder (not the training code's), pairs read here.
    # No floor: 2 epochs on 20 photos teach nothing (measured: plain accuracy 0.5, AUC 0.75; flip 1.0, 1.0)
    from sklearn.metrics import roc_auc_score

    from openface_py.metrics import k_fold_accuracy
    from openface_py.nets.embedders import NN4Embedder

    distill.export(whole, tmp_path / "a.pt")
    lfw = prepare.load_shards(cache / "cache" / prepare.LFW_SOURCE)
    student = NN4Embedder(tmp_path / "a.pt", backend="eager")
    plain = dict(zip(lfw["names"], student.embed(list(lfw["crops"]))))
    mirrored = dict(zip(lfw["names"], student.embed([np.ascontiguousarray(c[:, ::-1]) for c in lfw["crops"]])))
    lines = [line.split("\t") for line in PAIRS.splitlines()[1:]]
    same = np.array([len(f) == 3 for f in lines])
    other = [f[0] if len(f) == 3 else f[2] for f in lines]  # "name i j" or "name1 i name2 j"
    named = [(f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg", f"{o}/{o}_{int(f[-1]):04d}.jpg") for f, o in zip(lines, other)]
    averaged = {n: (v + mirrored[n]) / np.linalg.norm(v + mirrored[n]) for n, v in plain.items()}
    for kind, rep in (("plain", plain), ("flip", averaged)):
        scores = np.array([-np.sum((rep[a] - rep[b]) ** 2) for a, b in named])
        accs = [f.accuracy for f in k_fold_accuracy(scores, same, np.array([0, 0, 1, 1]))]
        assert log[-1]["lfw"][kind] == pytest.approx(
            {"accuracy": np.mean(accs), "std": np.std(accs), "auc": roc_auc_score(same, scores)}, abs=1e-9
        )
    assert log[1]["train"]["loss"] < log[0]["train"]["loss"]
    # the same run stopped twice (mid-epoch, then at an epoch's end) and continued gives the same weights
    distill.train(settings, tmp_path / "b", pairs, stop_after_steps=3)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 3
    distill.train(settings, tmp_path / "b", pairs, stop_after_steps=1)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = distill.train(settings, tmp_path / "b", pairs)
    a = torch.load(whole, weights_only=False)
    b = torch.load(resumed, weights_only=False)
    for part in (a["model"], a["ema"]["state"]), (b["model"], b["ema"]["state"]):
        assert not all(torch.equal(part[0][k], part[1][k]) for k in part[0])  # the average is not the last step
    assert all(torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6) for k in a["model"])
    ema_a, ema_b = a["ema"]["state"], b["ema"]["state"]
    assert all(torch.allclose(ema_a[k].float(), ema_b[k].float(), atol=1e-6) for k in ema_a)
    assert a["ema"]["updates"] == b["ema"]["updates"] > 0
    with pytest.raises(SystemExit, match="other settings"):
        distill.train(distill.Settings(**{**settings.__dict__, "lr_new": 0.1}), tmp_path / "b", pairs)
    # export: the weight average as a plain state dict that the embedder loads, with its sha256
    from openface_py.nets.embedders import NN4Embedder
    from openface_py.store import sha256sum

    sha = distill.export(resumed, tmp_path / "w.pt")
    assert sha == sha256sum(tmp_path / "w.pt")
    crops = prepare.load_shards(cache / "cache" / "web")["crops"][:4]
    emb = NN4Embedder(tmp_path / "w.pt").embed(list(crops))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert all(
        torch.equal(torch.load(tmp_path / "w.pt")[k], v.float())
        for k, v in ema_b.items()
        if k in a["model"] and "num_batches" not in k
    )
    student, _ = distill.build_student(None, 0)  # L2 pooling with the training epsilon
    student.load_state_dict(ema_b)
    assert np.abs(scaffold.embed_faces(student, crops, batch=128, channels_last=True) - emb).max() < 1e-4


def test_frozen_blocks_stay_as_initialised(cache, tmp_path):
    settings = distill.Settings(
        cache=str(cache / "cache"),
        init_csv=str(NN4_CSV) if NN4_CSV.is_dir() else None,
        epochs=1,
        batch_size=4,
        threads=1,
        freeze_blocks=3,
    )
    ckpt = distill.train(settings, tmp_path / "f", None)
    trained = torch.load(ckpt, weights_only=False)["model"]
    init = distill.build_student(Path(settings.init_csv) if settings.init_csv else None, settings.seed)[0].state_dict()
    for key in ("conv1.weight", "bn3.running_mean", "incept3a.branches.0.0.weight", "incept3b.branches.0.4.bias"):
        assert torch.equal(trained[key], init[key]), key
    for key in ("incept3c.branches.0.3.weight", "incept5b.branches.0.0.weight", "ln.weight"):
        assert not torch.equal(trained[key], init[key]), key
    # the precomputed features are what the full network computes there
    model = distill.build_student(None, 0)[0].eval()
    crops = prepare.load_shards(cache / "cache" / "web")["crops"][:3]
    feats = scaffold.frozen_features(model, crops, 3, batch=128, channels_last=True).numpy()
    with torch.inference_mode():
        full = model.features(distill.preprocess(crops), 0, 3).numpy()
    assert np.allclose(feats, full, atol=1e-5)


def test_mirrored_teacher_added_to_finished_shards(cache, tmp_path):
    """--flip-teacher on a cache made without it fills in the teacher's embedding of each mirrored
    chip and leaves everything else as it was; a second pass has nothing to do."""
    from openface_py.nets.embedders import DlibResnetEmbedder

    shutil.copytree(cache / "cache" / "web", tmp_path / "web")
    before = prepare.load_shards(tmp_path / "web", chips=True)
    assert prepare.add_mirror_teacher(tmp_path, "web", workers=1) == len(before["names"])
    after = prepare.load_shards(tmp_path / "web", chips=True)
    for key in ("names", "crops", "chips", "teacher", "detected"):
        assert np.array_equal(before[key], after[key]), key
    mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in before["chips"][:3]]
    assert np.abs(DlibResnetEmbedder().embed(mirrored) - after["teacher_flip"][:3]).max() < 1e-5
    assert not np.isnan(after["teacher_flip"]).any()
    # a mirrored face is the same person: the teacher puts it close, but not at the same point
    d = np.linalg.norm(after["teacher"] - after["teacher_flip"], axis=1)
    assert (d > 1e-3).all() and (d < 0.6).all()  # dlib's same-person threshold
    assert prepare.add_mirror_teacher(tmp_path, "web", workers=1) == 0
    # limited to the photos the leakage filter kept: the others stay without a mirrored target
    shutil.rmtree(tmp_path / "web")
    shutil.copytree(cache / "cache" / "web", tmp_path / "web")
    kept = set(before["names"][::3])
    assert prepare.add_mirror_teacher(tmp_path, "web", workers=1, keep=kept) == len(kept)
    partial = prepare.load_shards(tmp_path / "web")
    has = ~np.isnan(partial["teacher_flip"]).any(1)
    assert set(partial["names"][has]) == kept
    assert np.allclose(partial["teacher_flip"][has], after["teacher_flip"][has], atol=1e-6)


def test_lfw_unpaired_images_exclude_every_person_in_pairs(cache):
    got = prepare.lfw_unpaired_images(SAMPLE, cache / "pairs.txt")
    people = {p.parent.name for p in got}
    assert people == {d.name for d in SAMPLE.iterdir() if d.is_dir()} - {
        "Tony_Blair",
        "George_W_Bush",
        "Hugo_Chavez",
        "Colin_Powell",
    }
    assert len(got) == sum(len(list((SAMPLE / p).glob("*.jpg"))) for p in people)
