"""Folder jobs under the usual mistakes and accidents (issue 24 items 1-5, issue 23 item 1):
a failed start leaves nothing behind, output folders are never read as input, changed photos are
redone, a photo that crashes a single-process job is reported on the rerun, Ctrl-C ends a job
quickly with one line and the rerun resumes, and photos without a person folder are named."""

from __future__ import annotations

import json
import shutil

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
