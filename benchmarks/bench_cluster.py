"""Clustering faces into people, scored against the true identities (issue 27).

    python benchmarks/bench_cluster.py --run build/lfw-nn4-run \
        --out benchmarks/results/cluster/lfw-nn4.json
    python benchmarks/bench_cluster.py --npz ../main/build/lfw-reid-mtcnn5/embeddings-*.npz \
        --model mobilefacenet-reid-0095 --out benchmarks/results/cluster/lfw-reid.json

Embeddings: an ``openface-py run`` output folder (``--run``: identities are the photos' folders,
the model from its embeddings.json) or an ``openface-py lfw`` embedding cache (``--npz``: names
``Person_Name_0001`` give the identities; ``--model`` names its model). Each setting is run
through ``recognize.cluster.cluster_faces`` (photo ids = the photos' paths) and scored by the
scorer below, written independently of the clustering code: pairwise precision / recall / F
(over all pairs of faces put together), BCubed precision / recall / F (Bagga & Baldwin 1998, per
face, averaged over faces) and NMI (scikit-learn); unassigned faces count as clusters of one.
Settings: ``--factors`` (of the model's same-person threshold; the default factor first) or
``--thresholds``, for each ``--methods``; ``--hdbscan`` adds scikit-learn's HDBSCAN
(min_cluster_size 2 and 3, no one-photo constraint) for reference. Prints machine info, time per
setting and the process's peak RSS. ``--synthetic N``: instead, N faces (5 per person) drawn from
``bench_search.FaceModel`` fitted to the loaded embeddings, for time and memory at scale.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _singletons(found: np.ndarray) -> np.ndarray:
    """Unassigned faces (-1) as clusters of one, so that they score as such."""
    found = np.asarray(found, np.int64).copy()
    loose = found < 0
    found[loose] = found.max(initial=-1) + 1 + np.arange(int(loose.sum()))
    return found


def _contingency(truth: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count of each (true, found) cell, per face; size of its true class; size of its found cluster)."""
    _, t = np.unique(truth, return_inverse=True)
    _, f = np.unique(found, return_inverse=True)
    t, f = t.reshape(-1), f.reshape(-1)
    cell = t.astype(np.int64) * (int(f.max(initial=0)) + 1) + f
    _, cell_id, cell_n = np.unique(cell, return_inverse=True, return_counts=True)
    return cell_n[cell_id.reshape(-1)], np.bincount(t)[t], np.bincount(f)[f]


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def score(truth, found) -> dict:
    """Pairwise and BCubed precision/recall/F and NMI of ``found`` (-1 = unassigned) against ``truth``."""
    from sklearn.metrics import normalized_mutual_info_score

    truth = np.asarray(truth)
    found = _singletons(found)
    both, true_n, found_n = _contingency(truth, found)
    # pairwise: pairs in one cell / pairs in one found cluster, / pairs in one true class;
    # per face, (count - 1) counts that face's pairs (each pair twice, on both sides)
    together = float(np.sum(both - 1))
    p_pair = together / float(np.sum(found_n - 1)) if np.sum(found_n - 1) else 1.0
    r_pair = together / float(np.sum(true_n - 1)) if np.sum(true_n - 1) else 1.0
    p_b = float(np.mean(both / found_n))
    r_b = float(np.mean(both / true_n))
    return {
        "pairwise_precision": round(p_pair, 4),
        "pairwise_recall": round(r_pair, 4),
        "pairwise_f": round(_f(p_pair, r_pair), 4),
        "bcubed_precision": round(p_b, 4),
        "bcubed_recall": round(r_b, 4),
        "bcubed_f": round(_f(p_b, r_b), 4),
        "nmi": round(float(normalized_mutual_info_score(truth, found)), 4),
    }


def load_run(folder: Path) -> tuple[np.ndarray, list[str], list[str], str]:
    """(embeddings, identity per face, photo per face, model) of a run output folder."""
    from openface_py.jobs.embeddings import load_embeddings

    reps, labels, paths, meta = load_embeddings(folder)
    return reps, labels, paths, meta["model"]


