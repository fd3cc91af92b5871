"""Keep LFW's evaluation people and photos out of the distillation training set.

Two checks of every cached training photo against every image of LFW's ``pairs.txt``
(the ``lfw-pairs`` source of the cache):

* **same person** (the teacher decides): the smallest dlib-ResNet distance ``d1`` to any LFW
  pairs image is below ``--identity-threshold`` and clearly smaller than the distance ``d2`` to
  the nearest image of any *other* LFW person (``d1 < --ratio x d2``): a real match stands out,
  a chance resemblance among thousands of faces does not. Measured on LFW's own pairs images
  (another photo of the same person vs. the nearest stranger), 0.5 / 0.95 finds 85.6% of
  same-person photos and flags 13.5% of strangers (0.5 alone: 87.8% / 26.4%). Where identities
  are known (CelebA's ``identity_CelebA.txt``), every photo of an identity goes when at least
  half of its photos are flagged.
* **near-duplicate photo**: a 64-bit DCT perceptual hash of the aligned 96x96 face is within
  ``--hash-distance`` bits of an LFW pairs face's hash (hashing the aligned face makes the
  check independent of how the photo was cropped).

Writes ``keep.json`` in the cache: the kept names per source, every dropped photo with its
reason and distances, and the counts.

    python -m openface_py.train.leakage --cache DIR [--identities SOURCE=identity_CelebA.txt ...]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.io import atomic_write_text
from openface_py.metrics import pairwise_sq_l2
from openface_py.train.prepare import LFW_SOURCE, load_shards

log = logging.getLogger(__name__)


def phash(faces: np.ndarray) -> np.ndarray:
    """64-bit DCT perceptual hashes of RGB uint8 faces (N, H, W, 3) -> (N,) uint64.

    Gray 32x32 (area resampling), 2-D DCT, the 8x8 lowest frequencies; a bit is set where a
    coefficient exceeds their median (Zauner, "Implementation and benchmarking of perceptual
    image hash functions", 2010).
    """
    import cv2

    out = np.zeros(len(faces), dtype=np.uint64)
    weights = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)
    for i, f in enumerate(faces):
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(small)[:8, :8].ravel()
        bits = (low > np.median(low)).astype(np.uint64)
        out[i] = np.bitwise_or.reduce(bits * weights)
    return out


def min_hamming(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each hash in ``a`` the smallest Hamming distance to any hash in ``b``."""
    out = np.empty(len(a), dtype=np.int64)
    for i in range(0, len(a), chunk):
        x = np.bitwise_xor(a[i : i + chunk, None], b[None, :])
        out[i : i + chunk] = np.bitwise_count(x).min(axis=1)
    return out


def min_distance(
    a: np.ndarray, b: np.ndarray, groups: Optional[np.ndarray] = None, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``a``: the smallest L2 distance to a row of ``b``, that row's index, and
    the smallest distance to a row of ``b`` in another group than that row's (``groups``: one
    label per row of ``b``, e.g. the person; inf without groups or other groups)."""
    d1, j1, d2 = np.empty(len(a)), np.empty(len(a), dtype=np.int64), np.full(len(a), np.inf)
    for i in range(0, len(a), chunk):
        x = a[i : i + chunk]
        dd = np.sqrt(pairwise_sq_l2(x, b))
        j = dd.argmin(1)
        d1[i : i + chunk] = dd[np.arange(len(x)), j]
        j1[i : i + chunk] = j
        if groups is not None:
            other = groups[None, :] != groups[j][:, None]
            d2[i : i + chunk] = np.where(other, dd, np.inf).min(1)
    return d1, j1, d2


def read_identities(path: Path) -> dict[str, str]:
    """CelebA's ``identity_CelebA.txt`` (``file identity`` per line; a header line is skipped)."""
    ids = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) == 2 and f[1].isdigit():
            ids[f[0]] = f[1]
    return ids


def find_leaks(
    cache: Path,
    identity_threshold: float = 0.5,
    hash_distance: int = 4,
    identities: Optional[dict[str, Path]] = None,
    ratio: float = 0.95,
) -> dict:
    """Check every training source in ``cache`` against ``lfw-pairs``; returns the keep.json content."""
    lfw = load_shards(cache / LFW_SOURCE)
    lfw_hash = phash(lfw["crops"])
    people = np.array([str(n).split("/")[0] for n in lfw["names"]])
    identities = identities or {}
    keep, dropped, summary = {}, {}, {}
    for folder in sorted(p for p in cache.iterdir() if p.is_dir() and p.name != LFW_SOURCE):
        src = folder.name
        d = load_shards(folder)
        names = [str(n) for n in d["names"]]
        dist, nearest, other = min_distance(d["teacher"], lfw["teacher"], people)
        ham = min_hamming(phash(d["crops"]), lfw_hash)
        same = (dist < identity_threshold) & (dist < ratio * other)
        dup = ham <= hash_distance
        by_identity = np.zeros(len(names), dtype=bool)
        if src in identities:
            ids = read_identities(identities[src])
            who = [ids.get(Path(n).name) for n in names]
            total, hits = Counter(who), Counter(w for w, s in zip(who, same) if s)
            flagged = {w for w in hits if w is not None and 2 * hits[w] >= total[w]}
            by_identity = np.array([w in flagged for w in who]) & ~same
        drop = same | dup | by_identity
        keep[src] = [n for n, x in zip(names, drop) if not x]
        dropped[src] = [
            {
                "name": n,
                "reasons": [
                    r
                    for r, flag in (
                        ("same-person", same[i]),
                        ("near-duplicate", dup[i]),
                        ("identity-of-flagged-photo", by_identity[i]),
                    )
                    if flag
                ],
                "teacher_distance": round(float(dist[i]), 4),
                "next_person_distance": round(float(other[i]), 4),
                "nearest_lfw": str(lfw["names"][nearest[i]]),
                "hash_distance": int(ham[i]),
            }
            for i, n in enumerate(names)
            if drop[i]
        ]
        summary[src] = {
            "photos": len(names),
            "kept": len(keep[src]),
            "same_person": int(same.sum()),
            "near_duplicate": int(dup.sum()),
            "near_duplicate_not_same_person": int((dup & ~same).sum()),
            "identity_of_flagged_photo": int(by_identity.sum()),
            "teacher_distance_quantiles": {q: round(float(np.quantile(dist, q)), 4) for q in (0.001, 0.01, 0.05, 0.5)},
        }
        log.info("%s: %s", src, json.dumps(summary[src]))
    return {
        "settings": {
            "identity_threshold": identity_threshold,
            "hash_distance": hash_distance,
            "identities": {k: str(v) for k, v in identities.items()},
            "lfw_images": len(lfw["names"]),
        },
        "summary": summary,
        "keep": keep,
        "dropped": dropped,
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openface_py.train.leakage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--identity-threshold", type=float, default=0.5, help="dlib ResNet L2 distance (default 0.5)")
    ap.add_argument("--ratio", type=float, default=0.95, help="nearest LFW person vs the next one (default 0.95)")
    ap.add_argument("--hash-distance", type=int, default=4, help="max Hamming distance of a near-duplicate (of 64)")
    ap.add_argument("--identities", action="append", default=[], help="SOURCE=identity file (CelebA format)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    ids = {}
    for spec in args.identities:
        src, _, path = spec.partition("=")
        ids[src] = Path(path)
    result = find_leaks(args.cache, args.identity_threshold, args.hash_distance, ids, args.ratio)
    atomic_write_text(args.cache / "keep.json", json.dumps(result, indent=1))
    log.info("wrote %s", args.cache / "keep.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
