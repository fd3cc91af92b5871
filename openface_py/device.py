"""Where the networks run: ``auto``, ``cpu`` or ``cuda[:N]``, made concrete once per command.

One value per concept: the command line's ``--device``, the Python API's ``device=`` and the
service's setting all take this text; ``resolve_device`` turns it into the concrete device every
network of the job uses (``cpu`` or ``cuda:N``), so that run folders record where a job ran and
workers that start later make no choice of their own. ``auto`` is the GPU when torch sees one.
Asking for ``cuda`` where there is none is a usage error (exit 2) with the reason, never a silent
fallback: a user who asked for the GPU wants to know.

dlib's detectors, landmarks and ResNet run where the installed dlib was built for (the
``dlib-bin`` wheel: the CPU), whatever the device; MTCNN and the PyTorch embedders follow it.
"""

from __future__ import annotations

import re

from openface_py.errors import UsageError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

#: faces per embedding batch: a CPU gains nothing past a few dozen (bench_stages.py); a GPU needs
#: hundreds to keep its cores busy (issue 28's measurement: 2,796 faces/s at 32, 5,482 at 256)
CPU_BATCH = 32
GPU_BATCH = 512


def parse_device(text: str) -> str:
    """``text`` when it names a device this project can use (argparse's ``type=``); ``UsageError`` else."""
    value = str(text).strip().lower()
    if not _PATTERN.match(value):
        raise UsageError(f"unknown device {text!r}: {DEVICE_CHOICES}")
    return value


def resolve_device(requested: str = "auto") -> str:
    """The concrete device for ``requested``: ``cpu`` or ``cuda:N``.

    ``auto``: ``cuda:0`` when torch sees a GPU, else ``cpu``. ``cuda`` / ``cuda:N`` where torch sees
    none (a CPU build of torch, no driver) or fewer than N + 1: ``UsageError`` saying which."""
    value = parse_device(requested)
    if value == "cpu":
        return "cpu"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if value == "auto":
        return "cuda:0" if count else "cpu"
    index = int(value.split(":")[1]) if ":" in value else 0
    if not count:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise UsageError(
            f"--device {value}: torch {torch.__version__} ({build}) sees no CUDA GPU; install a CUDA build "
            "of torch (README, 'GPU') or use --device cpu"
        )
    if index >= count:
        raise UsageError(f"--device {value}: torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    return f"cuda:{index}"


def is_gpu(device: str) -> bool:
    """True for a concrete CUDA device (``resolve_device``'s ``cuda:N``)."""
    return str(device).startswith("cuda")


def default_batch(device: str) -> int:
    """Faces per embedding batch on a concrete device (``CPU_BATCH`` or ``GPU_BATCH``)."""
    return GPU_BATCH if is_gpu(device) else CPU_BATCH


def describe_device(device: str) -> str:
    """A concrete device for logs and reports: ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if not is_gpu(device):
        return "cpu"
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
