"""README.md "Python API": every example runs as written, from a folder laid out like the repository
(openface_py/__init__.py's public names, recognize/verify.py, recognize/facedb.py for_embedder)."""

from __future__ import annotations

import re
import runpy

import pytest
from conftest import ROOT

API = ROOT / "README.md"
#: folder jobs spawn workers that import the script again and the Ray one needs a cluster: the README
#: says so and does not claim the tests run them (aligned_openface and test_ray_engine do what they do)
NOT_RUN = 'if __name__ == "__main__":'


def api_examples() -> list[str]:
    text = API.read_text()
    section = text[text.index("## Python API\n") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_every_example():
    blocks = api_examples()
    run = [b for b in blocks if NOT_RUN not in b]
    assert len(run) == 3 and len(blocks) == 5
    for name in ("FacePipeline.create", "of.load_image", "of.verify", "db.identify", "db.calibration"):
        assert any(name in b for b in run), name


@pytest.fixture()
def repo_like(tmp_path, monkeypatch, default_home):
    """The examples' paths are relative to the repository root: a folder with its data/ (linked,
    read-only) and an empty weights cache, so the default model is the shipped one."""
    (tmp_path / "data").symlink_to(ROOT / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENFACE_PY_HOME", str(default_home))
    return tmp_path


def run_example(index: int, tmp_path, capsys) -> list[str]:
    script = tmp_path / f"example{index}.py"
    script.write_text([b for b in api_examples() if NOT_RUN not in b][index])
    runpy.run_path(str(script), run_name="__main__")
    return capsys.readouterr().out.splitlines()


def test_find_faces_and_embed(repo_like, capsys):
    lines = run_example(0, repo_like, capsys)
    assert len(lines) == 2  # Eva Longoria and Bradley Cooper
    boxes = [[int(v) for v in re.findall(r"-?\d+", line.split("]")[0])] for line in lines]
    assert boxes[0][0] < boxes[1][0]  # left to right
    assert all(line.endswith("(128,)") for line in lines)


def test_verify_two_faces(repo_like, capsys):
    same, stranger = run_example(1, repo_like, capsys)
    assert same.startswith("Verification(distance=") and "same=True" in same  # Clapton and Clapton
    assert stranger == "False"  # Clapton and Lennon


def test_identify_against_a_database(repo_like, capsys):
    answer, pair = run_example(2, repo_like, capsys)
    assert answer.startswith("Tony Blair ")  # photo 10 was not enrolled (photos 1-3 were)
    assert 0.5 < float(answer.split()[-1]) <= 1.0
    p_same = float(re.search(r"p_same=([0-9.]+)", pair).group(1))
    assert "same=True" in pair and 0.5 < p_same <= 1.0
    assert (repo_like / "people.db").is_file()
