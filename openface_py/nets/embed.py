"""Embedders: aligned faces -> (N, 128) float32 vectors, behind one interface.

Models by name (``MODEL_NAMES``):

* ``nn4.small2.v1``: OpenFace's NN4-small2 in PyTorch (OpenFace 96x96 alignment,
  OUTER_EYES_AND_NOSE). Its weights are a download (``openface-py models download``).
* ``nn4.small2.distilled-v2``: the same network with the project's own complete weights,
  distilled from dlib's ResNet (``models/nn4.small2.distilled-v2.pt``, shipped, SHA-256
  pinned; see ``models/MODEL_CARD.md``). Used by default when nn4.small2.v1 is not installed.
* ``dlib-resnet-v1``: dlib's ResNet face recogniser (``dlib_face_recognition_resnet_model_v1.dat``,
  dlib's 150x150 5-point chip), installed with ``face_recognition_models``.
* ``mobilefacenet-reid-0095``: Intel's face-reidentification-retail-0095 (MobileFaceNet with SE
  blocks, Apache-2.0) in the project's PyTorch (``nets/mobilefacenet.py``), weights converted
  from Intel's IR and shipped (``models/mobilefacenet-reid-0095.pt``, SHA-256 pinned; see
  ``models/REID0095_CARD.md``); Intel's 5-point 128x128 alignment; **256-D** unit vectors, so
  the squared L2 distance is 2 - 2 cos.

Anywhere a model is named, a path to NN4-small2 weights (``.pt``, ``.t7`` or a CSV folder)
works too. A path is identified by the weights' content (SHA-256), never by its file name: a
copy of a known file *is* that model (name, threshold), and other weights are named
``nn4.small2@sha256:<first 16 hex digits>``. Each embedder states the alignment it needs and an
``identity`` string (model and alignment) that is written next to every embedding file, and
its ``same_person_threshold`` (None: uncalibrated weights, no same/different verdict).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from openface_py import store
from openface_py.errors import ModelNotInstalledError, UsageError, WeightsError
from openface_py.faces.align import AlignmentSpec, dlib_chip_spec, intel5_spec, openface_spec
from openface_py.io import iter_chunks

log = logging.getLogger(__name__)

NN4_SMALL2_V1 = "nn4.small2.v1"
NN4_SMALL2_DISTILLED = "nn4.small2.distilled-v2"
DLIB_RESNET_V1 = "dlib-resnet-v1"
MOBILEFACENET_REID = "mobilefacenet-reid-0095"
MODEL_NAMES = (NN4_SMALL2_V1, NN4_SMALL2_DISTILLED, DLIB_RESNET_V1, MOBILEFACENET_REID)
#: What "no --model" means: the first of these that is installed.
DEFAULT_PREFERENCE = (NN4_SMALL2_V1, NN4_SMALL2_DISTILLED, DLIB_RESNET_V1)
DEFAULT_MODEL = NN4_SMALL2_V1

#: Same-person thresholds on the squared L2 distance between embeddings, from LFW:
#: nn4.small2.v1: OpenFace's mean LFW threshold 0.99 (OpenFace docs, "Demo 2: comparing two images");
#: dlib-resnet-v1: dlib's / face_recognition's tolerance 0.6 on the L2 distance, i.e. 0.36 squared.
#: nn4.small2.distilled-v2: the mean of its 10 LFW fold thresholds (models/MODEL_CARD.md).
#: mobilefacenet-reid-0095: the mean of its 10 LFW fold thresholds (models/REID0095_CARD.md);
#: on its unit 256-D vectors squared L2 = 2 - 2 cos, so this is cos >= 1 - threshold / 2.
SAME_PERSON_THRESHOLDS = {
    NN4_SMALL2_V1: 0.99,
    NN4_SMALL2_DISTILLED: 0.160,
    DLIB_RESNET_V1: 0.36,
    MOBILEFACENET_REID: 1.444,
}
#: The shipped model's LFW figure, as measured by ``openface-py lfw`` (models/MODEL_CARD.md).
REID0095_LFW_NOTE = "LFW 0.9883 +- 0.0036 (mirror-averaged 0.9877) measured by `openface-py lfw`"
DISTILLED_LFW_NOTE = "LFW 0.9465 +- 0.0102 (mirror-averaged 0.9492) measured by `openface-py lfw`"


#: Key of the metadata dict a trained ``.pt`` file may carry beside its state dict
#: (``{"state_dict": ..., "openface_py": {"same_person_threshold": 0.4, ...}}``).
WEIGHTS_META_KEY = "openface_py"


def same_person_threshold(model_name: str) -> Optional[float]:
    """The squared-L2 same/different threshold of a named model; None for other weights (uncalibrated)."""
    return SAME_PERSON_THRESHOLDS.get(model_name)


class Embedder(ABC):
    """Turns aligned faces into 128-D vectors (unit length for NN4-small2; dlib's as dlib gives them)."""

    name: str
    alignment: AlignmentSpec
    dim: int = 128
    #: squared-L2 distance under which two faces are the same person; None = not calibrated
    same_person_threshold: Optional[float] = None

    @property
    def identity(self) -> str:
        """Model name + alignment: embeddings with different identities never mix."""
        return f"{self.name}|{self.alignment.identity}"

    def embed(self, faces: Union[np.ndarray, Sequence[np.ndarray]], batch_size: int = 32) -> np.ndarray:
        """Embed aligned RGB uint8 faces (each ``alignment.size`` square) -> (N, 128) float32."""
        items = list(faces) if not isinstance(faces, np.ndarray) or faces.ndim == 4 else [faces]
        size = self.alignment.size
        for i, f in enumerate(items):
            if f.shape != (size, size, 3) or f.dtype != np.uint8:
                raise ValueError(
                    f"face {i}: expected an aligned RGB uint8 image of shape ({size}, {size}, 3) "
                    f"for {self.name}, got {f.dtype} {f.shape}"
                )
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = [self._embed_batch(chunk) for chunk in iter_chunks(items, max(1, int(batch_size)))]
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    @abstractmethod
    def _embed_batch(self, faces: list[np.ndarray]) -> np.ndarray: ...


class NN4Embedder(Embedder):
    """OpenFace's NN4-small2 in PyTorch, run by the fastest working backend (``backends.py``)."""

    def __init__(
        self,
        weights: Union[str, Path, dict],
        name: Optional[str] = None,
        threads: Optional[int] = None,
        device: str = "cpu",
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
            self.name = name or f"nn4.small2@sha256:{weights_digest(weights)[:16]}"
        self.same_person_threshold = same_person_threshold
        self.runner = make_runner(self.model, backend, device, threads)
        self.backend = self.runner.name
        self.alignment = openface_spec(size, landmarks)

    def _embed_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        x = np.stack(faces).astype(np.float32).transpose(0, 3, 1, 2) * np.float32(1 / 255)
        return self.runner(x)


class DlibResnetEmbedder(Embedder):
    """dlib's ResNet-29 face recogniser (King, dlib 19.3; LFW 0.9938 as reported by dlib)."""

    name = DLIB_RESNET_V1
    same_person_threshold = SAME_PERSON_THRESHOLDS[DLIB_RESNET_V1]

    def __init__(self, model_path: Optional[Union[str, Path]] = None) -> None:
        import dlib

        path = model_path or store.dlib_model_path(store.DLIB_RESNET)
        self._model = dlib.face_recognition_model_v1(str(path))
        self.alignment = dlib_chip_spec(150, 0.25)

    def _embed_batch(self, faces: list[np.ndarray]) -> np.ndarray:
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
        device: str = "cpu",
        same_person_threshold: Optional[float] = None,
        backend: str = "auto",
    ) -> None:
        import torch

        from openface_py.nets.backends import make_runner
        from openface_py.nets.mobilefacenet import INPUT_SIZE, MobileFaceNet

        if threads:
            torch.set_num_threads(int(threads))
        state = weights if isinstance(weights, dict) else load_mobilefacenet_state(weights)
        self.model = MobileFaceNet()
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"not MobileFaceNet reid-0095 weights: {str(exc).splitlines()[0]}") from exc
        self.runner = make_runner(
            self.model.eval(), backend, device, threads, (3, INPUT_SIZE, INPUT_SIZE), "mobilefacenet", 255.0
        )
        self.backend = self.runner.name
        self.name = name
        self.same_person_threshold = same_person_threshold
        self.alignment = intel5_spec()

    def _embed_batch(self, faces: list[np.ndarray]) -> np.ndarray:
        return self.runner(np.stack(faces).astype(np.float32).transpose(0, 3, 1, 2))


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


