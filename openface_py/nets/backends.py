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
eager. An optional package that is not installed (``OPTIONAL``) is passed over quietly. On a GPU
``auto`` is eager: ONNX Runtime and OpenVINO run on the CPU here, and ``torch.compile`` measured
50.7 s of start-up for +2% on an H200 (issue 28), so it runs only when asked for.

Every runner takes faces two ways: float32 (N, 3, H, W) in the network's input range (``run``,
the start-up check, training), or as the aligner gives them, uint8 (N, H, W, 3) RGB
(``Runner.faces``): the torch backends then move the uint8 bytes (a quarter of float32's, from
pinned memory on a GPU) and convert and scale on the device; the permuted view of NHWC bytes is
already the channels-last layout the networks run in.
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
#: Backends that run on the CPU only (asked for on a GPU: a usage error).
CPU_ONLY = ("onnx", "openvino")
#: Fastest first on a 2-core CPU in a first measurement (ONNX and compile about 2x eager at batch 32);
#: benchmarks/bench_pipeline.py measures them all.
AUTO_ORDER = ("onnx", "compile", "eager")
#: Largest difference from eager accepted at start-up (unit-length outputs).
STARTUP_TOLERANCE = 1e-4


#: On a GPU, ``auto`` runs eager (see the module's docstring).
GPU_AUTO_ORDER = ("eager",)


@dataclass
class Runner:
    """A built backend: ``run`` maps (N, *input_shape) float32 faces to (N, dim) float32 embeddings,
    ``run_uint8`` (N, H, W, 3) uint8 RGB faces to the same embeddings."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    startup_s: float
    run_uint8: Callable[[np.ndarray], np.ndarray]
    device: str = "cpu"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, dtype=np.float32))

    def faces(self, faces: np.ndarray) -> np.ndarray:
        """Embeddings of aligned uint8 RGB faces (N, H, W, 3), converted where the network runs."""
        return self.run_uint8(np.ascontiguousarray(faces, dtype=np.uint8))


def input_scale(model: torch.nn.Module) -> float:
    """uint8 pixel -> the network's input: x ``input_range`` / 255 (1/255 for NN4-small2, 1 for MobileFaceNet)."""
    return float(getattr(model, "input_range", 1.0)) / 255.0


def host_uint8(run: Callable[[np.ndarray], np.ndarray], scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` (float32 NCHW) fed uint8 NHWC faces converted here (the backends outside torch)."""
    factor = np.float32(scale)

    def run_uint8(faces: np.ndarray) -> np.ndarray:
        x = faces.astype(np.float32).transpose(0, 3, 1, 2)
        return run(np.ascontiguousarray(x * factor if factor != 1 else x))

    return run_uint8


def _to_device(faces: np.ndarray, device: torch.device, scale: float) -> torch.Tensor:
    """uint8 NHWC faces as the network's float32 input on ``device``: bytes moved (pinned on a GPU),
    converted there; the NCHW view of NHWC memory is channels-last."""
    t = torch.from_numpy(faces)
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    x = t.permute(0, 3, 1, 2).float()
    return x * scale if scale != 1.0 else x


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the network's tensors (names, shapes, bytes): the key of cached artefacts."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _eager(model: torch.nn.Module, device: torch.device, scale: float = 1 / 255) -> tuple[Callable, Callable]:
    net = model.eval().to(device).to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
            return net(t).cpu().numpy()

    def run_uint8(faces: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(_to_device(faces, device, scale)).cpu().numpy()

    return run, run_uint8


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _padded(x: np.ndarray) -> np.ndarray:
    """``x`` padded with zero rows to a compiled shape (``_bucket``); the extra rows are dropped after."""
    size = _bucket(len(x))
    return x if size == len(x) else np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def _compiled(model: torch.nn.Module, device: torch.device, scale: float = 1 / 255) -> tuple[Callable, Callable]:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(store.cache_dir() / "inductor"))
    net = model.eval().to(device).to(memory_format=torch.channels_last)
    compiled = torch.compile(net, dynamic=False)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(_padded(x)).to(device).contiguous(memory_format=torch.channels_last)
            return compiled(t)[: len(x)].cpu().numpy()

    def run_uint8(faces: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return compiled(_to_device(_padded(faces), device, scale))[: len(faces)].cpu().numpy()

    return run, run_uint8


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
    scale = input_scale(model)
    if backend == "eager":
        run, run_uint8 = _eager(model, dev, scale)
    elif backend == "compile":
        run, run_uint8 = _compiled(model, dev, scale)
    elif backend in CPU_ONLY:
        if dev.type != "cpu":
            raise UsageError(f"the {backend} backend runs on the CPU only here (use --backend eager on {device})")
        run = (_onnx if backend == "onnx" else _openvino)(model, threads, tuple(input_shape), tag)
        run_uint8 = host_uint8(run, scale)
    else:
        raise UsageError(f"unknown backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
    runner = Runner(backend, run, 0.0, run_uint8, str(device))
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
    ``networks.Network.auto_backends``; None: ``AUTO_ORDER``; on a GPU ``GPU_AUTO_ORDER``) that works here.

    Every non-eager backend is checked against eager on a random batch at start-up (values in the
    network's input range, ``model.input_range``: 1 for NN4-small2, 255 for MobileFaceNet); a
    mismatch above ``STARTUP_TOLERANCE`` counts as a failure.
    """
    if backend != "auto":
        return build(model, backend, device, threads, input_shape, tag)
    on_cpu = torch.device(device).type == "cpu"
    if not on_cpu:
        return build(model, GPU_AUTO_ORDER[0], device, threads, input_shape, tag)
    reference, _ = _eager(model, torch.device(device), input_scale(model))
    probe = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32) * np.float32(model.input_range)
    expected = reference(probe)
    for name in auto_order or AUTO_ORDER:
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
