"""Pipeline throughput on this machine: embedding backends, align, end-to-end `run`, memory.

Usage: python benchmarks/bench_pipeline.py [--photos DIR] [--limit N] [--skip-compile] [--models A B ...]

DIR defaults to LFW's deep-funneled images (../shared/datasets/lfw/deepfunneled, 250x250,
one face each) when present, else data/lfw-sample. Every figure is printed with the ratio to a
reference measured in the same run:

* embed: faces/s per backend and batch size for each of ``--models`` (the PyTorch networks);
  reference = eager PyTorch at the same batch size (and the start-up cost of each backend, cold =
  empty cache, warm = cached artefacts);
* align: photos/s of ``align_folder`` with 1 and 2 workers; reference = 1 worker;
* run: photos/s of ``run_folder`` (detect + align + embed, auto backend) with 1 and 2
  workers for each of ``--models``; reference = the straightforward single-process eager path of
  the first model (for each photo: decode, HOG upsample 1, align, embed at batch 1), and each
  model's rate is also given as a ratio to the first model's at the same worker count;
* video: frames/s of ``VideoRecognizer`` on a 640x480 clip made from the sample photos (one
  face moving, then two), recognition against a gallery included; reference = detecting
  (HOG upsample 1, full frame) and recognising every face on every frame;
* peak RSS of this process and of its worker processes.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stages import machine_info, peak_rss_mb, report, timed  # noqa: E402

from openface_py.faces.align import make_aligner, openface_spec  # noqa: E402
from openface_py.faces.detect import DetectorSpec, HogDetector  # noqa: E402
from openface_py.io import list_images, load_image  # noqa: E402
from openface_py.jobs.batch import align_folder  # noqa: E402
from openface_py.jobs.stream import run_folder  # noqa: E402
from openface_py.nets import backends  # noqa: E402
from openface_py.nets.embed import best_installed_model, load_embedder  # noqa: E402
from openface_py.nets.embedders import MobileFaceNetEmbedder, NN4Embedder  # noqa: E402

LFW_IMAGES = ROOT.parent / "shared" / "datasets" / "lfw" / "deepfunneled"


def children_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def subset(src: Path, limit: int) -> Path:
    """A temporary folder of symlinks to the first ``limit`` photos of ``src``."""
    rels = list_images(src)[:limit]
    dst = Path(tempfile.mkdtemp(prefix="bench-photos-"))
    for r in rels:
        (dst / r).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src / r, dst / r)
    return dst


def bench_embed(faces: np.ndarray, model, names: list[str], repeat: int, label: str, tag: str) -> None:
    size = faces.shape[1]
    print(
        f"\n== embed {label}: aligned {size}x{size} faces in memory, faces/s (reference: eager at the same batch size)"
    )
    x = faces.astype(np.float32).transpose(0, 3, 1, 2) * np.float32(model.input_range / 255)
    shape = (3, size, size)
    for name in names:
        home = Path(tempfile.mkdtemp(prefix="bench-home-"))
        os.environ["OPENFACE_PY_HOME"] = str(home)
        cold = backends.build(model, name, input_shape=shape, tag=tag)
        warm = backends.build(model, name, input_shape=shape, tag=tag)
        print(f"{name:8s} start-up: {cold.startup_s:6.2f} s cold (empty cache), {warm.startup_s:6.2f} s warm")
        shutil.rmtree(home, ignore_errors=True)
    refs: dict[int, float] = {}
    for name in names:
        runner = backends.build(model, name, input_shape=shape, tag=tag)
        for bs in (1, 8, 32, 64):
            n = len(x) if bs > 1 else min(len(x), 64)

            def go(r=runner, b=bs, m=n):
                for i in range(0, m, b):
                    r(x[i : i + b])

            go()
            rate = report(f"{name}, batch {bs}", n, timed(go, repeat), refs.get(bs), "faces")
            refs.setdefault(bs, rate)


def straightforward(photos: Path, embedder) -> int:
    """The reference path: one process, one photo at a time, eager batch 1."""
    det, al = HogDetector(upsample=1), make_aligner(openface_spec())
    n = 0
    for rel in list_images(photos):
        rgb = load_image(photos / rel)
        dets = det.detect(rgb)
        if dets:
            box = max(dets, key=lambda d: d.box.area).box
            embedder.embed([al.align(rgb, box).image], batch_size=1)
            n += 1
    return n


def video_clip(sample: Path, frames_per_part: int = 75) -> tuple[list[np.ndarray], list[list[str]]]:
    """RGB 640x480 frames: one face drifting right, then two side by side drifting down, and the
    names per frame. Each face is the central 150x150 of an LFW photo scaled to 280x280 (a face of
    ~190 px, like a person at a desk in front of a webcam)."""
    import cv2

    people = sorted(d.name for d in sample.iterdir() if d.is_dir())[:2]
    tiles = []
    for p in people:
        rgb = load_image(sorted((sample / p).glob("*.jpg"))[-1])  # a photo the gallery also has
        tiles.append(cv2.resize(rgb[50:200, 50:200], (280, 280), interpolation=cv2.INTER_CUBIC))
    parts = (
        [(0, lambda i: (20 + 4 * i, 100))],
        [(0, lambda i: (20, 20 + 2 * i)), (1, lambda i: (340, 20 + 2 * i))],
    )
    frames, names = [], []
    for placed in parts:
        for i in range(frames_per_part):
            frame = np.full((480, 640, 3), 70, np.uint8)
            for k, where in placed:
                x, y = where(i)
                frame[y : y + 280, x : x + 280] = tiles[k]
            frames.append(frame)
            names.append(sorted(people[k] for k, _ in placed))
    return frames, names


def bench_video(sample: Path, model_name: str, repeat: int) -> None:
    import cv2

    from openface_py.pipeline import FacePipeline
    from openface_py.recognize.gallery import build_gallery
    from openface_py.recognize.video import TRACKERS, VideoRecognizer, gallery_recogniser, process_video

    print(
        "\n== video: 640x480, 1 face then 2, recognition included, frames/s (reference: detect + recognise every frame)"
    )
    frames, names = video_clip(sample)
    embedder = load_embedder(model_name, backend="auto")
    gallery = build_gallery(sample, FacePipeline(DetectorSpec("hog", upsample=1), embedder=embedder), progress=False)
    recognise = gallery_recogniser(gallery, embedder.same_person_threshold)
    det, al = HogDetector(upsample=1), make_aligner(embedder.alignment)

    def every_frame(fs=frames) -> None:
        for rgb in fs:
            dets = det.detect(rgb)
            if dets:
                recognise(embedder.embed([al.align(rgb, d.box).image for d in dets]))

    ref = report(
        "reference: HOG up 1 on every full frame + recognise", len(frames), timed(every_frame, 1), None, "frames"
    )
    for tracker in TRACKERS:
        rec = VideoRecognizer(embedder, recognise, tracker=tracker)  # models load here, outside the timing
        for label, part in (("1 face", 1), ("2 faces", 2)):
            seg = [f for f, n in zip(frames, names) if len(n) == part]
            want = [n for n in names if len(n) == part]
            right: list[bool] = []

            def tracked(fs=seg, want=want, right=right, rec=rec) -> None:
                rec.reset()
                right.clear()
                for rgb, expected in zip(fs, want):
                    right.append(sorted(f.name for f in rec.process(rgb).faces) == expected)

            secs = timed(tracked, repeat)
            report(f"VideoRecognizer, {tracker} tracker, {label}", len(seg), secs, ref, "frames")
            print(f"    {sum(right)}/{len(right)} frames with exactly the right names")
    # the whole loop of `openface-py video` on an mp4 file: decoding included, no output written
    clip = Path(tempfile.mkdtemp(prefix="bench-video-")) / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()
    rec = VideoRecognizer(embedder, recognise)
    t = time.perf_counter()
    summary = process_video(clip, rec)
    report(
        "process_video on an mp4 (decode included), defaults", summary["frames"], time.perf_counter() - t, ref, "frames"
    )
    shutil.rmtree(clip.parent, ignore_errors=True)
    print(f"backend {embedder.backend}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=LFW_IMAGES if LFW_IMAGES.is_dir() else ROOT / "data" / "lfw-sample")
    ap.add_argument("--limit", type=int, default=1000, help="photos for the align/run figures (default 1000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-compile", action="store_true", help="leave torch.compile out (slow to start)")
    ap.add_argument("--only", choices=("embed", "align", "run", "video"), default=None)
    ap.add_argument("--no-reference", action="store_true", help="run: skip the slow reference path (memory runs)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="run: worker counts (default 1 2)")
    ap.add_argument("--detector", default="hog-mtcnn", help="run: detector (default hog-mtcnn, as run)")
    ap.add_argument("--models", nargs="+", default=None, help="embed/run: the models (default: the default model)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(machine_info())
    photos = subset(args.photos, args.limit)
    n = len(list_images(photos))
    models = args.models or [best_installed_model()]
    model_name = models[0]
    print(f"photos: {n} from {args.photos}; models {', '.join(models)}")
    try:
        if args.only in (None, "embed"):
            for name in models:
                emb = load_embedder(name, backend="eager")
                if not isinstance(emb, (NN4Embedder, MobileFaceNetEmbedder)):
                    print(f"\n(embed: {name} is not a PyTorch network, skipped)")
                    continue
                det, al = HogDetector(upsample=1), make_aligner(emb.alignment)
                faces = []
                for rel in list_images(photos)[:128]:
                    rgb = load_image(photos / rel)
                    dets = det.detect(rgb)
                    if dets:
                        faces.append(al.align(rgb, dets[0].box).image)
                names = [b for b in backends.BACKENDS if not (args.skip_compile and b == "compile")]
                tag = "mobilefacenet" if isinstance(emb, MobileFaceNetEmbedder) else "nn4.small2"
                bench_embed(np.stack(faces), emb.model, names, args.repeat, name, tag)
        if args.only in (None, "align"):
            print("\n== align_folder (decode + detect upsample 1 + align + PNG), photos/s (reference: 1 worker)")
            ref = None
            for w in (1, 2):
                out = Path(tempfile.mkdtemp(prefix="bench-align-"))
                t = time.perf_counter()
                align_folder(photos, out, openface_spec(), workers=w, progress=False)
                rate = report(f"align_folder, {w} worker(s)", n, time.perf_counter() - t, ref, "photos")
                ref = ref or rate
                shutil.rmtree(out)
        if args.only in (None, "run"):
            print("\n== end to end: photo -> embedding, photos/s (reference: single-process eager, batch 1)")
            ref = None
            if not args.no_reference:
                eager = load_embedder(model_name, backend="eager")
                t = time.perf_counter()
                straightforward(photos, eager)
                ref = report(
                    "reference: 1 process, HOG up 1, eager, batch 1", n, time.perf_counter() - t, None, "photos"
                )
            first: dict[int, float] = {}
            for name in models:
                embedder = load_embedder(name, backend="auto")
                for w in args.workers:
                    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
                    t = time.perf_counter()
                    rep = run_folder(photos, out, embedder, detector=args.detector, workers=w, progress=False)
                    secs = time.perf_counter() - t
                    label = f"run {name}, {w} worker(s), {args.detector}, backend {embedder.backend}"
                    rate = report(label, n, secs, ref, "photos")
                    if w in first:
                        print(f"    x{rate / first[w]:.2f} of {models[0]} at {w} worker(s)")
                    first.setdefault(w, rate)
                    print(f"    {rep.done_ok_total} embedded, {len(rep.failures)} without a face")
                    shutil.rmtree(out)
        if args.only in (None, "video"):
            bench_video(ROOT / "data" / "lfw-sample", model_name, args.repeat)
        print(f"\npeak RSS: main process {peak_rss_mb():.0f} MB, largest worker {children_peak_rss_mb():.0f} MB")
    finally:
        shutil.rmtree(photos, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
