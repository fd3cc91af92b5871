"""Classifiers on embeddings, open-set ("unknown") thresholds, and model files.

Every classifier has the same small interface: ``fit(X, y)`` with integer labels and
``decide(X) -> (predicted index, confidence, score)``. *confidence* is the classifier's own
(a probability for the probabilistic models); *score* is what the open-set threshold is
applied to (higher = more sure it is that enrolled person): minus the squared distance to the
predicted person's mean embedding for SVMs, the class probability for naive Bayes and
trees, the per-class log-likelihood for GMM, minus the squared distance to the nearest sample
of the predicted person for kNN, and the Joint Bayesian log-likelihood ratio for JB.

The threshold is chosen by ``choose_threshold`` from the training data alone: groups of
people are held out in turn as "strangers" while one photo of each remaining person is held
out as a "known" probe, so the rejection rate of unseen people is measured rather than
guessed. The same held-out answers calibrate the confidence a trained model states
(``ScoreCalibrator``: Platt scaling of *score* to P(answer right), where a stranger's named
answer is always wrong), so "0.97 confidence" means right 97 times in 100; the calibrated
model's ECE and open-set rates are measured on folds the calibrator was not fitted on.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io as _io
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py import __version__
from openface_py.errors import OpenFacePyError
from openface_py.io import atomic_write_bytes, atomic_write_text
from openface_py.metrics import best_split_threshold, platt_sigmoid
from openface_py.recognize.jointbayes import JointBayesian

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


class ClassifierError(OpenFacePyError):
    """Training data or a model file cannot be used (the message says why and what to do)."""


class Classifier(ABC):
    """A classifier over embedding vectors (see module docstring)."""

    name: str = ""
    #: fewest training samples per person this classifier can learn from
    min_per_class: int = 2
    #: what ``score`` means, for reports
    score_kind: str = "probability"

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray) -> Classifier: ...

    @abstractmethod
    def decide(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class SklearnClassifier(Classifier):
    """Any scikit-learn estimator with ``predict_proba``; score = confidence = top probability."""

    def __init__(self, name: str, estimator, min_per_class: int = 2) -> None:
        self.name = name
        self.estimator = estimator
        self.min_per_class = min_per_class

    def fit(self, X, y):
        self.estimator.fit(X, y)
        return self

    def decide(self, X):
        proba = self.estimator.predict_proba(X)
        idx = proba.argmax(axis=1)
        classes = np.asarray(self.estimator.classes_)
        conf = proba[np.arange(len(idx)), idx]
        return classes[idx], conf, conf


class GmmClassifier(Classifier):
    """One Gaussian mixture per person (diagonal covariance); score = that person's log-likelihood."""

    name = "GMM"
    score_kind = "log-likelihood"

    def __init__(self, n_components: int = 1, reg_covar: float = 1e-4, seed: int = 0) -> None:
        self.n_components = n_components
        self.reg_covar = reg_covar
        self.seed = seed

    def fit(self, X, y):
        from sklearn.mixture import GaussianMixture

        self.classes_ = np.unique(y)
        self.models_ = []
        for c in self.classes_:
            Xc = X[y == c]
            k = max(1, min(self.n_components, len(Xc) // 2))
            gm = GaussianMixture(k, covariance_type="diag", reg_covar=self.reg_covar, random_state=self.seed)
            self.models_.append(gm.fit(Xc))
        return self

    def decide(self, X):
        ll = np.stack([m.score_samples(X) for m in self.models_], axis=1)
        idx = ll.argmax(axis=1)
        post = np.exp(ll - ll.max(axis=1, keepdims=True))
        post /= post.sum(axis=1, keepdims=True)
        return self.classes_[idx], post[np.arange(len(idx)), idx], ll[np.arange(len(idx)), idx]


class KnnClassifier(Classifier):
    """Distance-weighted k nearest neighbours; works from one photo per person.

    score = minus the squared L2 distance to the nearest enrolled photo of the predicted person.
    """

    name = "KNN"
    min_per_class = 1
    score_kind = "-squared distance"

    def __init__(self, k: int = 5) -> None:
        self.k = k

    def fit(self, X, y):
        from sklearn.neighbors import KNeighborsClassifier

        self.X_, self.y_ = np.asarray(X, dtype=np.float64), np.asarray(y)
        self.model_ = KNeighborsClassifier(n_neighbors=min(self.k, len(X)), weights="distance").fit(X, y)
        return self

    def decide(self, X):
        proba = self.model_.predict_proba(X)
        idx = proba.argmax(axis=1)
        pred = self.model_.classes_[idx]
        d = _sq_dists(np.asarray(X, dtype=np.float64), self.X_)
        d[:, :] = np.where(self.y_[None, :] == pred[:, None], d, np.inf)
        return pred, proba[np.arange(len(idx)), idx], -d.min(axis=1)


class JointBayesianClassifier(Classifier):
    """Joint Bayesian identification: a probe is scored against each person's mean embedding.

    Training needs some people with two or more photos (to learn within-person variation);
    enrolment (``enroll``) then works from a single photo per person.
    """

    name = "JointBayesian"
    min_per_class = 1
    score_kind = "log-likelihood ratio"

    def __init__(self, shrinkage: Optional[float] = None) -> None:
        self.jb = JointBayesian(shrinkage=shrinkage)

    def fit(self, X, y):
        self.jb.fit(X, y)
        return self.enroll(X, y)

    def enroll(self, X, y):
        """Set the gallery (one mean embedding per person) without retraining the covariances."""
        self.classes_ = np.unique(y)
        self.centres_ = np.stack([np.asarray(X)[np.asarray(y) == c].mean(axis=0) for c in self.classes_])
        return self

    def decide(self, X):
        r = self.jb.score_matrix(X, self.centres_)
        idx = r.argmax(axis=1)
        best = r[np.arange(len(idx)), idx]
        post = np.exp(r - best[:, None])  # relative confidence among the enrolled people
        return self.classes_[idx], 1.0 / post.sum(axis=1), best


class LdaFront(Classifier):
    """LDA projection to ``dim`` dimensions in front of another classifier (OpenFace's --ldaDim)."""

    def __init__(self, inner: Classifier, dim: int) -> None:
        self.inner, self.dim = inner, dim
        self.name = f"{inner.name}+LDA{dim}"
        self.min_per_class = max(2, inner.min_per_class)
        self.score_kind = inner.score_kind

    def fit(self, X, y):
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        n_classes = len(np.unique(y))
        if self.dim >= n_classes:
            raise ClassifierError(f"--ldaDim {self.dim} must be below the number of people ({n_classes})")
        self.lda_ = LinearDiscriminantAnalysis(n_components=self.dim).fit(X, y)
        self.inner.fit(self.lda_.transform(X), y)
        return self

    def decide(self, X):
        return self.inner.decide(self.lda_.transform(X))


CLASSIFIER_NAMES = (
    "LinearSvm",
    "GridSearchSvm",
    "RadialSvm",
    "GaussianNB",
    "DecisionTree",
    "GMM",
    "KNN",
    "JointBayesian",
)


def make_classifier(name: str, lda_dim: Optional[int] = None, seed: int = 0) -> Classifier:
    """A fresh classifier by name (settings follow OpenFace's ``classifier.py`` where it has one)."""
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier

    if name == "LinearSvm":
        clf: Classifier = SvmClassifier(name, dict(C=1, kernel="linear"), seed)
    elif name == "GridSearchSvm":
        clf = SvmClassifier(name, None, seed)
    elif name == "RadialSvm":
        clf = SvmClassifier(name, dict(C=1, kernel="rbf", gamma=2), seed)
    elif name == "GaussianNB":
        clf = SklearnClassifier(name, GaussianNB())
    elif name == "DecisionTree":
        clf = SklearnClassifier(name, DecisionTreeClassifier(max_depth=20, random_state=seed))
    elif name == "GMM":
        clf = GmmClassifier(seed=seed)
    elif name == "KNN":
        clf = KnnClassifier()
    elif name == "JointBayesian":
        clf = JointBayesianClassifier()
    else:
        raise ClassifierError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIER_NAMES)}")
    return LdaFront(clf, lda_dim) if lda_dim else clf


