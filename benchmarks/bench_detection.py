"""Detection strategies on LFW: recall (a face found) and cost per photo, on this machine.

Usage: python benchmarks/bench_detection.py [--images DIR] [--limit N] [--workers 2] [--cnn N]

DIR defaults to LFW's deep-funneled images (../shared/datasets/lfw/deepfunneled, 13,233
photos of 250x250). Strategies: HOG at upsample 1 (OpenFace's, the reference), HOG at
upsample 0, ``hog-adaptive`` (upsample 0, then 1 only where nothing was found), and with
``--cnn N`` dlib's CNN (MMOD) on the first N photos. OpenFace reports that dlib's HOG found no
face in 58 of the 13,233 *raw* LFW photos (it then used the deep-funneled crops).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stages import machine_info  # noqa: E402

from openface_py.faces.detect import make_detector  # noqa: E402
from openface_py.io import list_images, load_image  # noqa: E402
from openface_py.jobs.parallel import mapped  # noqa: E402

LFW_IMAGES = ROOT.parent / "shared" / "datasets" / "lfw" / "deepfunneled"


class _Count:
    def __init__(self, root: str, name: str, upsample: int) -> None:
        self.root, self.det = root, make_detector(name, upsample=upsample)

    def __call__(self, rel: str) -> tuple[str, bool, float]:
        rgb = load_image(Path(self.root) / rel)
        t = time.perf_counter()
        found = bool(self.det.detect(rgb))
        return rel, found, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=LFW_IMAGES)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cnn", type=int, default=0, help="also run the CNN detector on the first N photos")
    args = ap.parse_args()
    print(machine_info())
    rels = [r.as_posix() for r in list_images(args.images)][: args.limit]
    print(f"photos: {len(rels)} from {args.images}\n")
    strategies = [("hog", 1), ("hog", 0), ("hog-adaptive", 1)] + ([("cnn", 0)] if args.cnn else [])
    ref_ms = None
    for name, up in strategies:
        todo = rels[: args.cnn] if name == "cnn" else rels
        missed, cost = [], 0.0
        t0 = time.perf_counter()
        with mapped(_Count, (str(args.images), name, up), todo, args.workers, ordered=False) as res:
            for rel, found, secs in res:
                cost += secs
                if not found:
                    missed.append(rel)
        wall = time.perf_counter() - t0
        ms = 1000 * cost / len(todo)
        ratio = f"x{ref_ms / ms:.2f} faster than reference" if ref_ms else "(reference: OpenFace's)"
        ref_ms = ref_ms or ms
        label = f"{name} upsample {up}" if name != "hog-adaptive" else "hog-adaptive (0, then 1 if none)"
        print(
            f"{label:36s} found {len(todo) - len(missed):6d}/{len(todo)} (recall {1 - len(missed) / len(todo):.4f}), "
            f"missed {len(missed):4d}; {ms:6.2f} ms/photo detection alone {ratio}; wall {wall:.0f} s "
            f"with {args.workers} workers"
        )
        if missed:
            print("    missed e.g.: " + ", ".join(missed[:5]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
