"""Shared fixtures: the real sample photos in data/, and ../shared when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "lfw-sample"
EXAMPLES = ROOT / "data" / "examples"
SHARED = Path(os.environ.get("OPENFACE_PY_SHARED", ROOT.parent / "shared"))
NN4_CSV = SHARED / "models" / "nn4.small2.v1-csv"
LFW = SHARED / "datasets" / "lfw"

needs_nn4_csv = pytest.mark.skipif(
    not NN4_CSV.is_dir(), reason=f"needs the nn4.small2.v1 CSV export at {NN4_CSV} (../shared, present in CI)"
)
needs_lfw = pytest.mark.skipif(
    not (LFW / "pairs.txt").is_file(), reason=f"needs LFW at {LFW} (../shared, present in CI)"
)


@pytest.fixture(scope="session")
def aligned_openface(tmp_path_factory) -> Path:
    """data/lfw-sample aligned OpenFace-style (96x96, outerEyesAndNose)."""
    from openface_py.faces.align import openface_spec
    from openface_py.jobs.batch import align_folder

    out = tmp_path_factory.mktemp("aligned96")
    report = align_folder(SAMPLE, out, openface_spec(), workers=2, progress=False)
    assert report.aligned == report.total == 100, report.to_json()
    return out


@pytest.fixture(scope="session")
def aligned_dlib(tmp_path_factory) -> Path:
    """data/lfw-sample aligned as dlib 150x150 chips."""
    from openface_py.faces.align import dlib_chip_spec
    from openface_py.jobs.batch import align_folder

    out = tmp_path_factory.mktemp("aligned150")
    report = align_folder(SAMPLE, out, dlib_chip_spec(), workers=2, model="dlib-resnet-v1", progress=False)
    assert report.aligned == report.total == 100, report.to_json()
    return out


@pytest.fixture(scope="session")
def dlib_embedder():
    from openface_py.nets.embed import load_embedder

    return load_embedder("dlib-resnet-v1")


@pytest.fixture(scope="session")
def dlib_reps(aligned_dlib, dlib_embedder, tmp_path_factory):
    from openface_py.jobs.represent import represent_folder

    out = tmp_path_factory.mktemp("reps-dlib")
    res = represent_folder(aligned_dlib, out, dlib_embedder, progress=False)
    return res, out


@pytest.fixture(scope="session")
def sample_rgb():
    from openface_py.io import load_image

    return load_image(SAMPLE / "George_W_Bush" / "George_W_Bush_0001.jpg")


@pytest.fixture(scope="module")
def empty_home(tmp_path_factory):
    """An empty weights cache for a module's commands: the default model is then the shipped
    nn4.small2.distilled-v2 whatever the user's cache holds, and ONNX exports go there."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("home")
    mp.setenv("OPENFACE_PY_HOME", str(path))
    yield path
    mp.undo()


def pairwise_sq_dists(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)


def shipped_lfw_threshold() -> float:
    """The shipped model's same-person threshold as its LFW run measured it: the mean of the 10
    fold thresholds in benchmarks/results (written by `openface-py lfw`, not by the code under test)."""
    import json

    summary = ROOT / "benchmarks" / "results" / "lfw-nn4.small2.distilled-v2" / "summary-sqeuclidean.json"
    folds = json.loads(summary.read_text())["folds"]
    assert len(folds) == 10
    return float(np.mean([f["threshold"] for f in folds]))