class SvmClassifier(Classifier):
    """An SVC names the person; the open-set score is the distance to that person's mean embedding.

    OpenFace used ``SVC(probability=True)``; scikit-learn 1.9 deprecates that, and its
    documented replacement, ``CalibratedClassifierCV(SVC(), method="sigmoid",
    ensemble=False)``, is used here with k-fold calibration (k = min(5, fewest photos of a
    person)) for the classifier's own confidence. Those one-vs-rest probabilities separate
    strangers from enrolled people poorly (AUC 0.65 on the sample people's held-out photos
    against 298 LFW strangers, nn4.small2.distilled-v2), and so does the winner's smallest
    one-vs-one margin (``winner_margin``, AUC 0.977; 0.947 for 50 LFW people), so *score* is
    minus the squared L2 distance from the embedding to the predicted person's mean enrolled
    embedding (AUC 0.993; 0.977 for 50 LFW people; combining it with the margin in a logistic
    regression gains nothing: 0.974). Measured with benchmarks/bench_open_set.py.

    With ``params=None`` C, kernel and gamma are chosen by cross-validated grid search first:
    OpenFace searched C in {1, 10, 100, 1000} with a linear kernel and RBF with gamma in
    {0.001, 0.0001}; for unit-length embeddings (squared distances 0..4) those gammas make the
    RBF kernel almost constant, so gammas of order 1 are searched as well.
    """

    score_kind = "-squared distance to the person's mean embedding"
    GRID = [
        {"C": [1, 10, 100, 1000], "kernel": ["linear"]},
        {"C": [1, 10, 100, 1000], "gamma": [0.001, 0.0001, 0.5, 2, 8], "kernel": ["rbf"]},
    ]

    def __init__(self, name: str, params: Optional[dict], seed: int = 0) -> None:
        self.name = name
        self.params = params
        self.seed = seed

    def fit(self, X, y):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
        from sklearn.svm import SVC

        # Centred and isotropically rescaled to unit RMS norm: distances keep their geometry but C
        # and gamma (OpenFace's values, chosen for spread-out unit vectors) then mean the same for
        # every embedder. Unscaled, tightly packed embeddings (nn4.small2.distilled-v2: same-person
        # squared distance < 0.17, not OpenFace's 0.99) are over-regularised at C=1: 5-fold
        # accuracy 0.26 on the sample photos, 0.99 rescaled.
        self.classes_ = np.unique(y)
        self.centres_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        self.center_ = X.mean(axis=0)
        self.scale_ = float(np.sqrt(((X - self.center_) ** 2).sum(axis=1).mean())) or 1.0
        X = (X - self.center_) / self.scale_
        k = max(2, min(5, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
        cv = StratifiedKFold(k, shuffle=True, random_state=self.seed)
        params = self.params
        if params is None:
            search = GridSearchCV(SVC(random_state=self.seed), self.GRID, cv=cv, n_jobs=1).fit(X, y)
            params = search.best_params_
        self.best_params_ = params
        svc = SVC(random_state=self.seed, **params)
        self.model_ = CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False).fit(X, y)
        # the SVC fitted on all the data, answering with raw one-vs-one decision values
        fitted = self.model_.calibrated_classifiers_[0].estimator
        self.svc_ovo_ = copy.deepcopy(fitted).set_params(decision_function_shape="ovo")
        return self

    def decide(self, X):
        # The label is the SVC's own (one-vs-one votes): the argmax of the separately
        # calibrated one-vs-rest probabilities is much worse with many people (0.85 against
        # 0.99 for 50 LFW people). The confidence is the calibrated probability of that label.
        raw = np.asarray(X, dtype=np.float64)
        X = (raw - self.center_) / self.scale_
        proba = self.model_.predict_proba(X)
        idx = np.searchsorted(self.model_.classes_, self.svc_ovo_.predict(X))
        rows = np.arange(len(idx))
        if getattr(self, "centres_", None) is None:  # converted from a 0.1 pickle: the margin was the score
            return self.model_.classes_[idx], proba[rows, idx], self.winner_margin(X, idx)
        d = ((raw - self.centres_[idx]) ** 2).sum(axis=1)
        return self.model_.classes_[idx], proba[rows, idx], -d

    def winner_margin(self, X, idx: np.ndarray) -> np.ndarray:
        """For each (standardised) row, the smallest one-vs-one SVM margin of class ``idx[row]`` against any other.

        Positive only for a class that wins every duel; the winner's value measures how clearly
        it beats its closest rival, on the same scale whatever the number of classes. Gathers
        C - 1 of the C(C - 1)/2 duel values per row, so 1,000 people cost no C x C array.
        """
        dec = self.svc_ovo_.decision_function(X)
        n = len(self.model_.classes_)
        if n == 2:  # binary SVC: one value, positive for classes_[1]
            return np.where(idx == 1, dec, -dec)
        if not hasattr(self, "duels_"):
            # scikit-learn's one-vs-one order: (0,1), (0,2), ..., (1,2), ...; positive favours the first
            pos, sign = np.zeros((n, n - 1), dtype=np.int64), np.zeros((n, n - 1))
            filled = np.zeros(n, dtype=np.int64)
            k = 0
            for i in range(n):
                for j in range(i + 1, n):
                    pos[i, filled[i]], sign[i, filled[i]] = k, 1.0
                    pos[j, filled[j]], sign[j, filled[j]] = k, -1.0
                    filled[i] += 1
                    filled[j] += 1
                    k += 1
            self.duels_ = (pos, sign)
        pos, sign = self.duels_
        return (np.take_along_axis(dec, pos[idx], axis=1) * sign[idx]).min(axis=1)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)


