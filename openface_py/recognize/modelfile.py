"""Model files: a ``TrainedModel`` written as a skops archive with a SHA-256 beside it, read
back with nothing but this package's classes and a fixed list of scikit-learn types trusted
(loading cannot run code), and the one-time conversion of 0.1's pickles.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
from pathlib import Path

import numpy as np

from openface_py.io import atomic_write_bytes, atomic_write_text
from openface_py.recognize import classify
from openface_py.recognize.classifiers import (
    ClassifierError,
    GmmClassifier,
    JointBayesianClassifier,
    KnnClassifier,
    LdaFront,
    SklearnClassifier,
    SvmClassifier,
)
from openface_py.recognize.classify import TrainedModel
from openface_py.recognize.jointbayes import JointBayesian
from openface_py.recognize.openset import OpenSetReport, ScoreCalibrator

#: scikit-learn types inside our models that skops does not trust by default; nothing else
#: (and none of Python's callables) is ever accepted from a model file.
SKLEARN_TYPES = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.model_selection._split.StratifiedKFold",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.tree._tree.Tree",
    }
)


def trusted_types() -> frozenset[str]:
    """Every type a model file may hold beyond skops' defaults: this package's model classes
    (named where they live now) and the scikit-learn internals they use."""
    ours = (TrainedModel, OpenSetReport, SklearnClassifier, GmmClassifier, KnnClassifier, JointBayesianClassifier,
            LdaFront, SvmClassifier, JointBayesian, ScoreCalibrator)  # fmt: skip
    legacy = {f"{classify.__name__}.{name}" for name in classify.MOVED}
    return SKLEARN_TYPES | legacy | {f"{c.__module__}.{c.__qualname__}" for c in ours}


def sha256_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_checked(p: Path, required: bool) -> bytes:
    """The file's bytes, after checking them against ``<file>.sha256`` (refused if it is missing and ``required``)."""
    if not p.is_file():
        raise ClassifierError(f"{p}: model file not found")
    data = p.read_bytes()
    side = sha256_path(p)
    if not side.is_file():
        if required:
            raise ClassifierError(f"{p}: no {side.name} beside it; refusing to unpickle an unverified file")
        return data
    text = side.read_text(encoding="utf-8", errors="replace").split()
    want = text[0].strip().lower() if text else ""
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ClassifierError(
            f"{p}: SHA-256 {got} does not match {side.name} ({want}); the file was changed or damaged"
        )
    return data


def write_model(model: TrainedModel, path: os.PathLike | str) -> Path:
    """Write ``model`` as a skops file (loading it cannot run code) + ``<path>.sha256`` beside it."""
    from skops.io import dumps

    data = dumps(model)
    target = Path(path)
    atomic_write_bytes(target, data)
    atomic_write_text(sha256_path(target), f"{hashlib.sha256(data).hexdigest()}  {target.name}\n")
    return target


def load_model(path: os.PathLike | str) -> TrainedModel:
    """Load a model file written by ``TrainedModel.save`` (skops format: loading runs no code).

    Only this package's model classes and a fixed list of scikit-learn types are accepted
    (``trusted_types``); a file naming anything else is refused before anything is built. A
    ``.sha256`` beside the file, if there, must match. Pickle model files of older versions
    are refused: see ``convert_pickle``.
    """
    import zipfile

    from skops.io import get_untrusted_types, loads

    p = Path(path)
    data = _read_checked(p, required=False)
    if not zipfile.is_zipfile(_io.BytesIO(data)):
        if data[:1] in (b"\x80", b"\x78"):  # a pickle, or joblib's zlib-compressed pickle
            raise ClassifierError(
                f"{p} is a pickle model file (openface-py before 0.2); loading a pickle runs whatever "
                f"code it holds, so it is refused. If you made it yourself, convert it once: "
                f"openface-py models convert {p} -o NEW.skops --trust-pickle"
            )
        raise ClassifierError(f"{p}: not an openface-py model file")
    try:
        found = set(get_untrusted_types(data=data))
    except Exception as exc:  # a damaged archive or schema
        raise ClassifierError(f"{p}: cannot read model file ({type(exc).__name__}: {exc})") from exc
    refused = sorted(found - trusted_types())
    if refused:
        raise ClassifierError(f"{p}: refused: the file names types a model never holds ({', '.join(refused)})")
    try:
        model = loads(data, trusted=sorted(found))
    except Exception as exc:
        raise ClassifierError(f"{p}: cannot load model ({type(exc).__name__}: {exc})") from exc
    if not isinstance(model, TrainedModel):
        raise ClassifierError(f"{p}: not an openface-py model file (found {type(model).__name__})")
    _check_usable(model, p)
    return model


def _check_usable(model: TrainedModel, p: Path) -> None:
    """A loaded file can still be damaged inside (no checksum beside it): answer one probe now,
    so that a broken model fails here with a clear error, not later in the middle of a job."""
    try:
        model.predict(np.zeros((1, int(model.dim))))
    except Exception as exc:  # whatever a damaged estimator raises
        raise ClassifierError(f"{p}: the model is damaged ({type(exc).__name__}: {exc})") from exc


def convert_pickle(old: os.PathLike | str, new: os.PathLike | str) -> TrainedModel:
    """One-time conversion of an old joblib/pickle model file (with its ``.sha256``) to the safe format.

    Unpickling runs code: call this only on a file you made yourself or trust (the CLI asks for
    ``--trust-pickle``).
    """
    import joblib

    from openface_py.errors import UsageError

    p = Path(old)
    data = _read_checked(p, required=True)
    if data[:4] == b"PK\x03\x04":  # a zip: skops files are
        raise UsageError(f"{p} is already in the safe format (skops): nothing to convert, use it as it is")
    try:
        model = joblib.load(_io.BytesIO(data))
    except Exception as exc:  # unpickling raises many types
        raise ClassifierError(
            f"{p}: not a classifier pickle of an older openface-py ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, TrainedModel):
        raise ClassifierError(f"{p}: not an openface-py model file (found {type(model).__name__})")
    model.save(new)
    return model
