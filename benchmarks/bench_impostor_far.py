"""How often two different people come within a distance: the impostor curve behind `identify`'s
open-set threshold (``recognize.verify.identification_threshold``).

Usage: python benchmarks/bench_impostor_far.py LFW_OUTPUT_DIR [--flip]

LFW_OUTPUT_DIR is the ``-o`` folder of an ``openface-py lfw`` run; its embedding cache holds every
view-2 pair image (7,701 deep-funneled photos of 4,281 people). Every pair of images of two
different people (about 29.6 million) is an impostor pair, every pair of one person's images a
genuine one. Printed: the squared L2 distance at which a fraction FAR of impostor pairs are at or
below it, for FAR = 1e-2 .. 1e-5, and the fraction of genuine pairs accepted there (TAR); the
``(threshold, FAR)`` points are what ``nets/catalog.py`` records for a model as ``impostor_far``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stages import machine_info  # noqa: E402

FARS = (1e-2, 1e-3, 1e-4, 1e-5)


def distances(reps: np.ndarray, people: np.ndarray, block: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) squared L2 distances over every unordered pair of rows."""
    reps = reps.astype(np.float64)
    sq = (reps**2).sum(axis=1)
    genuine, impostor = [], []
    for i in range(0, len(reps), block):
        d = sq[i : i + block, None] + sq[None, :] - 2.0 * reps[i : i + block] @ reps.T
        for k in range(d.shape[0]):
            r = i + k
            later = slice(r + 1, None)
            same = people[later] == people[r]
            genuine.append(d[k, later][same])
            impostor.append(d[k, later][~same])
    return np.concatenate(genuine), np.concatenate(impostor)


def main() -> int:
    from openface_py.io import load_npz

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lfw_output", type=Path)
    ap.add_argument("--flip", action="store_true", help="mirror-averaged embeddings")
    args = ap.parse_args()
    print(machine_info())
    caches = sorted(args.lfw_output.glob("embeddings-*.npz"))
    if len(caches) != 1:
        print(f"expected one embedding cache in {args.lfw_output}, found {len(caches)}", file=sys.stderr)
        return 2
    saved = load_npz(caches[0], json_keys=("meta",))
    meta = saved["meta"]
    reps = saved["reps"]
    if args.flip:
        reps = reps + saved["reps_flip"]
        reps = reps / np.linalg.norm(reps, axis=1, keepdims=True)
    names = meta["names"]
    people = np.array([n.split("/")[0] for n in names])
    print(f"cache: {caches[0].name}; model {meta['identity']}; {len(names)} images of {len(set(people))} people")
    t0 = time.perf_counter()
    genuine, impostor = distances(reps, people)
    print(f"{len(genuine)} genuine, {len(impostor)} impostor pairs ({time.perf_counter() - t0:.1f} s)")
    points = []
    print(f"{'FAR':>8s} {'threshold':>10s} {'TAR':>7s}")
    for far in FARS:
        t = float(np.quantile(impostor, far))
        points.append((round(t, 4), far))
        print(f"{far:8.0e} {t:10.4f} {np.mean(genuine <= t):7.4f}")
    print("impostor_far = " + json.dumps(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
