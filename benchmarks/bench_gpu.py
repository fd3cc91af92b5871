"""The GPU figures of issue 28 in one run, and the same measurements on the CPU.

Usage: python benchmarks/bench_gpu.py [--device auto|cpu|cuda:N] [--reduced] [--json OUT.json]

On the device (``auto``: the GPU when torch sees one), for NN4-small2 (the default model) and
MobileFaceNet: faces/s of the raw network fed a tensor already on the device (float32, and bfloat16
and float16 autocast on a GPU) and of the project's embedder fed uint8 faces from the host
(``Embedder.embed``: the path every command takes), at several batch sizes, with the embedder's
share of the raw network's speed; the largest difference from the CPU's eager embeddings and the
smallest cosine of each reduced precision to float32 on the same faces. Then MTCNN photos/s on
the device and its boxes and landmarks against the CPU's (pixels), ``run`` photos/s on a folder
(``hog-mtcnn``, the default), and ``train-net`` seconds per epoch. Machine, peak RSS and peak GPU
memory are printed. ``--reduced`` is a small CPU-sized version (make test runs it, so that the
script cannot rot); its figures are not benchmarks.

The faces are the sample photos' own faces (``--photos``, default data/lfw-sample), aligned once
on the CPU and repeated to ``--faces``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_stages import machine_info  # noqa: E402

from openface_py.device import describe_device, is_gpu, resolve_device  # noqa: E402
from openface_py.faces.align import detector_for  # noqa: E402
from openface_py.faces.detect import DetectorSpec  # noqa: E402
from openface_py.faces.stage import FaceStage, FaceStageSpec  # noqa: E402
from openface_py.io import list_images, load_image  # noqa: E402
from openface_py.nets.embed import load_embedder  # noqa: E402

MODELS = ("nn4.small2.distilled-v2", "mobilefacenet-reid-0095")


def machine(device: str) -> dict:
    import torch

    return {"machine": machine_info(), "cuda": torch.version.cuda, "device": describe_device(device)}


def sync(device: str) -> None:
    if is_gpu(device):
        import torch

        torch.cuda.synchronize(device)


def rate(fn, n: int, device: str, min_s: float) -> float:
    """Items/s of ``fn`` (``n`` items a call): one warm-up call, then calls for at least ``min_s``."""
    fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync(device)
        took = time.perf_counter() - start
        if took >= min_s:
            return calls * n / took


def aligned_faces(photos: list[Path], alignment) -> np.ndarray:
    """The photos' faces (every face HOG + MTCNN find), aligned for ``alignment``, on the CPU."""
    stage = FaceStage(FaceStageSpec(detector_for(DetectorSpec("hog-mtcnn"), alignment), alignment, pick="all"))
    out = []
    for p in photos:
        out.extend(a.image for a in stage.find(load_image(p)).faces)
    return np.stack(out)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def embedding_figures(model: str, photos: list[Path], device: str, n_faces: int, batches: list[int],
                      min_s: float) -> dict:  # fmt: skip
    import torch

    emb = load_embedder(model, device=device)
    reference = load_embedder(model, device="cpu", backend="eager")
    faces = aligned_faces(photos, emb.alignment)
    tiled = np.ascontiguousarray(np.resize(faces, (n_faces,) + faces.shape[1:]))
    check = tiled[: min(len(tiled), 256)]
    ref = reference.embed(check)
    got = emb.embed(check)
    out: dict = {
        "model": model,
        "backend": emb.backend,
        "distinct_faces": len(faces),
        "vs_cpu_eager": {
            "max_abs_diff": float(np.abs(got - ref).max()),
            "min_cosine": float(cosines(got, ref).min()),
        },
        "batches": [],
    }
    net = reference.model.to(device).eval().to(memory_format=torch.channels_last)
    scale = float(net.input_range) / 255.0
    precisions = ["float32"] + (["bfloat16", "float16"] if is_gpu(device) else ["bfloat16"])
    x_check = torch.from_numpy(check).to(device).permute(0, 3, 1, 2).float() * scale
    with torch.inference_mode():
        full = net(x_check).float().cpu().numpy()
        for p in precisions[1:]:
            with torch.autocast(torch.device(device).type, dtype=getattr(torch, p)):
                low = net(x_check).float().cpu().numpy()
            out.setdefault("autocast_min_cosine", {})[p] = float(cosines(low, full).min())
    for b in batches:
        x = torch.from_numpy(tiled[:b]).to(device).permute(0, 3, 1, 2).float() * scale
        row = {"batch": b}
        with torch.inference_mode():
            for p in precisions:
                if p == "float32":
                    row["raw_float32"] = rate(lambda t=x: net(t), b, device, min_s)
                elif is_gpu(device):  # reduced precision on a CPU: measured for its cosine only
                    with torch.autocast("cuda", dtype=getattr(torch, p)):
                        row[f"raw_{p}"] = rate(lambda t=x: net(t), b, device, min_s)
        row["embedder"] = rate(lambda bs=b: emb.embed(tiled, batch_size=bs), len(tiled), device, min_s)
        row["embedder_share_of_raw"] = row["embedder"] / row["raw_float32"]
        out["batches"].append(row)
    return out


