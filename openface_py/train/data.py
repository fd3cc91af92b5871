"""Labeled aligned faces for ``train-net``: reading, the split by person, P x K batches, pairs.

The input is the output of ``openface-py align``: one sub-folder per person of aligned faces.
Everything random here is a pure function of the seed (and the epoch and batch number), so a
resumed run draws exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.faces.align import AlignmentSpec

log = logging.getLogger(__name__)


@dataclass
class LabeledFaces:
    """Aligned faces in memory: ``faces`` (N, S, S, 3) uint8, ``labels`` (N,) person index."""

    faces: np.ndarray
    labels: np.ndarray
    people: list  # label -> person (sub-folder name)
    paths: list  # relative path of each face
    skipped: list  # (path, reason) of files that could not be used

    def subset(self, people: list) -> LabeledFaces:
        """The faces of ``people`` (names), relabelled 0..len-1 in the given order."""
        index = {p: i for i, p in enumerate(self.people)}
        new = {index[p]: k for k, p in enumerate(people)}
        rows = np.flatnonzero(np.isin(self.labels, list(new)))
        return LabeledFaces(
            self.faces[rows],
            np.array([new[int(v)] for v in self.labels[rows]], dtype=np.int64),
            list(people),
            [self.paths[r] for r in rows],
            [],
        )

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.people))


def read_labeled_faces(aligned_dir: os.PathLike | str, spec: AlignmentSpec) -> LabeledFaces:
    """Read every aligned face below ``aligned_dir`` (one sub-folder per person).

    Refuses a folder whose recorded alignment is not ``spec`` (as ``represent`` does); files of
    another size or that cannot be decoded are skipped and listed in ``skipped``.
    """
    from PIL import Image

    from openface_py.io import list_images
    from openface_py.jobs.batch import ALIGN_META
    from openface_py.jobs.represent import read_align_meta

    root = Path(aligned_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: aligned folder not found")
    have = read_align_meta(root)
    if have is not None and have != spec:
        raise UsageError(
            f"{root} was aligned as {have.identity} but the network needs {spec.identity}; align the photos "
            "for it first ('openface-py align INPUT_DIR OUTPUT_DIR', with --model mobilefacenet-reid-0095 "
            "for MobileFaceNet)"
        )
    if have is None:
        log.warning("%s has no %s: assuming its faces are aligned as %s", root, ALIGN_META, spec.identity)
    faces, labels, paths, skipped = [], [], [], []
    people: dict[str, int] = {}
    for rel in list_images(root):
        if len(rel.parts) < 2:
            skipped.append((str(rel), "not inside a person's sub-folder"))
            continue
        try:
            with Image.open(root / rel) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:  # a damaged file is reported, never fatal
            skipped.append((str(rel), f"cannot decode ({exc.__class__.__name__})"))
            continue
        if rgb.shape[:2] != (spec.size, spec.size):
            skipped.append((str(rel), f"size {rgb.shape[1]}x{rgb.shape[0]}, not {spec.size}x{spec.size}"))
            continue
        person = rel.parts[0]
        labels.append(people.setdefault(person, len(people)))
        faces.append(rgb)
        paths.append(str(rel))
    for path, why in skipped:
        log.warning("%s: skipped: %s", path, why)
    if not faces:
        raise OpenFacePyError(f"{root}: no aligned faces in person sub-folders")
    return LabeledFaces(np.stack(faces), np.array(labels, dtype=np.int64), list(people), paths, skipped)


def split_people(people: list, counts: np.ndarray, val_fraction: float, seed: int) -> tuple[list, list]:
    """(train people, held-out people): a seeded split **by person**; held-out people need >= 2 faces.

    Only people with two or more faces can give same-person pairs, so the held-out share is drawn
    from them; everybody else trains.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-people must be in [0, 1), not {val_fraction}")
    rng = np.random.default_rng([seed, 7])
    eligible = [p for p, c in zip(people, counts) if c >= 2]
    n_val = int(round(val_fraction * len(people)))
    if val_fraction > 0 and n_val < 2:
        n_val = 2
    n_val = min(n_val, max(0, len(eligible) - 2))
    if 0 < n_val < 2:  # one held-out person gives no different-person pairs to score
        log.warning("too few people with 2+ faces for a held-out split (%d): nobody held out", len(eligible))
        n_val = 0
    order = rng.permutation(len(eligible))
    val = sorted(eligible[i] for i in order[:n_val])
    held = set(val)
    return [p for p in people if p not in held], val