# ---- training-data checks, cross-validation and the open-set threshold ---------------------


def check_training_data(X: np.ndarray, labels: list[str], clf: Classifier, paths: Optional[list[str]] = None) -> None:
    """Refuse data a classifier cannot learn from, naming the problem and the alternatives."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ClassifierError("no embeddings to train on")
    if X.shape[0] != len(labels):
        raise ClassifierError(f"{X.shape[0]} embeddings but {len(labels)} labels")
    bad = np.where(~np.isfinite(X).all(axis=1))[0]
    if len(bad):
        where = ", ".join((paths[i] if paths else f"row {i}") for i in bad[:5])
        raise ClassifierError(f"{len(bad)} embeddings contain NaN or infinite values ({where}); re-run represent")
    unlabeled = sum(1 for lab in labels if lab == "")
    if unlabeled:
        raise ClassifierError(
            f"{unlabeled} of the {len(labels)} embeddings have no person label (their photos lay directly in the "
            "input folder); train needs one sub-folder per person (PHOTOS/PERSON/photo.jpg): move them, then "
            "align/represent or run again"
        )
    names, counts = np.unique(np.asarray(labels), return_counts=True)
    if len(names) < 2:
        raise ClassifierError(
            f"only one person ({str(names[0])!r}) in the training data; a classifier needs two or more"
        )
    if counts.min() < clf.min_per_class:
        few = [str(n) for n, c in zip(names, counts) if c < clf.min_per_class]
        raise ClassifierError(
            f"{clf.name} needs at least {clf.min_per_class} photos per person, but {len(few)} people have fewer "
            f"({', '.join(few[:5])}{' ...' if len(few) > 5 else ''}). For one photo per person use "
            "--classifier KNN, or `openface-py identify` (nearest gallery face)"
        )
    if isinstance(clf, (JointBayesianClassifier,)) and counts.max() < 2:
        raise ClassifierError(
            "JointBayesian needs some people with two or more photos to learn within-person variation; "
            "use --classifier KNN for one photo per person"
        )


def cross_validated_accuracy(
    name: str, X: np.ndarray, y: np.ndarray, lda_dim: Optional[int], seed: int = 0
) -> Optional[float]:
    """Stratified k-fold (k <= 5) closed-set accuracy, or None if some person has one photo."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = int(min(5, counts.min()))
    if k < 2:
        return None
    correct = 0
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
        clf = make_classifier(name, lda_dim, seed).fit(X[tr], y[tr])
        correct += int((clf.decide(X[te])[0] == y[te]).sum())
    return correct / len(y)


