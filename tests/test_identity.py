"""Tests of openface_py.nets.embed (weights identity, thresholds), recognize.gallery, eval.evaluate caches.

Weights are known by content, thresholds belong to weights, caches are keyed by everything
that changes their contents, and bad arguments exit 2 (issue 13, items 6-10)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT, SAMPLE, cli, shipped_lfw_threshold

from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
from openface_py.nets.embed import find_nn4_small2_distilled, load_embedder
from openface_py.nets.modelfiles import WEIGHTS_META_KEY

PAIR = [str(EXAMPLES / f) for f in ("lennon-1.jpg", "lennon-2.jpg", "clapton-1.jpg")]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A byte copy of the shipped weights; two different fine-tunes both named model.pt; one
    of them carrying its own threshold (as a trained model does)."""
    d = tmp_path_factory.mktemp("weights")
    shipped = find_nn4_small2_distilled()
    shutil.copy(shipped, d / "copy.pt")
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    out = {"copy": d / "copy.pt"}
    for k, scale in (("a", 1.01), ("b", 0.99)):
        (d / k).mkdir()
        changed = {n: (t * scale if n == "ln.weight" else t) for n, t in state.items()}  # the last linear layer
        torch.save(changed, d / k / "model.pt")
        out[k] = d / k / "model.pt"
    (d / "c").mkdir()
    torch.save({"state_dict": state, WEIGHTS_META_KEY: {"same_person_threshold": 0.25}}, d / "c" / "model.pt")
    out["c"] = d / "c" / "model.pt"
    return out


def test_weights_are_known_by_content_not_by_name(weights):
    copy = load_embedder(str(weights["copy"]), backend="eager")
    assert copy.name == NN4_SMALL2_DISTILLED and copy.same_person_threshold == pytest.approx(0.160)
    a, b = load_embedder(str(weights["a"]), backend="eager"), load_embedder(str(weights["b"]), backend="eager")
    assert a.name.startswith("nn4.small2@sha256:") and b.name.startswith("nn4.small2@sha256:")
    assert a.identity != b.identity  # same file name, other weights: never mixed
    assert a.same_person_threshold is None  # unknown weights are uncalibrated
    c = load_embedder(str(weights["c"]), backend="eager")
    assert c.same_person_threshold == 0.25  # a trained file carries its own
    from openface_py.io import load_image
    from openface_py.pipeline import FacePipeline
    from openface_py.recognize.classifiers import ClassifierError
    from openface_py.recognize.classify import train_model

    faces = [load_image(SAMPLE / p / f"{p}_000{i}.jpg") for p in ("Tony_Blair", "Colin_Powell") for i in (1, 2, 3)]
    pipe = FacePipeline.create(str(weights["a"]))
    X = np.stack([pipe.process(f, multi=False)[0].embedding for f in faces])
    model = train_model(X, ["Blair"] * 3 + ["Powell"] * 3, "KNN", a.name, a.identity, a.alignment.to_dict(),
                        open_set=False)  # fmt: skip
    with pytest.raises(ClassifierError):
        model.check_identity(b.identity)


def test_shipped_threshold_is_the_one_its_lfw_run_measured():
    model = load_embedder(NN4_SMALL2_DISTILLED, backend="eager")
    assert round(shipped_lfw_threshold(), 3) == model.same_person_threshold == 0.160
    import re

    card = (ROOT / "models" / "MODEL_CARD.md").read_text()
    stated = re.findall(r"same person below (\d\.\d+)|[Ss]ame-person\s+threshold (\d\.\d+)", card)
    assert len(stated) == 2 and {float(a or b) for a, b in stated} == {0.160}


