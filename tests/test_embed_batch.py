"""Tests of openface_py.jobs.batch (align, represent).

End to end on real photos: align + represent with dlib ResNet, bad-input folders, kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, SAMPLE, cli, pairwise_sq_dists
from PIL import Image

from openface_py.errors import AlignmentMismatchError, OpenFacePyError
from openface_py.faces.align import dlib_chip_spec, openface_spec
from openface_py.io import TEMP_PREFIX, list_images, load_image
from openface_py.jobs.batch import ALIGN_JOURNAL, align_folder
from openface_py.jobs.embeddings import load_embeddings
from openface_py.jobs.represent import represent_folder


def test_dlib_embeddings_separate_the_ten_sample_people(dlib_reps):
    """Measured on this sample: 99.95% of (same, different) comparisons ordered, 1-NN 100/100,
    tolerance 0.6 (dlib's): 97.8% of same pairs below, 99.7% of different pairs above."""
    res, out = dlib_reps
    labels = np.array(res.labels)
    assert res.reps.shape == (100, 128) and len(set(res.labels)) == 10
    # dlib's vectors are not unit length (measured 1.29-1.51 on this sample)
    norms = np.linalg.norm(res.reps, axis=1)
    assert norms.min() > 1.2 and norms.max() < 1.6, (norms.min(), norms.max())
    d = pairwise_sq_dists(res.reps.astype(np.float64))
    same = labels[:, None] == labels[None, :]
    ordered = total = 0
    for i in range(len(labels)):
        s = d[i][same[i] & (np.arange(len(labels)) != i)]
        o = d[i][~same[i]]
        ordered += int((s[:, None] < o[None, :]).sum())
        total += s.size * o.size
    assert ordered / total >= 0.99
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).mean() >= 0.98
    iu = np.triu_indices(len(labels), 1)
    eu = np.sqrt(d[iu])
    assert (eu[same[iu]] < 0.6).mean() >= 0.95 and (eu[~same[iu]] >= 0.6).mean() >= 0.99


