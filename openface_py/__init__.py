"""openface-py: an OpenFace-style face recognition pipeline in Python.

Sub-packages by stage, imported in this direction only (ARCHITECTURE.md):
``errors``/``io``/``metrics``/``store`` -> ``faces`` -> ``nets`` -> ``pipeline`` -> ``recognize``
-> ``jobs`` -> ``eval`` -> ``train`` -> ``cli``. Nothing heavy is imported or loaded at package
import time.
"""

__version__ = "0.2.0"

from openface_py.errors import (  # noqa: E402
    Failure,
    ImageLoadError,
    ModelNotInstalledError,
    OpenFacePyError,
    WeightsError,
)

__all__ = [
    "__version__",
    "Failure",
    "ImageLoadError",
    "ModelNotInstalledError",
    "OpenFacePyError",
    "WeightsError",
]