def find_mobilefacenet_reid() -> Optional[Path]:
    """The shipped MobileFaceNet reid-0095 weights (``models/``), or None if this installation lacks them."""
    cand = store.project_models_dir() / store.MOBILEFACENET_REID0095.filename
    return cand if cand.is_file() else None


@dataclass(frozen=True)
class ModelStatus:
    """What ``models list`` reports about one named model."""

    name: str
    installed: bool
    path: Optional[str]
    alignment: str
    note: str


def find_nn4_small2_v1() -> Optional[Path]:
    """The installed official nn4.small2.v1 weights (.pt preferred over .t7), or None."""
    for folder in store.search_dirs():
        for fmt in ("pt", "t7"):
            cand = folder / store.NN4_SMALL2_V1_FILES[fmt].filename
            if cand.is_file():
                return cand
    return None


def find_nn4_small2_distilled() -> Optional[Path]:
    """The shipped distilled weights (``models/``), or None if this installation lacks them."""
    cand = store.project_models_dir() / store.NN4_SMALL2_DISTILLED.filename
    return cand if cand.is_file() else None


def nn4_missing_message() -> str:
    """How to get nn4.small2.v1, and what is installed instead (the default first, as --model uses it)."""
    installed = {st.name for st in model_statuses() if st.installed}
    others = [name for name in DEFAULT_PREFERENCE if name in installed and name != NN4_SMALL2_V1]
    instead = (
        f" Installed instead: {', '.join(repr(n) for n in others)} (the default without --model is '{others[0]}')."
        if others
        else ""
    )
    return (
        f"the {NN4_SMALL2_V1} weights are not installed. Get them with "
        f"'openface-py models download {NN4_SMALL2_V1}' (fetches OpenFace's released "
        f"nn4.small2.v1.pt into {store.cache_dir()}), or pass --model PATH to a .pt, .t7 or "
        f"CSV-folder copy.{instead}"
    )


