"""Tests of openface_py.nets.backends.

The fast embedding backends give eager's embeddings (max abs difference 1e-5 on unit vectors)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest
import torch

from openface_py.nets import backends
from openface_py.nets.nn4 import NN4Small2

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def faces(aligned_openface):
    from openface_py.io import load_image

    imgs = [load_image(p) for p in sorted(aligned_openface.rglob("*.png"))[:37]]  # 37: not a power of two
    return np.stack(imgs).astype(np.float32).transpose(0, 3, 1, 2) / 255


@pytest.fixture(scope="module")
def model():
    from openface_py import store
    from openface_py.nets.weights import build_model

    shipped = store.project_models_dir() / store.NN4_SMALL2_DISTILLED.filename
    if shipped.is_file():
        return build_model(path=shipped)
    torch.manual_seed(0)
    return NN4Small2().eval()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENFACE_PY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("name", ["onnx", pytest.param("compile", marks=pytest.mark.slow)])
def test_backend_matches_eager(name, faces, model, home):
    ref = backends.build(model, "eager")(faces)
    fast = backends.build(model, name)
    out = fast(faces)
    assert out.shape == (37, 128) and out.dtype == np.float32
    assert np.abs(out - ref).max() < TOLERANCE
    assert np.abs(fast(faces[:5]) - ref[:5]).max() < TOLERANCE  # another batch size


def test_onnx_export_is_cached_per_weights(model, home):
    backends.build(model, "onnx")
    files = list((home / "onnx").glob("*.onnx"))
    assert len(files) == 1 and files[0] == backends.onnx_path(model)
    mtime = files[0].stat().st_mtime_ns
    backends.build(model, "onnx")
    assert files[0].stat().st_mtime_ns == mtime  # reused, not exported again
    other = NN4Small2().eval()
    assert backends.onnx_path(other) != files[0]


def test_auto_falls_back_when_a_backend_is_missing(model, home, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setattr(backends, "AUTO_ORDER", ("onnx", "eager"))
    with caplog.at_level(logging.WARNING, logger="openface_py.nets.backends"):
        runner = backends.make_runner(model, "auto")
    assert runner.name == "eager"
    assert "backend onnx unavailable" in caplog.text
    with pytest.raises(ValueError, match="unknown backend"):
        backends.make_runner(model, "tensorrt")


@pytest.mark.parametrize("offset, chosen", [(2.0, "onnx"), (0.5, "compile")])
def test_auto_skips_a_backend_that_does_not_match_eager(offset, chosen, faces, model, home, monkeypatch, caplog):
    """A backend whose outputs differ from eager's by ``offset`` x STARTUP_TOLERANCE, first in
    AUTO_ORDER: over the tolerance it is skipped with a warning and the next one (onnx) is used;
    under it, it is used. The faulty backend stands in for compile (its builder is replaced, so
    nothing is compiled: a real torch.compile costs ~50 s per batch shape here)."""
    eager = backends._eager

    def faulty(net, device):
        run = eager(net, device)
        return lambda x: run(x) + np.float32(offset * backends.STARTUP_TOLERANCE)

    monkeypatch.setattr(backends, "_compiled", faulty)
    monkeypatch.setattr(backends, "AUTO_ORDER", ("compile", "onnx", "eager"))
    with caplog.at_level(logging.WARNING, logger="openface_py.nets.backends"):
        runner = backends.make_runner(model, "auto")
    assert runner.name == chosen
    ref = backends.build(model, "eager")(faces)
    if chosen == "onnx":
        assert f"backend compile unavailable (outputs differ from eager by {2 * backends.STARTUP_TOLERANCE:.2e})" in (
            caplog.text
        )
        assert np.abs(runner(faces) - ref).max() < TOLERANCE
    else:
        assert "unavailable" not in caplog.text
        assert np.allclose(runner(faces) - ref, 0.5 * backends.STARTUP_TOLERANCE, atol=TOLERANCE)


def test_embedder_uses_a_backend(aligned_openface, model, home, caplog):
    from openface_py.io import load_image
    from openface_py.nets.embedders import NN4Embedder

    crops = [load_image(p) for p in sorted(aligned_openface.rglob("*.png"))[:4]]
    eager = NN4Embedder(model.state_dict(), backend="eager").embed(crops)
    with caplog.at_level(logging.WARNING, logger="openface_py.nets.backends"):
        auto = NN4Embedder(model.state_dict(), backend="auto")
    # onnx and onnxruntime are install requirements (setup.py) and onnx is first in AUTO_ORDER:
    # on a CPU `auto` must pick ONNX Runtime, and exports the network for it into the cache
    assert backends.AUTO_ORDER[0] == "onnx"
    assert auto.backend == "onnx" and "unavailable" not in caplog.text
    assert backends.onnx_path(auto.model).is_file()
    assert np.abs(auto.embed(crops) - eager).max() < TOLERANCE


def test_auto_follows_the_networks_own_order(model, home, monkeypatch, caplog):
    """``auto`` tries the network's order when it has one (MobileFaceNet: OpenVINO, then eager:
    measured faster than ONNX Runtime for its graph), else ``AUTO_ORDER`` (ONNX Runtime first); an
    optional backend that is not installed is passed over without a warning."""
    from openface_py.nets.embed import load_embedder
    from openface_py.nets.networks import MOBILEFACENET, NETWORKS

    assert backends.make_runner(model, "auto", auto_order=("eager",)).name == "eager"
    assert backends.make_runner(model, "auto").name == backends.AUTO_ORDER[0] == "onnx"
    assert NETWORKS.get(MOBILEFACENET).auto_backends == ("openvino", "eager")
    if importlib.util.find_spec("openvino") is not None:  # the test extra installs it
        assert load_embedder("mobilefacenet-reid-0095").backend == "openvino"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with caplog.at_level(logging.DEBUG, logger="openface_py.nets.backends"):
        assert load_embedder("mobilefacenet-reid-0095").backend == "eager"
    assert "openvino not installed" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
