"""Train and predict times of every classifier for 10 / 100 / 1000 people.

Usage: python benchmarks/bench_classify.py [--people 10 100 1000] [--photos 10] [--budget 300]

Data: synthetic 128-D unit-length embeddings drawn from a Joint-Bayesian-style model
(identity centre + within-person noise, renormalised) whose same/different distances resemble
dlib-resnet-v1's on the sample photos (same ~0.2, different ~0.6 squared L2). Reported per
classifier: fit time on all photos (``fit``), the whole ``train_model`` (cross-validation +
unknown-threshold search + fit) where it fits the time budget, prediction time per probe, and
closed-set accuracy on one extra held-out photo per person. A configuration whose fit exceeds
``--budget`` seconds at a smaller size is skipped at the larger ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openface_py.recognize.classifiers import CLASSIFIER_NAMES, make_classifier  # noqa: E402
from openface_py.recognize.classify import train_model  # noqa: E402


def synthetic(n_people: int, photos: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=128)
    base /= np.linalg.norm(base)
    # people spread around a common direction (cosine ~0.7 between two people, as real
    # embeddings occupy a cone, not the whole sphere), photos around each person
    centres = base + rng.normal(scale=0.65 / np.sqrt(128), size=(n_people, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = np.repeat(centres, photos, axis=0) + rng.normal(scale=0.028, size=(n_people * photos, 128))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.repeat(np.arange(n_people), photos)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--photos", type=int, default=10, help="training photos per person")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds; slower fits are not repeated at larger sizes")
    ap.add_argument("--classifiers", nargs="+", default=list(CLASSIFIER_NAMES))
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    too_slow: set[str] = set()
    print(f"{'classifier':14s} {'people':>6s} {'fit s':>8s} {'train_model s':>13s} {'ms/probe':>9s} {'acc':>6s}")
    for n in args.people:
        X, y = synthetic(n, args.photos + 1)
        last = np.r_[np.diff(y) != 0, True]  # one held-out photo per person
        Xtr, ytr, Xte, yte = X[~last], y[~last], X[last], y[last]
        d = ((Xtr[ytr == 0][0] - Xtr[ytr == 0][1]) ** 2).sum(), ((Xtr[ytr == 0][0] - Xtr[ytr == 1][0]) ** 2).sum()
        print(f"-- {n} people x {args.photos} photos (e.g. same {d[0]:.2f}, different {d[1]:.2f} squared L2)")
        for name in args.classifiers:
            if name in too_slow:
                print(f"{name:14s} {n:6d}   skipped (over the {args.budget:.0f} s budget at a smaller size)")
                continue
            t = time.perf_counter()
            clf = make_classifier(name).fit(Xtr, ytr)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            pred = clf.decide(Xte)[0]
            ms = 1000 * (time.perf_counter() - t) / len(Xte)
            acc = (pred == yte).mean()
            full = "-"
            if fit_s * 12 < args.budget:  # train_model fits about 1 + 5 + 10 times
                t = time.perf_counter()
                train_model(Xtr, [str(v) for v in ytr], name, "synthetic", "synthetic", {})
                full = f"{time.perf_counter() - t:.2f}"
            print(f"{name:14s} {n:6d} {fit_s:8.2f} {full:>13s} {ms:9.3f} {acc:6.3f}", flush=True)
            if fit_s > args.budget / 10:
                too_slow.add(name)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
