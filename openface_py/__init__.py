"""openface-py: an OpenFace-style face recognition pipeline in Python.

The common names are importable from here (README, "Python API")::

    import openface_py as of

    pipe = of.FacePipeline.create()                # default model, HOG, the alignment it needs
    faces = pipe.process(of.load_image("a.jpg"))   # boxes, landmarks, aligned faces, embeddings

Sub-packages by stage, imported in this direction only (ARCHITECTURE.md):
``errors``/``registry`` -> ``io``/``metrics`` -> ``store`` -> ``faces`` -> ``nets`` -> ``pipeline``
-> ``recognize`` -> ``jobs`` -> ``eval`` -> ``train`` -> ``service`` -> ``cli``. Nothing heavy is
imported or loaded at package import time: the names below load their module when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"

from openface_py.errors import (  # noqa: E402
    Failure,
    ImageLoadError,
    ModelNotInstalledError,
    OpenFacePyError,
    UnknownNameError,
    UsageError,
    WeightsError,
)

#: The public names beyond the exceptions, and the module each lives in (imported on first use).
_LAZY = {
    "load_image": "openface_py.io",
    "DetectorSpec": "openface_py.faces.detect",
    "AlignmentSpec": "openface_py.faces.align",
    "FacePipeline": "openface_py.pipeline",
    "FaceResult": "openface_py.pipeline",
    "PhotoResult": "openface_py.pipeline",
    "load_embedder": "openface_py.nets.embed",
    "Gallery": "openface_py.recognize.gallery",
    "build_gallery": "openface_py.recognize.gallery",
    "FaceDatabase": "openface_py.recognize.facedb",
    "enroll_photo": "openface_py.recognize.facedb",
    "verify": "openface_py.recognize.verify",
    "Verification": "openface_py.recognize.verify",
    "DistanceCalibration": "openface_py.recognize.verify",
    "identify": "openface_py.recognize.gallery",
    "import_folder": "openface_py.jobs.dbimport",
    "align_folder": "openface_py.jobs.batch",
    "represent_folder": "openface_py.jobs.represent",
    "run_folder": "openface_py.jobs.stream",
    "load_embeddings": "openface_py.jobs.embeddings",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time they load lazily (__getattr__)
    from openface_py.faces.align import AlignmentSpec
    from openface_py.faces.detect import DetectorSpec
    from openface_py.io import load_image
    from openface_py.jobs.batch import align_folder
    from openface_py.jobs.dbimport import import_folder
    from openface_py.jobs.embeddings import load_embeddings
    from openface_py.jobs.represent import represent_folder
    from openface_py.jobs.stream import run_folder
    from openface_py.nets.embed import load_embedder
    from openface_py.pipeline import FacePipeline, FaceResult, PhotoResult
    from openface_py.recognize.facedb import FaceDatabase, enroll_photo
    from openface_py.recognize.gallery import Gallery, build_gallery, identify
    from openface_py.recognize.verify import DistanceCalibration, Verification, verify


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'openface_py' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "Failure",
    "ImageLoadError",
    "ModelNotInstalledError",
    "OpenFacePyError",
    "UnknownNameError",
    "UsageError",
    "WeightsError",
    # the lazily loaded ones (_LAZY)
    "load_image",
    "DetectorSpec",
    "AlignmentSpec",
    "FacePipeline",
    "FaceResult",
    "PhotoResult",
    "load_embedder",
    "Gallery",
    "build_gallery",
    "identify",
    "FaceDatabase",
    "enroll_photo",
    "import_folder",
    "verify",
    "Verification",
    "DistanceCalibration",
    "align_folder",
    "represent_folder",
    "run_folder",
    "load_embeddings",
]
