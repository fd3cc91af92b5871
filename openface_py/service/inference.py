"""Inference in worker processes, so that no photo can take the server down with it.

Decoding (Pillow), detection and landmarks (dlib) and embedding (torch) are native code. A photo
that crashes one of them (a segfault), runs too long or bloats memory costs one worker process
here, never the server process that holds the database and the connections: the request gets
an answer (``PhotoCrashed``, ``PhotoTimedOut``), the worker is replaced in the background and
the other workers keep serving meanwhile.

Each worker holds one ``FacePipeline`` built from a ``WorkerSpec`` (one thread of torch). The
server hands it a photo's bytes and gets plain results back (boxes, landmarks, embeddings):
the bytes are decoded in the worker, so the server process never decodes a photo either. With
``WorkerSpec.embed`` off the workers hold no embedder and give the aligned faces instead (uint8
arrays of the model's alignment): the server embeds them with one shared model on the GPU
(``service.batcher``). A worker whose memory grew past ``max_rss_mb`` after a photo is
recycled, so a process that met one huge photo does not hold the memory for good.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from openface_py.faces.detect import DetectorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker loads: the model, how faces are found, how photos are decoded, where MTCNN
    and the embedder run (``openface_py.device``: each worker holds its own copy there), and
    whether it embeds (``embed``) or gives the aligned faces for the server to embed."""

    model: str
    detector: DetectorSpec = DetectorSpec()
    max_pixels: int = 40_000_000
    device: str = "cpu"
    embed: bool = True


class PhotoError(Exception):
    """A photo the worker refused or could not read: ``reason`` is safe to show a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PhotoCrashed(Exception):
    """The worker died while on this photo (a crash in native code, or killed)."""


class PhotoTimedOut(Exception):
    """The worker took longer than the pool's limit on this photo and was stopped."""


class WorkerStartError(Exception):
    """A worker could not load its models (the message says why)."""


# ------------------------------------------------------------------ the worker process


def _faces(pipe, data: bytes, spec: WorkerSpec, multi: bool) -> list[dict]:
    from openface_py.io import load_image

    rgb = load_image(data, max_pixels=spec.max_pixels)
    return [
        {
            "box": f.box.as_list(),
            "score": float(f.score),
            "landmarks": f.landmarks,
            "embedding": f.embedding,
            "aligned_from": f.aligned_from,
            **({} if spec.embed else {"aligned": f.aligned}),
        }
        for f in pipe.process(rgb, multi=multi)
    ]


def _detect(pipe, data: bytes, spec: WorkerSpec) -> dict:
    from openface_py.io import load_image

    rgb = load_image(data, max_pixels=spec.max_pixels)
    found = pipe.faces(rgb, multi=True)
    return {
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "faces": [{"box": a.box.as_list(), "score": float(a.score), "landmarks": a.landmarks} for a in found],
    }


#: What a worker can be asked to do: name -> function(pipeline, photo bytes, spec, *args).
OPERATIONS = {"faces": _faces, "detect": _detect}


def _rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _worker_main(conn, spec: WorkerSpec) -> None:
    """A worker's life: load the pipeline, then answer one request at a time until told to stop
    or the server's end of the pipe closes (the server is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    try:
        from openface_py.errors import ImageLoadError, OpenFacePyError
        from openface_py.io import release_memory
        from openface_py.pipeline import FacePipeline

        pipe = FacePipeline.create(spec.model, detector=spec.detector, threads=1, device=spec.device, embed=spec.embed)
    except Exception as exc:  # reported to the server, which refuses to start
        conn.send(("init-error", f"{type(exc).__name__}: {exc}"))
        return
    baseline = _rss_mb()
    # what its answers depend on: the embedder's identity, or without one the alignment's
    identity = pipe.embedder.identity if pipe.embedder is not None else pipe.stage.spec.alignment.identity
    conn.send(("ready", {"identity": identity, "rss_mb": baseline}))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "stop":
            return
        op, data, args = msg
        try:
            reply: tuple = ("ok", OPERATIONS[op](pipe, data, spec, *args))
        except ImageLoadError as exc:
            reply = ("photo", exc.reason)
        except OpenFacePyError as exc:
            reply = ("photo", str(exc))
        except Exception as exc:  # logged here, answered as an internal error there
            log.exception("inference failed")
            reply = ("internal", f"{type(exc).__name__}: {exc}")
        rss = _rss_mb()
        if rss > baseline + 100:  # a large photo (a small file can decode large): its freed buffers go back
            release_memory()
            rss = _rss_mb()
        conn.send((*reply, rss))


# ------------------------------------------------------------------ the server's side


class _Worker:
    """One worker process and the server's end of its pipe."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs threads (the server does)
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, spec), daemon=True, name="openface-py-inference")
        self.proc.start()
        child.close()
        self.baseline_mb = 0.0

    def wait_ready(self, timeout: float) -> str:
        """Wait for the models to load; the embedder's identity (without one: the alignment's)."""
        if not self.conn.poll(timeout):
            self.kill()
            raise WorkerStartError(f"an inference worker did not start within {timeout:.0f} s")
        try:
            kind, info = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerStartError(f"an inference worker died while starting ({self.exit_reason()})") from None
        if kind != "ready":
            self.kill()
            raise WorkerStartError(str(info))
        self.baseline_mb = info["rss_mb"]
        return info["identity"]

    def call(self, op: str, data: bytes, args: tuple, timeout: float) -> tuple[str, Any, float]:
        try:
            self.conn.send((op, data, args))
        except OSError:
            raise PhotoCrashed(self.exit_reason()) from None
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.proc.is_alive():
                raise PhotoCrashed(self.exit_reason())
            if time.monotonic() > deadline:
                self.kill()
                raise PhotoTimedOut(f"processing it took over {timeout:g} s")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise PhotoCrashed(self.exit_reason()) from None

    def exit_reason(self) -> str:
        self.proc.join(1)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return "still running" if code is None else f"exit status {code}"

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


