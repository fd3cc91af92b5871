"""1:N search of the face database: exact (flat) against approximate (HNSW, IVF) FAISS indexes.

    python benchmarks/bench_search.py --sizes 10000,50000,100000,1000000 --probes 500 \
        --lfw ../shared/datasets/lfw --out benchmarks/results/search.json

Galleries: synthetic unit vectors drawn from a Gaussian model of the real embeddings (between-
and within-person covariance, ``FaceModel``, fitted to the shipped model's embeddings of real faces: the LFW pairs
images when ``--lfw`` is given, else data/lfw-sample), 5 faces per person; probes are new faces
of enrolled people. With ``--lfw``, also the real LFW gallery (its pairs images' faces, each
probed by itself and its nearest other face). Per size: build time, index bytes, ms per probe
(one probe per call, as the service searches, and batches of 256), recall@1 against the exact
search of HNSW at several ``efSearch`` (and of IVF at several ``nprobe`` with ``--ivf``); and the
whole ``FaceDatabase.search`` (index + SQLite name lookup) per probe. Prints machine info and
peak RSS.
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


class FaceModel:
    """A Gaussian model of the real embeddings: person centres ~ N(mu, Sb), a person's faces ~
    N(centre, Sw), projected back onto the unit sphere. Sb and Sw (between- and within-person
    covariance, as Joint Bayesian estimates them) come from real faces, so synthetic galleries have
    the real model's anisotropy (its PCA spectrum) and distance distribution, not an isotropic blob."""

    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        X = X.astype(np.float64)
        people, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
        means = np.zeros((len(people), X.shape[1]))
        np.add.at(means, inv, X)
        means /= counts[:, None]
        multi = counts[inv] >= 2
        within = X[multi] - means[inv[multi]]
        dof = len(within) - int((counts >= 2).sum())
        self.sw = within.T @ within / max(dof, 1)
        sb = np.cov(means[counts >= 1].T) - self.sw * float(np.mean(1.0 / counts))
        w, v = np.linalg.eigh(sb)
        self.sb = (v * np.clip(w, 0, None)) @ v.T
        self.mu = X.mean(0)
        self.lb = np.linalg.cholesky(self.sb + 1e-9 * np.eye(len(self.mu)))
        self.lw = np.linalg.cholesky(self.sw + 1e-9 * np.eye(len(self.mu)))

    def centres(self, n_people: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (self.mu + rng.standard_normal((n_people, len(self.mu))) @ self.lb.T).astype(np.float32)

    def faces(self, centres: np.ndarray, per: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.repeat(centres, per, axis=0).astype(np.float64)
        out += rng.standard_normal(out.shape) @ self.lw.T
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)


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


def measure(
    name: str,
    X: np.ndarray,
    probes: np.ndarray,
    nprobes: list[int],
    efs: list[int],
    approx: bool,
    with_ivf: bool = False,
) -> dict:
    ids = np.arange(len(X), dtype=np.int64)
    row: dict = {"gallery": name, "faces": len(X), "probes": len(probes)}
    t = time.perf_counter()
    flat = VectorIndex.build(ids, X, 128, kind="flat")
    row["flat"] = {"build_s": round(time.perf_counter() - t, 3), "bytes": len(flat.to_bytes())}
    ms, exact = time_single(flat, probes)
    row["flat"].update(ms_per_probe=round(ms, 4), ms_per_probe_batched=round(time_batched(flat, probes), 4))
    print(f"{name}: flat {row['flat']}", flush=True)
    if approx:
        t = time.perf_counter()
        graph = VectorIndex.build(ids, X, 128, kind="hnsw")
        row["hnsw"] = {"build_s": round(time.perf_counter() - t, 2), "bytes": len(graph.to_bytes()), "ef_search": []}
        import openface_py.recognize.vectorindex as vi

        default_ef = vi.HNSW_EF_SEARCH
        for ef in efs:
            vi.HNSW_EF_SEARCH = ef  # what VectorIndex.search asks FAISS for
            ms, got = time_single(graph, probes)
            r = {"ef_search": ef, "ms_per_probe": round(ms, 4), "recall_at_1": round(float((got == exact).mean()), 4),
                 "ms_per_probe_batched": round(time_batched(graph, probes), 4)}  # fmt: skip
            row["hnsw"]["ef_search"].append(r)
            print(f"{name}: hnsw {r}", flush=True)
        vi.HNSW_EF_SEARCH = default_ef
        del graph
    if approx and with_ivf and len(X) >= 39 * ivf_lists(len(X)):
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
    ap.add_argument("--sizes", default="10000,50000,100000,1000000")
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--nprobe", default="16,64,256")
    ap.add_argument("--ef-search", default="64,128,256")
    ap.add_argument("--lfw", type=Path, default=None)
    ap.add_argument("--db-sizes", default="10000,100000", help="sizes at which FaceDatabase.search is timed")
    ap.add_argument("--ivf", action="store_true", help="also measure IVF indexes")
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
    model = FaceModel(X_real, y_real)
    same, diff = pair_means(X_real, y_real, rng)
    labels = np.repeat(np.arange(2000), PER_PERSON)
    check = pair_means(model.faces(model.centres(2000, 5), PER_PERSON, 6), labels, rng)
    dist = {"source": source, "real_same_mean": round(same, 4), "real_diff_mean": round(diff, 4),
            "synthetic_same_mean": round(check[0], 4), "synthetic_diff_mean": round(check[1], 4)}  # fmt: skip
    print(json.dumps(dist), flush=True)
    nprobes = [int(v) for v in args.nprobe.split(",")]
    efs = [int(v) for v in args.ef_search.split(",")]
    rows = []
    for size in [int(v) for v in args.sizes.split(",")]:
        people = size // PER_PERSON
        centres = model.centres(people, seed=size)
        X = model.faces(centres, PER_PERSON, seed=size + 1)
        # probes: a new face of a random enrolled person (same centre, new scatter)
        who = np.random.default_rng(size + 2).integers(0, people, args.probes)
        probes = model.faces(centres[who], 1, seed=size + 3)
        rows.append(measure(f"synthetic-{size}", X, probes, nprobes, efs, approx=True, with_ivf=args.ivf))
        if str(size) in args.db_sizes.split(","):
            rows[-1]["database"] = database_search(X, probes[:300], [f"p{k // PER_PERSON}" for k in range(size)])
            print(f"synthetic-{size}: database {rows[-1]['database']}", flush=True)
        del X
    if args.lfw is not None:
        rows.append(measure("lfw-pairs-images", X_real, X_real, nprobes, efs, approx=False))
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
