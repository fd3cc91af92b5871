"""1:N search of the face database: exact (flat) against approximate (IVF) FAISS indexes.

    python benchmarks/bench_search.py --sizes 10000,100000,1000000 --lfw ../shared/datasets/lfw \
        --out benchmarks/results/search.json

Galleries: synthetic unit vectors whose same-person and different-person squared-L2 distances
follow the real model's (fitted to the shipped model's embeddings of real faces: the LFW pairs
images when ``--lfw`` is given, else data/lfw-sample), 5 faces per person; probes are new faces
of enrolled people. With ``--lfw``, also the real LFW gallery (its pairs images' faces, each
probed by the others of the same person). Per size: build time, index memory, ms per probe
(one probe per call, as the service searches, and batches of 256), recall@1 of IVF against the
exact search at several ``nprobe``; and the whole ``FaceDatabase.search`` (index + SQLite name
lookup) per probe. Prints machine info and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openface_py.recognize.vectorindex import VectorIndex, ivf_lists  # noqa: E402

PER_PERSON = 5


def real_faces(lfw: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(embeddings, person labels, source) of real faces through the shipped model."""
    from openface_py.nets.embed import load_embedder

    emb = load_embedder("nn4.small2.distilled-v2")
    if lfw is not None:  # the crops train-net --lfw aligns (cached)
        from openface_py.train.trainer import LfwProbe

        probe = LfwProbe.load(lfw, progress=False)
        X = emb.embed(probe.faces)
        people = np.array([n.rsplit("_", 1)[0] for n in probe.names])
        return X, people, f"LFW pairs images ({len(X)} faces of {len(set(people))} people)"
    from openface_py.io import load_image
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create("nn4.small2.distilled-v2")
    X, people = [], []
    for p in sorted((ROOT / "data" / "lfw-sample").glob("*/*.jpg")):
        faces = pipe.process(load_image(p), multi=False)
        if faces:
            X.append(faces[0].embedding)
            people.append(p.parent.name)
    return np.stack(X), np.array(people), f"data/lfw-sample ({len(X)} faces)"


def pair_means(X: np.ndarray, y: np.ndarray, rng, n: int = 200_000) -> tuple[float, float]:
    i, j = rng.integers(0, len(X), n), rng.integers(0, len(X), n)
    keep = i != j
    i, j = i[keep], j[keep]
    d = ((X[i] - X[j]) ** 2).sum(1)
    same = y[i] == y[j]
    return float(d[same].mean()), float(d[~same].mean())


