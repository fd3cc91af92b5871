"""Inference backends for an embedding network (NN4-small2, MobileFaceNet): the same network,
four ways to run it on a CPU (or GPU). The input shape is the network's (``input_shape``,
(3, 96, 96) for NN4-small2, (3, 128, 128) for MobileFaceNet).

* ``eager``: PyTorch as written, channels-last memory layout, ``inference_mode``.
* ``compile``: ``torch.compile`` (Inductor) of the channels-last network. Batches are padded to
  a power of two so a run compiles a handful of shapes once; Inductor's cache lives under
  ``$OPENFACE_PY_HOME/inductor`` so a second process starts faster.
* ``onnx``: the network exported with ``torch.onnx`` once per weights file (cached as
  ``$OPENFACE_PY_HOME/onnx/<tag>-<sha256 of the weights>.onnx``) and run by ONNX Runtime.
* ``openvino``: the same ONNX file run by Intel's OpenVINO runtime in float32 (the ``openvino``
  extra; its CPU plugin would otherwise run bfloat16 where the processor has it, which moves
  MobileFaceNet's embeddings to cosine 0.999). Measured fastest for MobileFaceNet on a CPU.

``auto`` takes the first that builds and passes a start-up check against eager on one batch,
in the network's order (``networks.Network.auto_backends``) or ``AUTO_ORDER``; any failure
(package missing, compiler error, mismatch) logs why and falls back to the next, ending with
eager. An optional package that is not installed (``OPTIONAL``) is passed over quietly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io as _io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from openface_py import store
from openface_py.errors import UsageError
from openface_py.io import atomic_write_bytes

log = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnx", "openvino")
#: Backends whose package is an extra: ``auto`` skips them without a warning when it is absent.
OPTIONAL = {"openvino": "openvino"}
#: Backends that run on the CPU only: ``auto`` skips them without a warning on another device.
CPU_ONLY = ("onnx", "openvino")
#: Fastest first on a 2-core CPU in a first measurement (ONNX and compile about 2x eager at batch 32);
#: benchmarks/bench_pipeline.py measures them all.
AUTO_ORDER = ("onnx", "compile", "eager")
#: Largest difference from eager accepted at start-up (unit-length outputs).
STARTUP_TOLERANCE = 1e-4


@dataclass
class Runner:
    """A built backend: ``run`` maps (N, *input_shape) float32 faces to (N, dim) float32 embeddings."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    startup_s: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the network's tensors (names, shapes, bytes): the key of cached artefacts."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _eager(model: torch.nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    net = model.eval().to(device).to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            return net(t).cpu().numpy()

    return run


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _compiled(model: torch.nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(store.cache_dir() / "inductor"))
    net = model.eval().to(device).to(memory_format=torch.channels_last)
    compiled = torch.compile(net, dynamic=False)

    def run(x: np.ndarray) -> np.ndarray:
        n = len(x)
        size = _bucket(n)
        if size != n:  # pad to a compiled shape; extra rows are dropped
            x = np.concatenate([x, np.zeros((size - n,) + x.shape[1:], np.float32)])
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            return compiled(t)[:n].cpu().numpy()

    return run


NN4_INPUT = (3, 96, 96)


def onnx_path(model: torch.nn.Module, tag: str = "nn4.small2") -> Path:
    return store.cache_dir() / "onnx" / f"{tag}-{state_digest(model)[:16]}.onnx"


def export_onnx(model: torch.nn.Module, dest: Path, input_shape: tuple[int, ...] = NN4_INPUT) -> Path:
    """Export an embedding network to ONNX (opset 17, dynamic batch) atomically."""
    import warnings

    buf = _io.BytesIO()
    net = model.eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python code
        torch.onnx.export(
            net,
            (torch.zeros(1, *input_shape),),
            buf,
            dynamo=False,
            input_names=["faces"],
            output_names=["embeddings"],
            dynamic_axes={"faces": {0: "n"}, "embeddings": {0: "n"}},
            opset_version=17,
        )
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def _exported(model: torch.nn.Module, input_shape: tuple[int, ...], tag: str) -> Path:
    """The network's ONNX file (``onnx_path``), exported the first time."""
    path = onnx_path(model, tag)
    if not path.is_file():
        export_onnx(model, path, input_shape)
        log.info("exported ONNX model to %s", path)
    return path


def _onnx(
    model: torch.nn.Module, threads: Optional[int], input_shape: tuple[int, ...], tag: str
) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    path = _exported(model, input_shape, tag)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"faces": x})[0]

    return run


