"""LFW view-2 verification with dlib-resnet-v1 embeddings: squared L2 vs Joint Bayesian.

Usage: python benchmarks/lfw_verification.py [--lfw ../shared/datasets/lfw] [--cache build/lfw-dlib.npz]

Embeds every image named in pairs.txt once (largest face found by HOG at upsample 1; where none
is found, the central 110x110 box of the 250x250 deep-funneled photo is used, as OpenFace fell
back to the funneled crop), caching the embeddings (resumable). Then, for each of the 10
folds: the squared-L2 threshold is chosen on the 9 other folds' pairs; a Joint Bayesian model
is fitted on the 9 other folds' images (identities = LFW names; no person of the test fold is
in its training data only if LFW's folds are person-disjoint, which they are) and its
threshold chosen on their pairs. Prints mean +- std accuracy for both.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openface_py.align import make_aligner  # noqa: E402
from openface_py.classify import best_split_threshold  # noqa: E402
from openface_py.detect import BoundingBox, HogDetector  # noqa: E402
from openface_py.embed import DlibResnetEmbedder  # noqa: E402
from openface_py.io import atomic_write_bytes, load_image  # noqa: E402
from openface_py.jointbayes import JointBayesian  # noqa: E402
from openface_py.lfw import image_name, parse_pairs  # noqa: E402

FALLBACK_BOX = BoundingBox(70, 70, 179, 179)


def load_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        names = json.loads(str(z["names"]))
        return dict(zip(names, z["reps"]))


def save_cache(path: Path, cache: dict[str, np.ndarray], fallbacks: list[str]) -> None:
    buf = io.BytesIO()
    names = sorted(cache)
    np.savez(
        buf,
        reps=np.stack([cache[n] for n in names]),
        names=np.array(json.dumps(names)),
        fallbacks=np.array(json.dumps(sorted(fallbacks))),
    )
    atomic_write_bytes(path, buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "datasets" / "lfw")
    ap.add_argument("--images", default="deepfunneled")
    ap.add_argument("--cache", type=Path, default=ROOT / "build" / "lfw-dlib.npz")
    args = ap.parse_args()
    pairs, n_folds, _ = parse_pairs(args.lfw / "pairs.txt")
    needed = sorted({image_name(p.name1, p.num1) for p in pairs} | {image_name(p.name2, p.num2) for p in pairs})
    cache = load_cache(args.cache)
    fallbacks: list[str] = []
    if args.cache.is_file():
        with np.load(args.cache, allow_pickle=False) as z:
            fallbacks = json.loads(str(z["fallbacks"]))
    todo = [n for n in needed if n not in cache]
    print(f"{len(needed)} images in pairs.txt, {len(todo)} to embed", flush=True)
    if todo:
        det, emb = HogDetector(upsample=1), DlibResnetEmbedder()
        aligner = make_aligner(emb.alignment)
        t0 = time.time()
        for k, name in enumerate(todo, 1):
            rgb = load_image(args.lfw / args.images / name)
            dets = det.detect(rgb)
            if dets:
                box = max(dets, key=lambda d: d.box.area).box
            else:
                box = FALLBACK_BOX
                fallbacks.append(name)
            cache[name] = emb.embed([aligner.align(rgb, box).image])[0]
            if k % 500 == 0 or k == len(todo):
                save_cache(args.cache, cache, fallbacks)
                print(f"  {k}/{len(todo)} embedded ({k / (time.time() - t0):.1f}/s)", flush=True)
    print(f"no face found (central-box fallback): {len(fallbacks)} of {len(needed)} images")

    rep = lambda name, num: cache[image_name(name, num)]  # noqa: E731
    X1 = np.stack([rep(p.name1, p.num1) for p in pairs]).astype(np.float64)
    X2 = np.stack([rep(p.name2, p.num2) for p in pairs]).astype(np.float64)
    same = np.array([p.same for p in pairs])
    fold = np.array([p.fold for p in pairs])
    d2 = ((X1 - X2) ** 2).sum(axis=1)
    acc_l2, acc_jb = [], []
    for f in range(n_folds):
        tr, te = fold != f, fold == f
        t, _ = best_split_threshold(-d2[tr & same], -d2[tr & ~same])
        acc_l2.append(((-d2[te] > t) == same[te]).mean())
        # JB training set: every image of the training folds' pairs, labelled by person
        imgs = {}
        for p, keep in zip(pairs, tr):
            if keep:
                imgs[image_name(p.name1, p.num1)] = p.name1
                imgs[image_name(p.name2, p.num2)] = p.name2
        names = sorted(imgs)
        jb = JointBayesian().fit(np.stack([cache[n] for n in names]), np.array([imgs[n] for n in names]))
        r = jb.score(X1, X2)
        tj, _ = best_split_threshold(r[tr & same], r[tr & ~same])
        acc_jb.append(((r[te] > tj) == same[te]).mean())
        print(
            f"fold {f + 1}: squared L2 {acc_l2[-1]:.4f} (t={-t:.3f})  Joint Bayesian {acc_jb[-1]:.4f}"
            f" (trained on {len(names)} images of {len(set(imgs.values()))} people)",
            flush=True,
        )
    print(f"squared L2      Accuracy: {np.mean(acc_l2):.4f} +- {np.std(acc_l2):.4f}")
    print(f"Joint Bayesian  Accuracy: {np.mean(acc_jb):.4f} +- {np.std(acc_jb):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
