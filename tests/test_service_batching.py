"""Tests of openface_py.service.batcher, service.app, service.inference, cli.serve.

`serve --embed-batching on`: the inference workers align, one embedder in the server process embeds
the faces of concurrent requests in shared batches. The batcher with the real default model on the
CPU (concurrent callers, a failing batch, shutdown with callers waiting), then a real server on
loopback against one without batching."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EXAMPLES, HELD_OUT, SAMPLE, copy_db
from test_service import KEY, Server

from openface_py.nets.embedders import Embedder
from openface_py.service.batcher import BatcherClosed, EmbedBatcher


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


class Watched(Embedder):
    """The real embedder, counting its network calls; a batch holding an all-white face fails (the
    error path), and with ``gate`` set each call waits for it (callers left waiting)."""

    def __init__(self, real: Embedder) -> None:
        self.real, self.name, self.alignment, self.device, self.dim = (
            real, real.name, real.alignment, real.device, real.dim,
        )  # fmt: skip
        self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def _embed_batch(self, faces: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if (faces.reshape(len(faces), -1) == 255).all(axis=1).any():
            raise RuntimeError("an all-white face")
        return self.real._embed_batch(faces)


def random_faces(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


def together(fns: list, timeout: float = 60) -> list:
    """Run each function in its own thread, released at once; what each returned or raised (None:
    still running after ``timeout`` seconds)."""
    out: list = [None] * len(fns)
    start = threading.Barrier(len(fns))

    def run(k: int) -> None:
        start.wait()
        try:
            out[k] = fns[k]()
        except Exception as exc:
            out[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return out


def test_concurrent_callers_get_their_own_rows_from_fewer_batches(default_embedder):
    model = Watched(default_embedder)
    batcher = EmbedBatcher(model, max_batch=32, window_s=0.3)
    try:
        mine = [random_faces(1 + k % 3, k) for k in range(12)]
        got = together([lambda f=f: batcher.embed(f) for f in mine])
        for faces, rows in zip(mine, got):
            assert isinstance(rows, np.ndarray), rows
            np.testing.assert_allclose(rows, default_embedder.embed(faces), rtol=0, atol=1e-6)
        stats = batcher.stats.to_json()
        assert stats["requests"] == 12 and stats["faces"] == sum(map(len, mine))
        assert stats["batches"] == model.calls < 12 and stats["mean_batch"] > 1
        # a batch never grows past max_batch by joining; one request larger than it is cut into batches
        small = EmbedBatcher(model, max_batch=4, window_s=0.3)
        try:
            got = together([lambda k=k: small.embed(random_faces(3, 100 + k)) for k in range(4)])
            assert small.stats.largest_batch <= 4 and small.stats.batches == 4
            big = random_faces(10, 7)
            np.testing.assert_allclose(small.embed(list(big)), default_embedder.embed(big), rtol=0, atol=1e-6)
            with pytest.raises(ValueError, match="96x96x3"):
                small.embed(np.zeros((1, 64, 64, 3), np.uint8))  # refused before it can fail a batch
            assert small.embed([]).shape == (0, 128)
        finally:
            small.close()
    finally:
        batcher.close()


def test_a_failed_batch_reaches_each_of_its_callers_and_the_next_is_served(default_embedder):
    model = Watched(default_embedder)
    batcher = EmbedBatcher(model, window_s=0.5)
    try:
        white = np.full((1, 96, 96, 3), 255, np.uint8)
        got = together(
            [lambda: batcher.embed(white)] + [lambda k=k: batcher.embed(random_faces(2, k)) for k in range(3)]
        )
        assert model.calls == 1, "the four requests arrived together: one batch"
        assert all(isinstance(g, RuntimeError) and "all-white" in str(g) for g in got), got
        assert batcher.stats.failed_batches == 1
        faces = random_faces(3, 9)
        np.testing.assert_allclose(batcher.embed(faces), default_embedder.embed(faces), rtol=0, atol=1e-6)
    finally:
        batcher.close()


def test_close_with_callers_waiting_does_not_hang(default_embedder):
    model = Watched(default_embedder)
    model.gate = threading.Event()
    batcher = EmbedBatcher(model, window_s=0.0)
    results: dict[str, object] = {}

    def call(name: str, seed: int) -> None:
        try:
            results[name] = batcher.embed(random_faces(1, seed))
        except Exception as exc:
            results[name] = exc

    running = threading.Thread(target=call, args=("running", 1))
    running.start()
    assert model.entered.wait(30)  # its batch is in the network, held at the gate
    queued = [threading.Thread(target=call, args=(f"queued{k}", k)) for k in range(3)]
    for t in queued:
        t.start()
    deadline = time.monotonic() + 30
    while batcher._queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    batcher.close(timeout=0.5)  # the running batch is stuck: close gives up waiting for it
    assert time.monotonic() - t0 < 5
    for t in queued:
        t.join(5)
        assert not t.is_alive()
    assert all(isinstance(results[f"queued{k}"], BatcherClosed) for k in range(3)), results
    with pytest.raises(BatcherClosed):
        batcher.embed(random_faces(1, 5))
    model.gate.set()  # the running batch finishes and its caller gets its rows
    running.join(30)
    assert isinstance(results["running"], np.ndarray) and results["running"].shape == (1, 128)
    batcher._thread.join(30)
    assert not batcher._thread.is_alive()


# ------------------------------------------------------------------ the service


@pytest.fixture(scope="module")
def db(sample_db, tmp_path_factory) -> Path:
    return copy_db(sample_db[0], tmp_path_factory.mktemp("batching"))


def test_the_service_answers_the_same_with_batching_on(db, tmp_path):
    batched_db = copy_db(db, tmp_path / "batched")
    started = together(
        [
            lambda: Server(db, "--inference-threads", "2"),
            lambda: Server(batched_db, "--inference-threads", "2", "--embed-batching", "on"),
        ],
        timeout=240,
    )
    plain, batched = started
    try:
        for s in started:
            if not isinstance(s, Server):
                raise RuntimeError(f"a server did not start: {s!r}")
        probes = sorted(p for p in SAMPLE.glob("*/*.jpg") if p.stem.endswith(HELD_OUT))[:2] + [
            EXAMPLES / "longoria-cooper.jpg"
        ]
        with httpx.Client(base_url=plain.url, timeout=60) as a, httpx.Client(base_url=batched.url, timeout=60) as b:
            for p in probes:
                want, got = (c.post("/v1/embed", files={"photo": p.read_bytes()}).json() for c in (a, b))
                assert got["model"] == want["model"]
                assert [f["box"] for f in got["faces"]] == [f["box"] for f in want["faces"]]
                for f, g in zip(want["faces"], got["faces"]):
                    np.testing.assert_allclose(g["embedding"], f["embedding"], rtol=0, atol=1e-5)
                want, got = (
                    c.post("/v1/identify", params={"top_k": 2}, files={"photo": p.read_bytes()}) for c in (a, b)
                )
                assert got.status_code == want.status_code == 200, got.text
                pick = [[(f["name"], f["nearest"], f["box"]) for f in r.json()["faces"]] for r in (want, got)]
                assert pick[0] == pick[1]
                dist = [[f["distance"] for f in r.json()["faces"]] for r in (want, got)]
                assert dist[1] == pytest.approx(dist[0], abs=1e-4)
            x, y = (SAMPLE / "Tony_Blair" / f"Tony_Blair_000{k}.jpg" for k in (1, 2))
            files = {"photo1": x.read_bytes(), "photo2": y.read_bytes()}
            want, got = (c.post("/v1/verify", files=files).json() for c in (a, b))
            assert got["same"] == want["same"] is True
            assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)
            assert a.get("/v1/health").json()["embedding"] == {"batching": False, "device": "cpu"}

            # concurrent identify calls share batches and get the answers they get one by one
            photos = [p.read_bytes() for p in probes] * 3
            alone = [b.post("/v1/identify", files={"photo": x}).json() for x in photos[: len(probes)]] * 3

            def identify(photo: bytes) -> dict:
                with httpx.Client(base_url=batched.url, timeout=60) as c:
                    return c.post("/v1/identify", files={"photo": photo}).json()

            got = together([lambda x=x: identify(x) for x in photos])
            names = [[[f["name"] for f in r["faces"]] for r in rs] for rs in (alone, got)]
            assert names[0] == names[1]
            # enrolment stores the shared embedder's embeddings under the database's identity
            new = SAMPLE / "Tony_Blair" / "Tony_Blair_0010.jpg"
            r = b.post("/v1/people/New_Person/faces", files={"photos": new.read_bytes()}, headers={"X-API-Key": KEY})
            assert r.status_code == 201, r.text
            r = b.post("/v1/identify", files={"photo": new.read_bytes()}).json()
            assert r["faces"][0]["name"] == "New_Person" and r["faces"][0]["distance"] < 1e-5
            health = b.get("/v1/health").json()
        emb = health["embedding"]
        assert emb["batching"] is True and emb["device"] == "cpu" and emb["max_batch"] == 32
        assert emb["failed_batches"] == 0 and emb["batches"] <= emb["requests"]
        assert emb["faces"] >= emb["requests"] >= 2 * len(probes) + 2 + len(photos) + 2
        assert emb["mean_batch"] == pytest.approx(emb["faces"] / emb["batches"], abs=0.01)
        assert health["inference"]["ready"] == 2 and health["faces"] == 82
    finally:
        for s in started:
            if isinstance(s, Server):
                s.stop()