def _openvino(
    model: torch.nn.Module, threads: Optional[int], input_shape: tuple[int, ...], tag: str
) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    path = _exported(model, input_shape, tag)
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[output], dtype=np.float32)

    return run


def build(
    model: torch.nn.Module,
    backend: str,
    device: str = "cpu",
    threads: Optional[int] = None,
    input_shape: tuple[int, ...] = NN4_INPUT,
    tag: str = "nn4.small2",
) -> Runner:
    """Build one backend (no fallback); raises if it cannot run here. ``tag`` names cached exports."""
    t0 = time.perf_counter()
    dev = torch.device(device)
    if backend == "eager":
        run = _eager(model, dev)
    elif backend == "compile":
        run = _compiled(model, dev)
    elif backend == "onnx":
        if dev.type != "cpu":
            raise RuntimeError("the onnx backend runs on the CPU only here")
        run = _onnx(model, threads, tuple(input_shape), tag)
    elif backend == "openvino":
        if dev.type != "cpu":
            raise RuntimeError("the openvino backend runs on the CPU only here")
        run = _openvino(model, threads, tuple(input_shape), tag)
    else:
        raise UsageError(f"unknown backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
    runner = Runner(backend, run, 0.0)
    runner(np.zeros((1, *input_shape), np.float32))  # first call: compiles / allocates
    runner.startup_s = time.perf_counter() - t0
    return runner


def make_runner(
    model: torch.nn.Module,
    backend: str = "auto",
    device: str = "cpu",
    threads: Optional[int] = None,
    input_shape: tuple[int, ...] = NN4_INPUT,
    tag: str = "nn4.small2",
    auto_order: Optional[Sequence[str]] = None,
) -> Runner:
    """The requested backend, or with ``auto`` the first of ``auto_order`` (the network's,
    ``networks.Network.auto_backends``; None: ``AUTO_ORDER``) that works here.

    Every non-eager backend is checked against eager on a random batch at start-up (values in the
    network's input range, ``model.input_range``: 1 for NN4-small2, 255 for MobileFaceNet); a
    mismatch above ``STARTUP_TOLERANCE`` counts as a failure.
    """
    if backend != "auto":
        return build(model, backend, device, threads, input_shape, tag)
    reference = _eager(model, torch.device(device))
    probe = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32) * np.float32(model.input_range)
    expected = reference(probe)
    for name in auto_order or AUTO_ORDER:
        if name in CPU_ONLY and torch.device(device).type != "cpu":
            log.debug("backend %s runs on the CPU only, not %s", name, device)
            continue
        if name in OPTIONAL and importlib.util.find_spec(OPTIONAL[name]) is None:
            log.debug("backend %s not installed (pip install 'openface-py[%s]')", name, name)
            continue
        try:
            runner = build(model, name, device, threads, input_shape, tag)
            err = float(np.abs(runner(probe) - expected).max())
            if err > STARTUP_TOLERANCE:
                raise RuntimeError(f"outputs differ from eager by {err:.2e}")
            log.debug("embedding backend: %s (start-up %.2f s)", name, runner.startup_s)
            return runner
        except Exception as exc:  # any failure means: try the next backend
            log.warning("backend %s unavailable (%s); trying the next", name, exc)
    raise RuntimeError("no embedding backend works")  # eager is last in AUTO_ORDER; unreachable