@dataclass
class ScoreCalibrator:
    """P(the named answer is right | score) = 1 / (1 + exp(-(a * score + b))) (Platt scaling).

    Fitted on held-out answers: a known probe's answer is right when its name is; a stranger's
    named answer is always wrong. Two floats, so model files need no new scikit-learn type.
    """

    a: float
    b: float

    def __call__(self, score: np.ndarray) -> np.ndarray:
        z = self.a * np.asarray(score, dtype=np.float64) + self.b
        return platt_sigmoid(z)

    @classmethod
    def fit(cls, score: np.ndarray, right: np.ndarray) -> ScoreCalibrator:
        """Platt's fit, with his target smoothing ((N+ + 1) / (N+ + 2), 1 / (N- + 2)) so that a
        perfectly separated calibration set still gives finite, not 0 / 1, probabilities."""
        from scipy.optimize import minimize

        s = np.asarray(score, dtype=np.float64)
        r = np.asarray(right, dtype=bool)
        n_pos, n_neg = int(r.sum()), int((~r).sum())
        t = np.where(r, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        mu, sd = float(s.mean()), float(s.std()) or 1.0
        z = (s - mu) / sd

        def nll(w):
            f = w[0] * z + w[1]
            # -[t log p + (1 - t) log(1 - p)] with p = sigmoid(f), written stably
            loss = np.logaddexp(0.0, f) - t * f
            p = platt_sigmoid(f)
            g = p - t
            return loss.sum(), np.array([(g * z).sum(), g.sum()])

        prior = np.log((n_pos + 1.0) / (n_neg + 1.0))
        w = minimize(nll, np.array([1.0, prior]), jac=True, method="L-BFGS-B").x
        a = float(w[0]) / sd
        return cls(a=a, b=float(w[1]) - a * mu)

    def score_at(self, p: float) -> Optional[float]:
        """The score where the calibrated probability is ``p`` (None if it does not depend on the score)."""
        if self.a <= 0:
            return None
        return float((np.log(p / (1.0 - p)) - self.b) / self.a)


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the photo-weighted mean |confidence - accuracy| over ``n_bins`` equal-width bins."""
    return float(sum(n * abs(c - a) for c, a, n in reliability_bins(confidence, right, n_bins)) / max(1, len(right)))


def reliability_bins(confidence: np.ndarray, right: np.ndarray, n_bins: int = 15) -> list[list[float]]:
    """[mean confidence, accuracy, count] of each non-empty equal-width confidence bin."""
    c = np.asarray(confidence, dtype=np.float64)
    r = np.asarray(right, dtype=np.float64)
    k = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    return [
        [float(c[k == b].mean()), float(r[k == b].mean()), int((k == b).sum())] for b in range(n_bins) if (k == b).any()
    ]


@dataclass
class OpenSetReport:
    """How the unknown threshold was chosen and what it does on held-out data.

    With a calibrator (trained by 0.2 and later) the rates, the ECE and the reliability bins are
    measured out of fold: each fold's answers are judged with a calibrator and threshold fitted
    on the other folds only.
    """

    threshold: float
    unknown_rejection: float  # held-out strangers answered "unknown"
    known_accuracy: float  # held-out enrolled photos named correctly (and not rejected)
    known_accuracy_closed: float  # same, with no threshold
    n_unknown: int
    n_known: int
    score_kind: str
    method: str = "leave-people-out"
    ece: Optional[float] = None  # expected calibration error of the stated confidence (15 bins)
    median_confidence_right: Optional[float] = None
    reliability: Optional[list] = None  # reliability_bins of the out-of-fold answers

    def summary(self) -> str:
        text = (
            f"unknown threshold {self.threshold:.4g} ({self.score_kind}): rejects "
            f"{100 * self.unknown_rejection:.1f}% of {self.n_unknown} held-out strangers' photos, names "
            f"{100 * self.known_accuracy:.1f}% of {self.n_known} held-out enrolled photos correctly "
            f"({100 * self.known_accuracy_closed:.1f}% with no threshold)"
        )
        if self.ece is not None:
            text += (
                f"; confidence calibration error (ECE) {self.ece:.3f}, median confidence of right answers "
                f"{self.median_confidence_right:.3f}"
            )
        return text


#: the unknown threshold keeps at least this fraction of the known probes the closed-set
#: classifier names correctly, and rejects as many strangers as it can with that
MIN_KNOWN_FRACTION = 0.95


def _pick_threshold(ks, ok, us, min_known_fraction: float) -> tuple[float, float, float]:
    """(threshold, rejection, known accuracy) on pooled held-out scores (see ``choose_threshold``)."""
    cands = np.unique(np.concatenate([ks, us]))
    mids = np.concatenate([[cands[0] - 1.0], (cands[:-1] + cands[1:]) / 2.0, [cands[-1] + 1.0]])
    known_acc = np.array([(ok & (ks >= t)).mean() for t in mids])
    rej = np.array([(us < t).mean() for t in mids])
    # a classifier whose scores cannot tell strangers apart then rejects nobody (and says so)
    allowed = known_acc >= min_known_fraction * ok.mean() - 1e-12
    objective = np.where(allowed, rej + 1e-3 * known_acc, -np.inf)
    best = int(np.argmax(objective))
    return float(mids[best]), float(rej[best]), float(known_acc[best])


def choose_threshold(
    name: str,
    X: np.ndarray,
    y: np.ndarray,
    lda_dim: Optional[int] = None,
    n_folds: int = 10,
    seed: int = 0,
    min_known_fraction: float = MIN_KNOWN_FRACTION,
    calibrate: bool = False,
):
    """Pick the score threshold that best separates enrolled people from strangers.

    People are split into ``n_folds`` groups. For each group: its people are strangers; one
    photo of every other person (who has a photo to spare) is a known probe; the classifier
    is trained on the rest. The threshold rejects as many strangers as it can while still naming
    at least ``min_known_fraction`` of the known probes that the closed-set classifier names
    correctly. Needs at least three people.

    With ``calibrate`` returns ``(report, ScoreCalibrator)`` (or None): the calibrator is fitted
    on all the held-out answers, and the report's rates, ECE and reliability bins are measured
    out of fold (calibrator and threshold refitted without the fold they judge).
    """
    rng = np.random.default_rng(seed)
    people = np.unique(y)
    if len(people) < 3:
        return None
    order = rng.permutation(people)
    folds = np.array_split(order, min(n_folds, len(people)))
    clf_proto = make_classifier(name, lda_dim, seed)
    known_scores, known_ok, unknown_scores, kf, uf = [], [], [], [], []
    for f, group in enumerate(folds):
        stranger = np.isin(y, group)
        train = ~stranger
        probe = np.zeros(len(y), dtype=bool)
        for p in np.setdiff1d(people, group):
            idx = np.where(y == p)[0]
            if len(idx) > clf_proto.min_per_class:
                probe[rng.choice(idx)] = True
        train &= ~probe
        if len(np.unique(y[train])) < 2:
            continue
        try:
            clf = make_classifier(name, lda_dim, seed).fit(X[train], y[train])
        except (ValueError, ClassifierError) as exc:
            log.debug("threshold fold skipped: %s", exc)
            continue
        if probe.any():
            pred, _, score = clf.decide(X[probe])
            known_scores.append(score)
            known_ok.append(pred == y[probe])
            kf.append(np.full(len(score), f))
        us_f = clf.decide(X[stranger])[2]
        unknown_scores.append(us_f)
        uf.append(np.full(len(us_f), f))
    if not known_scores or not unknown_scores:
        return None
    ks, ok, us = np.concatenate(known_scores), np.concatenate(known_ok), np.concatenate(unknown_scores)
    threshold, rej, kacc = _pick_threshold(ks, ok, us, min_known_fraction)
    report = OpenSetReport(
        threshold=threshold,
        unknown_rejection=rej,
        known_accuracy=kacc,
        known_accuracy_closed=float(ok.mean()),
        n_unknown=len(us),
        n_known=len(ks),
        score_kind=clf_proto.score_kind,
    )
    if not calibrate:
        return report
    calibrator = ScoreCalibrator.fit(np.r_[ks, us], np.r_[ok, np.zeros(len(us), dtype=bool)])
    # out of fold: each fold judged by a calibrator and threshold fitted on the others
    kf, uf = np.concatenate(kf), np.concatenate(uf)
    conf, right, is_known = [], [], []
    for f in np.unique(np.r_[kf, uf]):
        ko, uo = kf != f, uf != f
        if not ko.any() or not uo.any():
            continue
        cal = ScoreCalibrator.fit(np.r_[ks[ko], us[uo]], np.r_[ok[ko], np.zeros(int(uo.sum()), dtype=bool)])
        t = _pick_threshold(ks[ko], ok[ko], us[uo], min_known_fraction)[0]
        for s, good, known in ((ks[kf == f], ok[kf == f], True), (us[uf == f], None, False)):
            p = cal(s)
            named = s >= t
            conf.append(np.where(named, p, 1.0 - p))
            right.append(named & good if known else ~named)
            is_known.append(np.full(len(s), known))
    if conf:
        c, r, k = np.concatenate(conf), np.concatenate(right), np.concatenate(is_known)
        report.method = "leave-people-out, out-of-fold calibration"
        report.unknown_rejection = float(r[~k].mean())
        report.known_accuracy = float(r[k].mean())
        report.ece = expected_calibration_error(c, r)
        report.median_confidence_right = float(np.median(c[r])) if r.any() else 0.0
        report.reliability = reliability_bins(c, r)
    return report, calibrator


def write_reliability_plot(report: OpenSetReport, path: os.PathLike | str, title: str = "") -> Path:
    """A reliability diagram (PNG) of the report's out-of-fold answers: accuracy against stated confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.asarray(report.reliability or [], dtype=np.float64).reshape(-1, 3)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    if len(bins):
        ax.plot(bins[:, 0], bins[:, 1], "o-", color="C0", label="held-out answers")
        ax2.bar(bins[:, 0], bins[:, 2], width=1 / 15, color="C0", alpha=0.7)
    ax.set_ylabel("fraction of answers right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ece = "n/a" if report.ece is None else f"{report.ece:.3f}"
    ax.set_title(title or f"Reliability (ECE {ece}; {report.n_known} known probes, {report.n_unknown} strangers)")
    ax.legend(loc="upper left")
    ax2.set_yscale("log")
    ax2.set_xlabel("stated confidence (answer is a name or unknown)")
    ax2.set_ylabel("answers")
    fig.tight_layout()
    target = Path(path)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(target, buf.getvalue())
    return target


# ---- the trained model and its file -------------------------------------------------------


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
        """Write the model as a skops file (loading it cannot run code) + ``<path>.sha256`` beside it."""
        from skops.io import dumps

        data = dumps(self)
        target = Path(path)
        atomic_write_bytes(target, data)
        atomic_write_text(sha256_path(target), f"{hashlib.sha256(data).hexdigest()}  {target.name}\n")
        return target


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
    return SKLEARN_TYPES | {f"{c.__module__}.{c.__qualname__}" for c in ours}


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


def choose_pair_threshold(X: np.ndarray, y: np.ndarray, seed: int = 0, max_pairs: int = 20000) -> Optional[float]:
    """Joint Bayesian same/different threshold, from pairs of people the model was not fitted on.

    People are split in two halves; a model fitted on one half scores same and different pairs
    of the other, and the accuracy-maximising thresholds of the two directions are averaged.
    Needs at least four people with two or more photos.
    """
    rng = np.random.default_rng(seed)
    people, counts = np.unique(y, return_counts=True)
    multi = people[counts >= 2]
    if len(multi) < 4:
        return None
    halves = np.array_split(rng.permutation(people), 2)
    thresholds = []
    for fit_half in halves:
        fit = np.isin(y, fit_half)
        test_idx = np.where(~fit)[0]
        if len(test_idx) > 2000:  # bounds the pair index arrays (2000 photos: 2 million pairs)
            test_idx = np.sort(rng.choice(test_idx, 2000, replace=False))
        if len(np.unique(y[fit])) < 2 or np.bincount(np.unique(y[fit], return_inverse=True)[1]).max() < 2:
            continue
        jb = JointBayesian().fit(X[fit], y[fit])
        i, j = np.triu_indices(len(test_idx), 1)
        same = y[test_idx[i]] == y[test_idx[j]]
        if same.sum() == 0 or (~same).sum() == 0:
            continue
        si, di = np.where(same)[0], np.where(~same)[0]
        si = rng.choice(si, min(len(si), max_pairs), replace=False)
        di = rng.choice(di, min(len(di), len(si) * 4, max_pairs), replace=False)
        same_r = jb.score(X[test_idx[i[si]]], X[test_idx[j[si]]])
        diff_r = jb.score(X[test_idx[i[di]]], X[test_idx[j[di]]])
        thresholds.append(best_split_threshold(same_r, diff_r)[0])
    return float(np.mean(thresholds)) if thresholds else None
