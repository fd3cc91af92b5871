"""What opening a face database costs: ``FaceDatabase.open`` (with its ``PRAGMA quick_check`` up to
``QUICK_CHECK_MAX_BYTES``) and the first ``sync_index`` (the index file read, its SHA-256
checked, its ids compared with the rows), at several sizes.

    python benchmarks/bench_db_open.py --faces 1000,10000,90000

Databases of synthetic unit vectors (10 faces per person, one photo per face) are written through
``FaceDatabase.enroll`` in one process, their index saved, then each is opened ``--repeat`` times
(the file in the page cache: a warm open); the median is printed with the file sizes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from openface_py.recognize import facedb
from openface_py.recognize.facedb import FaceDatabase, FaceRecord


def build(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 128)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    with FaceDatabase.create(path, "m", "m|a", 0.5) as db:
        db._refresh_decisions = lambda force=False: None  # the threshold is beside the point here: faster filling
        db.conn.execute("PRAGMA synchronous=OFF")  # no fsync per photo while filling (opening is measured)
        for k, x in enumerate(X):
            db.enroll(f"p{k // 10}", f"sha-{k}", [FaceRecord([0, 0, 9, 9], x)], "m|a")
        db.sync_index()
        db.save_index()


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", default="1000,10000,90000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {platform.processor() or platform.machine()}")
    print(f"quick_check on opening up to {facedb.QUICK_CHECK_MAX_BYTES / 2**20:.0f} MiB")
    print("faces\tdb MiB\tindex MiB\topen ms\topen+sync_index ms")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.faces.split(",")):
            path = Path(tmp) / f"{n}.db"
            build(path, n)

            def just_open(path=path):
                FaceDatabase.open(path).close()

            def open_and_sync(path=path):
                with FaceDatabase.open(path) as db:
                    db.sync_index()

            print(
                f"{n}\t{path.stat().st_size / 2**20:.1f}\t{db_index_mib(path):.1f}"
                f"\t{timed(just_open, args.repeat) * 1e3:.1f}\t{timed(open_and_sync, args.repeat) * 1e3:.1f}"
            )


def db_index_mib(path: Path) -> float:
    return path.with_name(path.name + ".faiss").stat().st_size / 2**20


if __name__ == "__main__":
    main()
