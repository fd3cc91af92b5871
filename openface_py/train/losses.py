"""Metric-learning objectives for ``train-net``: one interface, five losses from the literature.

Each objective maps a batch of unit-length embeddings and their person labels (0..C-1 over the
training people) to a scalar loss plus a few figures for the log. pytorch-metric-learning (pml)
provides the triplet loss and its miner, the contrastive loss, ArcFace and the normalised
softmax; what it lacks is written here (center loss, Koch's Siamese head).

- ``triplet``: FaceNet (Schroff et al., CVPR 2015): margin 0.2 on squared L2 distances of unit
  embeddings, triplets mined online inside each P x K batch. ``semihard`` keeps negatives farther
  than the positive but within the margin (d_ap < d_an <= d_ap + 0.2), ``hard`` those no farther
  than the positive, ``all`` every triplet that violates the margin. pml's miner keeps every such
  triplet (FaceNet picked one negative per anchor-positive pair).
- ``center``: Wen et al. (ECCV 2016): softmax classification plus ``lambda`` x the mean squared
  distance of each embedding to its person's learned centre. The softmax is pml's normalised
  (cosine) softmax (Wang et al., NormFace 2017), as our embeddings are unit length.
- ``contrastive``: Hadsell, Chopra & LeCun (CVPR 2006) on every pair of the batch: same-person
  pairs pulled together, different pairs pushed beyond the margin (pml's hinge form on L2).
- ``siamese``: Koch et al. (2015): shared network, P(same) = sigmoid(w . |f1 - f2| + b), binary
  cross-entropy on every pair of the batch (positives weighted up to balance the negatives).
- ``arcface``: Deng et al. (CVPR 2019): additive angular margin 0.5 rad, scale 64.

Every objective may also keep the embedding near the starting model's (``parent_weight`` x
mean(1 - cos)), the guard the metric-learning pilot asked for on small labeled sets.

``OBJECTIVES`` is the one table of them (name -> ``Loss``: how it is built, its default margin,
what it needs from the run): a new loss is an ``Objective`` subclass and one ``OBJECTIVES.add``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from openface_py.recognize.siamese import SiameseHead
from openface_py.registry import Registry

MININGS = ("semihard", "hard", "all")

#: FaceNet's margin on squared L2 distances of unit embeddings (OpenFace's ``-alpha 0.2``).
TRIPLET_MARGIN = 0.2
#: Contrastive margin on (plain) L2 distances of unit embeddings, which lie in [0, 2].
CONTRASTIVE_MARGIN = 1.0
#: ArcFace's published setting: margin 0.5 rad (pml takes degrees), scale 64.
ARCFACE_MARGIN_DEG = math.degrees(0.5)
ARCFACE_SCALE = 64.0
#: Temperature of the cosine softmax under center loss (a scale of 20 on cosines).
SOFTMAX_TEMPERATURE = 0.05


def _pml():
    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ImportError("train-net needs pytorch-metric-learning: pip install pytorch-metric-learning") from exc
    from pytorch_metric_learning import distances, losses, miners

    return distances, losses, miners


def triplet_miner(mining: str, margin: float = TRIPLET_MARGIN):
    """pml's triplet miner on squared L2 distances (the FaceNet definitions in the module doc)."""
    if mining not in MININGS:
        raise ValueError(f"unknown mining {mining!r}; one of {', '.join(MININGS)}")
    distances, _, miners = _pml()
    return miners.TripletMarginMiner(margin=margin, type_of_triplets=mining, distance=distances.LpDistance(power=2))


class Objective(nn.Module):
    """Base: ``forward(embeddings, labels) -> (loss, figures)``; parameters are the loss's own."""

    name = "objective"

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:  # pragma: no cover
        raise NotImplementedError


class TripletObjective(Objective):
    name = "triplet"

    def __init__(self, mining: str = "semihard", margin: float = TRIPLET_MARGIN) -> None:
        super().__init__()
        distances, losses, _ = _pml()
        self.miner = triplet_miner(mining, margin)
        self.loss = losses.TripletMarginLoss(margin=margin, distance=distances.LpDistance(power=2))

    def forward(self, emb, labels):
        triplets = self.miner(emb, labels)
        n = int(triplets[0].numel())
        if n == 0:  # nothing to learn from this batch; keep the graph so backward still works
            return emb.sum() * 0.0, {"triplets": 0}
        return self.loss(emb, labels, triplets), {"triplets": n}


