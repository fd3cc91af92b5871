"""A trained classifier: ``train_model`` checks the data, cross-validates, chooses the unknown
threshold and calibrates the confidence (``openset``), and fits a classifier (``classifiers``);
``TrainedModel.predict`` names each embedding or answers ``unknown``. Its file: ``modelfile``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py import __version__
from openface_py.recognize.classifiers import (
    Classifier,
    ClassifierError,
    JointBayesianClassifier,
    check_training_data,
    cross_validated_accuracy,
    make_classifier,
)
from openface_py.recognize.openset import OpenSetReport, ScoreCalibrator, choose_pair_threshold, choose_threshold

UNKNOWN = "unknown"

#: classes that lived in this module up to 0.2, which model files written then name here
#: (``openface_py.recognize.classify.SvmClassifier``): skops finds them with getattr, so this
#: module hands them out (``__getattr__``) and ``modelfile.trusted_types`` accepts those names
MOVED = {
    "SklearnClassifier": "classifiers",
    "GmmClassifier": "classifiers",
    "KnnClassifier": "classifiers",
    "JointBayesianClassifier": "classifiers",
    "LdaFront": "classifiers",
    "SvmClassifier": "classifiers",
    "OpenSetReport": "openset",
    "ScoreCalibrator": "openset",
}


def __getattr__(name: str):
    if name in MOVED:
        return getattr(importlib.import_module(f"openface_py.recognize.{MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Prediction:
    """``name`` is the enrolled person or ``unknown``; ``best`` is the closest enrolled person."""

    name: str
    confidence: float
    score: float
    known: bool
    best: str
    #: ``confidence`` is the probability that the answer (name or unknown) is right
    calibrated: bool = False


def format_prediction(pred: Prediction, x: Optional[float] = None) -> str:
    """OpenFace's wording: ``Predict NAME @ x=.. with 0.97 confidence.`` (or why it is unknown)."""
    where = f" @ x={x:.0f}" if x is not None else ""
    if pred.known:
        return f"Predict {pred.name}{where} with {pred.confidence:.2f} confidence."
    if pred.calibrated:
        return (
            f"Predict {UNKNOWN}{where} with {pred.confidence:.2f} confidence (closest: {pred.best}, "
            f"score {pred.score:.3f} under the threshold)."
        )
    return (
        f"Predict {UNKNOWN}{where} (closest: {pred.best} with {pred.confidence:.2f} confidence, "
        f"score {pred.score:.3f} under the threshold)."
    )


@dataclass
class TrainedModel:
    """A classifier with everything needed to use it safely later."""

    classifier: Classifier
    classes: list[str]
    embedder_name: str
    embedder_identity: str
    alignment: dict
    n_train: int
    threshold: Optional[float] = None
    open_set: Optional[OpenSetReport] = None
    cv_accuracy: Optional[float] = None
    pair_threshold: Optional[float] = None  # Joint Bayesian only: r above this = same person
    dim: int = 128  # embedding length the classifier was trained on
    #: maps the score to P(answer right); None in closed-set models and models converted from 0.1 pickles
    calibrator: Optional[ScoreCalibrator] = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: str = __version__

    def embedder_model(self, model: Optional[str] = None) -> str:
        """What to load this classifier's embedder from: ``model`` (a name or weights path, given
        by the user; ``check_identity`` then compares what it gives), else the model it was trained
        with. Weights given by path are known only by their SHA-256, so they must be given again."""
        from openface_py.errors import UsageError
        from openface_py.nets.catalog import MODEL_NAMES

        if model is not None:
            return model
        if self.embedder_name in MODEL_NAMES:
            return self.embedder_name
        raise UsageError(
            f"this classifier was trained on embeddings of weights given by path ({self.embedder_identity}); "
            "give the same weights file with --model PATH"
        )

    def check_identity(self, identity: str) -> None:
        if identity != self.embedder_identity:
            raise ClassifierError(
                f"this model was trained on embeddings of {self.embedder_identity}, not {identity}; "
                "embeddings of different models cannot be mixed (re-train, or use the same --model)"
            )

    def predict(self, X: np.ndarray, threshold: Optional[float] = None) -> list[Prediction]:
        """Name each embedding, or ``unknown`` where the score is under the threshold.

        With a calibrator the confidence is the probability that the answer is right: P(name
        right | score) for a name, 1 - that for ``unknown``; otherwise the classifier's own."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.dim:
            raise ClassifierError(f"embeddings have {X.shape[1]} values, the model expects {self.dim}")
        t = self.threshold if threshold is None else threshold
        idx, conf, score = self.classifier.decide(X)
        cal = getattr(self, "calibrator", None)
        p_right = cal(score) if cal is not None else None
        out = []
        for k, (i, c, s) in enumerate(zip(idx, conf, score)):
            known = t is None or s >= t
            if p_right is not None:
                c = p_right[k] if known else 1.0 - p_right[k]
            best = self.classes[int(i)]
            out.append(Prediction(best if known else UNKNOWN, float(c), float(s), bool(known), best, cal is not None))
        return out

    def save(self, path: os.PathLike | str) -> Path:
        """Write the model as a skops file (loading it cannot run code) + ``<path>.sha256`` beside it
        (``modelfile.write_model``)."""
        from openface_py.recognize.modelfile import write_model  # modelfile builds on this module

        return write_model(self, path)


def train_model(
    X: np.ndarray,
    labels: list[str],
    classifier: str,
    embedder_name: str,
    embedder_identity: str,
    alignment: dict,
    lda_dim: Optional[int] = None,
    paths: Optional[list[str]] = None,
    open_set: bool = True,
    seed: int = 0,
) -> TrainedModel:
    """Check the data, cross-validate, choose the unknown threshold and calibrate the
    confidence (``open_set``), and fit on everything."""
    X = np.asarray(X, dtype=np.float64)
    clf = make_classifier(classifier, lda_dim, seed)
    check_training_data(X, labels, clf, paths)
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    cv = cross_validated_accuracy(classifier, X, y, lda_dim, seed)
    found = choose_threshold(classifier, X, y, lda_dim, seed=seed, calibrate=True) if open_set else None
    report, calibrator = found if found else (None, None)
    clf.fit(X, y)
    pair_t = choose_pair_threshold(X, y, seed) if isinstance(clf, JointBayesianClassifier) else None
    return TrainedModel(
        classifier=clf,
        classes=[str(c) for c in classes],
        embedder_name=embedder_name,
        embedder_identity=embedder_identity,
        alignment=dict(alignment),
        dim=int(X.shape[1]),
        n_train=int(len(X)),
        threshold=report.threshold if report else None,
        open_set=report,
        cv_accuracy=cv,
        pair_threshold=pair_t,
        calibrator=calibrator,
    )