def model_statuses() -> list[ModelStatus]:
    """Every named model, whether it is installed here, and where."""
    nn4 = find_nn4_small2_v1()
    distilled = find_nn4_small2_distilled()
    mfn = find_mobilefacenet_reid()
    try:
        dlib_path: Optional[Path] = store.dlib_model_path(store.DLIB_RESNET)
    except ModelNotInstalledError:
        dlib_path = None
    return [
        ModelStatus(
            NN4_SMALL2_V1,
            nn4 is not None,
            str(nn4) if nn4 else None,
            openface_spec().identity,
            "OpenFace's released weights (Apache-2.0); LFW 0.9292 +- 0.0134 as published"
            + ("" if nn4 else "; not installed: 'openface-py models download nn4.small2.v1'"),
        ),
        ModelStatus(
            NN4_SMALL2_DISTILLED,
            distilled is not None,
            str(distilled) if distilled else None,
            openface_spec().identity,
            f"NN4-small2 distilled from dlib's ResNet, shipped with the project; {DISTILLED_LFW_NOTE}",
        ),
        ModelStatus(
            DLIB_RESNET_V1,
            dlib_path is not None,
            str(dlib_path) if dlib_path else None,
            dlib_chip_spec().identity,
            "dlib's ResNet (from face_recognition_models); LFW 0.9938 as reported by dlib",
        ),
        ModelStatus(
            MOBILEFACENET_REID,
            mfn is not None,
            str(mfn) if mfn else None,
            intel5_spec().identity,
            f"Intel's MobileFaceNet (Apache-2.0), shipped, 256-D; {REID0095_LFW_NOTE}",
        ),
    ]


