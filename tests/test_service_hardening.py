"""Tests of openface_py.service.guard, service.inference, service.app.

`openface-py serve` (service/app.py, service/inference.py, service/guard.py) against hostile and
careless clients: photos that crash or stall the face pipeline, idle request bodies, other Host
names and origins, ambiguous framing, names that look alike. A real server over loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import unicodedata
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import SAMPLE, cli
from test_db_integrity import immutable, small_disk
from test_service import KEY, Server, no_trace


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A small database: two people, four photos each (fast to import)."""
    gallery = tmp_path_factory.mktemp("hard-gallery")
    for person in ("Tony_Blair", "Colin_Powell"):
        (gallery / person).mkdir()
        for photo in sorted((SAMPLE / person).glob("*.jpg"))[:4]:
            (gallery / person / photo.name).write_bytes(photo.read_bytes())
    path = tmp_path_factory.mktemp("hard") / "people.db"
    assert cli("db", "create", str(path))[0] == 0
    assert cli("db", "import", str(path), str(gallery))[0] == 0
    return path


def copy_of(db: Path, tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    out.write_bytes(db.read_bytes())
    return out


PHOTO = (SAMPLE / "Tony_Blair" / "Tony_Blair_0009.jpg").read_bytes()
ADA = (SAMPLE / "George_W_Bush" / "George_W_Bush_0001.jpg").read_bytes()  # enrolled under other names
GRACE = (SAMPLE / "Gerhard_Schroeder" / "Gerhard_Schroeder_0001.jpg").read_bytes()


def worker_pids(server: Server) -> list[int]:
    """The server's inference worker processes (its spawned children, not multiprocessing's tracker)."""
    pid = server.proc.pid  # (children are listed under the thread that started them)
    kids = [k for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    out = []
    for k in kids:
        try:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"multiprocessing.spawn" in cmd and b"resource_tracker" not in cmd:
            out.append(int(k))
    return out


def wide_png(width: int) -> bytes:
    """A valid grey PNG of ``width`` x 1 pixels, a few KB (built by hand: one zlib stream)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    raw = zlib.compress(b"\0" + b"\x80" * width, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def identify_ok(c: httpx.Client) -> None:
    r = c.post("/v1/identify", files={"photo": PHOTO})
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["name"] == "Tony_Blair"


def test_a_photo_that_crashes_native_code_costs_one_worker_not_the_server(db, tmp_path):
    s = Server(copy_of(db, tmp_path, "crash.db"), "--inference-threads", "1", "--inference-timeout-s", "3")
    try:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            # 34,000,000 x 1 pixels segfaulted dlib's HOG detector inside the server process
            r = c.post("/v1/identify", files={"photo": wide_png(34_000_000)})
            assert 400 <= r.status_code < 500, r.text
            no_trace(r)
            identify_ok(c)
            # a worker that dies on a photo: that request is answered, the next ones too
            (pid,) = worker_pids(s)
            os.kill(pid, signal.SIGSTOP)
            answer: dict = {}
            t = threading.Thread(target=lambda: answer.update(r=c.post("/v1/identify", files={"photo": PHOTO})))
            t.start()
            time.sleep(1.0)  # the request is now waiting on the stopped worker
            os.kill(pid, signal.SIGSEGV)
            os.kill(pid, signal.SIGCONT)
            t.join(60)
            r = answer["r"]
            assert r.status_code == 422 and "crashed" in r.json()["detail"] and "SIGSEGV" in r.json()["detail"]
            no_trace(r)
            identify_ok(c)  # waits for the replacement worker
            # a worker that hangs on a photo is stopped at the time limit and replaced
            (pid,) = worker_pids(s)
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            r = c.post("/v1/identify", files={"photo": PHOTO})
            assert r.status_code == 422 and "over 3 s" in r.json()["detail"], r.text
            assert 2.5 < time.monotonic() - t0 < 30
            identify_ok(c)
            health = c.get("/v1/health").json()["inference"]
            assert (health["crashes"], health["timeouts"], health["ready"], health["workers"]) == (1, 1, 1, 1)
        assert s.proc.poll() is None
    finally:
        s.stop()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while True:
        try:
            got = sock.recv(65536)
        except socket.timeout:
            return out
        if not got:
            return out
        out += got


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return read_until_closed(sock)


def test_idle_request_bodies_cannot_hold_the_service(db, tmp_path):
    s = Server(
        copy_of(db, tmp_path, "idle.db"), "--body-timeout-s", "3", "--header-timeout-s", "4", "--max-queue", "32"
    )
    socks: list = []
    slow_headers: list = []
    try:
        head = (
            b"POST /v1/identify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 1000000\r\n\r\n--x\r\n"
        )
        for _ in range(64):
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            sk.sendall(head)
            socks.append(sk)
        slow_headers = []
        for _ in range(16):  # and clients that never finish their headers ("slowloris")
            sk = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            sk.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: b")
            slow_headers.append(sk)
        time.sleep(0.5)
        for sk in slow_headers:
            sk.sendall(b"c")  # a byte now and then does not keep the connection open
        with httpx.Client(base_url=s.url, timeout=60) as c:
            for _ in range(3):  # real requests are answered while the 64 idle bodies are open
                identify_ok(c)
            assert c.get("/v1/health").json()["queue"]["pending"] == 0
        # each idle body is cut off with 408 and its connection closed, within the deadline
        t0 = time.monotonic()
        for sk in socks:
            reply = read_until_closed(sk)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
            assert b"too slow" in reply
        for sk in slow_headers:
            reply = read_until_closed(sk)
            assert reply.startswith(b"HTTP/1.1 408") and b"headers" in reply, reply[:200]
        assert time.monotonic() - t0 < 20
        with httpx.Client(base_url=s.url, timeout=60) as c:
            assert c.get("/v1/health").json()["receiving_bytes"] == 0
    finally:
        for sk in socks + slow_headers:
            sk.close()
        s.stop()


@pytest.fixture(scope="module")
def server(db, tmp_path_factory):
    s = Server(
        copy_of(db, tmp_path_factory.mktemp("guard"), "guard.db"),
        "--cors-origin",
        "https://app.example",
        "--inference-threads",
        "1",
    )
    yield s
    s.stop()


def test_other_hosts_and_cross_origin_browser_requests_are_refused(server):
    url = server.url
    with httpx.Client(base_url=url, timeout=60) as c:
        # DNS rebinding: the attacker's name in Host
        r = c.get("/v1/people", headers={"Host": "evil.example"})
        assert r.status_code == 400 and "evil.example" in r.json()["detail"] and "Tony_Blair" not in r.text
        assert c.get("/v1/people", headers={"Host": f"localhost:{server.port}"}).status_code == 200
        # a cross-site form post or fetch never runs
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": f"http://127.0.0.1:{server.port + 1}"},  # another port is another origin
        ):
            r = c.post("/v1/identify", files={"photo": PHOTO}, headers=headers)
            assert r.status_code == 403, (headers, r.text)
            no_trace(r)
        r = c.delete("/v1/people/Tony_Blair", headers={"Origin": "http://evil.example", "X-API-Key": KEY})
        assert r.status_code == 403
        # the service's own page (same origin) and a listed origin work; the listed one gets CORS headers
        same = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
        assert c.post("/v1/identify", files={"photo": PHOTO}, headers=same).status_code == 200
        r = c.post("/v1/identify", files={"photo": PHOTO}, headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        pre = c.options(
            "/v1/identify",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.status_code == 200
        # the API docs load nothing from the internet
        html = c.get("/docs").text
        assert "cdn" not in html.lower() and "https://" not in html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            ref = next(part.split('"')[0] for part in html.split('"/') if asset in part.split('"')[0])
            assert c.get("/" + ref).status_code == 200, ref
    reply = raw_request(
        server.port,
        b"POST /v1/identify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 400") and b"Transfer-Encoding" in reply, reply[:300]


def test_names_are_one_normal_form_everywhere(server):
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": KEY}) as c:
        nfc = "José"
        r = c.post(f"/v1/people/{nfc}/faces", files={"photos": PHOTO})
        assert r.status_code == 201, r.text
        nfd = unicodedata.normalize("NFD", nfc)
        assert nfd != nfc
        r = c.delete(f"/v1/people/{nfd}")
        assert r.status_code == 200 and r.json()["name"] == nfc, r.text
        assert c.post("/v1/people/Ada/faces", files={"photos": PHOTO}).status_code == 201
        assert c.delete("/v1/people/Ada ").status_code == 200  # the name enrolment made of it
        long = "A" * 10_000  # (uvicorn refuses request lines over 16 KB itself)
        r = c.post(f"/v1/people/{long}/faces", files={"photos": PHOTO})
        assert r.status_code in (414, 422, 431) and len(r.text) < 1000, r.text[:300]
        r = c.delete("/v1/people/" + "B" * 5000)
        assert r.status_code == 422 and len(r.text) < 1000
        # a Cyrillic А mixed into a Latin name is not a second "Ada"
        r = c.post("/v1/people/\u0410da/faces", files={"photos": PHOTO})
        assert r.status_code == 422 and len(r.text) < 1000, r.text
        assert {p["name"] for p in c.get("/v1/people").json()["people"]} == {"Tony_Blair", "Colin_Powell"}


def test_a_database_that_cannot_be_written_is_answered_503_507_and_health_says_so(db, tmp_path):
    with small_disk(tmp_path / "disk", "6m") as disk:
        path = disk / "people.db"
        shutil.copy2(db, path)
        s = Server(path, "--inference-threads", "1")
        try:
            with httpx.Client(base_url=s.url, timeout=60, headers={"X-API-Key": KEY}) as c:
                assert c.get("/v1/health").json()["writes_enabled"] is True
                # read-only (root ignores permission bits; chattr +i binds root too)
                with immutable(path):
                    h = c.get("/v1/health").json()
                    assert h["writes_enabled"] is False and "read-only" in h["writes_disabled_because"]
                    for r in (
                        c.post("/v1/people/Ada/faces", files={"photos": ADA}),
                        c.delete("/v1/people/Tony_Blair"),
                    ):
                        assert r.status_code == 503 and "read-only" in r.json()["detail"], r.text
                        no_trace(r)
                    identify_ok(c)  # reads go on
                assert c.post("/v1/people/Ada/faces", files={"photos": ADA}).status_code == 201
                # a full disk: 507 with the cause, reads go on, and writes come back when there is room
                filler = disk / "filler"
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass
                h = c.get("/v1/health").json()
                assert h["writes_enabled"] is False and "full" in h["writes_disabled_because"]
                r = c.post("/v1/people/Grace/faces", files={"photos": GRACE})
                assert r.status_code == 507 and "full" in r.json()["detail"], r.text
                no_trace(r)
                identify_ok(c)
                filler.unlink()
                assert c.post("/v1/people/Grace/faces", files={"photos": GRACE}).status_code == 201
                names = {p["name"] for p in c.get("/v1/people").json()["people"]}
                assert {"Ada", "Grace", "Tony_Blair", "Colin_Powell"} == names
        finally:
            s.stop()