def mtcnn_figures(photos: list[Path], device: str, min_s: float) -> dict:
    from openface_py.faces.mtcnn import Mtcnn

    images = [load_image(p) for p in photos]
    sizes = {im.shape for im in images}
    on_device, on_cpu = Mtcnn(device=device), Mtcnn(device="cpu")
    got, ref = on_device.detect(images), on_cpu.detect(images)
    box_px = point_px = 0.0
    same_count = all(len(a) == len(b) for a, b in zip(got, ref))
    for a, b in zip(got, ref):
        for fa, fb in zip(a, b):
            box_px = max(box_px, float(np.abs(np.subtract(fa.box, fb.box)).max()))
            point_px = max(point_px, float(np.abs(fa.points - fb.points).max()))
    return {
        "photos": len(images),
        "photo_sizes": sorted(f"{s[1]}x{s[0]}" for s in sizes),
        "photos_per_s": rate(lambda: on_device.detect(images), len(images), device, min_s),
        "faces": sum(len(a) for a in got),
        "same_face_counts_as_cpu": same_count,
        "max_box_diff_px": box_px,
        "max_landmark_diff_px": point_px,
    }


def run_figures(photo_dir: Path, device: str, workers: int) -> dict:
    from openface_py.jobs.stream import run_folder

    embedder = load_embedder(None, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = run_folder(photo_dir, Path(tmp) / "run", embedder, DetectorSpec("hog-mtcnn", device=device),
                            workers=workers, progress=False)  # fmt: skip
        took = time.perf_counter() - start
    return {"photos": report.total, "workers": workers, "seconds": round(took, 2), "photos_per_s": report.total / took}


def train_figures(photo_dir: Path, device: str, epochs: int) -> dict:
    from openface_py.faces.align import openface_spec
    from openface_py.jobs.batch import align_folder
    from openface_py.train.trainer import NetSettings, train_net

    with tempfile.TemporaryDirectory() as tmp:
        aligned = Path(tmp) / "aligned"
        align_folder(photo_dir, aligned, openface_spec(), detector=DetectorSpec("hog"), progress=False)
        settings = NetSettings(str(aligned), epochs=epochs, device=device, progress=False,
                               batch_people=4, batch_images=5, val_people=0.2)  # fmt: skip
        result = train_net(settings, Path(tmp) / "net")
    per_epoch = [h["seconds"] for h in result.history[1:]]
    return {"epochs": epochs, "seconds_per_epoch": per_epoch, "device": result.summary["device"]}


def linked(photos: list[Path], people: int, per_person: int, dest: Path) -> Path:
    """A folder of links to ``per_person`` photos of each of the first ``people`` people."""
    by_person: dict[str, list[Path]] = {}
    for p in photos:
        by_person.setdefault(p.parent.name, []).append(p)
    for name in sorted(by_person)[:people]:
        (dest / name).mkdir(parents=True)
        for p in by_person[name][:per_person]:
            (dest / name / p.name).symlink_to(p.resolve())
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    ap.add_argument("--reduced", action="store_true", help="a small, CPU-sized version of every measurement")
    ap.add_argument("--photos", type=Path, default=ROOT / "data" / "lfw-sample")
    ap.add_argument("--faces", type=int, default=None, help="faces per timed call (default 8192; reduced 48)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 32,256,1024,4096; reduced 8,16)")
    ap.add_argument("--min-seconds", type=float, default=None, help="time each figure at least this long")
    ap.add_argument("--epochs", type=int, default=None, help="train-net epochs (default 3; reduced 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    device = resolve_device(args.device)
    reduced = args.reduced
    n_faces = args.faces or (48 if reduced else 8192)
    batches = [int(b) for b in (args.batches or ("8,16" if reduced else "32,256,1024,4096")).split(",")]
    min_s = args.min_seconds if args.min_seconds is not None else (0.0 if reduced else 2.0)
    epochs = args.epochs or (1 if reduced else 3)
    all_photos = [args.photos / r for r in list_images(args.photos)]
    photos = all_photos[:4] if reduced else all_photos
    figures: dict = {"machine": machine(device), "reduced": reduced}
    print(json.dumps(figures["machine"]))
    figures["embedding"] = []
    for model in MODELS:
        f = embedding_figures(model, photos[:2] if reduced else photos, device, n_faces, batches, min_s)
        figures["embedding"].append(f)
        vs = f["vs_cpu_eager"]
        print(f"{model} ({f['backend']} on {device}; vs the CPU's eager: max |diff| {vs['max_abs_diff']:.2e}, "
              f"min cosine {vs['min_cosine']:.7f}; autocast min cosine {f['autocast_min_cosine']})")  # fmt: skip
        for row in f["batches"]:
            low = [(k[4:], v) for k, v in row.items() if k.startswith("raw_") and k != "raw_float32"]
            extra = "".join(f", raw {k} {v:,.0f}" for k, v in low)
            print(f"  batch {row['batch']:5d}: raw network float32 {row['raw_float32']:,.0f} faces/s{extra}; "
                  f"embedder (uint8 from the host) {row['embedder']:,.0f} faces/s = "
                  f"{row['embedder_share_of_raw']:.0%} of raw")  # fmt: skip
    figures["mtcnn"] = m = mtcnn_figures(photos, device, min_s)
    print(f"MTCNN on {device}: {m['photos_per_s']:.1f} photos/s ({m['photos']} photos, {m['faces']} faces); vs CPU: "
          f"same counts {m['same_face_counts_as_cpu']}, boxes within {m['max_box_diff_px']:.3f} px, landmarks "
          f"{m['max_landmark_diff_px']:.3f} px")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # reduced: a few photos of a few people (the jobs, not their speed); else the whole folder
        run_dir = linked(all_photos, 2, 2, Path(tmp) / "run") if reduced else args.photos
        figures["run"] = r = run_figures(run_dir, device, workers=1 if reduced else os.cpu_count() or 1)
        print(f"run (hog-mtcnn, {r['workers']} workers): {r['photos_per_s']:.1f} photos/s ({r['photos']} photos)")
        train_dir = linked(all_photos, 5, 4, Path(tmp) / "train") if reduced else args.photos
        figures["train_net"] = t = train_figures(train_dir, device, epochs)
        print(f"train-net on {t['device']}: seconds per epoch {t['seconds_per_epoch']}")
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if is_gpu(device):
        import torch

        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"peak RSS {figures['peak_rss_mb']:.0f} MB" + (f", peak GPU memory {figures['peak_gpu_mb']:.0f} MB"
                                                          if "peak_gpu_mb" in figures else ""))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
