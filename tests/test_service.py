"""Tests of openface_py.service.app, cli.serve.

`openface-py serve`: a real server (uvicorn, a subprocess) on loopback, over a real database of
the sample photos; answers checked against the command line, refusals, overload, concurrent
enrolments and a kill -9 during enrolments."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EXAMPLES, HELD_OUT, ROOT, SAMPLE, cli, copy_db

from openface_py.recognize.facedb import FaceDatabase
from openface_py.service.app import wait_until_up

KEY = "test-key-0123456789"


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``openface-py serve`` in a subprocess on a free loopback port."""

    def __init__(self, db: Path, *extra: str, key: str | None = KEY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("OPENFACE_PY_API_KEY", None)
        args = [sys.executable, "-m", "openface_py", "-q", "serve", "--db", str(db), "--port", str(self.port), *extra]
        if key:
            args += ["--api-key", key]
        self.log = open(db.with_suffix(f".{self.port}.log"), "w")
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_up(self.url + "/v1/health", timeout=180)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        self.log.close()


@pytest.fixture(scope="module")
def db(sample_db, tmp_path_factory) -> Path:
    """Photos 1-8 of each sample person imported by ``db import`` (a copy of the session's database)."""
    return copy_db(sample_db[0], tmp_path_factory.mktemp("svc"))


@pytest.fixture(scope="module")
def server(db):
    s = Server(db)
    yield s
    s.stop()


def no_trace(r: httpx.Response) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert set(r.json()) == {"detail"} and r.json()["detail"]


def test_identify_verify_detect_embed_agree_with_the_command_line(server, db):
    probes = sorted(p for p in SAMPLE.glob("*/*.jpg") if p.stem.endswith(HELD_OUT))[:6] + [
        EXAMPLES / "longoria-cooper.jpg"
    ]
    rc, out, _ = cli("db", "search", str(db), *map(str, probes), "--json", "--top-k", "2")
    expected = {r["path"]: r["faces"] for r in json.loads(out)["results"]}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for p in probes:
            r = c.post("/v1/identify", params={"top_k": 2}, files={"photo": (p.name, p.read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            got = r.json()["faces"]
            want = expected[str(p)]
            assert [f["box"] for f in got] == [f["box"] for f in want]
            assert [(f["name"], f["nearest"]) for f in got] == [(f["name"], f["nearest"]) for f in want]
            assert [f["distance"] for f in got] == pytest.approx([f["distance"] for f in want], abs=1e-3)
        # base64 JSON gives the same answer as multipart
        p = probes[0]
        r = c.post("/v1/identify", json={"photo": base64.b64encode(p.read_bytes()).decode()})
        assert [f["name"] for f in r.json()["faces"]] == [f["name"] for f in expected[str(p)]]
        # verify: the distance `compare` prints
        a, b = SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg", SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg"
        z = EXAMPLES / "adams.jpg"
        cmp = json.loads(cli("compare", str(a), str(b), str(z), "--json")[1])["pairs"]
        for (x, y), pair in zip([(a, b), (a, z)], cmp[:2]):
            r = c.post("/v1/verify", files={"photo1": x.read_bytes(), "photo2": y.read_bytes()})
            assert r.status_code == 200, r.text
            assert r.json()["distance"] == pytest.approx(pair["squared_l2"], abs=1e-3)
            assert r.json()["same"] == pair["same"]
        assert [pair["same"] for pair in cmp[:2]] == [True, False]  # the two verdicts above differ
        det = c.post("/v1/detect", files={"photo": (EXAMPLES / "longoria-cooper.jpg").read_bytes()}).json()
        assert len(det["faces"]) == 2 and len(det["faces"][0]["landmarks"]) == 68
        emb = c.post("/v1/embed", files={"photo": a.read_bytes()}).json()
        rep = np.array(emb["faces"][0]["embedding"])
        assert emb["model"].startswith("nn4.small2.distilled-v2") and abs(np.linalg.norm(rep) - 1) < 1e-4
        assert c.get("/v1/people").json()["people"][0] == {"name": "Ariel_Sharon", "photos": 8, "faces": 8}
        spec = c.get("/openapi.json").json()
        assert {"/v1/identify", "/v1/verify", "/v1/people/{name}/faces", "/v1/health"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/v1/identify"]["post"]["requestBody"]["content"]
        assert c.get("/docs").status_code == 200 and "<html" in c.get("/").text.lower()


def test_bad_requests_get_4xx_with_a_reason(server, tmp_path):
    photo = (SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)  # 81 Mpx in a small file: over the 40 Mpx limit
    with httpx.Client(base_url=server.url, timeout=60) as c:
        cases = [
            (c.post("/v1/identify", files={"photo": b"not an image"}), 422, "not a recognised image"),
            (c.post("/v1/identify", files={"photo": photo[: len(photo) // 3]}), 422, "photo"),
            (c.post("/v1/identify", files={"photo": bomb.read_bytes()}), 422, "pixels"),
            (c.post("/v1/identify", files={"other": photo}), 400, "missing photo"),
            (c.post("/v1/identify", content=b"x", headers={"content-type": "text/plain"}), 415, "multipart"),
            (c.post("/v1/identify", content=b"{nope", headers={"content-type": "application/json"}), 400, "JSON"),
            (c.post("/v1/identify", json={"photo": "@@@"}), 400, "base64"),
            (c.post("/v1/identify", json=[1, 2]), 400, "JSON object"),
            (c.post("/v1/identify", content=b"[" * 100000, headers={"content-type": "application/json"}), 400, "JSON"),
            (
                c.post("/v1/people/Someone/faces", json={"photos": ["aGk="] * 65}, headers={"X-API-Key": KEY}),
                413,
                "at most 64",
            ),  # fmt: skip
            (c.post("/v1/identify", params={"top_k": 0}, files={"photo": photo}), 422, "top_k"),
            (c.post("/v1/identify", params={"top_k": "x"}, files={"photo": photo}), 422, "top_k"),
            (
                c.post("/v1/identify", content=b"0" * (21 * 1024 * 1024), headers={"content-type": "application/json"}),
                413,
                "limit",
            ),  # fmt: skip
            (
                c.post("/v1/verify", files={"photo1": photo, "photo2": (EXAMPLES / "LICENSE").read_bytes()}),
                422,
                "photo2",
            ),  # fmt: skip
            (c.get("/v1/nothing"), 404, "Not Found"),
            (c.delete("/v1/people/Tony_Blair"), 401, "API key"),
            (c.delete("/v1/people/Tony_Blair", headers={"X-API-Key": KEY + "x"}), 401, "API key"),
            (c.post("/v1/people/Tony_Blair/faces", files={"photos": photo}), 401, "API key"),
            (c.post("/v1/people/unknown/faces", files={"photos": photo}, headers={"X-API-Key": KEY}), 422, "name"),
            (c.post("/v1/people/.hidden/faces", files={"photos": photo}, headers={"X-API-Key": KEY}), 422, "name"),
            (c.delete("/v1/people/Nobody", headers={"X-API-Key": KEY}), 404, "Nobody"),
            (
                c.post(
                    "/v1/people/Someone/faces",
                    files={"photos": (EXAMPLES / "LICENSE").read_bytes()},
                    headers={"X-API-Key": KEY},
                ),
                422,
                "nothing enrolled",
            ),  # fmt: skip
        ]
        for r, status, words in cases:
            assert r.status_code == status, (r.request.url, r.text)
            no_trace(r)
            assert words.lower() in r.json()["detail"].lower(), (r.request.url, r.text)
        assert c.get("/v1/health").json()["faces"] == 81  # nothing above wrote anything
        req = c.build_request("POST", "/v1/identify", content=b"abc", headers={"content-type": "application/json"})
        del req.headers["content-length"]
        req.headers["transfer-encoding"] = "chunked"
        r = c.send(req)
        assert r.status_code == 411


def test_writes_need_a_key_and_a_server_without_one_refuses_them(db, tmp_path):
    copy = tmp_path / "ro.db"
    copy.write_bytes(db.read_bytes())
    s = Server(copy, "--protect-all", key=None)
    try:
        with httpx.Client(base_url=s.url, timeout=60) as c:
            assert c.get("/v1/health").status_code == 200
            r = c.get("/v1/people")
            assert r.status_code == 403 and "disabled" in r.json()["detail"]
    finally:
        s.stop()


def test_overload_answers_503_with_retry_after(db, tmp_path):
    copy = tmp_path / "busy.db"
    copy.write_bytes(db.read_bytes())
    s = Server(copy, "--max-queue", "1")
    photo = (EXAMPLES / "longoria-cooper.jpg").read_bytes()
    codes, retry = [], []

    def hit():
        with httpx.Client(base_url=s.url, timeout=120) as c:
            r = c.post("/v1/identify", files={"photo": photo})
            codes.append(r.status_code)
            if r.status_code == 503:
                retry.append(r.headers.get("retry-after"))
                no_trace(r)

    try:
        threads = [threading.Thread(target=hit) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        s.stop()
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    assert set(retry) == {"1"}


def enroll_many(url: str, jobs: list[tuple[str, bytes]], workers: int) -> list[int]:
    codes: list[int] = []
    lock = threading.Lock()
    it = iter(jobs)

    def worker():
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as c:
            while True:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                try:
                    r = c.post(f"/v1/people/{job[0]}/faces", files={"photos": job[1]})
                    code = r.status_code
                except httpx.HTTPError:
                    code = -1
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def sample_jobs(n: int) -> list[tuple[str, bytes]]:
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    return [(f"person-{k:04d}", photos[k % len(photos)].read_bytes()) for k in range(n)]


def test_concurrent_enrolments_lose_and_duplicate_nothing(db, tmp_path):
    copy = tmp_path / "many.db"
    copy.write_bytes(db.read_bytes())
    s = Server(copy, "--max-queue", "64")
    try:
        jobs = sample_jobs(60)
        codes = enroll_many(s.url, jobs + jobs[:20], workers=16)  # 20 repeats: duplicates, not new faces
        assert codes.count(201) == 80, codes
        with httpx.Client(base_url=s.url) as c:
            h = c.get("/v1/health").json()
        assert (h["people"], h["faces"]) == (10 + 60, 81 + 60)
    finally:
        s.stop()
    with FaceDatabase.open(copy) as d:
        assert d.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 141
        assert (
            d.conn.execute("SELECT COUNT(*) FROM (SELECT person_id, sha256 FROM photos GROUP BY 1, 2)").fetchone()[0]
            == 141
        )
        assert d.sync_index().ntotal == 141


def test_kill_9_during_enrolments_leaves_a_consistent_database(db, tmp_path):
    copy = tmp_path / "kill.db"
    copy.write_bytes(db.read_bytes())
    s = Server(copy, "--max-queue", "64", "--index-save-s", "0.5")
    jobs = sample_jobs(400)
    acknowledged: list[int] = []
    result: dict = {}

    def run():
        result["codes"] = enroll_many(s.url, jobs, workers=8)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.3)
        con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
        n = con.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        con.close()
        if n >= 81 + 30:
            break
    s.stop(signal.SIGKILL)
    t.join()
    acknowledged = [c for c in result["codes"] if c == 201]
    assert 30 <= len(acknowledged) < 400
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with FaceDatabase.open(copy) as d:
        faces = d.info()["faces"]
        # every acknowledged enrolment is there; at most the ones in flight at the kill are extra
        assert 81 + len(acknowledged) <= faces <= 81 + len(acknowledged) + 8
        assert d.sync_index().ntotal == faces
        X = d.embeddings()[1]
        for m in d.search(X[::10]):
            assert m[0].distance == pytest.approx(0.0, abs=1e-5)
    s2 = Server(copy)
    try:
        with httpx.Client(base_url=s2.url) as c:
            assert c.get("/v1/health").json()["faces"] == faces
    finally:
        s2.stop()
