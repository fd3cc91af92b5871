"""Stage throughput on this machine: detect, align (photos/s) and embed (faces/s).

Usage: python benchmarks/bench_stages.py [--photos data/lfw-sample] [--repeat 3]

Prints machine info, then one line per measurement with images/s and ms/image, and the
ratio to a reference measured in the same run (align: the 1-process path; embed: the same
embedder at batch 1). NN4-small2 is timed with the default model (`openface-py models list`:
the official nn4.small2.v1 if downloaded, else the shipped nn4.small2.distilled-v2), eager.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openface_py.faces.align import dlib_chip_spec, make_aligner, openface_spec  # noqa: E402
from openface_py.faces.detect import HogDetector  # noqa: E402
from openface_py.io import list_images, load_image  # noqa: E402
from openface_py.jobs.batch import align_folder  # noqa: E402
from openface_py.nets.embed import best_installed_model, load_embedder  # noqa: E402
from openface_py.nets.embedders import DlibResnetEmbedder  # noqa: E402


def machine_info() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeat: int) -> float:
    """Best wall time of ``repeat`` runs (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def report(label: str, n: int, seconds: float, ref: float | None = None, unit: str = "images") -> float:
    rate = n / seconds
    ratio = f"  x{rate / ref:.2f} vs reference" if ref else "  (reference)"
    print(f"{label:58s} {rate:8.1f} {unit}/s {1000 * seconds / n:8.2f} ms/{unit[:-1]}{ratio}")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=ROOT / "data" / "lfw-sample")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(machine_info())
    rels = list_images(args.photos)
    photos = [load_image(args.photos / r) for r in rels]
    print(f"photos: {len(photos)} from {args.photos} ({photos[0].shape[1]}x{photos[0].shape[0]})\n")

    print("== detection (dlib HOG, decoded photos in memory)")
    ref = None
    for up in (0, 1):
        det = HogDetector(upsample=up)
        secs = timed(lambda d=det: [d.detect(p) for p in photos], args.repeat)
        rate = report(f"HOG detect, upsample {up}", len(photos), secs, ref)
        ref = ref or rate

    print("\n== align (detect upsample 1 + landmarks + warp, in memory)")
    det = HogDetector(upsample=1)
    boxes = [det.detect(p)[0].box for p in photos]
    for spec in (openface_spec(), dlib_chip_spec()):
        al = make_aligner(spec)
        report(
            f"landmarks + warp only: {spec.identity}",
            len(photos),
            timed(lambda a=al: [a.align(p, b) for p, b in zip(photos, boxes)], args.repeat),
        )

    print("\n== align_folder (decode + detect + align + PNG write), photos/s")
    ref = None
    for workers in (1, 2):

        def run(w=workers):
            out = Path(tempfile.mkdtemp(prefix="bench-align-"))
            try:
                align_folder(args.photos, out, openface_spec(), workers=w, progress=False)
            finally:
                shutil.rmtree(out)

        rate = report(f"align_folder openface 96, {workers} worker(s)", len(rels), timed(run, 1), ref, "photos")
        ref = ref or rate

    print("\n== embed (aligned faces in memory), faces/s")
    faces96 = [make_aligner(openface_spec()).align(p, b).image for p, b in zip(photos, boxes)]
    faces150 = [make_aligner(dlib_chip_spec()).align(p, b).image for p, b in zip(photos, boxes)]
    nn4_label = best_installed_model()
    nn4 = load_embedder(nn4_label, backend="eager")
    nn4_label += " (eager)"
    batch = np.stack(faces96 * 2)[:128]
    for name, emb, faces in ((nn4_label, nn4, list(batch)), ("dlib-resnet-v1", DlibResnetEmbedder(), faces150[:64])):
        emb.embed(faces[:8])  # warm-up
        ref = None
        for bs in (1, 32):
            rate = report(
                f"{name}, batch {bs}",
                len(faces),
                timed(lambda e=emb, f=faces, b=bs: e.embed(f, batch_size=b), args.repeat),
                ref,
                "faces",
            )
            ref = ref or rate

    print(f"\npeak RSS: {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
