"""Make ``models/mtcnn.pt`` from the facenet-pytorch 2.6.0 wheel (see models/MTCNN_CARD.md).

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/fnp
    python models/convert_mtcnn.py /tmp/fnp/facenet_pytorch-2.6.0-py3-none-any.whl

The wheel and the three weight files inside it are checked against their SHA-256 pins; the
output is one plain state dict per network, {"pnet": ..., "rnet": ..., "onet": ...}, loadable
with ``torch.load(..., weights_only=True)``, float32, parameter names as in the wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import torch

WHEEL_SHA256 = "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca"
FILE_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel", type=Path)
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent / "mtcnn.pt")
    args = ap.parse_args()
    data = args.wheel.read_bytes()
    if hashlib.sha256(data).hexdigest() != WHEEL_SHA256:
        sys.exit(f"{args.wheel}: not the facenet-pytorch 2.6.0 wheel (SHA-256 differs)")
    out = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name, want in FILE_SHA256.items():
            raw = z.read(f"facenet_pytorch/data/{name}.pt")
            if hashlib.sha256(raw).hexdigest() != want:
                sys.exit(f"{name}.pt: SHA-256 differs from the pin")
            # the files are pickled OrderedDicts of tensors: weights_only loading suffices
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            out[name] = {k: v.detach().clone().float().contiguous() for k, v in state.items()}
    torch.save(out, args.output)
    print(f"{args.output}: {hashlib.sha256(args.output.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
