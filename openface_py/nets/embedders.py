"""The embedder interface and its implementations: aligned faces -> (N, dim) float32 vectors.

``Embedder`` checks the faces and batches them; each network family implements ``_embed_batch``:
NN4-small2 and MobileFaceNet in PyTorch (run by ``backends.py``), dlib's ResNet by dlib. Which
named model is which family, with which weights and threshold, is the table in ``catalog.py``;
``embed.load_embedder`` builds them from it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from openface_py import store
from openface_py.device import default_batch, resolve_device
from openface_py.errors import WeightsError
from openface_py.faces.align import AlignmentSpec, dlib_chip_spec, intel5_spec, openface_spec
from openface_py.nets.catalog import DLIB_RESNET_V1, EMBEDDERS, MOBILEFACENET_REID
from openface_py.nets.modelfiles import digest_name
from openface_py.nets.networks import MOBILEFACENET, NETWORKS


class Embedder(ABC):
    """Turns aligned faces into 128-D vectors (unit length for NN4-small2; dlib's as dlib gives them)."""

    name: str
    alignment: AlignmentSpec
    dim: int = 128
    #: squared-L2 distance under which two faces are the same person; None = not calibrated
    same_person_threshold: Optional[float] = None
    #: where the network runs, concrete (``device.resolve_device``): ``cpu`` or ``cuda:N``
    device: str = "cpu"

    @property
    def identity(self) -> str:
        """Model name + alignment: embeddings with different identities never mix."""
        return f"{self.name}|{self.alignment.identity}"

    @property
    def batch_size(self) -> int:
        """Faces per batch when ``embed`` is not told: a few dozen on a CPU, hundreds on a GPU."""
        return default_batch(self.device)

    def embed(self, faces: Union[np.ndarray, Sequence[np.ndarray]], batch_size: Optional[int] = None) -> np.ndarray:
        """Embed aligned RGB uint8 faces (each ``alignment.size`` square: a list of them, one, or
        one (N, S, S, 3) array, which is batched without copying) -> (N, dim) float32,
        ``batch_size`` faces at a time (None: ``self.batch_size``)."""
        size = self.alignment.size
        items: Union[np.ndarray, list]
        if isinstance(faces, np.ndarray) and faces.ndim == 4:
            if faces.shape[1:] != (size, size, 3) or faces.dtype != np.uint8:
                raise ValueError(
                    f"expected aligned RGB uint8 faces of shape (N, {size}, {size}, 3) for {self.name}, "
                    f"got {faces.dtype} {faces.shape}"
                )
            items = faces
        else:
            items = [faces] if isinstance(faces, np.ndarray) else list(faces)
            for i, f in enumerate(items):
                if f.shape != (size, size, 3) or f.dtype != np.uint8:
                    raise ValueError(
                        f"face {i}: expected an aligned RGB uint8 image of shape ({size}, {size}, 3) "
                        f"for {self.name}, got {f.dtype} {f.shape}"
                    )
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        step = max(1, int(batch_size or self.batch_size))
        out = []
        for at in range(0, len(items), step):
            chunk = items[at : at + step]
            out.append(self._embed_batch(chunk if isinstance(chunk, np.ndarray) else np.stack(chunk)))
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    @abstractmethod
    def _embed_batch(self, faces: np.ndarray) -> np.ndarray:
        """(n, S, S, 3) uint8 faces -> (n, dim) embeddings."""


class NN4Embedder(Embedder):
    """OpenFace's NN4-small2 in PyTorch, run by the fastest working backend (``backends.py``)."""

    def __init__(
        self,
        weights: Union[str, Path, dict],
        name: Optional[str] = None,
        threads: Optional[int] = None,
        device: str = "auto",
        size: int = 96,
        landmarks: str = "outerEyesAndNose",
        backend: str = "auto",
        same_person_threshold: Optional[float] = None,
    ) -> None:
        import torch

        from openface_py.nets.backends import make_runner
        from openface_py.nets.weights import build_model

        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(weights, dict):
            self.model = build_model(state=weights)
            self.name = name or "nn4.small2-custom"
        else:
            self.model = build_model(path=weights)
            self.name = name or digest_name(weights)
        self.same_person_threshold = same_person_threshold
        self.device = resolve_device(device)
        self.runner = make_runner(self.model, backend, self.device, threads)
        self.backend = self.runner.name
        self.alignment = openface_spec(size, landmarks)

    def _embed_batch(self, faces: np.ndarray) -> np.ndarray:
        return self.runner.faces(faces)


class DlibResnetEmbedder(Embedder):
    """dlib's ResNet-29 face recogniser (King, dlib 19.3; LFW 0.9938 as reported by dlib)."""

    name = DLIB_RESNET_V1
    same_person_threshold = EMBEDDERS.get(DLIB_RESNET_V1).threshold

    def __init__(self, model_path: Optional[Union[str, Path]] = None) -> None:
        import dlib

        path = model_path or store.dlib_model_path(store.DLIB_RESNET)
        self._model = dlib.face_recognition_model_v1(str(path))
        self.alignment = dlib_chip_spec(150, 0.25)

    def _embed_batch(self, faces: np.ndarray) -> np.ndarray:
        vecs = self._model.compute_face_descriptor([np.ascontiguousarray(f) for f in faces])
        return np.array([np.array(v) for v in vecs], dtype=np.float32)


class MobileFaceNetEmbedder(Embedder):
    """Intel's face-reidentification-retail-0095 (MobileFaceNet-SE) in PyTorch: 128x128 faces
    aligned by Intel's 5-point template -> 256-D unit vectors (compare by cosine, or squared
    L2 = 2 - 2 cos). Run by the same backends as NN4-small2 (``backends.py``: eager, compile, ONNX)."""

    dim = 256

    def __init__(
        self,
        weights: Union[str, Path, dict],
        name: str = MOBILEFACENET_REID,
        threads: Optional[int] = None,
        device: str = "auto",
        same_person_threshold: Optional[float] = None,
        backend: str = "auto",
    ) -> None:
        import torch

        from openface_py.nets.backends import make_runner
        from openface_py.nets.mobilefacenet import INPUT_SIZE, MobileFaceNet

        if threads:
            torch.set_num_threads(int(threads))
        state = checked_mobilefacenet_state(weights if isinstance(weights, dict) else load_mobilefacenet_state(weights))
        self.model = MobileFaceNet()
        self.model.load_state_dict(state)
        self.device = resolve_device(device)
        self.runner = make_runner(
            self.model.eval(),
            backend,
            self.device,
            threads,
            (3, INPUT_SIZE, INPUT_SIZE),
            MOBILEFACENET,
            NETWORKS.get(MOBILEFACENET).auto_backends,
        )
        self.backend = self.runner.name
        self.name = name
        self.same_person_threshold = same_person_threshold
        self.alignment = intel5_spec()

    def _embed_batch(self, faces: np.ndarray) -> np.ndarray:
        return self.runner.faces(faces)


def checked_mobilefacenet_state(state: dict) -> dict:
    """``state`` when it loads into ``MobileFaceNet`` (every tensor, right shapes); ``WeightsError`` otherwise."""
    from openface_py.nets.mobilefacenet import MobileFaceNet

    try:
        MobileFaceNet().load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"not MobileFaceNet weights: {str(exc).splitlines()[0]}") from exc
    return state


def load_mobilefacenet_state(path: Union[str, Path]) -> dict:
    """The state dict of a MobileFaceNet ``.pt`` (``{"state_dict": ...}`` or a bare state dict)."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read MobileFaceNet weights ({type(exc).__name__}: {exc})") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: not a MobileFaceNet state dict")
    return state
