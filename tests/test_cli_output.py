"""Tests of openface_py.cli.photos, cli.db (text output).

Text output says what --json says (issue 24 items 11 and 12), through the real command line
in this process (``conftest.cli``) on the sample and example photos."""

from __future__ import annotations

import json
import re

import pytest
from conftest import EXAMPLES, SAMPLE, cli

TWO_FACES = str(EXAMPLES / "longoria-cooper.jpg")


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


def test_detect_landmarks_are_printed():
    rc, out, err = cli("detect", TWO_FACES, "--landmarks")
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.strip().startswith("landmarks:")]
    assert len(lines) == 2 and all(len(re.findall(r"\d+,\d+", line)) == 68 for line in lines), out
    rc, js, err = cli("detect", TWO_FACES, "--landmarks", "--json")
    first = json.loads(js)[0]["faces"][0]["landmarks"]
    assert lines[0].split("landmarks: ")[1] == " ".join(f"{x},{y}" for x, y in first)


def test_embed_says_a_face_was_left_out():
    rc, out, err = cli("embed", TWO_FACES)
    assert rc == 0 and "1 face(s) of 2 found (the largest; --multi for every face)" in out, out
    rc, out, err = cli("embed", TWO_FACES, "--json")
    assert json.loads(out)[0]["faces_found"] == 2
    rc, out, err = cli("embed", TWO_FACES, "--multi")
    assert rc == 0 and "2 face(s)\n" in out and "--multi" not in out, out


@pytest.fixture(scope="module")
def db3(tmp_path_factory) -> str:
    """A database of three people, four photos each (18 same-person pairs: learning needs 10)."""
    db = str(tmp_path_factory.mktemp("db3") / "people.db")
    assert cli("db", "create", db)[0] == 0
    for person in ("Tony_Blair", "Colin_Powell", "Jacques_Chirac"):
        photos = [str(SAMPLE / person / f"{person}_000{k}.jpg") for k in (1, 2, 3, 4)]
        rc, out, err = cli("db", "enroll", db, person, *photos)
        assert rc == 0, err
    return db


def test_db_threshold_is_rounded_and_can_be_shown(db3):
    rc, out, err = cli("db", "threshold", db3, "--learn")
    assert rc == 0 and re.fullmatch(r"threshold 0\.\d{1,4} \(learned[^)]*\)\n", out), out
    rc, shown, err = cli("db", "threshold", db3)  # no option: show it, change nothing
    assert rc == 0 and shown == out, (shown, out)
    rc, listed, err = cli("db", "list", db3)
    assert out.strip() in listed, listed


def test_missing_nn4_names_the_installed_default():
    """The module's weights cache is empty: nn4.small2.v1 is missing, the shipped model is the default."""
    rc, out, err = cli("embed", str(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg"), "--model", "nn4.small2.v1")
    assert rc == 3 and "the default without --model is 'nn4.small2.distilled-v2'" in err, err


def test_a_failed_photo_is_reported_once(tmp_path):
    photos = tmp_path / "photos" / "Tony_Blair"
    photos.mkdir(parents=True)
    (photos / "bad.jpg").write_bytes(b"not a photo")
    (photos / "good.jpg").write_bytes((SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes())
    rc, out, err = cli("run", str(tmp_path / "photos"), str(tmp_path / "out"), "--workers", "1")
    assert rc == 0 and (out + err).count("bad.jpg") == 1, out + err


def test_no_start_up_chatter_at_the_default_level(tmp_path):
    """Default logging (INFO) shows no backend line and, after any command configured logging,
    importing faiss (as the service does) prints none of its loader's lines. A fresh interpreter:
    logging is configured once per process."""
    import subprocess
    import sys

    code = (
        "import sys; from openface_py.cli import main; "
        f"rc = main(['embed', {str(SAMPLE / 'Tony_Blair' / 'Tony_Blair_0001.jpg')!r}]); import faiss; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "embedding backend" not in r.stderr and "faiss" not in r.stderr, r.stderr


def test_db_search_prints_every_candidate(db3):
    photo = str(SAMPLE / "Tony_Blair" / "Tony_Blair_0005.jpg")
    rc, out, err = cli("db", "search", db3, photo, "--top-k", "3")
    assert rc == 0, err
    rc, js, err = cli("db", "search", db3, photo, "--top-k", "3", "--json")
    candidates = json.loads(js)["results"][0]["faces"][0]["candidates"]
    assert len(candidates) == 3
    assert "    top: " + ", ".join(f"{c['name']} {c['distance']:.3f}" for c in candidates) in out, out
