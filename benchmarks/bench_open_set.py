"""Open-set recognition and confidence calibration on real photos (issue 15, part 3).

Usage: python benchmarks/bench_open_set.py [--model NAME] [--classifiers LinearSvm KNN ...] [--settings sample lfw50]

Settings (embeddings by ``--model``, default the default model, nn4.small2.distilled-v2 here):

- ``sample``: the 10 people x 10 photos of data/lfw-sample; photos 1-8 of each person enrolled,
  9-10 held out (19 of 20 photos have a face); strangers = one photo each of 300 LFW people
  outside the 10 and outside the lfw50 people (seeded pick).
- ``lfw50``: 50 LFW people with >= 20 photos each (seeded pick, none of the sample's 10); the
  first 10 photos of each enrolled, up to 20 more held out; the same 300 strangers.

Reported for each classifier: ECE (15 equal-width bins) of the model's stated confidence that
its answer is right, over held-out enrolled photos and strangers together (a stranger's answer is
right only if it is ``unknown``; an enrolled photo's only if it is the right name); the mean and
median confidence of right answers; % strangers rejected; % enrolled held-out photos named
correctly; closed-set accuracy. The LFW parts need ../shared/datasets/lfw (skipped otherwise).

Embeddings are cached under build/open-set/ (the default model) or build/open-set/MODEL/ (delete it to recompute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "data" / "lfw-sample"
SHARED = Path(os.environ.get("OPENFACE_PY_SHARED", ROOT.parent / "shared"))
LFW_DIR = SHARED / "datasets" / "lfw" / "deepfunneled"
CACHE = ROOT / "build" / "open-set"
N_STRANGERS = 300
N_LFW_PEOPLE = 50


def _embed(name: str, folder: Path, model: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Embeddings (largest face per photo) of every photo below ``folder``, cached in CACHE[/model]/name."""
    from openface_py.jobs.embeddings import load_embeddings
    from openface_py.jobs.stream import run_folder
    from openface_py.nets.embed import load_embedder

    out = (CACHE / model / name) if model else CACHE / name
    if not (out / "reps.npy").is_file():
        run_folder(folder, out, load_embedder(model), workers=0, progress=False)
    reps, labels, paths, _ = load_embeddings(out)
    return np.asarray(reps, dtype=np.float64), np.asarray(labels), list(paths)


def _link_folder(name: str, files: dict[str, list[Path]]) -> Path:
    """A folder of symlinks person/photo (so run_folder labels by person)."""
    d = CACHE / "inputs" / name
    for person, photos in files.items():
        (d / person).mkdir(parents=True, exist_ok=True)
        for p in photos:
            link = d / person / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
    return d


def _rank_in_person(y: np.ndarray, paths: list[str]) -> np.ndarray:
    """1-based position of each photo among its person's photos on disk (sorted by name), so
    "photos 1-8" are the first eight files whether or not every photo has a face."""
    out = []
    for p in paths:
        path = Path(p)
        files = sorted(f.name for f in path.parent.iterdir() if f.suffix.lower() == ".jpg")
        out.append(files.index(path.name) + 1)
    return np.array(out)


def lfw_choice(seed: int = 0) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """(the 50 enrolled people's photos, the strangers' photos), a deterministic pick."""
    rng = np.random.default_rng(seed)
    sample = {p.name for p in SAMPLE.iterdir()}
    people = sorted(p for p in LFW_DIR.iterdir() if p.is_dir() and p.name not in sample)
    photos = {p.name: sorted(p.glob("*.jpg")) for p in people}
    many = [n for n in sorted(photos) if len(photos[n]) >= 20]
    enrolled = sorted(rng.choice(many, N_LFW_PEOPLE, replace=False).tolist())
    others = [n for n in sorted(photos) if n not in set(many)]
    strangers = sorted(rng.choice(others, N_STRANGERS, replace=False).tolist())
    return {n: photos[n][:30] for n in enrolled}, {n: photos[n][:1] for n in strangers}


