"""Convert Intel's face-reidentification-retail-0095 OpenVINO IR to ``mobilefacenet-reid-0095.pt``.

Usage::

    python models/convert_reid0095.py /work/shared/models/intel-open-model-zoo [-o models/mobilefacenet-reid-0095.pt]

Reads the IR's ``.xml`` topology and its FP16 ``.bin`` constants with the standard library and
numpy only (no OpenVINO), checks the two files' SHA-384 against Intel's release, and writes a
float32 state dict of ``openface_py.nets.mobilefacenet.MobileFaceNet``:

* the input normalisation (``Multiply`` then ``Add`` by per-channel constants, BGR order) becomes
  the buffers ``input_scale`` / ``input_shift`` in RGB order, and the first convolution's input
  channels are reversed to match, so the network takes RGB;
* every other constant is matched in graph order to the network's parameters (convolution
  weights, the ``Add`` after each convolution = its folded batch-norm bias, the PReLU slopes),
  kind by kind and shape by shape; any difference stops the conversion.

FP16 -> float32 is exact, so the saved tensors equal Intel's constants. The file is
``{"state_dict": ..., "openface_py": {...}}`` (metadata: source, SHA-384s).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

NAME = "face-reidentification-retail-0095"
#: Intel's release (open_model_zoo 2023.0, models/intel/face-reidentification-retail-0095/model.yml).
#: The .bin's digest is the one that model.yml publishes; the .xml's is the copy we converted.
SHA384 = {
    f"{NAME}-FP16.xml": "689fb39e94bbd0d22cfeeb9292d0b91ac753424a7ee2c0555070e4038a00bfca"
    "ad473b47303012b9a393027dbad0dbce",
    f"{NAME}-FP16.bin": "6d51703e854509dafdab9dfc6b932136d301d95be6d52c9c23b5a4f5de1ffec8"
    "0e8d38b87e0e9556ad36f0dded1588ed",
}


def sha384(path: Path) -> str:
    return hashlib.sha384(path.read_bytes()).hexdigest()


def check_sources(folder: Path) -> dict[str, str]:
    """SHA-384 of the IR files, which must be the pinned ones (``SHA384``)."""
    got = {}
    for name, expected in SHA384.items():
        path = folder / name
        if not path.is_file():
            sys.exit(f"missing {path}")
        got[name] = sha384(path)
        if got[name] != expected:
            sys.exit(f"{path}: sha384 {got[name]} is not the pinned {expected}")
    return got


def read_ir(xml_path: Path, bin_path: Path) -> list[tuple[str, np.ndarray]]:
    """The IR's compute layers in graph order as (kind, constant): ``scale``/``shift`` (input
    normalisation), ``weight`` (convolution), ``bias`` (constant Add), ``slope`` (PReLU)."""
    root = ET.parse(xml_path).getroot()
    blob = bin_path.read_bytes()
    layers = {int(layer.get("id")): layer for layer in root.find("layers")}
    inputs: dict[int, dict[int, int]] = {}
    for e in root.find("edges"):
        inputs.setdefault(int(e.get("to-layer")), {})[int(e.get("to-port"))] = int(e.get("from-layer"))

    def const(layer_id: int):
        layer = layers[layer_id]
        if layer.get("type") == "Convert":
            return const(inputs[layer_id][0])
        if layer.get("type") != "Const":
            return None
        d = layer.find("data").attrib
        if d["element_type"] != "f16":
            raise SystemExit(f"constant {layer.get('name')}: {d['element_type']}, expected f16")
        shape = [int(s) for s in d["shape"].split(",")]
        off, size = int(d["offset"]), int(d["size"])
        return np.frombuffer(blob[off : off + size], dtype="<f2").astype(np.float32).reshape(shape)

    out: list[tuple[str, np.ndarray]] = []
    seen_conv = False
    for lid in sorted(layers):
        kind = layers[lid].get("type")
        if kind in ("Const", "Convert", "Parameter", "Result", "AvgPool", "Sigmoid"):
            continue
        consts = [c for c in (const(src) for _, src in sorted(inputs.get(lid, {}).items())) if c is not None]
        if kind in ("Convolution", "GroupConvolution"):
            (w,) = consts
            if kind == "GroupConvolution":  # (groups, 1, 1, kh, kw) -> (groups, 1, kh, kw)
                w = w.reshape(w.shape[0], 1, *w.shape[-2:])
            out.append(("weight", w))
            seen_conv = True
        elif kind == "PReLU":
            out.append(("slope", consts[0].reshape(-1)))
        elif kind in ("Multiply", "Add") and consts:
            if seen_conv:
                if kind != "Add":
                    raise SystemExit(f"unexpected constant Multiply {layers[lid].get('name')}")
                out.append(("bias", consts[0].reshape(-1)))
            else:
                out.append(("scale" if kind == "Multiply" else "shift", consts[0]))
        elif kind not in ("Multiply", "Add"):
            raise SystemExit(f"unexpected layer type {kind} ({layers[lid].get('name')})")
    return out


def param_kind(key: str) -> str:
    if key.endswith("act.weight"):
        return "slope"
    return "bias" if key.endswith(".bias") else "weight"


def to_state_dict(ir: list[tuple[str, np.ndarray]]) -> dict:
    """Match the IR's constants to ``MobileFaceNet``'s parameters in order (kinds and shapes checked)."""
    import torch

    from openface_py.nets.mobilefacenet import MobileFaceNet

    net = MobileFaceNet()
    state = net.state_dict()
    (k0, scale), (k1, shift) = ir[:2]
    if (k0, k1) != ("scale", "shift"):
        raise SystemExit("the IR does not start with the input normalisation (Multiply, Add)")
    state["input_scale"] = torch.from_numpy(scale[:, ::-1].copy())  # BGR -> RGB
    state["input_shift"] = torch.from_numpy(shift[:, ::-1].copy())
    keys = [k for k in state if not k.startswith("input_")]
    rest = ir[2:]
    if len(keys) != len(rest):
        raise SystemExit(f"the IR has {len(rest)} constants, the network {len(keys)} parameters")
    for i, (key, (kind, value)) in enumerate(zip(keys, rest)):
        if param_kind(key) != kind or tuple(state[key].shape) != value.shape:
            raise SystemExit(f"{key} {tuple(state[key].shape)} does not match IR constant #{i} {kind} {value.shape}")
        if i == 0:
            value = value[:, ::-1].copy()  # the first convolution reads RGB now
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    net.load_state_dict(state)
    return {k: v.detach().clone().float().contiguous() for k, v in net.state_dict().items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="folder with the IR .xml/.bin (and SHA384SUMS)")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "mobilefacenet-reid-0095.pt")
    args = ap.parse_args(argv)
    import torch

    digests = check_sources(args.folder)
    ir = read_ir(args.folder / f"{NAME}-FP16.xml", args.folder / f"{NAME}-FP16.bin")
    state = to_state_dict(ir)
    meta = {"source": f"Intel Open Model Zoo {NAME} (FP16 IR), Apache-2.0", "sha384": digests}
    torch.save({"state_dict": state, "openface_py": meta}, args.output)
    n = sum(v.numel() for k, v in state.items() if not k.startswith("input_"))
    print(f"wrote {args.output}: {n:,} parameters; sha256 {hashlib.sha256(args.output.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
