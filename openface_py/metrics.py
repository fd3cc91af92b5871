"""Verification metrics on pair scores (higher score = more likely the same person).

Pure functions, each checked in tests on inputs with known answers: the ROC curve, its area,
the equal error rate, the verification rate at a false accept rate, and the 10-fold
protocol where each fold's threshold is chosen on the other folds only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def platt_sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Platt's sigmoid 1 / (1 + exp(-z)), clipped at |z| = 500 so exp cannot overflow.

    The one copy shared by the classifier's score calibrator, the database's and the service's
    P(same person) from a distance.
    """
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0)))


def pairwise_sq_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distance between every row of ``a`` and every row of ``b`` (float64, shape
    ``(len(a), len(b))``), by |a|^2 + |b|^2 - 2ab, clipped at 0 where rounding makes it negative.
    The one distance the classifiers, the gallery and the leakage check share."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def best_split_threshold(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising the accuracy of "same if score > t"; returns (t, accuracy).

    t is the midpoint between the two scores where the optimum switches, so it does not sit
    on a training score.
    """
    same, diff = np.asarray(same, dtype=np.float64), np.asarray(diff, dtype=np.float64)
    scores = np.concatenate([same, diff])
    truth = np.concatenate([np.ones(len(same), bool), np.zeros(len(diff), bool)])
    order = np.argsort(scores, kind="stable")
    s_sorted, t_sorted = scores[order], truth[order]
    # with t between s_sorted[k-1] and s_sorted[k]: the k lowest are called "different"
    diff_below = np.concatenate([[0], np.cumsum(~t_sorted)])
    same_above = np.concatenate([[0], np.cumsum(t_sorted[::-1])])[::-1]
    acc = (diff_below + same_above) / len(scores)
    # ties between equal scores cannot be split: only positions between distinct values count
    valid = np.ones(len(acc), bool)
    valid[1:-1] = s_sorted[1:] != s_sorted[:-1]
    acc = np.where(valid, acc, -1.0)
    k = int(np.argmax(acc))
    lo = s_sorted[k - 1] if k > 0 else s_sorted[0] - 1.0
    hi = s_sorted[k] if k < len(s_sorted) else s_sorted[-1] + 1.0
    return float((lo + hi) / 2.0), float(acc[k])


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accept rate, true accept rate, threshold) at every distinct threshold, FAR rising."""
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, bool)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    last = np.r_[s[1:] != s[:-1], True]  # accept everything with score >= s[i]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / max(1, y.sum())]
    fpr = np.r_[0.0, fp / max(1, (~y).sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where the false accept rate equals the false reject rate (interpolated)."""
    fnr = 1.0 - tpr
    k = int(np.argmax(fpr >= fnr))  # first point with FAR >= FRR
    if k == 0:
        return float(fpr[0])
    # linear interpolation between points k-1 and k of d = FAR - FRR
    d0, d1 = fpr[k - 1] - fnr[k - 1], fpr[k] - fnr[k]
    w = d0 / (d0 - d1) if d1 != d0 else 0.0
    return float(fpr[k - 1] + w * (fpr[k] - fpr[k - 1]))


def val_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float = 1e-3) -> float:
    """Highest true accept rate with a false accept rate of at most ``far``."""
    ok = fpr <= far + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass
class FoldResult:
    fold: int
    threshold: float
    accuracy: float
    n_pairs: int


def k_fold_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> list[FoldResult]:
    """LFW's protocol: for each fold, the threshold is chosen on all the *other* folds' pairs
    and the accuracy measured on this fold's pairs."""
    scores, same, folds = np.asarray(scores, dtype=np.float64), np.asarray(same, bool), np.asarray(folds)
    out = []
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        if not train.any():
            raise ValueError("k-fold accuracy needs at least two folds")
        t, _ = best_split_threshold(scores[train & same], scores[train & ~same])
        out.append(FoldResult(int(f), t, float(((scores[test] > t) == same[test]).mean()), int(test.sum())))
    return out
