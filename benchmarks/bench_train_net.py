"""Measure `openface-py train-net`: fine-tuning with each loss, training from scratch.

Three steps, each resumable (a rerun skips finished runs, and train-net continues an
interrupted one from its checkpoint):

    # 1. an aligned labeled folder without LFW's pairs people (hard links, no copies), from
    #    `openface-py align` output and the leakage filter's keep.json
    python benchmarks/bench_train_net.py clean --aligned ALIGNED --keep CACHE/keep.json \
        --source celeba --out CLEAN
    # 2. the runs: each loss fine-tunes distilled-v2 on 80% of the people, 20% held out
    python benchmarks/bench_train_net.py run --aligned CLEAN --lfw LFW_DIR --work RUNS \
        --results benchmarks/results/train-net [--losses triplet,center,...] [--scratch]
    # 3. the table (also printed at the end of `run`)
    python benchmarks/bench_train_net.py table --results benchmarks/results/train-net

Prints machine info, minutes per run, peak RSS of the training processes, and for each run the
held-out people's accuracy / AUC / TAR@FAR=1e-3 and LFW accuracy before training and at the best
epoch (chosen by the held-out people, never by LFW).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def clean(args: argparse.Namespace) -> int:
    """Hard-link the aligned faces of the photos the leakage filter kept: it drops photos taken
    for an LFW pairs person and every photo of an identity when half of its photos are."""
    keep_doc = json.loads(Path(args.keep).read_text())
    kept = {Path(n).stem for n in keep_doc["keep"][args.source]}
    reasons = {Path(d["name"]).stem: d["reasons"] for d in keep_doc["dropped"][args.source]}
    src, out = Path(args.aligned), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "openface-py-align.json").write_bytes((src / "openface-py-align.json").read_bytes())
    before, after, why = set(), set(), {}
    n_kept = n_dropped = 0
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        for face in sorted(person.glob("*.png")):
            before.add(person.name)
            if face.stem not in kept:
                n_dropped += 1
                for r in reasons.get(face.stem, ["not in the leakage cache"]):
                    why[r] = why.get(r, 0) + 1
                continue
            (out / person.name).mkdir(exist_ok=True)
            dest = out / person.name / face.name
            if not dest.exists():
                os.link(face, dest)
            n_kept += 1
            after.add(person.name)
    report = {
        "kept_faces": n_kept,
        "kept_people": len(after),
        "dropped_faces": n_dropped,
        "dropped_faces_by_reason": why,
        "people_with_no_face_left": len(before - after),
    }
    (out / "clean-report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


RUNS = {
    # name: extra train-net arguments (the fine-tunes share everything but the loss)
    "triplet": ["--loss", "triplet"],
    "triplet-hard": ["--loss", "triplet", "--mining", "hard"],
    "center": ["--loss", "center"],
    "contrastive": ["--loss", "contrastive"],
    "siamese": ["--loss", "siamese"],
    "arcface": ["--loss", "arcface"],
}
SCRATCH = ["--init", "scratch", "--loss", "triplet", "--freeze-blocks", "0", "--lr", "1e-3", "--lr-dense", "1e-3"]


def one_run(name: str, extra: list, args: argparse.Namespace) -> dict:
    out = Path(args.work) / name
    res_file = Path(args.results) / f"{name}.json"
    if res_file.is_file():
        return json.loads(res_file.read_text())
    cmd = [
        PY,
        "-m",
        "openface_py",
        "-q",
        "train-net",
        str(args.aligned),
        "-o",
        str(out),
        "--val-people",
        str(args.val_people),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
        *(["--lfw", str(args.lfw)] if args.lfw else []),
        *extra,
        *args.train_args,
    ]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd)
    if rc != 0:
        raise SystemExit(f"{name}: train-net exited {rc}")
    s = json.loads((out / "training.json").read_text())
    first, best = s["epochs"][0], s["epochs"][s["best_epoch"]]
    row = {
        "run": name,
        "command": "openface-py " + " ".join(cmd[4:]),
        "minutes": round(s["wall_seconds"] / 60, 1),
        "wall_minutes_this_call": round((time.time() - t0) / 60, 1),
        "peak_rss_mb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "best_epoch": s["best_epoch"],
        "epochs": len(s["epochs"]) - 1,
        "train": s["data"]["train"],
        "held_out": s["data"]["held_out"],
        "before": {"val": first["val"], "lfw": first.get("lfw")},
        "after": {"val": best["val"], "lfw": best.get("lfw")},
        "per_epoch": [
            {
                "epoch": e["epoch"],
                "loss": e["loss"],
                "val_auc": e["val"]["auc"],
                "val_accuracy": e["val"]["accuracy"],
                "lfw": (e.get("lfw") or {}).get("accuracy"),
            }
            for e in s["epochs"]
        ],
        "device": s["device"],
        "machine": machine(),
    }
    res_file.parent.mkdir(parents=True, exist_ok=True)
    res_file.write_text(json.dumps(row, indent=2) + "\n")
    return row


def table(results: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    lines = [
        "| run | min | best epoch | held-out acc before -> after | AUC before -> after | TAR@FAR=1e-3 before -> after "
        "| LFW before -> after (at the held-out best epoch) | last epoch: held-out AUC, LFW |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["before"], r["after"]

        def pair(key, b=b, a=a):
            return f"{b['val'][key]:.4f} -> {a['val'][key]:.4f}"

        lfw = f"{b['lfw']['accuracy']:.4f} -> {a['lfw']['accuracy']:.4f}" if b.get("lfw") else "-"
        last = r["per_epoch"][-1]
        last_lfw = f", {last['lfw']:.4f}" if last.get("lfw") is not None else ""
        lines.append(
            f"| {r['run']} | {r['minutes']} | {r['best_epoch']} of {r['epochs']} | {pair('accuracy')} | "
            f"{pair('auc')} | {pair('tar_at_far_1e-3')} | {lfw} | {last['val_auc']:.4f}{last_lfw} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(machine()))
    names = [n for n in args.losses.split(",") if n]
    for name in names:
        row = one_run(name, RUNS[name], args)
        print(json.dumps({k: row[k] for k in ("run", "minutes", "best_epoch", "before", "after")}), flush=True)
    if args.scratch:
        one_run("scratch-triplet", SCRATCH, args)
    print(table(Path(args.results)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    c = sub.add_parser("clean")
    c.add_argument("--aligned", required=True)
    c.add_argument("--keep", required=True)
    c.add_argument("--source", default="celeba")
    c.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--aligned", required=True)
    r.add_argument("--lfw", default=None)
    r.add_argument("--work", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--losses", default=",".join(RUNS))
    r.add_argument("--scratch", action="store_true")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--val-people", type=float, default=0.2)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("train_args", nargs="*", help="more train-net arguments for every run (after --)")
    t = sub.add_parser("table")
    t.add_argument("--results", required=True)
    args = ap.parse_args()
    if args.step == "clean":
        return clean(args)
    if args.step == "table":
        print(table(Path(args.results)))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