def load_settings(which: list[str], model: str | None = None) -> dict[str, dict]:
    """name -> dict(Xtr, ytr, Xte, yte, Xst) (labels as strings)."""
    out = {}
    Xs = None
    have_lfw = LFW_DIR.is_dir()
    if have_lfw:
        enrolled, strangers = lfw_choice()
        Xs, _, _ = _embed("strangers", _link_folder("strangers", strangers), model)
    else:
        print(f"LFW not found at {LFW_DIR}: the lfw50 setting and the LFW strangers are skipped")
    if "sample" in which:
        X, y, paths = _embed("sample", SAMPLE, model)
        num = _rank_in_person(y, paths)
        tr = num <= 8
        out["sample"] = dict(Xtr=X[tr], ytr=y[tr], Xte=X[~tr], yte=y[~tr], Xst=Xs)
    if "lfw50" in which and have_lfw:
        X, y, paths = _embed("lfw50", _link_folder("lfw50", enrolled), model)
        num = _rank_in_person(y, paths)
        tr = num <= 10
        out["lfw50"] = dict(Xtr=X[tr], ytr=y[tr], Xte=X[~tr], yte=y[~tr], Xst=Xs)
    return out


def evaluate(model, Xte, yte, Xst) -> dict:
    from openface_py.recognize.classify import UNKNOWN
    from openface_py.recognize.openset import expected_calibration_error

    pk = model.predict(Xte)
    ok_k = np.array([p.name == t for p, t in zip(pk, yte)])
    closed = np.mean([p.best == t for p, t in zip(pk, yte)])
    conf_k = np.array([p.confidence for p in pk])
    res = dict(named=float(ok_k.mean()), closed=float(closed), n_known=len(yte))
    conf, ok = conf_k, ok_k
    if Xst is not None:
        ps = model.predict(Xst)
        ok_s = np.array([p.name == UNKNOWN for p in ps])
        conf = np.r_[conf_k, [p.confidence for p in ps]]
        ok = np.r_[ok_k, ok_s]
        res.update(rejected=float(ok_s.mean()), n_strangers=len(Xst))
    res.update(
        ece=float(expected_calibration_error(conf, ok)),
        ece_known=float(expected_calibration_error(conf_k, ok_k)),
        mean_conf_right=float(conf[ok].mean()) if ok.any() else float("nan"),
        median_conf_right=float(np.median(conf[ok])) if ok.any() else float("nan"),
        mean_conf_wrong=float(conf[~ok].mean()) if (~ok).any() else float("nan"),
        n_wrong=int((~ok).sum()),
    )
    return res


def main() -> int:
    from openface_py.recognize.classify import train_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifiers", nargs="+", default=["LinearSvm", "KNN", "JointBayesian", "GMM"])
    ap.add_argument("--settings", nargs="+", default=["sample", "lfw50"])
    ap.add_argument("--model", default=None, help="the embedding model (default: the default model)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    import sklearn
    import torch

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}"
    )
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    t = time.perf_counter()
    from openface_py.nets.embed import resolve_model

    model_name = resolve_model(args.model)
    print(f"model: {model_name}")
    settings = load_settings(args.settings, args.model)
    print(f"embeddings ready in {time.perf_counter() - t:.1f} s")
    rows = []
    for sname, d in settings.items():
        nst = 0 if d["Xst"] is None else len(d["Xst"])
        print(
            f"-- {sname}: {len(np.unique(d['ytr']))} people, {len(d['ytr'])} enrolled photos, "
            f"{len(d['yte'])} held-out photos, {nst} strangers' photos"
        )
        print(
            f"{'classifier':14s} {'ECE':>6s} {'ECE(kn)':>7s} {'conf ok':>7s} {'med ok':>6s} {'conf bad':>8s} "
            f"{'rejected':>8s} {'named':>7s} {'closed':>7s} {'train s':>7s}"
        )
        for name in args.classifiers:
            t = time.perf_counter()
            model = train_model(d["Xtr"], list(d["ytr"]), name, model_name, "id", {})
            train_s = time.perf_counter() - t
            r = evaluate(model, d["Xte"], d["yte"], d["Xst"])
            rej = f"{100 * r['rejected']:7.1f}%" if "rejected" in r else "     n/a"
            print(
                f"{name:14s} {r['ece']:6.3f} {r['ece_known']:7.3f} {r['mean_conf_right']:7.3f} "
                f"{r['median_conf_right']:6.3f} {r['mean_conf_wrong']:8.3f} {rej} {100 * r['named']:6.1f}% "
                f"{100 * r['closed']:6.1f}% {train_s:7.1f}",
                flush=True,
            )
            rows.append(dict(setting=sname, classifier=name, train_s=train_s, **r))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