def test_compare_with_weights_by_path(weights):
    r = cli("compare", *PAIR, "--model", str(weights["copy"]), "--json", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] == pytest.approx(0.160) and sum(p["same"] for p in out["pairs"]) == 1
    r = cli("compare", *PAIR, "--model", str(weights["a"]), "--json", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["threshold"] is None and all(p["same"] is None for p in out["pairs"])
    r = cli("compare", *PAIR[:2], "--model", str(weights["a"]), "-q")
    assert "no verdict: uncalibrated weights" in r.stdout and "same person" not in r.stdout
    r = cli("identify", str(SAMPLE), PAIR[0], "--model", str(weights["a"]), "-q")
    assert r.returncode == 2 and "--threshold" in r.stderr


def test_gallery_cache_follows_detector_and_weights(weights, tmp_path, monkeypatch):
    from openface_py.faces.detect import DetectorSpec
    from openface_py.pipeline import FacePipeline
    from openface_py.recognize.gallery import build_gallery

    monkeypatch.setenv("OPENFACE_PY_HOME", str(tmp_path / "home"))
    gal = tmp_path / "gallery"
    for person in ("Tony_Blair", "Colin_Powell"):
        (gal / person).mkdir(parents=True)
        shutil.copy(SAMPLE / person / f"{person}_0001.jpg", gal / person / "1.jpg")
    first = build_gallery(gal, FacePipeline.create(str(weights["a"])), progress=False)
    assert first.reused == 0
    assert build_gallery(gal, FacePipeline.create(str(weights["a"])), progress=False).reused == 2
    assert (
        build_gallery(
            gal, FacePipeline.create(str(weights["a"]), detector=DetectorSpec("hog", upsample=0)), progress=False
        ).reused
        == 0
    )
    assert (
        build_gallery(
            gal, FacePipeline.create(str(weights["a"]), detector=DetectorSpec("hog", max_side=120)), progress=False
        ).reused
        == 0
    )
    # other weights under the same file name: embedded again, and the embeddings really differ
    (weights["a"].parent / "other").mkdir(exist_ok=True)
    moved = weights["a"].parent / "other" / "model.pt"
    shutil.copy(weights["b"], moved)
    other = build_gallery(gal, FacePipeline.create(str(moved)), progress=False)
    assert other.reused == 0 and np.abs(other.reps - first.reps).max() > 1e-4


def test_lfw_cache_is_per_image_folder(tmp_path):
    """Two image folders evaluated into one output folder: the second is not served the first's embeddings."""
    from openface_py.eval.evaluate import run_lfw

    root = tmp_path / "lfw"
    people = ["Tony_Blair", "Colin_Powell", "Hugo_Chavez", "Vladimir_Putin"]
    lines = ["2 2"]
    for fold in range(2):
        a, b = people[2 * fold], people[2 * fold + 1]
        lines += [f"{a}\t1\t2", f"{b}\t3\t4", f"{a}\t5\t{b}\t6", f"{b}\t7\t{a}\t8"]
    (root).mkdir()
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    for p in people:
        (root / "real" / p).mkdir(parents=True)
        (root / "same" / p).mkdir(parents=True)
        for i in range(1, 9):
            shutil.copy(SAMPLE / p / f"{p}_{i:04d}.jpg", root / "real" / p / f"{p}_{i:04d}.jpg")
            shutil.copy(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg", root / "same" / p / f"{p}_{i:04d}.jpg")
    emb = load_embedder(NN4_SMALL2_DISTILLED, backend="eager")
    out = tmp_path / "out"
    plain, _, real = run_lfw(root, out, emb, images="real", progress=False)
    caches = sorted(out.glob("embeddings-*.npz"))
    stamp = caches[0].stat().st_mtime_ns
    time.sleep(0.01)
    again, _, _ = run_lfw(root, out, emb, images="real", metric="cosine", progress=False)
    assert caches[0].stat().st_mtime_ns == stamp  # served from the cache: nothing embedded, nothing written
    _, _, same = run_lfw(root, out, emb, images="same", progress=False)
    assert len(sorted(out.glob("embeddings-*.npz"))) == 2
    assert plain.mean >= 0.75  # real photos: mostly right
    assert np.abs(same.reps - same.reps[0]).max() < 1e-5  # one photo everywhere: one embedding
    assert np.abs(real.reps - same.reps).max() > 0.1


def test_video_output_that_cannot_be_written_is_an_error(tmp_path):
    import cv2

    clip = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (250, 250))
    bgr = cv2.imread(str(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg"))
    for _ in range(3):
        w.write(bgr)
    w.release()
    gal = tmp_path / "gallery" / "Tony_Blair"
    gal.mkdir(parents=True)
    shutil.copy(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg", gal)
    env = {"OPENFACE_PY_HOME": str(tmp_path / "home")}
    base = ["video", str(clip), "--gallery", str(tmp_path / "gallery"), "-q"]
    r = cli(*base, "--output", str(tmp_path / "missing" / "out.mp4"), env=env)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli(*base, "--output", str(tmp_path / "out.notavideo"), env=env)
    assert r.returncode == 1 and "cannot write this video" in r.stderr
    assert not list(tmp_path.glob(".openface-py-tmp*")) and not (tmp_path / "out.notavideo").exists()
    r = cli(*base, "--output", str(tmp_path / "out.mp4"), env=env)
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


@pytest.mark.parametrize(
    "args",
    [
        ["align", str(SAMPLE), "OUT", "--upsample", "-1"],
        ["align", str(SAMPLE), "OUT", "--model", "dlib-resnet-v1", "--size", "120"],
        ["run", str(SAMPLE), "OUT", "--max-side", "8"],
        ["compare", PAIR[0]],
        ["video", PAIR[0], "--gallery", str(SAMPLE), "--scale", "2"],
    ],
)
def test_bad_arguments_exit_2(args, tmp_path):
    r = cli(*[str(tmp_path / "out") if a == "OUT" else a for a in args], "-q")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
