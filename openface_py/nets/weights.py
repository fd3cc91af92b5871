"""Weights for NN4-small2 in every form the released model exists in.

All loaders return the same thing, a state dict for ``nn4.NN4Small2`` checked tensor by
tensor against the architecture: a missing, extra or wrongly shaped tensor is a
``WeightsError`` naming it, never a silently random layer.

* ``.pt``: OpenFace's PyTorch state dict (its port's module names, which ``NN4Small2`` uses).
* ``.t7``: the original Torch7 model, read with ``torchfile``; parametrised layers are taken
  in depth-first order and matched to ``NN4Small2.torch7_layers()``.
* CSV folder: one file per tensor, ``<layer>_w|_b|_m|_v.csv``, values on one line (the
  Keras-OpenFace export format).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from openface_py.errors import WeightsError
from openface_py.io import atomic_write_text
from openface_py.nets.nn4 import NN4Small2

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: state-dict suffix -> CSV suffix (conv/linear use w, b; batch norm adds m, v).
_CSV_SUFFIX = {"weight": "w", "bias": "b", "running_mean": "m", "running_var": "v"}
_OPTIONAL_KEYS = ("num_batches_tracked",)


def reference_state_dict() -> dict[str, torch.Tensor]:
    """Names and shapes every NN4-small2 weights file must provide."""
    return NN4Small2().state_dict()


def csv_names() -> dict[str, str]:
    """state-dict key -> CSV file stem (e.g. ``incept3a.branches.0.3.weight`` -> ``inception_3a_3x3_conv2_w``)."""
    model = NN4Small2()
    out: dict[str, str] = {}
    for path, t7 in model.torch7_layers():
        for key in model.get_submodule(path).state_dict():
            if key in _CSV_SUFFIX:
                out[f"{path}.{key}"] = f"{t7}_{_CSV_SUFFIX[key]}"
    return out


def validate_state_dict(state: dict, source: str = "weights") -> dict[str, torch.Tensor]:
    """Check ``state`` against the architecture; return a clean float32 copy.

    Accepts a ``module.`` prefix (DataParallel) and a missing ``num_batches_tracked``.
    """
    ref = reference_state_dict()
    clean: dict[str, torch.Tensor] = {}
    for key, val in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        clean[k] = val if isinstance(val, torch.Tensor) else torch.as_tensor(np.asarray(val))
    missing = [k for k in ref if k not in clean and not k.endswith(_OPTIONAL_KEYS)]
    extra = [k for k in clean if k not in ref]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else ""))
    for k, v in clean.items():
        if k in ref and tuple(v.shape) != tuple(ref[k].shape):
            problems.append(f"{k} has shape {tuple(v.shape)}, expected {tuple(ref[k].shape)}")
        elif k in ref and v.is_floating_point() and not torch.isfinite(v).all():
            problems.append(f"{k} contains NaN or infinite values")
    if problems:
        raise WeightsError(f"{source} is not a valid nn4.small2 state dict: " + "; ".join(problems))
    out = {}
    for k, ref_val in ref.items():
        if k in clean:
            out[k] = clean[k].to(ref_val.dtype).clone()
        else:
            out[k] = ref_val.clone()  # num_batches_tracked only
    return out


def load_pt(path: PathLike) -> dict[str, torch.Tensor]:
    """Load a PyTorch state dict file (OpenFace's ``nn4.small2.v1.pt`` or one saved here)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise WeightsError(f"{path}: cannot read as a PyTorch weights file ({exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return validate_state_dict(obj, str(path))


def _read_csv_tensor(path: Path, numel: int) -> np.ndarray:
    text = path.read_text().strip()
    try:
        values = np.array([float(v) for v in text.replace("\n", ",").split(",") if v.strip()], dtype=np.float32)
    except ValueError as exc:
        raise WeightsError(f"{path}: not a comma-separated list of numbers ({exc})") from None
    if values.size != numel:
        raise WeightsError(f"{path}: has {values.size} values, expected {numel}")
    return values


def load_csv_folder(folder: PathLike, allow_missing: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Load a per-tensor CSV export. Returns (state dict, missing CSV names).

    With ``allow_missing=False`` (the default) any missing file is a ``WeightsError``; with
    True, missing tensors keep the fresh module's values and are listed, for callers (tests,
    distillation) that know which layers they will fill themselves.
    """
    base = Path(folder)
    if not base.is_dir():
        raise WeightsError(f"{base}: not a folder of CSV weights")
    ref = reference_state_dict()
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, stem in csv_names().items():
        f = base / f"{stem}.csv"
        if not f.is_file():
            missing.append(stem)
            continue
        state[key] = torch.from_numpy(_read_csv_tensor(f, ref[key].numel()).reshape(tuple(ref[key].shape)))
    if missing and not allow_missing:
        raise WeightsError(
            f"{base}: {len(missing)} weight tensors missing ({', '.join(missing[:6])}"
            + (" ..." if len(missing) > 6 else "")
            + "); the network cannot be used without them"
        )
    for key, val in ref.items():
        state.setdefault(key, val.clone())
    return validate_state_dict(state, str(base)), missing


def save_csv_folder(state: dict[str, torch.Tensor], folder: PathLike) -> None:
    """Write a state dict in the per-tensor CSV format (9 significant digits: exact float32)."""
    clean = validate_state_dict(state)
    base = Path(folder)
    base.mkdir(parents=True, exist_ok=True)
    for key, stem in csv_names().items():
        vals = clean[key].detach().cpu().numpy().astype(np.float32).ravel()
        atomic_write_text(base / f"{stem}.csv", ",".join(f"{v:.9g}" for v in vals.tolist()))


# ---- Torch7 ---------------------------------------------------------------------------

_T7_CONV = (b"nn.SpatialConvolution", b"nn.SpatialConvolutionMM", b"cudnn.SpatialConvolution")
_T7_BN = (b"nn.SpatialBatchNormalization", b"cudnn.SpatialBatchNormalization", b"nn.BatchNormalization")
_T7_LINEAR = (b"nn.Linear",)


def _t7_param_layers(obj, out: list) -> list:
    """Depth-first list of (kind, torch object) for parametrised layers of a Torch7 module tree."""
    typename = obj.torch_typename() if hasattr(obj, "torch_typename") else None
    if typename in _T7_CONV:
        out.append(("conv", obj))
    elif typename in _T7_BN:
        out.append(("bn", obj))
    elif typename in _T7_LINEAR:
        out.append(("linear", obj))
    else:
        children = getattr(obj, "modules", None) if typename is not None else None
        if isinstance(children, list):
            for child in children:
                _t7_param_layers(child, out)
    return out


def _t7_array(layer, field: str, name: str) -> np.ndarray:
    val = layer[field]
    if val is None:
        raise WeightsError(f"Torch7 layer {name} has no {field}")
    return np.array(val, dtype=np.float32)


def load_t7(path: PathLike) -> dict[str, torch.Tensor]:
    """Load OpenFace's Torch7 ``nn4.small2.v1.t7`` (binary serialisation) via ``torchfile``."""
    import torchfile

    try:
        root = torchfile.load(str(path))
    except Exception as exc:  # torchfile raises struct/EOF/custom errors on bad input
        raise WeightsError(f"{path}: cannot read as a Torch7 file ({exc})") from exc
    layers = _t7_param_layers(root, [])
    model = NN4Small2()
    wanted = model.torch7_layers()
    if len(layers) != len(wanted):
        raise WeightsError(f"{path}: found {len(layers)} parametrised layers, nn4.small2 has {len(wanted)}")
    ref = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for (kind, layer), (mpath, t7name) in zip(layers, wanted):
        module = model.get_submodule(mpath)
        expected = (
            "bn"
            if isinstance(module, torch.nn.BatchNorm2d)
            else ("linear" if isinstance(module, torch.nn.Linear) else "conv")
        )
        if kind != expected:
            raise WeightsError(f"{path}: layer {t7name} is a {kind} layer in the file, expected {expected}")
        fields = {"weight": "weight", "bias": "bias"}
        if kind == "bn":
            fields.update(running_mean="running_mean", running_var="running_var")
        for key, field in fields.items():
            full = f"{mpath}.{key}"
            if key == "running_var" and layer["running_var"] is None and layer["running_std"] is not None:
                # Old nn stored 1/sqrt(var + eps) as running_std.
                std = _t7_array(layer, "running_std", t7name)
                eps = float(layer["eps"] or 1e-5)
                arr = 1.0 / np.square(std) - eps
            else:
                arr = _t7_array(layer, field, t7name)
            shape = tuple(ref[full].shape)
            if arr.size != int(np.prod(shape)):
                raise WeightsError(f"{path}: {t7name}.{field} has shape {arr.shape}, expected {shape}")
            state[full] = torch.from_numpy(np.ascontiguousarray(arr).reshape(shape))
    return validate_state_dict(state, str(path))


def load_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """Load NN4-small2 weights from a ``.pt`` / ``.pth`` file, a ``.t7`` file or a CSV folder."""
    p = Path(path)
    if p.is_dir():
        return load_csv_folder(p)[0]
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file or folder")
    if p.suffix == ".t7":
        return load_t7(p)
    if p.suffix in (".pt", ".pth"):
        return load_pt(p)
    raise WeightsError(f"{p}: unknown weights format (expected .pt, .t7 or a folder of CSV files)")


def build_model(path: Optional[PathLike] = None, state: Optional[dict] = None) -> NN4Small2:
    """An NN4-small2 in eval mode with weights from ``path`` or ``state``."""
    if (path is None) == (state is None):
        raise ValueError("give exactly one of path or state")
    sd = load_weights(path) if path is not None else validate_state_dict(state)
    model = NN4Small2()
    model.load_state_dict(sd)
    return model.eval()
