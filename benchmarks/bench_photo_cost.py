"""Cost of one large photo (issue 23): wall time and memory of load + detect + align + embed.

Usage: python benchmarks/bench_photo_cost.py [--out build/photo-cost] [--only webp,png,jpeg]
       python benchmarks/bench_photo_cost.py --shapes [--detector cnn]

Generates the issue's files (a WebP of 16000 x 2400, an RGBA PNG of 6300 x 6300) and a
7000 x 5000 JPEG, each flat gray with one LFW face (Colin_Powell_0001) enlarged on it, and runs
each in a fresh process as the service does (`load_image(data, max_pixels=40_000_000)`, then
`FacePipeline.process` with `hog`, upsample 1, the default model) twice:

- current: this code (header limits, integer alpha compositing, detection on a copy of at most
  `DetectorKind.default_max_pixels`, alignment from the full photo);
- reference: the previous path, computed in the same run: Pillow's full decode, an EXIF copy,
  RGBA laid on white through float32 copies of the whole photo, detection on the whole photo
  (`DetectorSpec(..., max_pixels=0).make()`) by the detector's own dlib instance, which keeps its
  buffers (`KEEP_BUFFERS_PIXELS` set out of reach).

Per run: seconds to load and to process, faces found, RSS with the models loaded (baseline),
peak RSS, RSS after the photo's arrays are dropped, and after `io.release_memory()`.

``--shapes`` instead runs each detector, with every bound off (no load limits, no working-size
bound, no CNN minimum side), on thin and long gray photos in fresh processes and reports how
each ended: where native code breaks, which the limits of `load_image` stay well inside.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stages import machine_info  # noqa: E402

FACE = ROOT / "data" / "lfw-sample" / "Colin_Powell" / "Colin_Powell_0001.jpg"
SERVICE_MAX_PIXELS = 40_000_000
FILES = {  # name: (file name, width, height, Pillow format, mode, face side)
    "webp": ("wide.webp", 16000, 2400, "WEBP", "RGB", 2000),
    "png": ("rgba.png", 6300, 6300, "PNG", "RGBA", 3000),
    "jpeg": ("large.jpg", 7000, 5000, "JPEG", "RGB", 3000),
}


def make_file(folder: Path, key: str) -> Path:
    """One of ``FILES``: flat gray with the LFW face enlarged on it (so that there is a face to embed)."""
    import cv2
    from PIL import Image

    name, w, h, fmt, mode, side = FILES[key]
    path = folder / name
    if path.exists():
        return path
    face = np.asarray(Image.open(FACE).convert("RGB"))
    canvas = np.full((h, w, 3), 118, np.uint8)
    top, left = (h - side) // 2, (w - side) // 3
    canvas[top : top + side, left : left + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    im = Image.fromarray(canvas)
    if mode == "RGBA":
        im.putalpha(255)
    options = {"quality": 80} if fmt in ("WEBP", "JPEG") else {}
    im.save(path, fmt, **options)
    return path


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reference_load(data: bytes, max_pixels: int) -> np.ndarray:
    """The previous ``load_image`` for these files: full decode, EXIF copy, float32 alpha."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(io.BytesIO(data)) as im:
        assert im.size[0] * im.size[1] <= max_pixels
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "RGBA":
            rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
            alpha = rgba[:, :, 3:4] / 255.0
            rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
            return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def child(path: Path, mode: str) -> dict:
    """One photo in this (fresh) process; returns the figures."""
    from openface_py.faces import detect
    from openface_py.faces.detect import DetectorSpec
    from openface_py.io import load_image, release_memory
    from openface_py.nets.embed import load_embedder
    from openface_py.pipeline import FacePipeline

    current = mode == "current"
    if not current:  # dlib's buffers kept in the detector, as before
        detect.KEEP_BUFFERS_PIXELS = 1 << 62
    pipe = FacePipeline(
        DetectorSpec("hog", upsample=1, max_pixels=None if current else 0), embedder=load_embedder(None)
    )
    pipe.process(load_image(FACE))  # warm: every model loaded and run once
    gc.collect()
    base = rss_mb()
    data = path.read_bytes()
    t0 = time.perf_counter()
    rgb = load_image(data, max_pixels=SERVICE_MAX_PIXELS) if current else reference_load(data, SERVICE_MAX_PIXELS)
    t1 = time.perf_counter()
    faces = pipe.process(rgb)
    t2 = time.perf_counter()
    boxes = [f.box.as_list() for f in faces]
    del rgb, faces, data
    gc.collect()
    after = rss_mb()
    trimmed = release_memory()
    return {
        "load_s": t1 - t0,
        "process_s": t2 - t1,
        "boxes": boxes,
        "base_mb": base,
        "peak_mb": peak_mb(),
        "after_mb": after,
        "after_trim_mb": rss_mb(),
        "trim": trimmed,
    }


