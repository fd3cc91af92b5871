"""Where model files live, and how they are fetched and verified.

Two sources:

* dlib's data files (68/5-point landmark predictors, the MMOD CNN detector, the ResNet face
  recogniser) come with the ``face_recognition_models`` package. It is located with
  ``importlib.util.find_spec`` and never imported (its ``__init__`` needs ``pkg_resources``).
* Downloadable weights (OpenFace's nn4.small2.v1) go to a cache directory,
  ``$OPENFACE_PY_HOME`` (default ``~/.cache/openface_py``), verified by MD5 and written
  atomically. The project's own ``models/`` folder is searched as well.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from openface_py.errors import ModelNotInstalledError, OpenFacePyError
from openface_py.io import atomic_output

log = logging.getLogger(__name__)

#: OpenFace's public model storage (the released nn4.small2.v1 files live here).
OPENFACE_MODEL_BASE_URL = "https://storage.cmusatyalab.org/openface-models/"

DLIB_LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
DLIB_LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
DLIB_MMOD_DETECTOR = "mmod_human_face_detector.dat"
DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class DownloadableFile:
    """A released weights file: its name on the server and its published MD5."""

    filename: str
    md5: str
    size_hint: str


#: The official nn4.small2.v1 releases (MD5s as published by OpenFace).
NN4_SMALL2_V1_FILES = {
    "pt": DownloadableFile("nn4.small2.v1.pt", "8de23b5e35e49df171175d28847c67c4", "about 15 MB"),
    "t7": DownloadableFile("nn4.small2.v1.t7", "c95bfd8cc1adf05210e979ff623013b6", "about 31 MB"),
}


@dataclass(frozen=True)
class ShippedFile:
    """A weights file committed in the project's ``models/`` folder, pinned by its SHA-256."""

    filename: str
    sha256: str


#: The project's own NN4-small2 weights, distilled from dlib's ResNet (models/MODEL_CARD.md).
NN4_SMALL2_DISTILLED = ShippedFile(
    "nn4.small2.distilled-v2.pt", "954e5333614da847fa930a0b49c0545a1615a7000066cd4eb1b267605b74dc13"
)


#: MTCNN's three networks (P-, R-, O-Net) from facenet-pytorch 2.6.0, MIT (models/MTCNN_CARD.md).
MTCNN_WEIGHTS = ShippedFile("mtcnn.pt", "67bbb01021b97a47af0602f1d2e69d1f95b74fef91be9befab4f85c869804d4f")


#: Intel's face-reidentification-retail-0095 (MobileFaceNet-SE, Apache-2.0) converted from its
#: OpenVINO IR by models/convert_reid0095.py (models/REID0095_CARD.md).
MOBILEFACENET_REID0095 = ShippedFile(
    "mobilefacenet-reid-0095.pt", "a05295e315fba911698b432de482e12956fd13436443d576a623c0b40017be9d"
)


def cache_dir() -> Path:
    """The weights cache: ``$OPENFACE_PY_HOME`` or ``~/.cache/openface_py``."""
    env = os.environ.get("OPENFACE_PY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "openface_py"


def project_models_dir() -> Path:
    """Where the project's shipped weights are: ``openface_py/models`` in an installed package
    (the wheel carries them, copied from the top-level ``models/`` at build time), else the
    source checkout's top-level ``models/`` folder, the one source of truth."""
    here = Path(__file__).resolve().parent
    packaged = here / "models"
    return packaged if packaged.is_dir() else here.parent / "models"


def search_dirs() -> list[Path]:
    """Folders searched for weights files, in order of preference."""
    return [cache_dir(), project_models_dir()]


def dlib_models_dir() -> Optional[Path]:
    """Folder of the ``face_recognition_models`` data files, or None if not installed."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if folder.is_dir() else None


def dlib_model_path(filename: str) -> Path:
    """Path of one of dlib's ``.dat`` files; a clear error if it cannot be found."""
    candidates = [d / filename for d in search_dirs()]
    folder = dlib_models_dir()
    if folder is not None:
        candidates.insert(0, folder / filename)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise ModelNotInstalledError(
        f"dlib model file {filename} not found (looked in: "
        + ", ".join(str(c.parent) for c in candidates)
        + "). Install it with: pip install face_recognition_models"
    )


def md5sum(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    return _digest(path, hashlib.md5(), chunk)


def sha256sum(path: os.PathLike | str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    return _digest(path, hashlib.sha256(), chunk)


def _digest(path: os.PathLike | str, h, chunk: int) -> str:
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


class DownloadError(OpenFacePyError):
    """A download failed or its checksum did not match (nothing was written)."""


def download(
    url: str,
    dest: os.PathLike | str,
    md5: Optional[str] = None,
    progress: bool = True,
    opener: Callable = urllib.request.urlopen,
) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``md5`` before the file appears.

    The data goes to a temporary file beside ``dest``; only a complete, verified download is
    renamed into place, so an interrupted or corrupted transfer never leaves a bad file.
    """
    target = Path(dest)
    h = hashlib.md5()
    try:
        resp = opener(url, timeout=60)
    except Exception as exc:  # urllib raises many types (URLError, HTTPError, OSError)
        raise DownloadError(f"cannot download {url}: {exc}") from exc
    from tqdm import tqdm

    try:
        with resp, atomic_output(target) as out:
            total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                while True:
                    block = resp.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
            got = h.hexdigest()
            if md5 is not None and got != md5.lower():
                # raising inside atomic_output discards the temporary file
                raise DownloadError(f"checksum mismatch for {url}: md5 {got}, expected {md5}; file discarded")
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed part-way: {exc}; nothing was written") from exc
    log.info("downloaded %s -> %s (md5 %s)", url, target, got)
    return target


def install_local_file(src: os.PathLike | str, md5: Optional[str], dest: os.PathLike | str) -> Path:
    """Copy an already-downloaded weights file into the cache after checking its MD5."""
    got = md5sum(src)
    if md5 is not None and got != md5:
        raise DownloadError(f"{src}: md5 {got} does not match the published {md5}")
    with open(src, "rb") as fh, atomic_output(dest) as out:
        shutil.copyfileobj(fh, out, 1 << 20)
    return Path(dest)
