"""Classifiers on embeddings: one small interface, and the ``CLASSIFIERS`` table of them.

Every classifier has ``fit(X, y)`` with integer labels and ``decide(X) -> (predicted index,
confidence, score)``. *confidence* is the classifier's own (a probability for the probabilistic
models); *score* is what the open-set threshold (``openset``) is applied to (higher = more sure
it is that enrolled person): minus the squared distance to the predicted person's mean embedding
for SVMs, the class probability for naive Bayes and trees, the per-class log-likelihood for GMM,
minus the squared distance to the nearest sample of the predicted person for kNN, and the Joint
Bayesian log-likelihood ratio for JB. Model files name these classes by module: see
``modelfile.LEGACY_NAMES`` before moving one.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from openface_py.errors import OpenFacePyError
from openface_py.metrics import pairwise_sq_l2
from openface_py.recognize.jointbayes import JointBayesian
from openface_py.registry import Registry


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
        d = pairwise_sq_l2(X, self.X_)
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


@dataclass(frozen=True)
class ClassifierEntry:
    """How a classifier is built (``build(seed)``); settings follow OpenFace's ``classifier.py``
    where it has one."""

    build: Callable[[int], Classifier]


def _sklearn(name: str, make: Callable[[int], object]) -> ClassifierEntry:
    return ClassifierEntry(lambda seed: SklearnClassifier(name, make(seed)))


def _gaussian_nb(seed: int):
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def _decision_tree(seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=20, random_state=seed)


#: the classifiers ``train --classifier`` offers, in the order ``--help`` lists them; a new one is
#: a ``Classifier`` subclass and one ``CLASSIFIERS.add``
CLASSIFIERS: Registry[ClassifierEntry] = Registry("classifier")
CLASSIFIERS.add("LinearSvm", ClassifierEntry(lambda seed: SvmClassifier("LinearSvm", dict(C=1, kernel="linear"), seed)))
CLASSIFIERS.add("GridSearchSvm", ClassifierEntry(lambda seed: SvmClassifier("GridSearchSvm", None, seed)))
CLASSIFIERS.add(
    "RadialSvm", ClassifierEntry(lambda seed: SvmClassifier("RadialSvm", dict(C=1, kernel="rbf", gamma=2), seed))
)
CLASSIFIERS.add("GaussianNB", _sklearn("GaussianNB", _gaussian_nb))
CLASSIFIERS.add("DecisionTree", _sklearn("DecisionTree", _decision_tree))
CLASSIFIERS.add("GMM", ClassifierEntry(lambda seed: GmmClassifier(seed=seed)))
CLASSIFIERS.add("KNN", ClassifierEntry(lambda seed: KnnClassifier()))
CLASSIFIERS.add("JointBayesian", ClassifierEntry(lambda seed: JointBayesianClassifier()))
CLASSIFIER_NAMES = CLASSIFIERS.names()


def make_classifier(name: str, lda_dim: Optional[int] = None, seed: int = 0) -> Classifier:
    """A fresh classifier by name (``UnknownNameError`` for a name not in ``CLASSIFIERS``), with
    an LDA projection to ``lda_dim`` dimensions in front where asked."""
    clf = CLASSIFIERS.get(name).build(seed)
    return LdaFront(clf, lda_dim) if lda_dim else clf


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