SHAPES = [  # (detector, upsample, width, height)
    ("hog", 1, 34_000_000, 1),
    ("hog", 1, 16_000_000, 1),
    ("hog", 1, 70_000, 100),
    ("hog", 1, 80_000, 100),
    ("hog", 1, 100, 200_000),
    ("hog", 2, 16_384, 820),
    ("hog", 2, 820, 16_384),
    ("mtcnn", 1, 16_384, 820),
    ("mtcnn", 1, 820, 16_384),
    ("mtcnn", 1, 100_000, 20),
    ("cnn", 0, 16_384, 40),
    ("cnn", 0, 9, 100),
    ("cnn", 0, 100, 4),
    ("cnn", 1, 3, 100),
    ("cnn", 0, 16, 16),
    ("cnn", 1, 1155, 866),  # cost per working megapixel: 1 MP
    ("cnn", 1, 3162, 158),  # 0.5 MP at 20:1, the CNN's default working size
]


def shape_child(name: str, upsample: int, width: int, height: int) -> None:
    from openface_py.faces import detect

    detect.CNN_MIN_SIDE = 0
    det = detect.DetectorSpec(name, upsample=upsample, max_pixels=0).make()
    rgb = np.full((height, width, 3), 118, np.uint8)
    t = time.perf_counter()
    try:
        det.detect(rgb)
        print(f"ok in {time.perf_counter() - t:.1f} s, peak {peak_mb():.0f} MB", flush=True)
    except Exception as exc:  # what dlib raises: reported, as the process may die after it
        print(f"raised {type(exc).__name__}", flush=True)


def run_shapes(only: str = "") -> None:
    import signal

    print("detector   upsample  shape              how it ended")
    for name, upsample, w, h in SHAPES:
        if only and name != only:
            continue
        cmd = [sys.executable, __file__, "--shape-child", name, str(upsample), str(w), str(h)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        said = (done.stdout.strip().splitlines() or ["(nothing)"])[-1]
        if done.returncode < 0:
            said += f"; killed by {signal.Signals(-done.returncode).name}"
        elif done.returncode:
            said += f"; exit {done.returncode}"
        print(f"{name:<10} {upsample:>8}  {f'{w} x {h}':<18} {said}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "photo-cost")
    ap.add_argument("--only", default="webp,png,jpeg")
    ap.add_argument("--shapes", action="store_true", help="where each detector breaks (no bounds)")
    ap.add_argument("--detector", default="", help="with --shapes: only this detector's rows")
    ap.add_argument("--child", nargs=2, metavar=("FILE", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--shape-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1])))
        return
    if args.shape_child:
        name, *numbers = args.shape_child
        shape_child(name, *(int(v) for v in numbers))
        return
    from PIL import __version__ as pillow

    print(f"{machine_info()}; Pillow {pillow}; load average {os.getloadavg()[0]:.1f}")
    if args.shapes:
        run_shapes(args.detector)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        "file                         size    mode       load s  detect+embed s  faces  base MB  peak MB"
        "  after MB  trimmed MB   boxes"
    )
    for key in args.only.split(","):
        path = make_file(args.out, key)
        _, w, h, *_ = FILES[key]
        for mode in ("reference", "current"):
            cmd = [sys.executable, __file__, "--child", str(path), mode]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                print(f"{key} {mode}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            label = f"{path.name} {w}x{h}"
            print(
                f"{label:<28} {path.stat().st_size / 1024:5.0f} KB {mode:<9} {r['load_s']:7.2f} {r['process_s']:15.2f}"
                f" {len(r['boxes']):6d} {r['base_mb']:8.0f} {r['peak_mb']:8.0f} {r['after_mb']:9.0f}"
                f" {r['after_trim_mb']:11.0f}   {r['boxes']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
