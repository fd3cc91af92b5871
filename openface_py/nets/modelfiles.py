"""Weights files: where a named model's file is and whether it is intact, and what a file given by
path holds.

A named model needs one of three kinds of file (``WeightsSource``): ``ShippedWeights``, committed
in the project's ``models/`` and pinned by SHA-256; ``DownloadedWeights``, a release fetched by
``openface-py models download`` into the cache and checked against its published MD5;
``DlibWeights``, one of dlib's ``.dat`` files from ``face_recognition_models``. A file given by
path is known by its content (``weights_digest``), never by its file name.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from openface_py import store
from openface_py.errors import ModelNotInstalledError, WeightsError

#: Key of the metadata dict a trained ``.pt`` file may carry beside its state dict
#: (``{"state_dict": ..., "openface_py": {"same_person_threshold": 0.4, ...}}``).
WEIGHTS_META_KEY = "openface_py"


class WeightsSource(ABC):
    """Where a named model's weights come from: found (``locate``), checked (``check``), recognised
    in a file given by path (``holds``)."""

    #: ``openface-py models download NAME`` fetches it
    downloadable = False

    @abstractmethod
    def require(self, name: str) -> Path:
        """The installed file; ``ModelNotInstalledError`` saying how to get it when there is none."""

    def locate(self) -> Optional[Path]:
        """The installed file, or None."""
        try:
            return self.require("")
        except ModelNotInstalledError:
            return None

    def check(self, path: Path) -> None:
        """``WeightsError`` when ``path`` is not the intact file (damaged or replaced); by default
        nothing is pinned to check against."""
        return None

    def holds(self, path: Path) -> bool:
        """Whether the file ``path`` is byte for byte this model's weights."""
        return False


@dataclass(frozen=True)
class ShippedWeights(WeightsSource):
    """A file in the project's ``models/`` (a wheel carries it), pinned by its SHA-256."""

    file: store.ShippedFile

    def require(self, name: str) -> Path:
        cand = store.project_models_dir() / self.file.filename
        if not cand.is_file():
            raise ModelNotInstalledError(
                f"{self.file.filename} is not in {store.project_models_dir()}: this "
                "installation lacks the shipped weights (reinstall the package, or use a source checkout)"
            )
        return cand

    def check(self, path: Path) -> None:
        got = store.sha256sum(path)
        if got != self.file.sha256:
            raise WeightsError(
                f"{path}: sha256 {got} does not match the pinned {self.file.sha256}; the file is damaged or was "
                "replaced (restore it from the project's repository)"
            )

    def holds(self, path: Path) -> bool:
        return weights_digest(path) == self.file.sha256


@dataclass(frozen=True)
class DownloadedWeights(WeightsSource):
    """A released file fetched into the cache (``files``: format -> file, preferred first), MD5-checked."""

    files: dict = field(hash=False)
    #: who released it (``"OpenFace's"``), for the messages
    origin: str = ""
    downloadable = True

    def require(self, name: str) -> Path:
        for folder in store.search_dirs():
            for info in self.files.values():
                cand = folder / info.filename
                if cand.is_file():
                    return cand
        raise ModelNotInstalledError(self.missing_message(name))

    def missing_message(self, name: str) -> str:
        first = next(iter(self.files.values())).filename
        return (
            f"the {name} weights are not installed. Get them with "
            f"'openface-py models download {name}' (fetches {self.origin} released "
            f"{first} into {store.cache_dir()}), or pass --model PATH to a .pt, .t7 or "
            "CSV-folder copy."
        )

    def check(self, path: Path) -> None:
        expected = self.files["t7" if path.suffix == ".t7" else "pt"].md5
        got = store.md5sum(path)
        if got != expected:
            raise WeightsError(
                f"{path}: md5 {got} does not match {self.origin} published {expected}; "
                "the file is damaged or not the official release (delete it and download again)"
            )

    def holds(self, path: Path) -> bool:
        return path.stat().st_size > 1_000_000 and store.md5sum(path) in {f.md5 for f in self.files.values()}


@dataclass(frozen=True)
class DlibWeights(WeightsSource):
    """One of dlib's ``.dat`` files (``face_recognition_models``, or a copy in the cache)."""

    filename: str

    def require(self, name: str) -> Path:
        return store.dlib_model_path(self.filename)


_DIGESTS: dict[tuple, str] = {}


def weights_digest(path: Union[str, Path]) -> str:
    """SHA-256 of a weights file (of a CSV folder: over its files' names and digests), cached
    per file in this process by (path, size, modification time)."""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        if p.is_dir():
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.relative_to(p).as_posix()}\0{store.sha256sum(f)}\n".encode())
            _DIGESTS[key] = h.hexdigest()
        else:
            _DIGESTS[key] = store.sha256sum(p)
    return _DIGESTS[key]


def digest_name(path: Union[str, Path], network: str = "nn4.small2") -> str:
    """The name of weights no model holds: ``<network>@sha256:<first 16 hex digits>``
    (``nn4.small2@sha256:...``, ``mobilefacenet@sha256:...``)."""
    return f"{network}@sha256:{weights_digest(path)[:16]}"


_METADATA: dict[tuple, dict] = {}


def weights_metadata(path: Union[str, Path]) -> dict:
    """The ``openface_py`` metadata a trained ``.pt`` carries (e.g. ``same_person_threshold``,
    ``network``), or {}; read once per file in this process (cached like ``weights_digest``: the
    callers that name a model, its network and its threshold each ask)."""
    p = Path(path)
    if not p.is_file() or p.suffix not in (".pt", ".pth"):
        return {}
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _METADATA:
        _METADATA[key] = _read_metadata(p)
    return dict(_METADATA[key])


def _read_metadata(p: Path) -> dict:
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception:  # unreadable files are reported by the weights loader itself
        return {}
    meta = obj.get(WEIGHTS_META_KEY) if isinstance(obj, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}