def best_installed_model() -> str:
    """What no ``--model`` means: the first installed of ``DEFAULT_PREFERENCE`` (the official
    nn4.small2.v1 if downloaded, else the shipped distilled NN4-small2, else dlib's ResNet)."""
    installed = {st.name for st in model_statuses() if st.installed}
    for name in DEFAULT_PREFERENCE:
        if name in installed:
            return name
    raise ModelNotInstalledError("no embedding model is installed; " + nn4_missing_message())


def load_embedder(
    model: Optional[str] = None, threads: Optional[int] = None, backend: str = "auto", device: str = "cpu"
) -> Embedder:
    """An embedder by name (``MODEL_NAMES``) or by a path to NN4-small2 weights.

    ``backend`` and ``device`` (NN4-small2 and MobileFaceNet): ``auto``, ``eager``, ``compile`` or ``onnx``
    (``backends.py``); a torch device (``cuda`` for a GPU; dlib's ResNet uses dlib's own build).
    """
    model = model or best_installed_model()
    if model == DLIB_RESNET_V1:
        return DlibResnetEmbedder()
    if model == MOBILEFACENET_REID:
        return MobileFaceNetEmbedder(
            _shipped_weights(store.MOBILEFACENET_REID0095, find_mobilefacenet_reid()),
            threads=threads,
            device=device,
            backend=backend,
            same_person_threshold=SAME_PERSON_THRESHOLDS[MOBILEFACENET_REID],
        )
    if model == NN4_SMALL2_DISTILLED:
        path = _shipped_weights(store.NN4_SMALL2_DISTILLED, find_nn4_small2_distilled())
        return _nn4(path, NN4_SMALL2_DISTILLED, threads, backend, device)
    if model == NN4_SMALL2_V1:
        path = find_nn4_small2_v1()
        if path is None:
            raise ModelNotInstalledError(nn4_missing_message())
        _check_official_md5(path)
        return _nn4(path, NN4_SMALL2_V1, threads, backend, device)
    p = Path(model)
    if p.exists():
        known = known_weights(p)
        if known is not None:
            log.info("%s is a copy of %s", p, known)
            return _nn4(p, known, threads, backend, device)
        threshold = weights_metadata(p).get("same_person_threshold")
        return NN4Embedder(
            p,
            threads=threads,
            backend=backend,
            device=device,
            same_person_threshold=None if threshold is None else float(threshold),
        )
    raise UsageError(f"unknown model {model!r}: not one of {', '.join(MODEL_NAMES)} and no such weights file or folder")


def describe_model(model: Optional[str] = None) -> tuple[str, str, AlignmentSpec]:
    """(model as ``load_embedder`` takes it, the embedder's ``name``, its alignment) without loading
    torch or the weights, so a job's driver can record the identity its workers will give."""
    model = model or best_installed_model()
    if model in MODEL_NAMES:
        if not any(st.installed for st in model_statuses() if st.name == model):
            raise ModelNotInstalledError(
                nn4_missing_message() if model == NN4_SMALL2_V1 else f"{model} is not installed here"
            )
        return model, model, alignment_for(model)
    p = Path(model)
    if not p.exists():
        raise UsageError(
            f"unknown model {model!r}: not one of {', '.join(MODEL_NAMES)} and no such weights file or folder"
        )
    known = known_weights(p)
    # an absolute path: workers elsewhere (Ray's) do not share this process's working directory
    return str(p.resolve()), known or f"nn4.small2@sha256:{weights_digest(p)[:16]}", openface_spec()


