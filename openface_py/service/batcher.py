"""Micro-batching of embedding requests: one embedder, many callers, one network call per batch.

A GPU embeds 512 faces in little more time than one, so the service's inference threads hand
their aligned faces to one ``EmbedBatcher`` instead of each running the network on its own few:
a thread takes the first waiting request, gathers what else arrives within ``window_s`` (or
until ``max_batch`` faces), embeds it all in one ``Embedder.embed`` call and gives each caller
its rows. An exception in that call reaches every caller of the batch; the next batch is served
as usual.

Only fixed-size aligned uint8 faces come here (checked before they are queued), never a photo:
decoding, detection and alignment of untrusted bytes stay in the worker processes
(``service.inference``), so nothing a client sends can crash the process that holds this.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from openface_py.nets.embedders import Embedder

log = logging.getLogger(__name__)

#: how long the first request of a batch waits for others (seconds): a few ms of latency
#: buys batches as large as the concurrent load makes them
DEFAULT_WINDOW_S = 0.002


class BatcherClosed(RuntimeError):
    """The batcher was closed before this request was embedded."""


@dataclass
class BatcherStats:
    """What the batcher has done since it started (shown by /v1/health)."""

    device: str
    max_batch: int
    window_ms: float
    requests: int = 0
    batches: int = 0
    faces: int = 0
    largest_batch: int = 0
    failed_batches: int = 0

    def to_json(self) -> dict:
        mean = self.faces / self.batches if self.batches else 0.0
        return {
            "batching": True,
            "device": self.device,
            "max_batch": self.max_batch,
            "window_ms": self.window_ms,
            "requests": self.requests,
            "batches": self.batches,
            "faces": self.faces,
            "mean_batch": round(mean, 2),
            "largest_batch": self.largest_batch,
            "failed_batches": self.failed_batches,
        }


@dataclass
class _Request:
    faces: np.ndarray  # (n, S, S, 3) uint8
    future: Future


_STOP = object()


class EmbedBatcher:
    """One embedder shared by threads: ``embed`` is blocking and thread-safe; concurrent calls are
    combined into batches of at most ``max_batch`` faces (None: ``embedder.batch_size``, by device)."""

    def __init__(self, embedder: Embedder, max_batch: Optional[int] = None, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.embedder = embedder
        self.max_batch = max(1, int(max_batch or embedder.batch_size))
        self.window_s = max(0.0, float(window_s))
        self.stats = BatcherStats(embedder.device, self.max_batch, round(self.window_s * 1e3, 3))
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # the closed flag and every put, so that close misses no request
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="openface-py-embed-batcher", daemon=True)
        self._thread.start()

    def embed(self, faces: Union[np.ndarray, Sequence[np.ndarray]], timeout: Optional[float] = None) -> np.ndarray:
        """The (n, dim) embeddings of ``n`` aligned RGB uint8 faces (a list or an (n, S, S, 3) array),
        as ``embedder.embed`` gives them. Faces of the wrong shape are refused here (``ValueError``),
        so they cannot fail a batch of others. ``BatcherClosed`` after ``close``; ``TimeoutError``
        when the answer takes longer than ``timeout`` seconds (None: no limit)."""
        size = self.embedder.alignment.size
        items = [faces] if isinstance(faces, np.ndarray) and faces.ndim != 4 else faces
        if not len(items):
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        shapes = {(np.shape(f), getattr(f, "dtype", None)) for f in items}
        if shapes != {((size, size, 3), np.dtype(np.uint8))}:
            got = ", ".join(sorted(f"{dtype} {shape}" for shape, dtype in shapes))
            raise ValueError(f"expected aligned RGB uint8 faces of {size}x{size}x3 for {self.embedder.name}, got {got}")
        arr = items if isinstance(items, np.ndarray) else np.stack(items)
        request = _Request(arr, Future())
        with self._lock:
            if self._closed:
                raise BatcherClosed("the embedding batcher is closed")
            self._queue.put(request)
        try:
            return request.future.result(timeout)
        except TimeoutError:
            request.future.cancel()  # not embedded later for nobody (when its batch has not started)
            raise

    def close(self, timeout: float = 30.0) -> None:
        """Stop: requests still queued fail with ``BatcherClosed`` at once, a batch being embedded
        finishes, and the thread is joined (for at most ``timeout`` seconds: a stuck device must not
        hold the server's shutdown)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fail_queued()
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the embedding batcher did not stop within %.0f s", timeout)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                item.future.set_exception(BatcherClosed("the embedding batcher was closed"))

    def _loop(self) -> None:
        carry: Optional[_Request] = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is _STOP:
                return
            batch, n, stop = [first], len(first.faces), False
            deadline = time.monotonic() + self.window_s
            while n < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if n + len(item.faces) > self.max_batch:
                    carry = item  # the next batch's first: a batch never grows past max_batch by joining
                    break
                batch.append(item)
                n += len(item.faces)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]  # callers that gave up: skipped
        if not batch:
            return
        n = sum(len(r.faces) for r in batch)
        try:
            faces = batch[0].faces if len(batch) == 1 else np.concatenate([r.faces for r in batch])
            reps = self.embedder.embed(faces, batch_size=self.max_batch)
        except Exception as exc:  # every caller of this batch gets it; the next batch is served
            log.exception("embedding a batch of %d faces failed", n)
            with self._lock:
                self.stats.failed_batches += 1
            for r in batch:
                r.future.set_exception(exc)
            return
        with self._lock:
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.faces += n
            self.stats.largest_batch = max(self.stats.largest_batch, n)
        at = 0
        for r in batch:
            r.future.set_result(reps[at : at + len(r.faces)])
            at += len(r.faces)
