"""Text output says what --json says (issue 24 items 11 and 12), through the real command line
in this process (``test_cli_errors.run``) on the sample and example photos."""

from __future__ import annotations

import json
import re

import pytest
from conftest import EXAMPLES, SAMPLE
from test_cli_errors import run

TWO_FACES = str(EXAMPLES / "longoria-cooper.jpg")


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


def test_detect_landmarks_are_printed():
    rc, out, err = run(["detect", TWO_FACES, "--landmarks"])
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.strip().startswith("landmarks:")]
    assert len(lines) == 2 and all(len(re.findall(r"\d+,\d+", line)) == 68 for line in lines), out
    rc, js, err = run(["detect", TWO_FACES, "--landmarks", "--json"])
    first = json.loads(js)[0]["faces"][0]["landmarks"]
    assert lines[0].split("landmarks: ")[1] == " ".join(f"{x},{y}" for x, y in first)


def test_embed_says_a_face_was_left_out():
    rc, out, err = run(["embed", TWO_FACES])
    assert rc == 0 and "1 face(s) of 2 found (the largest; --multi for every face)" in out, out
    rc, out, err = run(["embed", TWO_FACES, "--json"])
    assert json.loads(out)[0]["faces_found"] == 2
    rc, out, err = run(["embed", TWO_FACES, "--multi"])
    assert rc == 0 and "2 face(s)\n" in out and "--multi" not in out, out


def test_db_search_prints_every_candidate(tmp_path):
    db = str(tmp_path / "people.db")
    assert run(["db", "create", db])[0] == 0
    for person in ("Tony_Blair", "Colin_Powell", "Jacques_Chirac"):
        rc, out, err = run(["db", "enroll", db, person, str(SAMPLE / person / f"{person}_0001.jpg")])
        assert rc == 0, err
    photo = str(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg")
    rc, out, err = run(["db", "search", db, photo, "--top-k", "3"])
    assert rc == 0, err
    rc, js, err = run(["db", "search", db, photo, "--top-k", "3", "--json"])
    candidates = json.loads(js)["results"][0]["faces"][0]["candidates"]
    assert len(candidates) == 3
    assert "    top: " + ", ".join(f"{c['name']} {c['distance']:.3f}" for c in candidates) in out, out