def embedding_dim(model: Optional[str] = None) -> int:
    """Length of a model's embeddings, without loading it: 256 for MobileFaceNet, else 128."""
    return 256 if (model or best_installed_model()) == MOBILEFACENET_REID else 128


def _shipped_weights(shipped, path: Optional[Path]) -> Path:
    """``path`` of a shipped weights file (``store.ShippedFile``), checked against its pinned SHA-256;
    ``ModelNotInstalledError`` when this installation lacks it (``path`` None)."""
    if path is None:
        raise ModelNotInstalledError(
            f"{shipped.filename} is not in {store.project_models_dir()}: this "
            "installation lacks the shipped weights (reinstall the package, or use a source checkout)"
        )
    _check_sha256(path, shipped.sha256)
    return path


def _nn4(path: Path, name: str, threads: Optional[int], backend: str, device: str = "cpu") -> NN4Embedder:
    threshold = SAME_PERSON_THRESHOLDS[name]
    return NN4Embedder(
        path, name=name, threads=threads, backend=backend, device=device, same_person_threshold=threshold
    )


_DIGESTS: dict[tuple, str] = {}


def weights_digest(path: Union[str, Path]) -> str:
    """SHA-256 of a weights file (of a CSV folder: over its files' names and digests), cached
    per file in this process by (path, size, modification time)."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        if p.is_dir():
            import hashlib

            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.relative_to(p).as_posix()}\0{store.sha256sum(f)}\n".encode())
            _DIGESTS[key] = h.hexdigest()
        else:
            _DIGESTS[key] = store.sha256sum(p)
    return _DIGESTS[key]


def known_weights(path: Union[str, Path]) -> Optional[str]:
    """The named model whose weights ``path`` holds byte for byte (the shipped or official file), or None."""
    p = Path(path)
    if not p.is_file():
        return None
    if weights_digest(p) == store.NN4_SMALL2_DISTILLED.sha256:
        return NN4_SMALL2_DISTILLED
    official = {f.md5 for f in store.NN4_SMALL2_V1_FILES.values()}
    if p.stat().st_size > 1_000_000 and store.md5sum(p) in official:
        return NN4_SMALL2_V1
    return None


def weights_metadata(path: Union[str, Path]) -> dict:
    """The ``openface_py`` metadata a trained ``.pt`` carries (e.g. ``same_person_threshold``), or {}."""
    p = Path(path)
    if not p.is_file() or p.suffix not in (".pt", ".pth"):
        return {}
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception:  # unreadable files are reported by the weights loader itself
        return {}
    meta = obj.get(WEIGHTS_META_KEY) if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def alignment_for(model: Optional[str]) -> AlignmentSpec:
    """The alignment a model needs, without loading its weights (None: the default model)."""
    name = model or best_installed_model()
    if name == DLIB_RESNET_V1:
        return dlib_chip_spec()
    if name == MOBILEFACENET_REID:
        return intel5_spec()
    return openface_spec()


def _check_official_md5(path: Path) -> None:
    fmt = "t7" if path.suffix == ".t7" else "pt"
    expected = store.NN4_SMALL2_V1_FILES[fmt].md5
    got = store.md5sum(path)
    if got != expected:
        raise WeightsError(
            f"{path}: md5 {got} does not match OpenFace's published {expected}; "
            "the file is damaged or not the official release (delete it and download again)"
        )


def _check_sha256(path: Path, expected: str) -> None:
    got = store.sha256sum(path)
    if got != expected:
        raise WeightsError(
            f"{path}: sha256 {got} does not match the pinned {expected}; the file is damaged or was "
            "replaced (restore it from the project's repository)"
        )