class CenterLoss(nn.Module):
    """Wen et al.'s centre loss: 1/2 mean_i ||x_i - c_{y_i}||^2 with learned centres (pml has none)."""

    def __init__(self, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.centers = nn.Parameter(F.normalize(torch.randn(num_classes, dim), dim=1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((emb - self.centers[labels]) ** 2).sum(dim=1).mean()


class CenterObjective(Objective):
    name = "center"

    def __init__(self, num_classes: int, center_weight: float = 0.1, dim: int = 128) -> None:
        super().__init__()
        _, losses, _ = _pml()
        self.softmax = losses.NormalizedSoftmaxLoss(
            num_classes=num_classes, embedding_size=dim, temperature=SOFTMAX_TEMPERATURE
        )
        self.center = CenterLoss(num_classes, dim)
        self.center_weight = float(center_weight)

    def forward(self, emb, labels):
        soft = self.softmax(emb, labels)
        cen = self.center(emb, labels)
        return soft + self.center_weight * cen, {"softmax": soft.item(), "center": cen.item()}


class ContrastiveObjective(Objective):
    name = "contrastive"

    def __init__(self, margin: float = CONTRASTIVE_MARGIN) -> None:
        super().__init__()
        distances, losses, _ = _pml()
        self.loss = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=margin, distance=distances.LpDistance(power=1))

    def forward(self, emb, labels):
        return self.loss(emb, labels), {}


def batch_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every unordered pair (i < j) of a batch: indices i, j and whether they are the same person."""
    i, j = torch.triu_indices(len(labels), len(labels), offset=1)
    return i, j, labels[i] == labels[j]


class SiameseObjective(Objective):
    name = "siamese"

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.head = SiameseHead(dim)

    def forward(self, emb, labels):
        i, j, same = batch_pairs(labels)
        n_pos = int(same.sum())
        if n_pos == 0:
            return emb.sum() * 0.0, {"pairs": int(len(i))}
        logits = self.head(emb[i], emb[j])
        pos_weight = torch.tensor((len(i) - n_pos) / n_pos, dtype=emb.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, same.to(emb.dtype), pos_weight=pos_weight)
        acc = float(((logits > 0) == same).float().mean())
        return loss, {"pairs": int(len(i)), "pair_accuracy": acc}


class ArcFaceObjective(Objective):
    name = "arcface"

    def __init__(self, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        _, losses, _ = _pml()
        self.loss = losses.ArcFaceLoss(
            num_classes=num_classes, embedding_size=dim, margin=ARCFACE_MARGIN_DEG, scale=ARCFACE_SCALE
        )

    def forward(self, emb, labels):
        return self.loss(emb, labels), {}


@dataclass(frozen=True)
class Loss:
    """A ``--loss`` choice: how its objective is built and what it needs from the run.

    ``build(num_classes, mining, margin, center_weight, dim)`` makes the objective (``margin`` is
    ``None`` when the loss takes none); ``margin`` is the published default margin (``None``: the
    loss has no margin option); ``classifies``: it learns a class per person, so a person with one
    face can train (pair and triplet losses need two); ``verifier``: its head is exported beside
    ``model.pt`` as a P(same) verifier."""

    build: Callable[[int, str, Optional[float], float, int], Objective]
    margin: Optional[float] = None
    classifies: bool = False
    verifier: bool = False


#: ``train-net --loss`` choices, in the order ``--help`` lists them.
OBJECTIVES: Registry[Loss] = Registry("loss")
OBJECTIVES.add("triplet", Loss(lambda c, mining, margin, w, dim: TripletObjective(mining, margin), TRIPLET_MARGIN))
OBJECTIVES.add("center", Loss(lambda c, mining, margin, w, dim: CenterObjective(c, w, dim), classifies=True))
OBJECTIVES.add("contrastive", Loss(lambda c, mining, margin, w, dim: ContrastiveObjective(margin), CONTRASTIVE_MARGIN))
OBJECTIVES.add("siamese", Loss(lambda c, mining, margin, w, dim: SiameseObjective(dim), verifier=True))
OBJECTIVES.add("arcface", Loss(lambda c, mining, margin, w, dim: ArcFaceObjective(c, dim), classifies=True))
LOSSES = OBJECTIVES.names()


def make_objective(
    loss: str,
    num_classes: int,
    mining: str = "semihard",
    margin: Optional[float] = None,
    center_weight: float = 0.1,
    dim: int = 128,
) -> Objective:
    """The objective named ``loss`` (one of ``LOSSES``) for ``num_classes`` training people;
    ``errors.UnknownNameError`` for a name not in ``OBJECTIVES``."""
    entry = OBJECTIVES.get(loss)
    if entry.margin is not None and margin is None:
        margin = entry.margin
    return entry.build(num_classes, mining, margin, center_weight, dim)


def parent_term(emb: torch.Tensor, parent_emb: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos) between the trained and the starting model's embeddings of the same faces."""
    return (1.0 - F.cosine_similarity(emb, parent_emb, dim=1)).mean()