def load_lfw_cache(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings, identity per face, photo per face) of an ``openface-py lfw`` embedding cache."""
    from openface_py.io import load_npz

    z = load_npz(path, json_keys=("meta",))
    names = [str(n) for n in z["meta"]["names"]]
    people = [re.sub(r"_\d+(\.\w+)?$", "", Path(n).name) for n in names]
    return z["reps"].astype(np.float32), people, names


def synthetic(x: np.ndarray, people: list[str], n: int) -> tuple[np.ndarray, np.ndarray, None, str]:
    """``n`` faces of ``n // 5`` people from a Gaussian model of ``x`` (each its own photo)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_search import PER_PERSON, FaceModel

    model = FaceModel(x, np.asarray(people))
    faces = model.faces(model.centres(n // PER_PERSON, seed=n), PER_PERSON, seed=n + 1)
    return faces, np.repeat(np.arange(n // PER_PERSON), PER_PERSON), None, f"synthetic {n} ({PER_PERSON} per person)"


def machine() -> dict:
    import faiss
    import sklearn

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    from openface_py.nets.catalog import SAME_PERSON_THRESHOLDS
    from openface_py.recognize.cluster import DEFAULT_FACTOR, ClusterSettings, cluster_faces

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="an openface-py run output folder")
    src.add_argument("--npz", type=Path, help="an openface-py lfw embedding cache")
    ap.add_argument("--model", default=None, help="the cache's model (--npz)")
    ap.add_argument("--methods", default="average,whispers")
    ap.add_argument("--factors", default=f"{DEFAULT_FACTOR},0.5,0.6,0.7,0.8,0.9,1.0")
    ap.add_argument("--thresholds", default=None, help="squared L2 thresholds instead of --factors")
    ap.add_argument("--k", type=int, default=None, help="neighbours per face (default: the module's)")
    ap.add_argument("--min-size", type=int, default=2)
    ap.add_argument("--hdbscan", action="store_true", help="also scikit-learn's HDBSCAN")
    ap.add_argument("--synthetic", type=int, default=None, help="N synthetic faces modelled on the loaded ones")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("openface_py.recognize.cluster").setLevel(logging.DEBUG)  # its graph / merge times

    info = machine()
    print(json.dumps(info), flush=True)
    if args.run:
        x, people, photos, model = load_run(args.run)
        source = str(args.run)
    else:
        if not args.model:
            ap.error("--npz needs --model")
        x, people, photos = load_lfw_cache(args.npz)
        model, source = args.model, args.npz.name
    if args.synthetic:
        x, people, photos, source = synthetic(x, people, args.synthetic)
    same = SAME_PERSON_THRESHOLDS[model]
    data = {"source": source, "model": model, "faces": len(x), "people": len(set(people)), "same_person": same}
    print(json.dumps(data), flush=True)
    if args.thresholds:
        thresholds = [float(v) for v in args.thresholds.split(",")]
    else:
        thresholds = [round(float(v) * same, 4) for v in args.factors.split(",")]
    extra = {} if args.k is None else {"k": args.k}
    rows = []
    for method in args.methods.split(","):
        for t in thresholds:
            settings = ClusterSettings(threshold=t, method=method, min_size=args.min_size, **extra)
            start = time.perf_counter()
            found = cluster_faces(x, photos, settings)
            seconds = time.perf_counter() - start
            row = {**settings.to_dict(), "factor": round(t / same, 4), "seconds": round(seconds, 2),
                   "clusters": found.n_clusters, "unassigned": found.unassigned, **score(people, found.labels),
                   "peak_rss_mib": peak_rss_mib()}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.hdbscan:
        from sklearn.cluster import HDBSCAN

        for mcs in (2, 3):
            start = time.perf_counter()
            labels = HDBSCAN(min_cluster_size=mcs).fit_predict(x)
            seconds = time.perf_counter() - start
            row = {"method": "sklearn-hdbscan", "min_cluster_size": mcs, "seconds": round(seconds, 2),
                   "clusters": int(labels.max() + 1), "unassigned": int((labels < 0).sum()),
                   **score(people, labels), "peak_rss_mib": peak_rss_mib()}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": info, "data": data, "rows": rows, "peak_rss_mib": peak_rss_mib(),
              "command": " ".join(sys.argv)}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
