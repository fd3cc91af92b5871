"""Tests of openface_py.nets.backends, openface_py.device.

The fast embedding backends give eager's embeddings (max abs difference 1e-5 on unit vectors);
faces handed over as uint8 give what the float32 path gives; devices resolve or fail with a reason."""

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

    def faulty(net, device, scale):
        run, run_uint8 = eager(net, device, scale)
        bias = np.float32(offset * backends.STARTUP_TOLERANCE)
        return (lambda x: run(x) + bias), (lambda u8: run_uint8(u8) + bias)

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


@pytest.mark.parametrize("name", ["eager", "onnx", "openvino"])
def test_uint8_faces_give_the_float_paths_embeddings(name, faces, model, home):
    """``Runner.faces`` (uint8 NHWC, converted where the network runs: on the device for torch's
    backends) gives the embeddings of the float32 NCHW path the start-up check uses, for both
    input ranges (NN4-small2's [0, 1] and MobileFaceNet's [0, 255])."""
    from openface_py.nets.mobilefacenet import MobileFaceNet

    if name == "openvino" and importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed (pip install 'openface-py[openvino]')")
    u8 = np.ascontiguousarray((faces * 255).round().astype(np.uint8).transpose(0, 2, 3, 1))
    runner = backends.build(model, name)
    exact = runner(u8.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255))  # the earlier host path
    tol = 0 if name == "eager" else TOLERANCE  # the same kernels on the same floats; others: their own rounding
    assert np.abs(runner.faces(u8) - exact).max() <= tol
    assert runner.faces(u8[:3]).shape == (3, 128)
    torch.manual_seed(0)
    mfn = MobileFaceNet().eval()
    big = np.random.default_rng(1).integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
    r = backends.build(mfn, name, input_shape=(3, 128, 128), tag="mobilefacenet-test")
    want = r(big.transpose(0, 3, 1, 2).astype(np.float32))  # MobileFaceNet takes 0-255 as they are
    assert np.abs(r.faces(big) - want).max() <= max(tol, 1e-6)


def test_devices_resolve_or_fail_with_a_reason():
    from openface_py.device import default_batch, parse_device, resolve_device
    from openface_py.errors import UsageError

    assert resolve_device("cpu") == "cpu" and parse_device(" CUDA:1 ") == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(UsageError, match="unknown device"):
            parse_device(bad)
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda:0" and default_batch("cuda:0") > default_batch("cpu")
        with pytest.raises(UsageError, match="sees"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:  # this machine and CI: auto is the CPU, and a GPU asked for is refused with the reason
        assert resolve_device("auto") == "cpu"
        for asked in ("cuda", "cuda:0", "cuda:3"):
            with pytest.raises(UsageError, match="sees no CUDA GPU.*--device cpu"):
                resolve_device(asked)
    with pytest.raises(UsageError, match="CPU only"):
        backends.build(NN4Small2().eval(), "onnx", device="meta")
