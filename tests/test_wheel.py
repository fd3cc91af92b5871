"""Tests of packaging (setup.py): the built wheel.

A plain (non-editable) install of a wheel built from a clean copy gets the shipped model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import ROOT, SAMPLE

from openface_py import __version__

PHOTO = SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg"

PROBE = """
import json, sys
import openface_py
from openface_py.nets.embed import best_installed_model
from openface_py.io import load_image
from openface_py.pipeline import FacePipeline
pipe = FacePipeline.create()
face = pipe.process(load_image(sys.argv[1]), multi=False)[0]
from openface_py.faces.detect import DetectorSpec
mtcnn = DetectorSpec("mtcnn").make().detect(load_image(sys.argv[1]))  # the wheel's pinned MTCNN weights
from openface_py.nets.embed import find_mobilefacenet_reid, load_embedder
mfn = load_embedder("mobilefacenet-reid-0095", backend="eager")  # its SHA-256 is checked on load
print(json.dumps({"file": openface_py.__file__, "version": openface_py.__version__,
                  "default": best_installed_model(), "embedding": face.embedding.tolist(),
                  "mtcnn_boxes": [d.box.as_list() for d in mtcnn],
                  "mfn_path": str(find_mobilefacenet_reid()), "mfn_dim": mfn.dim}))
"""


def _clean_copy(dest) -> None:
    """The files a clean clone has (tracked, plus new files git does not ignore), nothing built."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git to list the checkout's files")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, site = tmp / "src", tmp / "dist", tmp / "site"
    _clean_copy(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # reuse the installed build tools and dependencies: no network, no second torch
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                   timeout=600)  # fmt: skip
    (wheel,) = dist.glob("openface_py-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True,
                   timeout=600)  # fmt: skip
    return wheel, site, tmp


def test_wheel_carries_weights_and_card(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "openface_py/models/nn4.small2.distilled-v2.pt" in names
    assert "openface_py/models/MODEL_CARD.md" in names
    assert "openface_py/models/mtcnn.pt" in names and "openface_py/models/MTCNN_CARD.md" in names
    assert "openface_py/models/mobilefacenet-reid-0095.pt" in names and "openface_py/models/REID0095_CARD.md" in names
    assert "openface_py/data/openface-dlib-mean-landmarks.csv" in names


def test_installed_copy_resolves_the_default_model_and_embeds_like_the_checkout(installed):
    _, site, tmp = installed
    env = {**os.environ, "PYTHONPATH": str(site), "OPENFACE_PY_HOME": str(tmp / "home")}
    r = subprocess.run([sys.executable, "-c", PROBE, str(PHOTO)], cwd=tmp, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["file"].startswith(str(site)), got["file"]  # the installed copy, not the checkout
    assert got["default"] == "nn4.small2.distilled-v2" and got["version"] == __version__
    assert got["mfn_path"].startswith(str(site)) and got["mfn_dim"] == 256  # the wheel's pinned copy
    from openface_py.io import load_image
    from openface_py.pipeline import FacePipeline

    here = FacePipeline.create().process(load_image(PHOTO), multi=False)[0].embedding
    assert np.abs(np.array(got["embedding"]) - here).max() < 1e-5
    from openface_py.faces.detect import DetectorSpec

    assert got["mtcnn_boxes"] == [d.box.as_list() for d in DetectorSpec("mtcnn").make().detect(load_image(PHOTO))] != []


def test_version_agrees_across_entry_points(installed):
    _, site, tmp = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    by_module = subprocess.run([sys.executable, "-m", "openface_py", "--version"], cwd=tmp, env=env,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert by_module.stdout.strip() == f"openface-py {__version__}"
    script = shutil.which("openface-py", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("no openface-py console script beside this Python")
    by_script = subprocess.run([script, "--version"], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert by_script.stdout.strip() == by_module.stdout.strip()
