"""`openface-py serve` under load, on loopback only: identify requests/s and latency at 1, 8 and 32
concurrent clients, then 1,000 concurrent enrolments with the face count checked afterwards.

    python benchmarks/bench_service.py --lfw ../shared/datasets/lfw --out benchmarks/results/service.json

The server is a subprocess over a database of data/lfw-sample (100 faces of 10 people); probes are
LFW-size photos (250x250 deep-funneled LFW photos with --lfw, else the sample's). Each level runs
for ``--seconds`` or ``--max-requests``, whichever comes first. The load generator (threads with
httpx) shares the 2 cores with the server, as any client on the same machine would.

``--embed-batching off,on`` measures every setup both ways (the inference workers embedding their
own faces, or one embedder in the server process batching concurrent requests: serve's default on
a GPU); ``--device`` is passed to the server. On a GPU machine:

    python benchmarks/bench_service.py --device cuda --embed-batching off,on --setups threads4 \
        --enrolments 0 --out benchmarks/results/service-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    from openface_py.service.app import wait_until_up

    port = free_port()
    args = [sys.executable, "-m", "openface_py", "-q", "serve", "--db", str(db), "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(args + extra, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url + "/v1/health", timeout=180)
    return proc, url


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server, its inference workers), MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            todo += [int(k) for t in Path(f"/proc/{p}/task").iterdir() for k in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return round(total, 1)


def load(url: str, photos: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    import httpx

    lat, codes = [], []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                t = time.perf_counter()
                r = c.post("/v1/identify", files={"photo": photos[n % len(photos)]})
                dt = time.perf_counter() - t
                with lock:
                    codes.append(r.status_code)
                    if r.status_code == 200:
                        lat.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {
        "clients": clients,
        "requests": len(codes),
        "ok": codes.count(200),
        "busy_503": codes.count(503),
        "other": len(codes) - codes.count(200) - codes.count(503),
        "seconds": round(wall, 2),
        "identify_per_s": round(codes.count(200) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def embedding_stats(url: str) -> dict:
    """The server's ``/v1/health`` ``embedding`` section (the batcher's counts when batching is on)."""
    import httpx

    with httpx.Client(base_url=url) as c:
        return c.get("/v1/health").json().get("embedding", {})


def level_stats(before: dict, after: dict) -> dict:
    """Where embeddings ran during one level: the device, and with batching the batches made in it
    (with --workers 2, those of the server process that answered /v1/health)."""
    out = {"batching": after.get("batching"), "device": after.get("device")}
    if after.get("batching"):
        batches = after["batches"] - before["batches"]
        faces = after["faces"] - before["faces"]
        out.update(batches=batches, faces=faces, mean_batch=round(faces / batches, 2) if batches else None)
    return out


def enrolments(url: str, photos: list[bytes], n: int, clients: int) -> dict:
    import httpx

    codes = []
    lock = threading.Lock()
    jobs = iter(range(n))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300, headers={"X-API-Key": KEY}) as c:
            while True:
                with lock:
                    k = next(jobs, None)
                if k is None:
                    return
                while True:  # a 503 is "retry shortly": the client does
                    r = c.post(f"/v1/people/enrolled-{k:05d}/faces", files={"photos": photos[k % len(photos)]})
                    if r.status_code != 503:
                        break
                    time.sleep(float(r.headers.get("retry-after", "1")))
                with lock:
                    codes.append(r.status_code)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with httpx.Client(base_url=url) as c:
        health = c.get("/v1/health").json()
    return {
        "enrolments": n,
        "clients": clients,
        "created_201": codes.count(201),
        "other": len(codes) - codes.count(201),
        "seconds": round(wall, 1),
        "per_s": round(n / wall, 1),
        "faces_after": health["faces"],
        "people_after": health["people"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw", type=Path, default=None)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=2000)
    ap.add_argument("--enrolments", type=int, default=1000)
    ap.add_argument("--setups", default="workers2,threads2,workers1", help="server setups to measure")
    ap.add_argument(
        "--embed-batching",
        default="auto",
        help="serve's --embed-batching for each setup, comma-separated (off,on: both; auto: on for a GPU)",
    )
    ap.add_argument("--device", default=None, help="serve's --device (default: the server's, auto)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.lfw is not None:
        paths = sorted((args.lfw / "deepfunneled").glob("*/*.jpg"))[::60][:200]
    else:
        paths = sorted((ROOT / "data" / "lfw-sample").glob("*/*.jpg"))
    photos = [p.read_bytes() for p in paths]
    setups = {  # --inference-threads: inference worker processes per server process
        "workers1": ["--workers", "1", "--inference-threads", "1"],
        "threads2": ["--workers", "1", "--inference-threads", "2"],
        "workers2": ["--workers", "2", "--inference-threads", "1"],
        "threads4": ["--workers", "1", "--inference-threads", "4"],
    }
    modes = args.embed_batching.split(",")
    runs = [(name, mode) for name in args.setups.split(",") for mode in modes]
    extra = ["--device", args.device] if args.device else []
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "photos": len(photos),
        "photo_source": str(paths[0].parent.parent),
    }
    print(json.dumps(info), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        from openface_py.cli import main as cli

        base = Path(tmp) / "base.db"
        assert cli(["-q", "db", "create", str(base)]) == 0
        assert cli(["-q", "db", "import", str(base), str(ROOT / "data" / "lfw-sample"), "--workers", "2"]) == 0
        for name, mode in runs:
            first = (name, mode) == runs[0]
            db = Path(tmp) / f"{name}-{mode}.db"
            db.write_bytes(base.read_bytes())
            server_args = setups[name] + ["--embed-batching", mode] + extra
            proc, url = start(db, server_args + ["--max-queue", "64"])
            try:
                load(url, photos[:10], 2, 3.0, 20)  # warm-up
                for clients in [int(c) for c in args.clients.split(",")]:
                    before = embedding_stats(url)
                    row = {"setup": name, "embed_batching": mode, "server_args": server_args,
                           **load(url, photos, clients, args.seconds, args.max_requests)}  # fmt: skip
                    row["server_rss_mb"] = tree_rss_mb(proc.pid)  # server + inference workers, after the level
                    row["embedding"] = level_stats(before, embedding_stats(url))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                if first and args.enrolments:
                    e = enrolments(url, photos, args.enrolments, 32)
                    e["setup"] = name
                    print(json.dumps(e), flush=True)
                    rows.append(e)
            finally:
                proc.terminate()
                proc.wait(60)
            if first and args.enrolments:
                from openface_py.recognize.facedb import FaceDatabase

                with FaceDatabase.open(db) as d:
                    rows[-1]["faces_in_database"] = d.info()["faces"]
                    dup = d.conn.execute(
                        "SELECT COUNT(*) - COUNT(DISTINCT person_id || sha256) FROM photos"
                    ).fetchone()[0]
                    rows[-1]["duplicate_photos"] = dup
                    rows[-1]["index_rows"] = d.sync_index().ntotal
                print(json.dumps(rows[-1]), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"machine": info, "rows": rows, "peak_rss_mib_load_generator": round(peak, 1), "command": " ".join(sys.argv)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