def generate(n_people: int, alpha: float, s: float, seed: int, per: int = PER_PERSON) -> np.ndarray:
    """Faces of ``n_people`` people: centres share a direction (weight ``alpha``), faces scatter by ``s``."""
    rng = np.random.default_rng(seed)
    d = 128
    m = np.ones(d, np.float32) / np.sqrt(d)
    centres = alpha * m + rng.standard_normal((n_people, d), dtype=np.float32) / np.sqrt(d)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.repeat(centres, per, axis=0)
    out += s * rng.standard_normal(out.shape, dtype=np.float32) / np.sqrt(d)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def fit_generator(same_target: float, diff_target: float) -> tuple[float, float]:
    """alpha, s so that synthetic same/different mean squared distances match the real ones."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(400), PER_PERSON)
    alpha, s = 0.5, 0.5
    for _ in range(3):
        lo, hi = 0.0, 5.0
        for _ in range(30):  # different-person distance falls as alpha grows
            alpha = (lo + hi) / 2
            _, diff = pair_means(generate(400, alpha, s, 1), y, rng, 50_000)
            lo, hi = (alpha, hi) if diff > diff_target else (lo, alpha)
        lo, hi = 0.0, 5.0
        for _ in range(30):  # same-person distance grows with s
            s = (lo + hi) / 2
            same, _ = pair_means(generate(400, alpha, s, 1), y, rng, 50_000)
            lo, hi = (s, hi) if same < same_target else (lo, s)
    return alpha, s


def time_single(index: VectorIndex, probes: np.ndarray, k: int = 1) -> tuple[float, np.ndarray]:
    ids = np.empty(len(probes), np.int64)
    t = time.perf_counter()
    for n, p in enumerate(probes):
        ids[n] = index.search(p[None], k).ids[0, 0]
    return (time.perf_counter() - t) / len(probes) * 1e3, ids


def time_batched(index: VectorIndex, probes: np.ndarray) -> float:
    t = time.perf_counter()
    for b in range(0, len(probes), 256):
        index.search(probes[b : b + 256], 1)
    return (time.perf_counter() - t) / len(probes) * 1e3


def measure(name: str, X: np.ndarray, probes: np.ndarray, nprobes: list[int], ivf: bool) -> dict:
    ids = np.arange(len(X), dtype=np.int64)
    row: dict = {"gallery": name, "faces": len(X), "probes": len(probes)}
    t = time.perf_counter()
    flat = VectorIndex.build(ids, X, 128, kind="flat")
    row["flat"] = {"build_s": round(time.perf_counter() - t, 3), "bytes": len(flat.to_bytes())}
    ms, exact = time_single(flat, probes)
    row["flat"].update(ms_per_probe=round(ms, 4), ms_per_probe_batched=round(time_batched(flat, probes), 4))
    print(f"{name}: flat {row['flat']}", flush=True)
    if ivf and len(X) >= 39 * ivf_lists(len(X)):
        t = time.perf_counter()
        approx = VectorIndex.build(ids, X, 128, kind="ivf")
        row["ivf"] = {"lists": ivf_lists(len(X)), "build_s": round(time.perf_counter() - t, 2),
                      "bytes": len(approx.to_bytes()), "nprobe": []}  # fmt: skip
        inner = __import__("faiss").extract_index_ivf(approx.index)
        for npb in nprobes:
            inner.nprobe = npb
            ms, got = time_single(approx, probes)
            r = {"nprobe": npb, "ms_per_probe": round(ms, 4), "recall_at_1": round(float((got == exact).mean()), 4),
                 "ms_per_probe_batched": round(time_batched(approx, probes), 4)}  # fmt: skip
            row["ivf"]["nprobe"].append(r)
            print(f"{name}: ivf {r}", flush=True)
        del approx
    del flat
    return row


def database_search(X: np.ndarray, probes: np.ndarray, names: list[str]) -> dict:
    """ms per probe of ``FaceDatabase.search`` (index + SQLite names) at this gallery size."""
    from openface_py.recognize.facedb import FaceDatabase, _blob

    with tempfile.TemporaryDirectory() as tmp:
        db = FaceDatabase.create(Path(tmp) / "b.db", "m", "m|bench", 0.16)
        t = time.perf_counter()
        db.conn.execute("BEGIN")
        db.conn.execute("INSERT INTO people(name, created) SELECT DISTINCT column1, 0 FROM (VALUES " +
                        ",".join("(?)" for _ in set(names)) + ")", sorted(set(names)))  # fmt: skip
        pid = dict(db.conn.execute("SELECT name, id FROM people"))
        db.conn.executemany("INSERT INTO photos(id, person_id, sha256, added) VALUES (?,?,?,0)",
                            [(k + 1, pid[n], f"s{k}") for k, n in enumerate(names)])  # fmt: skip
        db.conn.executemany(
            "INSERT INTO faces(photo_id, person_id, box, embedding, identity, added, gen) VALUES (?,?,'[]',?,?,0,1)",
            [(k + 1, pid[n], _blob(x), "m|bench") for k, (x, n) in enumerate(zip(X, names))],
        )
        db.conn.execute("COMMIT")
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        db.sync_index()
        index_s = time.perf_counter() - t
        t = time.perf_counter()
        for p in probes:
            db.search(p[None], top_k=1)
        ms = (time.perf_counter() - t) / len(probes) * 1e3
        kind = db.sync_index().kind
        db.close()
    return {"faces": len(X), "index": kind, "rows_insert_s": round(load_s, 2), "index_build_s": round(index_s, 2),
            "ms_per_probe": round(ms, 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--nprobe", default="8,16,24,32,48,64")
    ap.add_argument("--lfw", type=Path, default=None)
    ap.add_argument("--db-sizes", default="10000,100000", help="sizes at which FaceDatabase.search is timed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import faiss
    import torch

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(info), flush=True)
    X_real, y_real, source = real_faces(args.lfw)
    rng = np.random.default_rng(1)
    same, diff = pair_means(X_real, y_real, rng)
    alpha, s = fit_generator(same, diff)
    check = pair_means(generate(2000, alpha, s, 5), np.repeat(np.arange(2000), PER_PERSON), rng)
    dist = {"source": source, "real_same_mean": round(same, 4), "real_diff_mean": round(diff, 4), "alpha": alpha,
            "s": s, "synthetic_same_mean": round(check[0], 4), "synthetic_diff_mean": round(check[1], 4)}  # fmt: skip
    print(json.dumps(dist), flush=True)
    nprobes = [int(v) for v in args.nprobe.split(",")]
    rows = []
    for size in [int(v) for v in args.sizes.split(",")]:
        people = size // PER_PERSON
        X = generate(people, alpha, s, seed=size)
        # probes: a new face of a random enrolled person (same centre, new scatter)
        pr = np.random.default_rng(size + 1)
        who = pr.integers(0, people, args.probes)
        centres = generate(people, alpha, 0.0, seed=size, per=1)[who]
        probes = centres + s * pr.standard_normal(centres.shape, dtype=np.float32) / np.sqrt(128)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        rows.append(measure(f"synthetic-{size}", X, probes.astype(np.float32), nprobes, ivf=True))
        if str(size) in args.db_sizes.split(","):
            rows[-1]["database"] = database_search(X, probes[:300], [f"p{k // PER_PERSON}" for k in range(size)])
            print(f"synthetic-{size}: database {rows[-1]['database']}", flush=True)
        del X
    if args.lfw is not None:
        rows.append(measure("lfw-pairs-images", X_real, X_real, nprobes, ivf=False))
        # recall of the real gallery: each face's nearest other face is the same person
        flat = VectorIndex.build(np.arange(len(X_real)), X_real, 128, kind="flat")
        found = flat.search(X_real, 2)
        rows[-1]["nearest_other_same_person"] = round(float((y_real[found.ids[:, 1]] == y_real).mean()), 4)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"machine": info, "distances": dist, "rows": rows, "peak_rss_mib": round(peak, 1),
              "command": " ".join(sys.argv)}  # fmt: skip
    print(f"peak RSS {peak:.0f} MiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
