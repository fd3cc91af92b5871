"""Koch et al.'s Siamese verifier head: P(same) = sigmoid(sum_j w_j |a_j - b_j| + b).

Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot Image Recognition" (ICML
deep learning workshop 2015): twin networks with shared weights, the component-wise L1 distance
of their features, weighted by a learned vector, into a sigmoid trained with binary
cross-entropy. ``train-net --loss siamese`` learns the network and this head together and saves
the head to ``verifier.pt``; ``compare --verifier verifier.pt`` then gives P(same) for each pair.

A verifier file is a plain tensor dict (loaded with ``weights_only``) tied to the embedder it was
trained with: its identity is stored and checked, so it is never applied to another model's
embeddings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from openface_py.errors import OpenFacePyError

FORMAT = "openface-py siamese-l1 verifier v1"


class VerifierFileError(OpenFacePyError):
    """A verifier file that cannot be read or belongs to another model."""


class SiameseHead(nn.Module):
    """Weighted L1 distance of two embeddings -> logit of "same person"."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        # start as a negative L1 distance with its boundary at L1 = 6 (for distilled-v2 on LFW, same
        # pairs average L1 ~4, different pairs ~9), so the head is a sensible verifier from the start
        with torch.no_grad():
            self.linear.weight.fill_(-(128.0 / dim) * 2.0 / 3.0)
            self.linear.bias.fill_(4.0)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.linear((a - b).abs()).squeeze(-1)


@dataclass
class SiameseVerifier:
    """A trained head plus the embedder identity and model file it belongs to."""

    head: SiameseHead
    embedder_identity: str
    model_file: str  # the weights file name, relative to the verifier file's folder
    threshold: float = 0.5  # P(same) at or above which a pair is called the same person

    def probability(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """P(same person) for rows of ``a`` and ``b`` (or one pair of vectors)."""
        ta = torch.as_tensor(np.atleast_2d(a), dtype=torch.float32)
        tb = torch.as_tensor(np.atleast_2d(b), dtype=torch.float32)
        with torch.no_grad():
            return torch.sigmoid(self.head(ta, tb)).numpy().astype(np.float64)

    def check_identity(self, identity: str) -> None:
        if identity != self.embedder_identity:
            raise VerifierFileError(
                f"this verifier was trained on embeddings of {self.embedder_identity}, not {identity}; "
                "use the model it was trained with (--model, or leave --model out to use it)"
            )

    def save(self, path: Union[str, os.PathLike]) -> None:
        import io as _io

        from openface_py.io import atomic_write_bytes

        buf = _io.BytesIO()
        torch.save(
            {
                "format": FORMAT,
                "state_dict": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
                "embedder_identity": self.embedder_identity,
                "model_file": self.model_file,
                "threshold": float(self.threshold),
            },
            buf,
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> SiameseVerifier:
        p = Path(path)
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise VerifierFileError(f"{p}: no such verifier file") from None
        except Exception as exc:
            raise VerifierFileError(f"{p}: not a readable verifier file ({exc.__class__.__name__})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise VerifierFileError(f"{p}: not a Siamese verifier file from `train-net --loss siamese`")
        state = obj["state_dict"]
        dim = int(state["linear.weight"].shape[1])
        head = SiameseHead(dim)
        head.load_state_dict(state)
        head.eval()
        return cls(head, str(obj["embedder_identity"]), str(obj["model_file"]), float(obj["threshold"]))

    def model_path(self, verifier_path: Union[str, os.PathLike]) -> Path:
        """Where the weights this verifier belongs to are, next to the verifier file."""
        return Path(verifier_path).parent / self.model_file


def is_siamese_file(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` looks like a Siamese verifier (a torch file) rather than a classifier file."""
    return Path(path).suffix in (".pt", ".pth")
