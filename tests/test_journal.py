"""Tests of openface_py.jobs.journal, jobs.outdir.

Journals survive torn lines; align resumes after a kill mid-line; output folders are owned and locked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SAMPLE, cli

from openface_py.faces.align import openface_spec
from openface_py.io import TEMP_PREFIX, atomic_write_bytes, load_image
from openface_py.jobs.batch import ALIGN_JOURNAL, align_folder, output_names
from openface_py.jobs.journal import Journal, read_journal
from openface_py.jobs.outdir import OutputFolder, OutputFolderError


def test_torn_tail_is_cut_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.append([{"src": "a", "status": "ok"}])
    with open(path, "ab") as fh:  # a kill in the middle of writing entry b
        fh.write(b'{"src": "b", "sta')
    assert list(read_journal(path)) == ["a"]  # the torn entry is not taken for finished
    with Journal(path) as j:
        j.append([{"src": "c", "status": "ok"}])
        j.append([{"src": "d", "status": "failed", "reason": "no face found"}])
    got = read_journal(path)
    assert list(got) == ["a", "c", "d"] and got["d"]["reason"] == "no face found"
    assert path.read_bytes().count(b"\n") == 3 and b'"sta{' not in path.read_bytes()


def test_torn_tail_longer_than_a_read_block_and_unreadable_lines(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"src": "a"}\nnot json\n{"src": "b"}\n' + b"x" * 200_000)
    assert list(read_journal(path)) == ["a", "b"]
    with Journal(path) as j:
        j.append([{"src": "c"}])
    assert path.read_bytes().endswith(b'{"src": "b"}\n{"src": "c"}\n')


def test_output_names_are_unique_and_stable(tmp_path):
    from pathlib import Path

    rels = [Path(p) for p in ("p/a.jpg", "p/a.png", "p/a.jpg.png", "p/b.jpg", "q/b.png")]
    names = output_names(rels)
    assert len({n for n in names.values()}) == len(rels)
    assert names[Path("p/b.jpg")] == Path("p/b.png") and names[Path("q/b.png")] == Path("q/b.png")
    # a photo finished earlier keeps its name when a clashing photo is added later
    first = output_names([Path("p/a.jpg")])
    later = output_names(rels, {"p/a.jpg": first[Path("p/a.jpg")].as_posix()})
    assert later[Path("p/a.jpg")] == Path("p/a.png") and len(set(later.values())) == len(rels)


TORN_ALIGN = """
import json, os, signal, sys
from openface_py.jobs import journal
real_append = journal.Journal.append
calls = [0]
def append(self, entries):
    calls[0] += 1
    if calls[0] == 7:
        data = "".join(json.dumps(e) + "\\\\n" for e in entries).encode()
        os.write(self._fd, data[: len(data) - 9])
        os.kill(os.getpid(), signal.SIGKILL)
    real_append(self, entries)
journal.Journal.append = append
from openface_py.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_align_killed_mid_journal_line_ends_like_an_uninterrupted_run(tmp_path):
    src = tmp_path / "in"
    for person in ("Tony_Blair", "Hugo_Chavez"):
        shutil.copytree(SAMPLE / person, src / person)
    (src / "Hugo_Chavez" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    ref = align_folder(src, tmp_path / "ref", openface_spec(), workers=2, progress=False)
    assert ref.aligned == 20 and len(ref.failures) == 1
    out = tmp_path / "out"
    args = ["-q", "align", str(src), str(out), "--workers", "2"]
    r = subprocess.run([sys.executable, "-c", TORN_ALIGN, *args], cwd=ROOT, capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert not (out / ALIGN_JOURNAL).read_bytes().endswith(b"\n")
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    # 6 journaled + the PNGs workers had finished (whole: written atomically) before the kill
    assert report["aligned_total"] == 20 and report["failed"] == 1 and report["already_done"] >= 6
    journal = read_journal(out / ALIGN_JOURNAL)
    assert len(journal) == 21 and sum(e["status"] == "ok" for e in journal.values()) == 20
    for e in journal.values():
        if e["status"] == "ok":
            a, b = load_image(out / e["out"]), load_image(tmp_path / "ref" / e["out"])
            assert np.array_equal(a, b)
    assert not list(out.rglob(TEMP_PREFIX + "*"))


def test_align_retry_failed(tmp_path):
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    shutil.copy(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg", src / "x" / "ok.jpg")
    (src / "x" / "late.jpg").write_bytes(b"not yet")
    (src / "x" / "bad.jpg").write_bytes(b"never a photo")
    out = tmp_path / "out"
    first = align_folder(src, out, openface_spec(), progress=False)
    assert first.aligned == 1 and [f.path for f in first.failures] == ["x/bad.jpg", "x/late.jpg"]
    shutil.copy(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg", src / "x" / "late.jpg")
    second = align_folder(src, out, openface_spec(), progress=False)  # the changed file is retried
    assert second.aligned == 1 and [f.path for f in second.failures] == ["x/bad.jpg"]
    assert (out / "x" / "late.png").is_file() and second.already_done == 2  # the unchanged failure: not unless asked
    again = align_folder(src, out, openface_spec(), retry_failed=True, progress=False)
    assert again.aligned == 0 and again.already_done == 2 and [f.path for f in again.failures] == ["x/bad.jpg"]


def test_align_output_folder_is_owned_and_locked(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (home / ".x.tmp").write_text("also mine")
    with pytest.raises(OutputFolderError, match="not an openface-py align output folder"):
        align_folder(SAMPLE / "Tony_Blair", home, openface_spec(), progress=False)
    assert sorted(os.listdir(home)) == [".x.tmp", "notes.txt"]
    out = tmp_path / "out"
    with OutputFolder(out, "openface-py-align.json", "align"):
        with pytest.raises(OutputFolderError, match=f"process {os.getpid()}"):
            align_folder(SAMPLE / "Tony_Blair", out, openface_spec(), progress=False)
    # a temp file a killed run left is removed by the next run; nothing else is touched
    atomic_write_bytes(out / "keep.bin", b"x")
    (out / f"{TEMP_PREFIX}Tony_Blair_0001.png.abc").write_bytes(b"half")
    (out / ".keep.tmp").write_bytes(b"someone else's")
    with pytest.raises(OutputFolderError):  # files but no marker: not ours, nothing deleted
        align_folder(SAMPLE / "Tony_Blair", out, openface_spec(), progress=False)
    assert (out / f"{TEMP_PREFIX}Tony_Blair_0001.png.abc").is_file()
    shutil.rmtree(out)
    align_folder(SAMPLE / "Tony_Blair", out, openface_spec(), progress=False)
    (out / f"{TEMP_PREFIX}Tony_Blair_0001.png.abc").write_bytes(b"half")
    (out / ".keep.tmp").write_bytes(b"someone else's")
    rep = align_folder(SAMPLE / "Tony_Blair", out, openface_spec(), progress=False)
    assert rep.already_done == 10 and (out / ".keep.tmp").is_file()
    assert not list(out.rglob(TEMP_PREFIX + "*"))


def test_folder_with_only_os_litter_counts_as_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # left by a file browser that showed the folder
    (out / f"{TEMP_PREFIX}run.json.x1").write_text("{")  # a kill before the marker was in place
    report = align_folder(SAMPLE / "Tony_Blair", out, openface_spec(), progress=False)
    assert report.aligned == 10 and not list(out.glob(TEMP_PREFIX + "*"))
