"""Joint Bayesian face verification (Chen, Cao, Wang, Wen, Sun, "Bayesian Face Revisited: A
Joint Formulation", ECCV 2012).

A face is modelled as x = mu + eps, identity mu ~ N(0, S_mu) and within-person variation
eps ~ N(0, S_eps), independent. EM estimates S_mu and S_eps from labelled data (section 3.2
of the paper); the log-likelihood ratio of "same person" against "different people" is then

    r(x1, x2) = x1' A x1 + x2' A x2 - 2 x1' G x2        (equation 4, constant dropped)

with F = S_eps^-1, G = -(2 S_mu + S_eps)^-1 S_mu S_eps^-1 and A = (S_mu + S_eps)^-1 - (F + G).
The paper's M-step uses only the posterior means (E[mu] E[mu]' and E[eps] E[eps]'), which
underestimates both covariances; with ``exact_em`` (default) the posterior covariance
(S_mu^-1 + m S_eps^-1)^-1 of each identity is added, which makes this a true EM for the model
and lets it recover known covariances. Covariances are kept symmetric and shrunk towards a
scaled identity so that 128-D models train from a few people with a few photos each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)


def _sym(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2.0


def _shrink(cov: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) cov + alpha * mean-variance * I, symmetrised: positive definite for alpha > 0."""
    d = cov.shape[0]
    target = np.trace(cov) / d
    if target <= 0:
        target = 1e-6
    return _sym((1.0 - alpha) * cov + alpha * target * np.eye(d))


@dataclass
class JointBayesian:
    """EM-trained Joint Bayesian model; ``score`` gives r(x1, x2) (higher = same person)."""

    max_iter: int = 100
    tol: float = 1e-6
    shrinkage: Optional[float] = None  # None: d / (d + n) for each covariance (see fit)
    exact_em: bool = True
    mean_: Optional[np.ndarray] = None
    S_mu: Optional[np.ndarray] = None
    S_eps: Optional[np.ndarray] = None
    A: Optional[np.ndarray] = None
    G: Optional[np.ndarray] = None
    n_iter_: int = 0
    history_: list = field(default_factory=list)

    def fit(self, X: np.ndarray, y: np.ndarray) -> JointBayesian:
        """Estimate S_mu, S_eps from samples ``X`` (n, d) with identity labels ``y``.

        Needs at least two identities and at least one identity with two or more samples
        (the within-person covariance is not identifiable otherwise).
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X must be (n, d) with one label per row; got {X.shape} and {y.shape[0]} labels")
        if not np.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")
        classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError("Joint Bayesian needs at least two identities")
        if counts.max() < 2:
            raise ValueError(
                "Joint Bayesian needs some identities with two or more samples to learn within-person "
                "variation; with one sample per person use kNN, or a Joint Bayesian model trained on another set"
            )
        d = X.shape[1]
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        # group samples by identity; identities with the same count share the EM matrices
        by_count: dict[int, list[np.ndarray]] = {}
        for k in range(len(classes)):
            members = Xc[inverse == k]
            by_count.setdefault(len(members), []).append(members)
        groups = {m: np.stack(v) for m, v in by_count.items()}  # m -> (identities, m, d)
        means = np.stack([Xc[inverse == k].mean(axis=0) for k in range(len(classes))])
        # Shrinkage towards a scaled identity: by default d / (d + n) with n the number of
        # identities (for S_mu) or of within-person degrees of freedom (for S_eps), so that a
        # few people in 128-D give a well-conditioned model and large sets are left almost alone.
        n_within = len(Xc) - len(classes)
        a_mu = d / (d + len(classes)) if self.shrinkage is None else self.shrinkage
        a_eps = d / (d + max(1, n_within)) if self.shrinkage is None else self.shrinkage
        self.shrinkage_used_ = (a_mu, a_eps)
        S_mu = _shrink(np.cov(means, rowvar=False, bias=True), a_mu)
        within = Xc - means[inverse]
        S_eps = _shrink(within.T @ within / max(1, n_within), a_eps)

        self.history_ = []
        for it in range(1, self.max_iter + 1):
            F = np.linalg.inv(S_eps)
            mu_sq, eps_sq = np.zeros((d, d)), np.zeros((d, d))
            for m, members in groups.items():
                # E-step (paper): G_m = -(m S_mu + S_eps)^-1 S_mu S_eps^-1,
                # E[mu | x] = S_mu (F + m G_m) sum_j x_j,  E[eps_j | x] = x_j + S_eps G_m sum_j x_j
                Gm = -np.linalg.solve(m * S_mu + S_eps, S_mu @ F)
                sums = members.sum(axis=1)  # (k, d)
                mu = sums @ (S_mu @ (F + m * Gm)).T  # (k, d)
                mu_sq += mu.T @ mu
                eps = (members + (sums @ (S_eps @ Gm).T)[:, None, :]).reshape(-1, d)
                eps_sq += eps.T @ eps
                if self.exact_em:
                    # posterior covariance of mu (and of each eps_j = x_j - mu): (S_mu^-1 + m F)^-1
                    C = _sym(S_mu + m * S_mu @ Gm @ S_eps)
                    mu_sq += len(members) * C
                    eps_sq += len(members) * m * C
            new_mu = _shrink(mu_sq / len(classes), a_mu)
            new_eps = _shrink(eps_sq / len(Xc), a_eps)
            change = max(
                np.abs(new_mu - S_mu).max() / (np.abs(S_mu).max() + 1e-12),
                np.abs(new_eps - S_eps).max() / (np.abs(S_eps).max() + 1e-12),
            )
            S_mu, S_eps = new_mu, new_eps
            self.history_.append(change)
            self.n_iter_ = it
            if change < self.tol:
                break
        self.S_mu, self.S_eps = S_mu, S_eps
        self._finalise()
        log.debug("Joint Bayesian EM: %d iterations, last relative change %.2e", self.n_iter_, self.history_[-1])
        return self

    def _finalise(self) -> None:
        F = np.linalg.inv(self.S_eps)
        self.G = _sym(-np.linalg.solve(2 * self.S_mu + self.S_eps, self.S_mu @ F))
        self.A = _sym(np.linalg.inv(self.S_mu + self.S_eps) - (F + self.G))

    def _check(self) -> None:
        if self.A is None:
            raise RuntimeError("JointBayesian is not fitted")

    def score(self, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        """r(x1[i], x2[i]) for paired rows (or one vector against each row)."""
        self._check()
        a = np.atleast_2d(np.asarray(x1, dtype=np.float64)) - self.mean_
        b = np.atleast_2d(np.asarray(x2, dtype=np.float64)) - self.mean_
        return (
            np.einsum("ij,jk,ik->i", a, self.A, a)
            + np.einsum("ij,jk,ik->i", b, self.A, b)
            - 2 * np.einsum("ij,jk,ik->i", a, self.G, b)
        )

    def score_matrix(self, probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """r between every probe row and every gallery row: (n_probes, n_gallery)."""
        self._check()
        a = np.atleast_2d(np.asarray(probes, dtype=np.float64)) - self.mean_
        b = np.atleast_2d(np.asarray(gallery, dtype=np.float64)) - self.mean_
        qa = np.einsum("ij,jk,ik->i", a, self.A, a)
        qb = np.einsum("ij,jk,ik->i", b, self.A, b)
        return qa[:, None] + qb[None, :] - 2 * a @ self.G @ b.T
