"""Training scaffolding shared by ``train-net`` (``trainer.py``) and the distillation (``distill.py``).

Both train a network of ``nets/networks.py`` (the distillation NN4-small2, ``train-net`` either)
with some leading blocks frozen, Adam parameter groups whose rates follow a schedule, a checkpoint
written atomically at least every few minutes and at each epoch's end, and a JSON-lines log. What
is the same in both lives here: freezing blocks (the network says which modules form each, and
their batch norms stay in eval mode), the network's input range, the frozen blocks' output
computed once, batched evaluation, parameter groups with ``base_lr``, the cosine schedule,
checkpoint save/load, the checkpoint timer and the log line.
"""

from __future__ import annotations

import io as _io
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from openface_py.errors import OpenFacePyError
from openface_py.io import atomic_write_bytes
from openface_py.nets.nn4 import preprocess

# ---- blocks and freezing -----------------------------------------------------------------


def frozen_modules(model: nn.Module, blocks: int) -> list[nn.Module]:
    """The modules of the first ``blocks`` training blocks (``block_modules``, ``nets/networks.py``)."""
    return [m for i in range(max(blocks, 0)) for m in model.block_modules(i)]


def freeze(model: nn.Module, blocks: int) -> list[nn.Module]:
    """Stop the first ``blocks`` blocks learning (no gradients); returns their modules, which
    ``train_mode`` keeps in eval mode."""
    modules = frozen_modules(model, blocks)
    for m in modules:
        m.requires_grad_(False)
    return modules


def train_mode(model: nn.Module, frozen: Sequence[nn.Module], fixed_bn: bool = False) -> None:
    """Training mode, except the frozen modules (and with ``fixed_bn`` every batch norm), whose
    batch-norm statistics stay as they are."""
    model.train()
    if fixed_bn:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    for m in frozen:
        m.eval()


# ---- parameter groups and the rate schedule ----------------------------------------------


def split_params(model: nn.Module, takes: Callable[[str], bool]) -> tuple[list, list]:
    """The trainable parameters (``requires_grad``) in model order: (those whose name ``takes``
    accepts, the rest)."""
    taken, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (taken if takes(name) else rest).append(p)
    return taken, rest


def param_group(params: list, lr: float, name: Optional[str] = None) -> dict:
    """An optimiser group; ``base_lr`` keeps the rate the schedule scales (``scale_rates``)."""
    group = {"params": params, "lr": lr, "base_lr": lr}
    if name is not None:
        group["name"] = name
    return group


def cosine_factor(step: int, total: int) -> float:
    """The cosine schedule: 1 at step 0 down to 0 at ``total`` (1 throughout when total <= 0)."""
    if total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def scale_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's rate to ``factor`` x its ``base_lr``."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor


# ---- batched evaluation ------------------------------------------------------------------


def _each_batch(
    model: nn.Module,
    n: int,
    batch: int,
    step: Callable[[int, int], torch.Tensor],
    keep: Callable[[int, torch.Tensor], None],
    progress: bool = False,
) -> None:
    """``keep(i, step(i, j))`` for each batch ``i:j`` of ``n`` items, the model in eval mode and
    without gradients (its mode restored after)."""
    from tqdm import tqdm

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in tqdm(range(0, n, batch), desc="frozen features", unit="batch", disable=not progress):
                keep(i, step(i, min(i + batch, n)))
    finally:
        model.train(was)


def scale_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Faces in [0, 1] (``preprocess``, then augmented) -> the network's input range."""
    return x if model.input_range == 1.0 else x * model.input_range


def _inputs(model: nn.Module, faces: np.ndarray, device: Optional[torch.device], channels_last: bool) -> torch.Tensor:
    x = scale_input(preprocess(faces), model)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x if device is None else x.to(device)


def frozen_features(
    model: nn.Module,
    faces: np.ndarray,
    blocks: int,
    device: Optional[torch.device] = None,
    batch: int = 256,
    channels_last: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """The output of the first ``blocks`` blocks for uint8 faces (N, S, S, 3), one contiguous
    tensor filled batch by batch. Frozen blocks never train (their batch norms stay in eval mode),
    so this is computed once per face and reused every epoch."""
    if len(faces) == 0:
        raise ValueError("no faces to run the frozen blocks on")
    out: list[torch.Tensor] = []

    def keep(i: int, y: torch.Tensor) -> None:
        if not out:
            out.append(torch.empty((len(faces),) + tuple(y.shape[1:]), dtype=y.dtype, device=y.device))
        out[0][i : i + len(y)] = y

    def step(i: int, j: int) -> torch.Tensor:
        return model.features(_inputs(model, faces[i:j], device, channels_last), 0, blocks)

    _each_batch(model, len(faces), batch, step, keep, progress)
    return out[0]


def _embeddings(model: nn.Module, n: int, batch: int, step: Callable[[int, int], torch.Tensor]) -> np.ndarray:
    out: list[np.ndarray] = []
    _each_batch(model, n, batch, step, lambda i, y: out.append(y.cpu().numpy()))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_faces(
    model: nn.Module,
    faces: np.ndarray,
    device: Optional[torch.device] = None,
    batch: int = 256,
    channels_last: bool = False,
) -> np.ndarray:
    """Unit embeddings of uint8 faces (N, S, S, 3) with the model in eval mode."""
    return _embeddings(model, len(faces), batch, lambda i, j: model(_inputs(model, faces[i:j], device, channels_last)))


def embed_features(model: nn.Module, feats: torch.Tensor, blocks: int, batch: int = 256) -> np.ndarray:
    """Unit embeddings from ``frozen_features`` output (the remaining blocks and the head, eval mode)."""
    return _embeddings(model, len(feats), batch, lambda i, j: model.head(model.features(feats[i:j], blocks)))


# ---- checkpoints and the log -------------------------------------------------------------


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write the checkpoint atomically (a kill leaves the previous one intact)."""
    buf = _io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, keys: set, kind: str) -> Optional[dict]:
    """The checkpoint at ``path`` (None when there is none); ``OpenFacePyError`` when it is not
    readable or lacks one of ``keys`` (not a ``kind`` checkpoint)."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not keys <= set(ckpt):
            raise ValueError(f"not a {kind} checkpoint")
        return ckpt
    except Exception as exc:
        raise OpenFacePyError(
            f"{path}: unreadable checkpoint ({exc.__class__.__name__}); delete it to start over"
        ) from None


class CheckpointTimer:
    """Whether a checkpoint is due: ``minutes`` or more since the last one (``reset``)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.reset()

    def reset(self) -> None:
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds


def append_record(path: Path, record: dict) -> None:
    """One JSON line at the end of a training log."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def set_threads(threads: int) -> None:
    """Torch's CPU thread count (0: its default)."""
    if threads > 0:
        torch.set_num_threads(threads)
