"""Tests of openface_py.jobs.stream.

`openface-py run`: one pass photos -> embeddings; parallel = single-process; resumable; failures reported."""

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
from conftest import EXAMPLES, ROOT, SAMPLE, cli, shipped_lfw_threshold

from openface_py.faces.detect import DetectorSpec
from openface_py.io import TEMP_PREFIX
from openface_py.jobs.journal import read_journal
from openface_py.jobs.outdir import OutputFolder
from openface_py.jobs.stream import PARTS, RUN_JOURNAL, run_folder
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED


@pytest.fixture(scope="module")
def embedder(onnx_embedder):
    return onnx_embedder


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
    from openface_py.jobs.batch import align_folder

    # (run's default detector is hog-mtcnn; align's is OpenFace's hog: give align the same one)
    from openface_py.jobs.represent import represent_folder

    # (run's default detector is hog-mtcnn; align's is OpenFace's hog: give align the same one)
    align_folder(photos, tmp_path / "aligned", embedder.alignment, detector="hog-mtcnn", workers=2, progress=False)
    rep = represent_folder(tmp_path / "aligned", tmp_path / "reps", embedder, progress=False)
    by_path = {os.path.relpath(p, photos): r for p, r in zip(l1["paths"], r1)}
    for p, r in zip(rep.paths, rep.reps):
        rel = os.path.relpath(p, tmp_path / "aligned")
        src = next(k for k in by_path if os.path.splitext(k)[0] == os.path.splitext(rel)[0])
        assert np.abs(by_path[src] - r).max() < 1e-5


def test_multi_face_rows(photos, embedder, tmp_path):
    run_folder(photos / "none", tmp_path / "m", embedder, pick="all", workers=2, progress=False)
    reps, labels, faces = _outputs(tmp_path / "m")
    assert [(f["path"], f["face"]) for f in faces] == [("two.jpg", 0), ("two.jpg", 1)]
    assert faces[0]["box"][0] < faces[1]["box"][0]
    # two different people: further apart than the model's same-person threshold (from its LFW run)
    assert np.sum((reps[0] - reps[1]) ** 2) > shipped_lfw_threshold()


@pytest.fixture(scope="module")
def reference(photos, embedder, tmp_path_factory):
    """An uninterrupted run of the photos: what every resumed run must end with."""
    out = tmp_path_factory.mktemp("reference")
    run_folder(photos, out, embedder, workers=2, progress=False)
    return _outputs(out)


def _same_as(reference, out) -> None:
    reps, labels, faces = _outputs(out)
    ref_reps, ref_labels, ref_faces = reference
    assert labels == ref_labels and faces == ref_faces  # every photo, face and box, in the same order
    assert reps.shape == ref_reps.shape == (31, 128)
    assert np.abs(reps - ref_reps).max() < 1e-5  # only the batch grouping differs


def _run_cmd(photos, out, *extra) -> list:
    return [sys.executable, "-m", "openface_py", "-q", "run", str(photos), str(out), "--workers", "2",
            "--batch-size", "4", "--model", NN4_SMALL2_DISTILLED, *extra]  # fmt: skip


