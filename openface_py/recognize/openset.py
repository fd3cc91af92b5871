"""Open-set answers: the "unknown" threshold, the calibrated confidence, and how to check them.

The threshold is chosen by ``choose_threshold`` from the training data alone: groups of
people are held out in turn as "strangers" while one photo of each remaining person is held
out as a "known" probe, so the rejection rate of unseen people is measured rather than
guessed. The same held-out answers calibrate the confidence a trained model states
(``ScoreCalibrator``: Platt scaling of *score* to P(answer right), where a stranger's named
answer is always wrong), so "0.97 confidence" means right 97 times in 100; the calibrated
model's ECE and open-set rates are measured on folds the calibrator was not fitted on.
``choose_pair_threshold`` does the same for Joint Bayesian's same/different ratio.
"""

from __future__ import annotations

import io as _io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.io import atomic_write_bytes
from openface_py.metrics import best_split_threshold, platt_sigmoid
from openface_py.recognize.classifiers import ClassifierError, make_classifier
from openface_py.recognize.jointbayes import JointBayesian

log = logging.getLogger(__name__)


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
