"""`openface-py run` with the local engine and with Ray, on the same LFW photos: throughput,
driver memory, start-up, and the per-stage CPU costs behind the scale-out estimate.

Usage: python benchmarks/bench_engines.py [--sizes 1000 10000] [--engines local ray] [--json OUT]

Each run is a fresh `openface-py run INPUT OUTPUT --engine E` process (default detector,
hog-mtcnn; shipped NN4-small2) over the first N photos of LFW deep-funneled (symlinks in a
temporary folder; data/lfw-sample when LFW is absent). Printed per engine and size:

* photos/s end to end (N / wall time) and steady (N / (wall time - start-up));
* start-up: the wall time of the same command on 1 photo (interpreter, model loading, for
  Ray also starting the local instance and its actors);
* driver peak RSS: VmHWM of the `openface-py` process itself (for local the process that
  also embeds; for Ray the driver alone: its actors and Ray's daemons are other processes),
  read from /proc until it exits;
* the reference is the local engine at the same size, measured in the same invocation.

``--stages N`` also times each stage on one core over N photos (decode, hog-mtcnn detection,
landmarks + warp, NN4-small2 embedding at batch 32 on one thread): the per-photo CPU cost
that the scale-out estimate in BENCHMARKS.md is computed from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_stages import machine_info  # noqa: E402

from openface_py.io import list_images  # noqa: E402

LFW_IMAGES = ROOT.parent / "shared" / "datasets" / "lfw" / "deepfunneled"


def subset(src: Path, limit: int, dst: Path) -> Path:
    """A folder of symlinks to the first ``limit`` photos of ``src`` (in their people's folders)."""
    for r in list_images(src)[:limit]:
        (dst / r).parent.mkdir(parents=True, exist_ok=True)
        os.symlink((src / r).resolve(), dst / r)
    return dst


def run_once(photos: Path, out: Path, engine: str) -> dict:
    """One `openface-py run`, timed, with the driver's peak RSS polled from /proc."""
    cmd = [sys.executable, "-m", "openface_py", "--quiet", "run", str(photos), str(out), "--engine", engine, "--json"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kb, cpu_s = 0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = max(cpu_s, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime of the driver
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    out_text, err_text = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err_text[-3000:]}")
    report = json.loads(out_text)
    return {
        "wall_s": round(wall, 2),
        "driver_peak_rss_mb": round(peak_kb / 1024, 1),
        "driver_cpu_s": round(cpu_s, 2),
        "embedded": report["aligned"],
    }


def stage_costs(photos: Path, n: int) -> dict:
    """Per-photo CPU cost of each stage on one thread (ms), on the first ``n`` photos."""
    import numpy as np
    import torch

    from openface_py.faces.align import align_detection, make_aligner
    from openface_py.faces.detect import DetectorSpec
    from openface_py.io import load_image
    from openface_py.nets.embed import load_embedder

    torch.set_num_threads(1)
    rels = list_images(photos)[:n]
    detector = DetectorSpec("hog-mtcnn").make()
    embedder = load_embedder(None, threads=1)
    aligner = make_aligner(embedder.alignment)
    times = {"decode": 0.0, "detect": 0.0, "align": 0.0}
    faces = []
    for r in rels:
        t = time.process_time()
        rgb = load_image(photos / r)
        t1 = time.process_time()
        dets = detector.detect(rgb)
        t2 = time.process_time()
        if dets:
            faces.append(align_detection(aligner, rgb, max(dets, key=lambda d: d.box.area)).image)
        t3 = time.process_time()
        times["decode"] += t1 - t
        times["detect"] += t2 - t1
        times["align"] += t3 - t2
    embedder.embed(faces[:32], batch_size=32)  # warm-up
    t = time.process_time()
    embedder.embed(faces, batch_size=32)
    times["embed"] = (time.process_time() - t) * len(rels) / max(1, len(faces))
    out = {k: round(1000 * v / len(rels), 2) for k, v in times.items()}
    out["faces_per_photo"] = round(len(faces) / len(rels), 3)
    out["backend"] = embedder.backend
    del np
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=LFW_IMAGES if LFW_IMAGES.is_dir() else ROOT / "data" / "lfw-sample")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--stages", type=int, default=0, help="also time each stage on this many photos")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    info = machine_info()
    print(info)
    results: dict = {"machine": info, "photos": str(args.photos), "runs": []}
    work = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    try:
        one = subset(args.photos, 1, work / "photos-1")
        startup = {}
        for engine in args.engines:
            startup[engine] = run_once(one, work / f"out-1-{engine}", engine)["wall_s"]
            print(f"start-up {engine}: {startup[engine]:.2f} s (1 photo, end to end)", flush=True)
        results["startup_s"] = startup
        for n in args.sizes:
            photos = subset(args.photos, n, work / f"photos-{n}")
            reference = None
            for engine in args.engines:
                r = run_once(photos, work / f"out-{n}-{engine}", engine)
                r.update(engine=engine, photos=n, photos_per_s=round(n / r["wall_s"], 1))
                r["steady_photos_per_s"] = round(n / max(1e-9, r["wall_s"] - startup[engine]), 1)
                reference = reference or r
                r["vs_local"] = round(r["photos_per_s"] / reference["photos_per_s"], 3)
                r["steady_vs_local"] = round(r["steady_photos_per_s"] / reference["steady_photos_per_s"], 3)
                results["runs"].append(r)
                print(
                    f"{engine:5s} {n:6d} photos: {r['photos_per_s']:6.1f} photos/s end to end "
                    f"(x{r['vs_local']:.3f} of local), {r['steady_photos_per_s']:6.1f} steady "
                    f"(x{r['steady_vs_local']:.3f}); driver peak RSS {r['driver_peak_rss_mb']:.0f} MB, "
                    f"CPU {r['driver_cpu_s']:.1f} s; "
                    f"{r['embedded']} embedded",
                    flush=True,
                )
                shutil.rmtree(work / f"out-{n}-{engine}")
        if args.stages:
            results["stage_ms_per_photo_one_core"] = stage_costs(args.photos, args.stages)
            print("stage CPU cost, ms per photo on one core:", results["stage_ms_per_photo_one_core"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
