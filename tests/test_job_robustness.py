"""Folder jobs under the usual mistakes and accidents (issue 24 items 1-5, issue 23 item 1):
a failed start leaves nothing behind, output folders are never read as input, changed photos are
redone, a photo that crashes a single-process job is reported on the rerun, Ctrl-C ends a job
quickly with one line and the rerun resumes, and photos without a person folder are named."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import SAMPLE

from openface_py.errors import UsageError
from openface_py.jobs.stream import run_folder
from openface_py.nets.embed import NN4_SMALL2_DISTILLED, load_embedder

PEOPLE = ("Tony_Blair", "Colin_Powell")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(NN4_SMALL2_DISTILLED, backend="onnx")


@pytest.fixture()
def photos(tmp_path):
    """Three photos of each of two people, in person folders (a fresh copy per test)."""
    root = tmp_path / "photos"
    for person in PEOPLE:
        (root / person).mkdir(parents=True)
        for f in sorted((SAMPLE / person).glob("*.jpg"))[:3]:
            shutil.copy(f, root / person / f.name)
    return root


# ---- item 4: a bad argument does not block the output folder ---------------------------------


def test_failed_start_leaves_nothing_behind(photos, embedder, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(UsageError, match="max_side"):
        run_folder(photos, out, embedder, max_side=8, workers=1, progress=False)
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    kept = tmp_path / "made-by-user"
    kept.mkdir()
    with pytest.raises(UsageError, match="max_side"):
        run_folder(photos, kept, embedder, max_side=8, workers=2, progress=False)
    assert kept.is_dir() and not any(kept.iterdir())  # the user's empty folder stays, empty
    report = run_folder(photos, out, embedder, workers=1, progress=False)  # the corrected command
    assert report.aligned == 6 and json.loads((out / "run.json").read_text())["max_side"] is None


def test_train_net_checks_its_input_and_init_before_claiming(photos, tmp_path):
    from openface_py.train.trainer import NetSettings, train_net

    out = tmp_path / "net"
    with pytest.raises(UsageError, match="aligned folder not found"):
        train_net(NetSettings(aligned_dir=str(tmp_path / "nope"), progress=False), out)
    assert not out.exists()
    with pytest.raises(UsageError, match="--init"):
        train_net(NetSettings(aligned_dir=str(photos), init="nn4.smal2", progress=False), out)
    assert not out.exists()


# ---- item 3: an output folder inside the input folder is never read as input -------------------


def test_output_folder_inside_the_input_is_not_input(photos, embedder):
    from openface_py.jobs.batch import align_folder

    for _ in range(3):
        report = align_folder(photos, photos / "aligned", embedder.alignment, workers=1, progress=False)
        assert report.total == 6
    assert len(list((photos / "aligned").rglob("*.png"))) == 6
    for _ in range(2):  # run's own folder (and its aligned/), and align's folder beside it
        report = run_folder(photos, photos / "out", embedder, save_aligned=True, workers=1, progress=False)
        assert report.total == 6
    labels = json.loads((photos / "out" / "labels.json").read_text())
    assert sorted(set(labels["labels"])) == sorted(PEOPLE) and len(labels["labels"]) == 6


# ---- item 2: a changed photo is done again ------------------------------------------------------


def _replace(path, data: bytes) -> None:
    """Overwrite a photo as a user's copy does: other bytes, a new modification time."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_run_redoes_changed_photos(photos, embedder, tmp_path):
    out = tmp_path / "out"
    blair, powell = photos / PEOPLE[0] / "Tony_Blair_0001.jpg", photos / PEOPLE[1] / "Colin_Powell_0001.jpg"
    late = photos / PEOPLE[0] / "late.jpg"
    late.write_bytes(powell.read_bytes()[:2000])  # caught half-copied
    first = run_folder(photos, out, embedder, workers=1, progress=False)
    assert first.aligned == 6 and [f.path for f in first.failures] == ["Tony_Blair/late.jpg"]
    _replace(blair, powell.read_bytes())  # another person's photo under the old name
    _replace(late, powell.read_bytes())  # the copy finished
    again = run_folder(photos, out, embedder, workers=1, progress=False)
    assert (again.already_done, again.aligned, again.failures) == (5, 2, [])
    reps = np.load(out / "reps.npy")
    paths = [os.path.relpath(p, photos) for p in json.loads((out / "labels.json").read_text())["paths"]]
    assert len(paths) == len(set(paths)) == 7  # replaced, not duplicated
    row = {p: r for p, r in zip(paths, reps)}
    assert np.abs(row["Tony_Blair/Tony_Blair_0001.jpg"] - row["Colin_Powell/Colin_Powell_0001.jpg"]).max() < 1e-5
    assert np.abs(row["Tony_Blair/late.jpg"] - row["Colin_Powell/Colin_Powell_0001.jpg"]).max() < 1e-5


def test_align_redoes_changed_photos(photos, embedder, tmp_path):
    import cv2

    from openface_py.jobs.batch import align_folder

    out = tmp_path / "aligned"
    blair, powell = photos / PEOPLE[0] / "Tony_Blair_0001.jpg", photos / PEOPLE[1] / "Colin_Powell_0001.jpg"
    blair2 = photos / PEOPLE[0] / "Tony_Blair_0002.jpg"
    assert align_folder(photos, out, embedder.alignment, workers=1, progress=False).aligned == 6
    _replace(blair, powell.read_bytes())
    ok, grey = cv2.imencode(".jpg", np.full((120, 160, 3), 128, np.uint8))
    _replace(blair2, grey.tobytes())  # now a photo without a face: its old face must go
    again = align_folder(photos, out, embedder.alignment, workers=1, progress=False)
    assert (again.already_done, again.aligned) == (4, 1)
    assert [(f.path, f.reason) for f in again.failures] == [("Tony_Blair/Tony_Blair_0002.jpg", "no face found")]
    assert (out / "Tony_Blair/Tony_Blair_0001.png").read_bytes() == (
        out / "Colin_Powell/Colin_Powell_0001.png"
    ).read_bytes()
    assert not (out / "Tony_Blair/Tony_Blair_0002.png").exists()