def test_run_resumes_after_kill_without_redoing_work(photos, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = _run_cmd(photos, out)
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
    r = cli(*cmd[3:], "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_done"] == len({e["src"] for e in before})
    assert report["aligned_total"] == 31 and report["failed"] == 2 and report["total"] == 33
    after = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert len(after) == 33 and len({e["src"] for e in after}) == 33  # nothing done twice
    _same_as(reference, out)
    assert not list(out.rglob(TEMP_PREFIX + "*"))


# A run whose journal write is cut half-way by SIGKILL (the torn-line case of issue 13).
TORN_WRITER = """
import json, os, signal, sys
from openface_py.jobs import journal
real_append = journal.Journal.append
calls = [0]
def append(self, entries):
    calls[0] += 1
    if calls[0] == int(os.environ["TEAR_AT"]):
        data = "".join(json.dumps(e) + "\\n" for e in entries).encode()
        os.write(self._fd, data[: data.rfind(b"\\n", 0, len(data) - 1) + 20])  # 20 bytes into the last line
        os.kill(os.getpid(), signal.SIGKILL)
    real_append(self, entries)
journal.Journal.append = append
from openface_py.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_mid_journal_line_loses_no_photo(photos, reference, tmp_path):
    out = tmp_path / "torn"
    args = _run_cmd(photos, out)[3:]
    env = {**os.environ, "TEAR_AT": "3"}
    r = subprocess.run([sys.executable, "-c", TORN_WRITER, *args], cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    raw = (out / RUN_JOURNAL).read_bytes()
    assert not raw.endswith(b"\n")  # the last line really is torn
    finished = set(read_journal(out / RUN_JOURNAL))
    r = cli(*_run_cmd(photos, out, "--json")[3:])
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_done"] == len(finished) and report["aligned_total"] == 31
    assert len(read_journal(out / RUN_JOURNAL)) == 33
    _same_as(reference, out)


def test_missing_part_file_is_embedded_again(photos, embedder, reference, tmp_path):
    out = tmp_path / "parts"
    run_folder(photos, out, embedder, workers=1, batch_size=8, progress=False)
    parts = sorted((out / PARTS).glob("part-*.npz"))
    parts[1].unlink()
    parts[2].write_bytes(parts[2].read_bytes()[:100])  # damaged, as by a bad disk
    again = run_folder(photos, out, embedder, workers=1, batch_size=8, progress=False)
    assert again.aligned == 16 and again.done_ok_total == 31  # the photos of two parts of 8
    _same_as(reference, out)


def test_second_run_on_the_same_folder_is_refused(photos, tmp_path):
    out = tmp_path / "busy"
    with OutputFolder(out, "run.json", "run"):  # a live run holds the folder
        r = subprocess.run(_run_cmd(photos, out), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"(process {os.getpid()}) is writing to {out}" in r.stderr


def test_foreign_folder_is_refused_and_only_our_temp_files_are_removed(photos, embedder, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc.tmp").write_text("keep me")
    with pytest.raises(Exception, match="not an openface-py run output folder"):
        run_folder(photos / "none", home, embedder, workers=1, progress=False)
    assert (home / ".bashrc.tmp").read_text() == "keep me" and sorted(os.listdir(home)) == [".bashrc.tmp"]
    out = tmp_path / "ours"
    run_folder(photos / "none", out, embedder, workers=1, progress=False)
    (out / ".notes.tmp").write_text("not ours")
    (out / PARTS / f"{TEMP_PREFIX}part-000009.npz.x1y2").write_bytes(b"left by a kill")
    run_folder(photos / "none", out, embedder, workers=1, progress=False)
    assert (out / ".notes.tmp").is_file()
    assert not list(out.rglob(TEMP_PREFIX + "*"))


def test_max_side_is_used_and_recorded(photos, embedder, reference, tmp_path):
    out = tmp_path / "small"

    def colin(side: int):
        detector = DetectorSpec("hog-mtcnn", max_side=side)
        return run_folder(photos / "Colin_Powell", out, embedder, workers=1, detector=detector, progress=False)

    colin(100)
    assert json.loads((out / "run.json").read_text())["max_side"] == 100
    _, _, faces = _outputs(out)
    ref = {f["path"]: f["box"] for f in reference[2]}
    moved = 0
    for f in faces:
        b, r = f["box"], ref["Colin_Powell/" + f["path"]]
        ix = max(0, min(b[2], r[2]) - max(b[0], r[0])) * max(0, min(b[3], r[3]) - max(b[1], r[1]))
        union = (b[2] - b[0]) * (b[3] - b[1]) + (r[2] - r[0]) * (r[3] - r[1]) - ix
        assert ix / union > 0.5  # the same face, in the photo's own coordinates
        moved += b != r
    assert moved >= 5  # detected on the 100-pixel copy: boxes are not the full-size ones
    with pytest.raises(Exception, match="max_side"):
        colin(200)


def test_save_aligned_names_never_collide(embedder, tmp_path):
    from openface_py.io import load_image

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg", src / "a.jpg")
    import cv2

    cv2.imwrite(str(src / "a.png"), cv2.imread(str(SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg")))
    out = tmp_path / "out"
    run_folder(src, out, embedder, workers=1, save_aligned=True, progress=False)
    a_jpg, a_png = load_image(out / "aligned" / "a.jpg.png"), load_image(out / "aligned" / "a.png.png")
    assert sorted(os.listdir(out / "aligned")) == ["a.jpg.png", "a.png.png"]
    reps = embedder.embed([a_jpg, a_png])
    got = np.load(out / "reps.npy")  # rows sorted by photo: a.jpg, a.png
    assert np.abs(reps - got).max() < 1e-5  # each file holds its own photo's face
    multi = tmp_path / "multi"
    shutil.copy(EXAMPLES / "longoria-cooper.jpg", src / "a-0.jpg")
    run_folder(src, multi, embedder, workers=1, pick="all", save_aligned=True, progress=False)
    assert sorted(os.listdir(multi / "aligned")) == ["a-0-0.png", "a-0-1.png", "a.jpg-0.png", "a.png-0.png"]


def test_skip_multi_and_retry_failed(photos, embedder, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(photos / "none", src)
    (src / "late.jpg").write_bytes(b"not yet a photo")
    out = tmp_path / "out"
    first = run_folder(src, out, embedder, workers=1, pick="only", progress=False)
    reasons = {f.path: f.reason for f in first.failures}
    assert reasons["two.jpg"] == "2 faces found and --skip-multi is set"
    assert set(reasons) == {"two.jpg", "grey.png", "late.jpg"} and first.done_ok_total == 0
    shutil.copy(SAMPLE / "Hugo_Chavez" / "Hugo_Chavez_0001.jpg", src / "late.jpg")  # the file is fixed
    again = run_folder(src, out, embedder, workers=1, pick="only", progress=False)
    # the changed file is retried (as db import does); failures of unchanged files only when asked
    assert again.aligned == 1 and {f.path for f in again.failures} == {"two.jpg", "grey.png"}
    assert again.already_done == 2
    retried = run_folder(src, out, embedder, workers=1, pick="only", retry_failed=True, progress=False)
    assert retried.aligned == 0 and retried.already_done == 1 and retried.done_ok_total == 1
    assert {f.path for f in retried.failures} == {"two.jpg", "grey.png"}
    assert json.loads((out / "labels.json").read_text())["paths"] == [str(src / "late.jpg")]


def test_part_numbers_are_never_reused(photos, embedder, reference, tmp_path):
    """A damaged last part is deleted; the rerun must not write a new part under its name, or an
    entry of a photo not redone yet would point at the wrong file (found by review)."""
    out = tmp_path / "reuse"
    run_folder(photos, out, embedder, workers=1, batch_size=8, progress=False)
    parts = sorted((out / PARTS).glob("part-*.npz"))
    last = parts[-1].name
    parts[-1].write_bytes(b"damaged")
    run_folder(photos, out, embedder, workers=1, batch_size=8, progress=False)
    journal = read_journal(out / RUN_JOURNAL)
    assert all(e.get("part") != last for e in journal.values())  # the redone photos got a new part
    _same_as(reference, out)
