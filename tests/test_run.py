"""`openface-py run`: one pass photos -> embeddings; parallel = single-process; resumable; failures reported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, SAMPLE

from openface_py.embed import NN4_SMALL2_DISTILLED, load_embedder, same_person_threshold
from openface_py.stream import RUN_JOURNAL, run_folder


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(NN4_SMALL2_DISTILLED, backend="onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """30 sample photos in 3 people's folders, a corrupt file, a photo without a face, a two-face photo."""
    root = tmp_path_factory.mktemp("photos")
    for person in ("Tony_Blair", "Colin_Powell", "Hugo_Chavez"):
        (root / person).mkdir()
        for f in sorted((SAMPLE / person).glob("*.jpg")):
            shutil.copy(f, root / person / f.name)
    (root / "Tony_Blair" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "none").mkdir()
    import cv2

    cv2.imwrite(str(root / "none" / "grey.png"), np.full((120, 160, 3), 128, np.uint8))
    shutil.copy(EXAMPLES / "longoria-cooper.jpg", root / "none" / "two.jpg")
    return root


def _outputs(d):
    reps = np.load(d / "reps.npy")
    return reps, json.loads((d / "labels.json").read_text()), json.loads((d / "faces.json").read_text())


def test_parallel_equals_single_process_and_align_represent(photos, embedder, tmp_path):
    one = run_folder(photos, tmp_path / "one", embedder, workers=1, progress=False)
    two = run_folder(photos, tmp_path / "two", embedder, workers=2, batch_size=7, max_pending=8, progress=False)
    assert one.total == two.total == 33
    assert one.aligned == two.aligned == 31 and one.done_ok_total == 31
    assert {(f.path, f.reason) for f in one.failures} == {(f.path, f.reason) for f in two.failures}
    reasons = {f.path: f.reason for f in one.failures}
    assert reasons["none/grey.png"] == "no face found" and "Tony_Blair/broken.jpg" in reasons
    r1, l1, f1 = _outputs(tmp_path / "one")
    r2, l2, f2 = _outputs(tmp_path / "two")
    assert l1 == l2 and f1 == f2  # same photos, faces, boxes, in the same order
    assert r1.shape == (31, 128)
    assert np.abs(r1 - r2).max() < 1e-6  # only the batch grouping differs
    report = json.loads((tmp_path / "two" / "run-report.json").read_text())
    assert report["failed"] == 2 and report["aligned_total"] == 31
    # same faces and embeddings as align + represent on the same photos
    from openface_py.batch import align_folder, represent_folder

    # (run's default detector is hog-adaptive; align's is OpenFace's hog: give align the same one)
    align_folder(photos, tmp_path / "aligned", embedder.alignment, detector="hog-adaptive", workers=2, progress=False)
    rep = represent_folder(tmp_path / "aligned", tmp_path / "reps", embedder, progress=False)
    by_path = {os.path.relpath(p, photos): r for p, r in zip(l1["paths"], r1)}
    for p, r in zip(rep.paths, rep.reps):
        rel = os.path.relpath(p, tmp_path / "aligned")
        src = next(k for k in by_path if os.path.splitext(k)[0] == os.path.splitext(rel)[0])
        assert np.abs(by_path[src] - r).max() < 1e-5


def test_multi_face_rows(photos, embedder, tmp_path):
    run_folder(photos / "none", tmp_path / "m", embedder, multi=True, workers=2, progress=False)
    reps, labels, faces = _outputs(tmp_path / "m")
    assert [(f["path"], f["face"]) for f in faces] == [("two.jpg", 0), ("two.jpg", 1)]
    assert faces[0]["box"][0] < faces[1]["box"][0]
    # two different people: further apart than the model's same-person threshold
    assert np.sum((reps[0] - reps[1]) ** 2) > same_person_threshold(embedder.name)


def test_run_resumes_after_kill_without_redoing_work(photos, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "openface_py",
        "-q",
        "run",
        str(photos),
        str(out),
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--model",
        NN4_SMALL2_DISTILLED,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / RUN_JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert 8 <= len(before) < 33, "kill the run part-way"
    r = subprocess.run(cmd + ["--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_done"] == len({e["src"] for e in before})
    assert report["aligned_total"] == 31 and report["failed"] == 2 and report["total"] == 33
    after = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert len(after) == 33 and len({e["src"] for e in after}) == 33  # nothing done twice
    reps, labels, _ = _outputs(out)
    assert reps.shape == (31, 128) and len(labels["paths"]) == 31
    assert not list(out.rglob("*.tmp"))
