"""openface-py: an OpenFace-style face recognition pipeline in Python.

Stages (each a module, imported in this direction only):
``io`` -> ``detect`` -> ``align`` -> ``embed`` -> ``pipeline`` -> ``batch`` -> ``cli``.
Nothing heavy is imported or loaded at package import time.
"""

__version__ = "0.1.0"

from openface_py.errors import (  # noqa: E402
    ImageLoadError,
    ModelNotInstalledError,
    OpenFacePyError,
    WeightsError,
)

__all__ = [
    "__version__",
    "ImageLoadError",
    "ModelNotInstalledError",
    "OpenFacePyError",
    "WeightsError",
]
