"""Detectors compared: recall (a face found) and cost per photo, on this machine, in one run.

Usage:
  python benchmarks/bench_detection.py [--images DIR ...] [--limit N] [--workers 2] [--cnn N]
                                       [--detectors hog,hog-adaptive,mtcnn,hog-mtcnn,cnn] [--json OUT]
  python benchmarks/bench_detection.py --calibrate DIR [--limit N]

Each ``--images`` folder is one photo set in which every photo shows at least one face, so a
photo where a detector finds nothing is a miss (recall = photos with a face found / photos).
Default: LFW's 13,233 deep-funneled photos (../shared/datasets/lfw/deepfunneled). ``--roll
D1,D2`` adds copies of each set turned in the image plane by those angles (tilted heads);
``--max-side N`` detects on copies no larger than N pixels (in-the-wild photos of several
megapixels, as ``run --max-side``).
Strategies: HOG at upsample 1 (OpenFace's, the reference), ``hog-adaptive`` (upsample 0, then 1
where nothing was found), MTCNN (min face 20), the ``hog-mtcnn`` cascade (hog-adaptive, MTCNN
where it finds nothing) and, on the first ``--cnn N`` photos of a set, dlib's CNN (MMOD, upsample
0) with every other strategy measured again on the same photos for the speed comparison.
ms/photo is detection alone (decoding excluded), summed over the workers' photos.

``--calibrate DIR`` measures how MTCNN's box maps to the box dlib's HOG detector gives the
same face (median centre offset and side, relative to MTCNN's box) on photos where HOG finds
exactly one face; ``faces.align.MTCNN_TO_DLIB_BOX`` holds the figures from 500 CelebA photos.
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

from bench_stages import machine_info, peak_rss_mb  # noqa: E402

from openface_py.faces.detect import DetectorSpec  # noqa: E402
from openface_py.io import list_images, load_image  # noqa: E402
from openface_py.jobs.parallel import mapped  # noqa: E402

LFW_IMAGES = ROOT.parent / "shared" / "datasets" / "lfw" / "deepfunneled"
UPSAMPLE = {"hog": 1, "hog-adaptive": 1, "mtcnn": 1, "hog-mtcnn": 1, "cnn": 0}


def _turned(rgb: np.ndarray, degrees: float) -> np.ndarray:
    import cv2

    if not degrees:
        return rgb
    h, w = rgb.shape[:2]
    R = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, R, (w, h), borderMode=cv2.BORDER_REPLICATE)


class _Count:
    def __init__(self, root: str, name: str, roll: float, max_side: int | None = None) -> None:
        self.root, self.roll = root, roll
        self.det = DetectorSpec(name, upsample=UPSAMPLE[name], max_side=max_side).make()

    def __call__(self, rel: str) -> tuple[str, int, float, str]:
        rgb = _turned(load_image(Path(self.root) / rel), self.roll)
        t = time.perf_counter()
        found = self.det.detect(rgb)
        by = found[0].found_by if found else ""
        return rel, len(found), time.perf_counter() - t, by


def measure(root: Path, rels: list[str], name: str, workers: int, roll: float = 0.0, max_side=None) -> dict:
    missed, cost, faces, by_mtcnn = [], 0.0, 0, 0
    t0 = time.perf_counter()
    with mapped(_Count, (str(root), name, roll, max_side), rels, workers, ordered=False) as res:
        for rel, n, secs, by in res:
            cost += secs
            faces += n
            by_mtcnn += by == "mtcnn" and name == "hog-mtcnn"
            if not n:
                missed.append(rel)
    return {
        "detector": name,
        "photos": len(rels),
        "found": len(rels) - len(missed),
        "recall": round(1 - len(missed) / len(rels), 4),
        "faces": faces,
        "ms_per_photo": round(1000 * cost / len(rels), 2),
        "wall_s": round(time.perf_counter() - t0, 1),
        **({"found_by_mtcnn": by_mtcnn} if name == "hog-mtcnn" else {}),
        "missed_examples": sorted(missed)[:5],
    }


def calibrate(root: Path, limit: int) -> dict:
    """Median MTCNN -> HOG box mapping (see the module docstring)."""
    hog, mt = DetectorSpec("hog").make(), DetectorSpec("mtcnn").make()
    rel = []
    for p in list_images(root)[:limit]:
        img = load_image(root / p)
        h, m = hog.detect(img), mt.detect(img)
        if len(h) != 1 or not m:
            continue
        hb = h[0].box
        mb = min(m, key=lambda d: abs(d.box.center[0] - hb.center[0]) + abs(d.box.center[1] - hb.center[1])).box
        if abs(hb.center[0] - mb.center[0]) > 0.3 * hb.width:
            continue
        side = (hb.width + hb.height) / 2
        rel.append(
            [(hb.center[0] - mb.center[0]) / mb.width, (hb.center[1] - mb.center[1]) / mb.height,
             side / mb.width, side / mb.height]
        )  # fmt: skip
    med = np.median(np.array(rel), axis=0)
    return {"photos": len(rel), "dx": round(med[0], 4), "dy": round(med[1], 4), "sw": round(med[2], 4),
            "sh": round(med[3], 4)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, nargs="+", default=[LFW_IMAGES])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cnn", type=int, default=0, help="dlib's CNN (and the others again) on the first N photos")
    ap.add_argument("--detectors", default="hog,hog-adaptive,mtcnn,hog-mtcnn")
    ap.add_argument("--roll", default="", help="also each set turned by these angles, e.g. 30,45")
    ap.add_argument("--max-side", type=int, default=None, help="detect on copies downscaled to this longer side")
    ap.add_argument("--calibrate", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    print(machine_info())
    if args.calibrate:
        print(json.dumps(calibrate(args.calibrate, args.limit or 500)))
        return 0
    results = []
    rolls = [0.0] + [float(r) for r in args.roll.split(",") if r]
    for root in args.images:
        all_rels = [r.as_posix() for r in list_images(root)][: args.limit]
        for roll in rolls:
            label = f"{root}" + (f" turned {roll:g} degrees" if roll else "")
            print(f"\n{label}: {len(all_rels)} photos")
            plans = [(name, all_rels) for name in args.detectors.split(",")]
            if args.cnn:
                plans += [(name, all_rels[: args.cnn]) for name in args.detectors.split(",") + ["cnn"]]
            for name, rels in plans:
                r = {"set": label, **measure(root, rels, name, args.workers, roll, args.max_side)}
                results.append(r)
                extra = f", {r['found_by_mtcnn']} by MTCNN" if "found_by_mtcnn" in r else ""
                print(
                    f"  {name:13s} {r['photos']:6d} photos: found {r['found']:6d} (recall {r['recall']:.4f}{extra}), "
                    f"{r['faces']} faces, {r['ms_per_photo']:7.2f} ms/photo, wall {r['wall_s']} s"
                )
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_info(), "workers": args.workers, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
