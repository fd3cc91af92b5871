"""Are two faces the same person? One decision, used by ``compare``, the service, galleries and the database.

A pair is decided by one of three rules, and each calls a score *at* its threshold the same person:

- **distance** (the default): the squared L2 distance of the two embeddings, same when
  ``distance <= threshold`` (the embedder's calibrated threshold, or a database's learned one);
  with a ``DistanceCalibration`` the answer carries P(same person | distance) as well;
- **joint-bayesian**: the log-likelihood ratio of a trained Joint Bayesian model, same when
  ``score >= threshold`` (its pair threshold);
- **siamese**: the probability from a trained Siamese head, same when ``p >= threshold``.

Up to 0.2, ``compare`` used ``distance < threshold`` and ``score > threshold`` while the service,
galleries and the database used ``<=``; the rules differ only for a score exactly equal to the
threshold, and are now one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from openface_py.metrics import platt_sigmoid

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from openface_py.recognize.jointbayes import JointBayesian
    from openface_py.recognize.siamese import SiameseVerifier


@dataclass(frozen=True)
class DistanceCalibration:
    """P(same person | squared distance ``d``) = sigmoid(b - a * d), Platt-fitted on labelled pairs."""

    a: float
    b: float

    def p_same(self, distance: float | np.ndarray) -> float | np.ndarray:
        p = platt_sigmoid(self.a * -np.asarray(distance, dtype=np.float64) + self.b)
        return float(p) if np.ndim(p) == 0 else p

    @classmethod
    def from_json(cls, value: Optional[dict]) -> Optional[DistanceCalibration]:
        """From the ``{"a": ..., "b": ...}`` a database stores (None stays None: not calibrated)."""
        return None if value is None else cls(float(value["a"]), float(value["b"]))

    def to_json(self) -> dict:
        return asdict(self)


def squared_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared L2 distance of two embeddings, in float64 (OpenFace's comparison)."""
    diff = np.asarray(a, dtype=np.float64).ravel() - np.asarray(b, dtype=np.float64).ravel()
    if diff.size == 0:
        raise ValueError("empty embeddings")
    return float(diff @ diff)


#: The chance that `identify` names a stranger which its open-set threshold aims at.
IDENTIFY_FPIR = 0.01


def identification_threshold(
    threshold: float, impostor_far: Sequence[tuple[float, float]], gallery_faces: int, fpir: float = IDENTIFY_FPIR
) -> float:
    """The distance threshold for naming a face against ``gallery_faces`` enrolled faces (1:N).

    A stranger is named when *any* enrolled face is within the threshold, so with a per-pair
    false-accept rate FAR(t) its chance is 1 - (1 - FAR(t))^N (the false-positive identification
    rate, FPIR): the pair threshold, right for 1:1, names strangers ever more often as the gallery
    grows (mobilefacenet-reid-0095 at 1.444: FAR 0.0044, FPIR 36% for 100 faces). This is the
    threshold at which FPIR = ``fpir``, read off the model's measured impostor curve (``(t, FAR)``
    points, interpolated in log FAR; beyond the measured points the nearest one), and never looser
    than ``threshold``. Without a curve (weights not measured), ``threshold`` itself."""
    if not impostor_far or gallery_faces <= 1:
        return float(threshold)
    far = 1.0 - (1.0 - fpir) ** (1.0 / gallery_faces)
    ts = np.array([t for t, _ in impostor_far], dtype=np.float64)
    fars = np.log10([f for _, f in impostor_far])
    if np.log10(far) < fars.min():
        log.warning(
            "a gallery of %d faces needs a false-accept rate of %.1e per face for a %.0f%% chance of naming a "
            "stranger; the model's impostor curve is measured down to %.0e only, so strangers are named more often",
            gallery_faces, far, 100 * fpir, 10 ** fars.min(),
        )  # fmt: skip
    return float(min(threshold, np.interp(np.log10(far), fars, ts)))


def is_same(distance: float, threshold: Optional[float]) -> Optional[bool]:
    """The distance rule: same person at or below ``threshold``; None (no verdict) without one."""
    return None if threshold is None else bool(distance <= threshold)


@dataclass(frozen=True)
class PairScorer:
    """A trained pair model: a score that is higher for the same person, and the threshold at or
    above which it says so. ``probability``: the score is P(same person) itself."""

    method: str
    threshold: float
    score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray]  # rows of a, rows of b -> scores
    probability: bool = False

    @classmethod
    def joint_bayesian(cls, jb: JointBayesian, threshold: float) -> PairScorer:
        """Joint Bayesian's log-likelihood ratio r(a, b) (Chen et al., ECCV 2012): not a probability."""
        return cls("joint-bayesian", float(threshold), jb.score)

    @classmethod
    def siamese(cls, siamese: SiameseVerifier, threshold: float) -> PairScorer:
        """A Siamese head's P(same person) (``train-net --loss siamese``)."""
        return cls("siamese", float(threshold), siamese.probability, probability=True)

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.asarray(self.score_pairs(a, b)).ravel()[0])


@dataclass(frozen=True)
class Verification:
    """The answer for one pair of faces."""

    distance: float  # squared L2 of the embeddings, whatever decided
    threshold: Optional[float]  # of the rule that decided; None: no verdict
    same: Optional[bool]
    p_same: Optional[float] = None  # P(same person), where a calibration or a Siamese head gives one
    score: Optional[float] = None  # the pair model's score (``method`` other than distance)
    method: str = "distance"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "distance": round(self.distance, 6),
            "threshold": self.threshold,
            "same": self.same,
            "p_same": None if self.p_same is None else round(self.p_same, 4),
        }
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


def verify(
    a: np.ndarray,
    b: np.ndarray,
    threshold: Optional[float] = None,
    calibration: Optional[DistanceCalibration] = None,
    scorer: Optional[PairScorer] = None,
) -> Verification:
    """Decide whether embeddings ``a`` and ``b`` are the same person.

    Without ``scorer``: the distance rule with ``threshold`` (None: the distance only, no verdict)
    and, given ``calibration``, P(same). With ``scorer``: its score against ``threshold`` or, when
    that is None, the scorer's own threshold."""
    d = squared_distance(a, b)
    if scorer is None:
        p = None if calibration is None else float(calibration.p_same(d))
        return Verification(d, threshold, is_same(d, threshold), p_same=p)
    t = scorer.threshold if threshold is None else float(threshold)
    s = scorer.score(a, b)
    p = s if scorer.probability else None
    return Verification(d, t, bool(s >= t), p_same=p, score=s, method=scorer.method)