class PKSampler:
    """Batches of ``people`` persons x ``images`` faces each, as OpenFace's 15 x 20 (FaceNet's P x K).

    An epoch visits every training person: persons are shuffled and dealt ``people`` at a time;
    each brings ``images`` faces, drawn without replacement when it has that many, otherwise all
    of its faces plus repeats. Persons with a single face are only negatives' company, so they are
    left out of triplet-style batches (they still count for classification losses).
    The order is a pure function of (seed, epoch), which makes resuming exact.
    (pml's ``MPerClassSampler`` draws from a global random state, so a resumed run could not
    reproduce its batches.)
    """

    def __init__(self, labels: np.ndarray, people: int, images: int, seed: int, min_images: int = 2) -> None:
        if people < 2 or images < 1:
            raise UsageError("batches need at least 2 people and 1 image per person")
        self.by_person = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        self.persons = [c for c, rows in enumerate(self.by_person) if len(rows) >= min_images]
        if len(self.persons) < 2:
            raise UsageError(f"training needs at least 2 people with {min_images}+ faces; found {len(self.persons)}")
        self.people, self.images, self.seed = min(people, len(self.persons)), images, seed

    def __len__(self) -> int:
        return (len(self.persons) + self.people - 1) // self.people

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Row indices of batch ``index`` of ``epoch``."""
        order = np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.persons))
        start = index * self.people
        chosen = [self.persons[i] for i in order[start : start + self.people]]
        if len(chosen) < self.people:  # the last batch is topped up from the epoch's start
            chosen += [self.persons[i] for i in order[: self.people - len(chosen)]]
        rng = np.random.default_rng([self.seed, epoch, 1, index])
        rows = []
        for c in chosen:
            mine = self.by_person[c]
            if len(mine) >= self.images:
                rows.extend(rng.choice(mine, self.images, replace=False))
            else:
                rows.extend(mine)
                rows.extend(rng.choice(mine, self.images - len(mine), replace=True))
        return np.asarray(rows, dtype=np.int64)


#: Up to this many pairs (about 4,500 faces) every pair is enumerated; above, different pairs are sampled.
EXACT_PAIRS = 10_000_000


@dataclass
class PairSet:
    """Verification pairs over a set of faces: every same-person pair and sampled different ones."""

    a: np.ndarray
    b: np.ndarray
    same: np.ndarray
    folds: np.ndarray


def verification_pairs(labels: np.ndarray, seed: int, max_pairs: int = 200_000) -> PairSet:
    """All same-person pairs (up to half of ``max_pairs``) and an equal number of different pairs
    (at least 10,000 where there are that many, so TAR@FAR=1e-3 rests on enough impostors), in 10
    seeded folds."""
    rng = np.random.default_rng([seed, 11])
    n = len(labels)
    if n * (n - 1) // 2 <= EXACT_PAIRS:  # small sets: enumerate every pair
        i, j = np.triu_indices(n, k=1)
        same = labels[i] == labels[j]
        pos = np.flatnonzero(same)
        if len(pos) > max_pairs // 2:
            pos = np.sort(rng.choice(pos, max_pairs // 2, replace=False))
        neg_all = np.flatnonzero(~same)
        n_neg = min(len(neg_all), max(len(pos), 10_000))
        neg = np.sort(rng.choice(neg_all, n_neg, replace=False))
        rows = np.concatenate([pos, neg])
        folds = rng.permutation(len(rows)) % 10
        return PairSet(i[rows], j[rows], same[rows], folds)
    # large sets: same pairs person by person, different pairs drawn at random (memory ~ pairs kept)
    pi, pj = [], []
    for c in np.unique(labels):
        mine = np.flatnonzero(labels == c)
        a, b = np.triu_indices(len(mine), k=1)
        pi.append(mine[a])
        pj.append(mine[b])
    pi, pj = np.concatenate(pi), np.concatenate(pj)
    if len(pi) > max_pairs // 2:
        keep = np.sort(rng.choice(len(pi), max_pairs // 2, replace=False))
        pi, pj = pi[keep], pj[keep]
    n_neg = max(len(pi), 10_000)
    found: set = set()
    while len(found) < n_neg:
        a, b = rng.integers(0, n, size=(2, 2 * n_neg))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        ok = (lo != hi) & (labels[lo] != labels[hi])
        for x, y in zip(lo[ok], hi[ok]):
            found.add((int(x), int(y)))
            if len(found) == n_neg:
                break
    ni, nj = np.array(sorted(found)).T
    i, j = np.concatenate([pi, ni]), np.concatenate([pj, nj])
    same = np.concatenate([np.ones(len(pi), bool), np.zeros(len(ni), bool)])
    return PairSet(i, j, same, rng.permutation(len(i)) % 10)


def balanced(pairs: PairSet, seed: int) -> np.ndarray:
    """Indices of all same pairs and as many different ones (for accuracy, as LFW's 50/50 folds)."""
    pos, neg = np.flatnonzero(pairs.same), np.flatnonzero(~pairs.same)
    rng = np.random.default_rng([seed, 13])
    k = min(len(pos), len(neg))
    return np.sort(np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)]))


def describe(faces: LabeledFaces, people: Optional[list] = None) -> dict:
    """People and photo counts (for training.json)."""
    counts = faces.counts()
    return {
        "people": int(len(faces.people) if people is None else len(people)),
        "photos": int(len(faces.labels)),
        "photos_per_person_median": float(np.median(counts)) if len(counts) else 0.0,
        "people_with_one_photo": int((counts == 1).sum()),
    }