@dataclass
class PoolStats:
    """What the pool has been through since it started (shown by /v1/health)."""

    workers: int
    ready: int
    crashes: int = 0
    timeouts: int = 0
    recycled: int = 0

    def to_json(self) -> dict:
        return asdict(self)


class InferencePool:
    """``workers`` processes, each with its own pipeline; ``call`` is blocking and thread-safe
    (one caller per worker at a time: callers wait for an idle one). ``identity``: what every
    worker loaded (the embedder's identity; with ``spec.embed`` off, the alignment's)."""

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        timeout_s: float = 60.0,
        max_rss_mb: float = 1500.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.spec, self.timeout_s, self.max_rss_mb, self.start_timeout_s = spec, timeout_s, max_rss_mb, start_timeout_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.stats = PoolStats(workers=max(1, int(workers)), ready=0)
        started = [_Worker(spec) for _ in range(self.stats.workers)]
        try:
            identities = {w.wait_ready(start_timeout_s) for w in started}
        except WorkerStartError:
            for w in started:
                w.kill()
            raise
        (self.identity,) = identities
        for w in started:
            self._idle.put(w)
        self.stats.ready = len(started)

    def call(self, op: str, data: bytes, *args: Any) -> Any:
        """Run ``OPERATIONS[op]`` on a photo's bytes in an idle worker.

        Raises ``PhotoError`` (the photo cannot be used: its reason), ``PhotoCrashed`` or
        ``PhotoTimedOut`` (the worker was lost on it and is being replaced), ``RuntimeError``
        for an unexpected failure inside the worker (logged there)."""
        worker = self._idle.get()
        while not worker.proc.is_alive():  # died while idle (killed from outside): not this photo's doing
            log.warning("an inference worker died while idle (%s); starting another", worker.exit_reason())
            with self._lock:
                self.stats.ready -= 1
                self.stats.crashes += 1
            worker.kill()
            self._replace()
            worker = self._idle.get()
        try:
            kind, value, rss = worker.call(op, data, args, self.timeout_s)
        except (PhotoCrashed, PhotoTimedOut) as exc:
            with self._lock:
                self.stats.ready -= 1
                if isinstance(exc, PhotoCrashed):
                    self.stats.crashes += 1
                else:
                    self.stats.timeouts += 1
            log.warning("an inference worker was lost on a photo of %d bytes (%s); starting another", len(data), exc)
            worker.kill()
            self._replace()
            raise
        if rss > max(self.max_rss_mb, worker.baseline_mb * 1.5):
            log.info("recycling an inference worker at %.0f MB (started at %.0f MB)", rss, worker.baseline_mb)
            with self._lock:
                self.stats.ready -= 1
                self.stats.recycled += 1
            threading.Thread(target=worker.stop, daemon=True).start()
            self._replace()
        else:
            self._idle.put(worker)
        if kind == "ok":
            return value
        if kind == "photo":
            raise PhotoError(value)
        raise RuntimeError(value)

    def _replace(self) -> None:
        """Start a worker in the background and make it idle once its models are loaded."""

        def start() -> None:
            delay = 1.0
            while not self._closed:
                w = _Worker(self.spec)
                try:
                    identity = w.wait_ready(self.start_timeout_s)
                except WorkerStartError as exc:
                    log.error("an inference worker failed to start (%s); trying again in %.0f s", exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    continue
                if identity != self.identity or self._closed:
                    log.error("a restarted worker loaded %s, not %s: not used", identity, self.identity)
                    w.stop()
                    return
                with self._lock:
                    self.stats.ready += 1
                self._idle.put(w)
                return

        threading.Thread(target=start, name="openface-py-worker-start", daemon=True).start()

    def close(self) -> None:
        """Stop the idle workers (callers in flight finish first: call this after the server
        has stopped taking requests)."""
        self._closed = True
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                return
            w.stop()