def test_rows_are_dlibs_own_descriptors_of_the_photos(dlib_reps):
    """Ten rows (photo k of person k, so order matters) against dlib's own pipeline run directly
    on the original photo: its HOG detector (upsample 1, largest face), its 5-point landmarks and
    ``compute_face_descriptor(image, shape)``, which cuts the 150x150 chip itself. Measured: equal
    to the last bit."""
    import importlib.util

    import dlib

    res, _ = dlib_reps
    files = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(str(files / "shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(str(files / "dlib_face_recognition_resnet_model_v1.dat"))
    people = sorted(d.name for d in SAMPLE.iterdir() if d.is_dir())
    rows = {(Path(p).parent.name, Path(p).stem): i for i, p in enumerate(res.paths)}
    for k, person in enumerate(people):
        photo = sorted((SAMPLE / person).glob("*.jpg"))[k]
        rgb = np.asarray(Image.open(photo).convert("RGB"))
        face = max(detector(rgb, 1), key=lambda r: r.area())
        expected = np.array(net.compute_face_descriptor(rgb, shapes(rgb, face)))
        assert np.abs(res.reps[rows[(person, photo.stem)]] - expected).max() < 1e-6, photo.name


def test_represent_outputs_are_openface_compatible(dlib_reps, aligned_dlib):
    res, out = dlib_reps
    rows = (out / "reps.csv").read_text().strip().splitlines()
    assert len(rows) == 100 and all(len(r.split(",")) == 128 for r in rows)
    assert np.allclose(np.loadtxt(out / "reps.csv", delimiter=","), np.load(out / "reps.npy"), atol=1e-6)
    lines = (out / "labels.csv").read_text().strip().splitlines()
    idx, path = lines[0].split(",", 1)
    assert idx == "1" and Path(path).parent.name == "Ariel_Sharon" and Path(path).is_file()
    # OpenFace's classifier.py takes the class from the image's parent folder
    assert sorted({int(line.split(",")[0]) for line in lines}) == list(range(1, 11))
    reps, labels, paths, meta = load_embeddings(out)
    assert meta["identity"] == "dlib-resnet-v1|dlib-chip/150/dlib5/pad0.25" and labels == res.labels


def test_represent_refuses_other_alignment(aligned_openface, dlib_embedder, tmp_path):
    with pytest.raises(AlignmentMismatchError, match="aligned as openface-affine/96"):
        represent_folder(aligned_openface, tmp_path, dlib_embedder, progress=False)


def test_align_refuses_to_mix_alignments_in_one_folder(tmp_path):
    one = tmp_path / "in" / "p"
    one.mkdir(parents=True)
    (one / "a.jpg").write_bytes((SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes())
    align_folder(tmp_path / "in", tmp_path / "out", openface_spec(), progress=False)
    with pytest.raises(AlignmentMismatchError, match="use another output folder"):
        align_folder(tmp_path / "in", tmp_path / "out", dlib_chip_spec(), progress=False)


def _bad_input_folder(root: Path) -> dict[str, str]:
    """A folder with every kind of problem; returns file -> expected failure reason (or 'ok')."""
    person = root / "Colin_Powell"
    person.mkdir(parents=True)
    src = SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg"
    rgb = load_image(src)
    data = src.read_bytes()
    (person / "normal.jpg").write_bytes(data)
    (person / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (person / "empty.jpg").write_bytes(b"")
    (person / "text.jpg").write_text("hello, I am not a photo\n")
    cv2.imwrite(str(person / "deep16.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(person / "alpha.png")
    cv2.imwrite(str(person / "gray.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees; the tag says how to turn it upright
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(person / "rotated.jpg", exif=exif, quality=95)
    landscape = cv2.resize(load_image(EXAMPLES / "adams.jpg")[:200, :200], (250, 250))
    Image.fromarray(landscape).save(person / "noface.jpg")
    (person / "Zoë 写真.jpg").write_bytes(data)
    return {
        "normal.jpg": "ok",
        "deep16.png": "ok",
        "alpha.png": "ok",
        "gray.png": "ok",
        "rotated.jpg": "ok",
        "Zoë 写真.jpg": "ok",
        "corrupt.jpg": "corrupt or truncated",
        "empty.jpg": "empty file",
        "text.jpg": "not a recognised image format",
        "noface.jpg": "no face found",
    }


def test_bad_inputs_are_reported_and_the_rest_aligned(tmp_path):
    expected = _bad_input_folder(tmp_path / "in")
    # the rotated photo is only alignable if EXIF is applied: without it HOG finds no face
    stored = np.asarray(Image.open(tmp_path / "in" / "Colin_Powell" / "rotated.jpg").convert("RGB"))
    from openface_py.faces.detect import HogDetector

    assert HogDetector().detect(np.ascontiguousarray(stored)) == []
    r = cli("align", str(tmp_path / "in"), str(tmp_path / "out"), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    for name, want in expected.items():
        if want == "ok":
            assert name not in reasons
            assert (tmp_path / "out" / "Colin_Powell" / (Path(name).stem + ".png")).is_file(), name
        else:
            assert want in reasons[name], (name, reasons.get(name))
    assert report["aligned"] == 6 and report["failed"] == 4
    saved = json.loads((tmp_path / "out" / "align-report.json").read_text())
    assert saved["failed"] == 4
    # a rerun redoes nothing, and still reports the failures
    again = json.loads(cli("align", str(tmp_path / "in"), str(tmp_path / "out"), "--json", "--quiet").stdout)
    assert again["aligned"] == 0 and again["already_done"] == 10 and again["failed"] == 4


def test_nothing_processed_is_exit_1(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_text("nope")
    r = cli("align", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet")
    assert r.returncode == 1 and "not a recognised image format" in r.stderr


def test_kill_minus_9_then_resume_finishes_without_redoing(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "openface_py", "-q", "align", str(SAMPLE), str(out), "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = out / ALIGN_JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 15:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p: (out / p).stat().st_mtime_ns for p in list_images(out)}
    assert 15 <= len(first) < 100, len(first)
    r = cli("align", str(SAMPLE), str(out), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["already_done"] >= len(first) and rep["aligned"] + rep["already_done"] == 100
    assert rep["failed"] == 0 and len(list_images(out)) == 100
    for p, mtime in first.items():
        assert (out / p).stat().st_mtime_ns == mtime, f"{p} was redone"
    leftovers = [f for _, _, fs in os.walk(out) for f in fs if f.startswith(TEMP_PREFIX)]
    assert leftovers == []
    for p in list_images(out):
        assert load_image(out / p).shape == (96, 96, 3)


def test_parallel_align_gives_the_same_faces_as_serial(tmp_path):
    sub = tmp_path / "in"
    for person in ("Hugo_Chavez", "Vladimir_Putin"):
        (sub / person).mkdir(parents=True)
        for f in sorted((SAMPLE / person).iterdir())[:4]:
            (sub / person / f.name).write_bytes(f.read_bytes())
    align_folder(sub, tmp_path / "a", openface_spec(), workers=1, progress=False)
    align_folder(sub, tmp_path / "b", openface_spec(), workers=2, progress=False)
    files = list_images(tmp_path / "a")
    assert len(files) == 8 and files == list_images(tmp_path / "b")
    for p in files:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()


def test_skip_multi(tmp_path):
    r = cli("align", str(EXAMPLES), str(tmp_path / "out"), "--skip-multi", "--json", "--quiet")
    rep = json.loads(r.stdout)
    reasons = {f["path"]: f["reason"] for f in rep["failures"]}
    assert "2 faces found and --skip-multi is set" == reasons["longoria-cooper.jpg"]
    assert rep["aligned"] == 6


def test_represent_errors(tmp_path, dlib_embedder):
    with pytest.raises(OpenFacePyError, match="not found"):
        represent_folder(tmp_path / "none", tmp_path / "o", dlib_embedder, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpenFacePyError, match="no aligned images"):
        represent_folder(tmp_path / "empty", tmp_path / "o", dlib_embedder, progress=False)
    (tmp_path / "wrong" / "p").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "wrong" / "p" / "x.png"), np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(OpenFacePyError, match="none of the 1 images"):
        represent_folder(tmp_path / "wrong", tmp_path / "o", dlib_embedder, progress=False)
