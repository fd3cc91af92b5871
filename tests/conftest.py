"""Shared test helpers and fixtures: the command line run in this process or as a program, the
real sample photos in data/ and ../shared when it is there, and what is expensive to build (aligned
sets, loaded models, embeddings, a face database), built once per test run and read-only."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

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


#: torch's thread count as the first test that ran with torch loaded found it
_TORCH_THREADS: list[int] = []


@pytest.fixture(autouse=True)
def _torch_threads_put_back():
    """A test that sets torch's threads for this whole process (``distill.train(threads=1)``, a
    command's ``--threads`` run in this process) gets them put back after it: every test after it
    would otherwise run its torch work on fewer threads."""
    torch = sys.modules.get("torch")
    if torch is not None and not _TORCH_THREADS:
        _TORCH_THREADS.append(torch.get_num_threads())
    yield
    torch = sys.modules.get("torch")
    if torch is not None and _TORCH_THREADS and torch.get_num_threads() != _TORCH_THREADS[0]:
        torch.set_num_threads(_TORCH_THREADS[0])


class CliResult(NamedTuple):
    """What a command gave: its exit code, its standard output, its standard error."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict | None = None) -> CliResult:
    """``openface-py -q ARGS`` in this process (``openface_py.cli.main``): a start of the program
    costs ~2 s of imports, this costs none. stderr holds what was written there and the package's
    log records; ``env``: environment variables for this command only. An exception the command
    line does not turn into an exit code fails the test (a subprocess would exit 1 with it)."""
    from openface_py.cli import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logger = logging.getLogger("openface_py")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for name, value in (env or {}).items():
                mp.setenv(name, value)
            try:
                rc = main(["-q", *args])
            except SystemExit as exc:  # argparse's own refusals and --help/--version
                rc = 0 if exc.code is None else exc.code
    finally:
        logger.removeHandler(handler)
    return CliResult(rc, out.getvalue(), err.getvalue())


def cli_process(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m openface_py ARGS`` as a program of its own, for what only a process shows: the
    entry point, a new process's view of on-disk caches, signals, process-wide settings."""
    return subprocess.run(
        [sys.executable, "-m", "openface_py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
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
def onnx_embedder():
    """The shipped nn4.small2.distilled-v2 on the ONNX backend (the folder jobs' tests)."""
    from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
    from openface_py.nets.embed import load_embedder

    return load_embedder(NN4_SMALL2_DISTILLED, backend="onnx")


@pytest.fixture(scope="session")
def default_embedder(default_home):
    """The default model with an empty weights cache: the shipped nn4.small2.distilled-v2, whatever
    the user has installed."""
    from openface_py.nets.embed import load_embedder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENFACE_PY_HOME", str(default_home))
        embedder = load_embedder()
    assert embedder.name == "nn4.small2.distilled-v2"
    return embedder


@pytest.fixture(scope="session")
def dlib_reps(aligned_dlib, dlib_embedder, tmp_path_factory):
    from openface_py.jobs.represent import represent_folder

    out = tmp_path_factory.mktemp("reps-dlib")
    res = represent_folder(aligned_dlib, out, dlib_embedder, progress=False)
    return res, out


#: the sample photos a face database is built from; photos 9 and 10 of each person are its probes
HELD_OUT = ("_0009", "_0010")


@pytest.fixture(scope="session")
def default_home(tmp_path_factory) -> Path:
    """An empty weights cache for session fixtures: the default model is then the shipped
    nn4.small2.distilled-v2 whatever the user's cache holds."""
    return tmp_path_factory.mktemp("default-home")


@pytest.fixture(scope="session")
def sample_gallery(tmp_path_factory) -> Path:
    """Photos 1-8 of each sample person (81 photos; 9 and 10 are the probes). Read-only."""
    out = tmp_path_factory.mktemp("sample-gallery")
    for photo in sorted(SAMPLE.glob("*/*.jpg")):
        if not photo.stem.endswith(HELD_OUT):
            (out / photo.parent.name).mkdir(exist_ok=True)
            shutil.copy2(photo, out / photo.parent.name / photo.name)
    return out


@pytest.fixture(scope="session")
def sample_db(sample_gallery, default_home, tmp_path_factory) -> tuple[Path, dict]:
    """A face database of ``sample_gallery`` made by ``db create`` and ``db import --workers 2
    --json`` with the default model: (database, the import's report). Read-only: ``copy_db`` it."""
    db = tmp_path_factory.mktemp("sample-db") / "people.db"
    env = {"OPENFACE_PY_HOME": str(default_home)}
    assert cli("db", "create", str(db), env=env).returncode == 0
    rc, out, err = cli("db", "import", str(db), str(sample_gallery), "--workers", "2", "--json", env=env)
    assert rc == 0, err
    return db, json.loads(out)


#: the people of ``clustered_db`` and how many photos of each (clusters of different sizes)
CLUSTERED = {"Colin_Powell": 4, "Hugo_Chavez": 3, "Tony_Blair": 2}


@pytest.fixture(scope="session")
def clustered_db(default_home, tmp_path_factory) -> tuple[Path, Path]:
    """(database, photo folder): ``CLUSTERED``'s sample photos imported by ``db import --unlabeled``
    with MobileFaceNet and grouped by ``db cluster`` into one unnamed cluster per person. The
    photos stay where they are (the database reads them back). Read-only: ``copy_db`` it."""
    library = tmp_path_factory.mktemp("clustered-library")
    for person, n in CLUSTERED.items():
        for i in range(1, n + 1):
            shutil.copy2(SAMPLE / person / f"{person}_{i:04d}.jpg", library)
    db = tmp_path_factory.mktemp("clustered-db") / "photos.db"
    env = {"OPENFACE_PY_HOME": str(default_home)}
    assert cli("db", "create", str(db), "--model", "mobilefacenet-reid-0095", env=env).returncode == 0
    for args in (("import", str(db), str(library), "--unlabeled"), ("cluster", str(db))):
        rc, _, err = cli("db", *args, env=env)
        assert rc == 0, err
    return db, library


def copy_db(db: Path, folder: Path) -> Path:
    """A copy of a face database and the files beside it that belong to it (its index) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in db.parent.glob(db.name + "*"):
        shutil.copy2(f, folder / f.name)
    return folder / db.name


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output with undecodable file names (the fuzz tests make them: surrogate-escaped
    bytes) kept as escapes, so pytest-xdist can send the report from its worker (UTF-8 only)."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(key, text.encode("utf-8", "backslashreplace").decode()) for key, text in report.sections]
