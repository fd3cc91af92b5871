"""Tests of openface_py.cli (cli.common's path and requirement checks).

Every command of the parser, given a missing input, a folder where a file is expected and a
file where a folder is expected (and an output whose folder does not exist): one line, no
traceback, and the documented exit code (2: the arguments cannot work; 1: photos of a list
could not be read). Run in this process (``openface_py.cli.main``), so the whole table takes
seconds."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, cli

from openface_py import cli as cli_mod

PHOTO = SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg"

# (command..., with X the argument under test), the kind X must be, the exit code for a wrong X.
# Other tokens: PHOTO a photo, DIR a folder (one person, one photo), DB a face database, CSV a
# pair list, OUT a new path in an existing folder.
CASES = [
    (["align", "X", "OUT"], "dir", 2),
    (["align", "DIR", "X"], "out-dir", 2),
    (["represent", "X", "OUT"], "dir", 2),
    (["represent", "DIR", "X"], "out-dir", 2),
    (["run", "X", "OUT"], "dir", 2),
    (["run", "DIR", "X"], "out-dir", 2),
    (["cluster", "X", "-o", "OUT"], "dir", 2),
    (["cluster", "DIR", "-o", "X"], "out-dir", 2),
    (["video", "X", "--gallery", "DIR"], "file", 2),
    (["video", "PHOTO", "--gallery", "X"], "dir", 2),
    (["video", "PHOTO", "--classifier", "X"], "file", 2),
    (["video", "PHOTO", "--gallery", "DIR", "--output", "X"], "out-file", 2),
    (["video", "PHOTO", "--gallery", "DIR", "--results", "X"], "out-file", 2),
    (["detect", "X"], "file", 1),
    (["embed", "X"], "file", 1),
    (["compare", "X", "PHOTO"], "file", 1),
    (["compare", "PHOTO", "PHOTO", "--verifier", "X"], "file", 2),
    (["train", "X", "-o", "OUT"], "dir", 2),
    (["train", "DIR", "-o", "X"], "out-file", 2),
    (["infer", "X", "PHOTO"], "file", 2),
    (["identify", "X", "PHOTO"], "dir", 2),
    (["identify", "DIR", "X"], "file", 1),
    (["lfw", "X", "-o", "OUT"], "dir", 2),
    (["lfw", "DIR", "-o", "X"], "out-dir", 2),
    (["pairs-eval", "X", "DIR", "-o", "OUT"], "file", 2),
    (["pairs-eval", "CSV", "X", "-o", "OUT"], "dir", 2),
    (["pairs-eval", "CSV", "DIR", "-o", "X"], "out-dir", 2),
    (["lfw-classify", "X", "-o", "OUT"], "dir", 2),
    (["lfw-classify", "DIR", "-o", "X"], "out-dir", 2),
    (["train-net", "X", "-o", "OUT"], "dir", 2),
    (["train-net", "DIR", "-o", "X"], "out-dir", 2),
    (["train-net", "DIR", "-o", "OUT", "--lfw", "X"], "dir", 2),
    (["serve", "--db", "X"], "file", 2),
    (["models", "download", "nn4.small2.v1", "--from-file", "X"], "file", 2),
    (["models", "convert", "X", "-o", "OUT", "--trust-pickle"], "file", 2),
    (["models", "convert", "PHOTO", "-o", "X", "--trust-pickle"], "out-file", 2),
    (["db", "create", "X"], "out-file", 2),
    (["db", "enroll", "X", "Ada", "PHOTO"], "file", 2),
    (["db", "enroll", "DB", "Ada", "X"], "file", 1),
    (["db", "import", "X", "DIR"], "file", 2),
    (["db", "import", "DB", "X"], "dir", 2),
    (["db", "list", "X"], "file", 2),
    (["db", "remove", "X", "Ada"], "file", 2),
    (["db", "search", "X", "PHOTO"], "file", 2),
    (["db", "search", "DB", "X"], "file", 1),
    (["db", "threshold", "X", "--value", "0.5"], "file", 2),
    (["db", "cluster", "X"], "file", 2),
    (["db", "suggest-merges", "X"], "file", 2),
    (["db", "faces", "X"], "file", 2),
    (["db", "name", "X", "cluster:1", "Ada"], "file", 2),
    (["db", "merge", "X", "Ada", "Bo"], "file", 2),
    (["db", "move", "X", "1", "Ada"], "file", 2),
    (["db", "split", "X", "1"], "file", 2),
    (["db", "reject", "X", "1", "Ada"], "file", 2),
    (["db", "forget", "X", "1"], "file", 2),
    (["db", "different", "X", "Ada", "Bo"], "file", 2),
]
NO_PATH_INPUT = {("models", "list")}


def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every runnable command path of the parser (("align",), ("db", "import"), ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = list(_leaf_commands(sub, (*path, name)))
                yield from inner or [(*path, name)]


def _command(args: list[str]) -> tuple[str, ...]:
    return tuple(args[:2]) if args[0] in ("db", "models") else (args[0],)


@pytest.fixture(scope="module")
def places(tmp_path_factory, empty_home):
    base = tmp_path_factory.mktemp("errors")
    person = base / "gallery" / "Tony_Blair"
    person.mkdir(parents=True)
    shutil.copy(PHOTO, person / PHOTO.name)
    csv = base / "pairs.csv"
    csv.write_text("Tony_Blair/Tony_Blair_0001.jpg,Tony_Blair/Tony_Blair_0001.jpg,1\n")
    db = base / "people.db"
    rc, _, err = cli("db", "create", str(db))
    assert rc == 0, err
    return {"PHOTO": str(PHOTO), "DIR": str(base / "gallery"), "DB": str(db), "CSV": str(csv)}


def _wrong_values(kind: str, base: Path, places: dict) -> list[str]:
    """The wrong values for an argument of ``kind``: missing, and the other kind of path."""
    if kind == "out-dir":
        return [str(base / "no-such-folder" / "out"), places["PHOTO"]]
    if kind == "out-file":
        return [str(base / "no-such-folder" / "out.x"), places["DIR"]]
    other = places["DIR"] if kind == "file" else places["PHOTO"]
    return [str(base / "no-such-input"), other]


def test_the_table_covers_every_command():
    commands = set(_leaf_commands(cli_mod.build_parser()))
    assert len(commands) >= 25
    assert commands == {_command(args) for args, _, _ in CASES} | NO_PATH_INPUT


@pytest.mark.parametrize("template,kind,code", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_wrong_paths_get_one_line_and_the_exit_code(template, kind, code, places, tmp_path):
    for n, wrong in enumerate(_wrong_values(kind, tmp_path, places)):
        fresh = tmp_path / f"out{n}"
        argv = [wrong if t == "X" else str(fresh) if t == "OUT" else places.get(t, t) for t in template]
        rc, out, err = cli(*argv)
        said = out + err
        assert "Traceback" not in said, (argv, said)
        assert rc == code, (argv, rc, said)
        if code == 2:  # one line, naming the argument's value
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and wrong in lines[0], (argv, err)
            assert not fresh.exists(), argv  # nothing claimed before the refusal
        else:  # a photo of a list: reported with the others, as an error of that photo
            assert f"{wrong}: ERROR" in out or f"FAILED {wrong}" in err or wrong in out, (argv, said)


def test_bad_port_is_a_usage_error(places):
    rc, out, err = cli("serve", "--db", places["DB"], "--port", "99999")
    assert rc == 2 and "Traceback" not in err and "99999 is not a TCP port" in err, err


@pytest.mark.parametrize("command", ["align", "represent", "run"])
def test_a_misspelt_model_is_refused_by_every_folder_job(command, tmp_path):
    """`align --model dlib-resnet` aligned for NN4-small2 and recorded the bad name (exit 0)."""
    rc, out, err = cli(command, str(SAMPLE), str(tmp_path / "out"), "--model", "dlib-resnet")
    assert rc == 2 and "unknown model 'dlib-resnet'" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra",
    [["--format", "parquet"], ["--engine", "ray"], ["URL"]],
    ids=["parquet", "ray", "url"],
)
def test_a_missing_optional_package_is_exit_2(extra, tmp_path, monkeypatch):
    """One rule for options whose package is absent: exit 2, one line saying what to install (before:
    parquet or a URL input without pyarrow exited 1, --engine ray without Ray 2). The packages are
    made unimportable in this process only (a ``None`` in ``sys.modules`` is how Python spells it)."""
    import sys

    for name in ("pyarrow", "pyarrow.fs", "pyarrow.parquet", "ray", "ray.data", "ray.exceptions"):
        monkeypatch.setitem(sys.modules, name, None)
    source = (SAMPLE.resolve().as_uri() + "/") if extra == ["URL"] else str(SAMPLE)
    rc, out, err = cli("run", source, str(tmp_path / "out"), *([] if extra == ["URL"] else extra))
    assert rc == 2 and "not installed" in err and "pip install" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists(), err


def test_represent_on_raw_photos_says_to_align_them(tmp_path):
    """Before: 101 warnings, then 'none of the 100 images could be embedded' (exit 1)."""
    rc, out, err = cli("represent", str(SAMPLE), str(tmp_path / "reps"))
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "not aligned faces" in err and "openface-py align" in err and "openface-py run" in err, err
    assert not (tmp_path / "reps").exists()


def test_pairs_eval_with_one_fold_says_why(places, tmp_path):
    """Before: 'cannot cut 1 pairs into 1 folds' (exit 1)."""
    rc, out, err = cli("pairs-eval", places["CSV"], places["DIR"], "-o", str(tmp_path / "o"), "--folds", "1")
    assert rc == 2 and "--folds 1: the protocol needs at least two folds" in err and "Traceback" not in err, err
