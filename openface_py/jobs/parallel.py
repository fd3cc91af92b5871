"""Map a callable object over items, in this process or in a pool of worker processes.

The callable is built once per process from a picklable factory and its arguments (models
are loaded once per worker, never per item). Results stream back as they finish.

Workers are started with ``spawn``, never ``fork``: a fork of a process that already runs
torch or ONNX Runtime threads can deadlock in the child. (Not ``forkserver`` either: its
workers hold the server's keep-alive descriptor, so after a kill -9 of the job neither the
server nor the workers ever notice.) Spawned workers are the job's own children and end by
themselves when it is killed (they watch their parent; on POSIX systems, where a dead
parent's children are given to another process).
Ctrl-C is the job's alone: workers start with SIGINT blocked (a terminal sends it to the whole
process group, and a worker interrupted while it imports torch printed a page of traceback), so
only the job sees ``KeyboardInterrupt``, stops its workers and exits. Writes that must not be cut
half-way (a database transaction) run under ``interrupts_deferred``.

A worker that dies (a crash in native code, the out-of-memory killer) does not hang the job:
the pool reports it, the items that were in flight are retried one at a time in a fresh pool,
and an item that kills its worker again is handed to ``on_crash`` (the job reports it as failed
and goes on).

With one worker the items run in this process (no pool to start, no results to copy back), so
a crash in native code ends the job. Given a ``crash_marker`` file, each item is written to it
before it runs and the file is removed after (also when the item raises, or on Ctrl-C): a file
still there at the next start names the item the process died on. The rerun tries that item
first in a worker process of its own: if it kills that one too (twice), it is handed to
``on_crash`` with ``CRASHED_EARLIER``; if not (the job was killed from outside: kill -9, the
out-of-memory killer for another cause), it is simply done. (The marker costs
one small unsynced write and one unlink per item, well under a millisecond, small next to a
photo's detection; running even one worker in a pool instead would cost a process start with
its models loaded, and a copy of every result.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from openface_py.errors import OpenFacePyError

log = logging.getLogger(__name__)

#: The reason given for an item whose worker died twice.
WORKER_DIED = "the worker process died while processing it (a crash in native code, or out of memory)"
#: The reason given for the item a single-process job was on when it died (``crash_marker``).
CRASHED_EARLIER = (
    "it crashed the process on an earlier run and its worker process when retried alone (a crash in "
    "native code, or out of memory); --retry-failed tries it again"
)

# The one per-process object a worker builds in its pool initializer (or why it could not).
_PROCESS_CALLABLE: Any = None
_INIT_ERROR: Optional[BaseException] = None


def _init(factory: Callable, args: tuple, job_pid: int) -> None:
    global _PROCESS_CALLABLE, _INIT_ERROR
    _watch_parent(job_pid)
    try:
        _PROCESS_CALLABLE = factory(*args)
    except Exception as exc:  # raised again for each item: the job sees the error, not a dead worker
        _INIT_ERROR = exc
    torch = sys.modules.get("torch")
    if torch is not None:  # the pool's processes are the parallelism (MTCNN in workers): one thread each
        torch.set_num_threads(1)


def _watch_parent(job_pid: int, interval: float = 0.5) -> None:
    """End this worker when the job process that spawned it is gone (killed, maybe even before
    this worker finished starting): no orphans left holding files or pipes."""
    if os.getppid() != job_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != job_pid:
                os._exit(1)

    threading.Thread(target=watch, name="openface-py-parent-watch", daemon=True).start()


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this thread (a child started meanwhile inherits the block); a Ctrl-C
    that arrives meanwhile is delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: Ctrl-C reaches console processes anyway
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _WorkerProcess(SpawnProcess):
    """A spawned worker that never sees SIGINT (see the module doc)."""

    def start(self) -> None:
        # Blocked: the child inherits the mask. Deferred: the block alone does not stop the
        # job's own KeyboardInterrupt (another thread takes the signal and the main thread raises
        # it), and one raised half-way through a start leaves a child launched but known to no
        # one: nobody stops it, the job's exit removes the pool's semaphores, and the child then
        # dies printing a traceback as it unpickles them (seen in CI).
        with interrupts_deferred(), _sigint_blocked():
            super().start()


class _WorkerContext(SpawnContext):
    """Spawn, with workers deaf to Ctrl-C; remembers every worker it made, so that a pool is
    stopped whole even when an interrupt came between a worker's start and the executor's
    record of it."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[_WorkerProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> _WorkerProcess:  # noqa: N802 - multiprocessing's name
        self.made = [p for p in self.made if p._popen is None or p.exitcode is None]
        proc = _WorkerProcess(*args, **kwargs)
        self.made.append(proc)
        return proc


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run a block that must not be cut half-way (a transaction, a journal line) to its end: a
    Ctrl-C that arrives meanwhile is raised as ``KeyboardInterrupt`` when the block is done.
    Only the main thread receives signals; elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and previous is not signal.SIG_IGN:
        if callable(previous):  # the program's own handler (it may do more than raise)
            previous(signal.SIGINT, caught[0])
        raise KeyboardInterrupt


def _ready() -> bool:
    return True


#: Why a pool whose workers die before doing anything usually does.
NO_START_HINT = (
    "worker processes died while starting. If this runs from a script, put the call under "
    '`if __name__ == "__main__":`: workers are spawned, and each imports the main script again '
    "(Python's multiprocessing 'spawn' start method)"
)


def _call(item: Any) -> Any:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    return _PROCESS_CALLABLE(item)


def start_method() -> str:
    """How workers are started: ``spawn`` (see the module doc)."""
    return "spawn"


@contextmanager
def mapped(
    factory: Callable,
    args: tuple,
    items: Iterable,
    workers: int = 1,
    ordered: bool = True,
    max_pending: Optional[int] = None,
    on_crash: Optional[Callable[[Any, str], Any]] = None,
    crash_marker: Optional[Union[str, os.PathLike]] = None,
) -> Iterator[Iterator]:
    """Yield an iterator of ``factory(*args)(item)`` for each item; ``workers`` > 1 uses processes.

    ``ordered=False`` returns results as soon as they are done. ``max_pending`` bounds how many
    items are handed out but not yet consumed (default: 4 per worker), so large results (images)
    never pile up when the consumer is slower than the workers. ``on_crash(item, reason)`` makes
    the result of an item whose worker died twice; without it such an item raises
    ``OpenFacePyError``. An exception raised by the callable itself propagates. The pool is shut
    down (its workers stopped) when the ``with`` block ends, also on an error or interrupt.
    ``crash_marker``: a file naming the item in progress, for single-process jobs (module doc;
    items must be JSON-able); the item an earlier run died on comes first, from ``on_crash``.
    """
    marker = Path(crash_marker) if crash_marker is not None else None
    earlier = _read_marker(marker) if marker is not None else None
    source: Iterable = items
    crashed: list = []
    if earlier is not None:
        source, crashed = _set_aside(items, earlier)
    if workers <= 1:
        fn = factory(*args)
        yield _chain(_retried_apart(factory, args, crashed, on_crash), _in_process(fn, source, marker))
    else:
        pool = _Pool(factory, args, int(workers))
        try:
            window = max(1, int(max_pending or 4 * workers))
            yield _chain(_retried_apart(factory, args, crashed, on_crash),
                         pool.run(iter(source), window, ordered, on_crash))  # fmt: skip
        finally:
            pool.close()
    if marker is not None:  # the job went through: an earlier run's marker is settled
        marker.unlink(missing_ok=True)


def _read_marker(marker: Path) -> Any:
    """The item a single-process run died on (as JSON), or None."""
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # torn by a kill during its write: no item to blame
        log.debug("ignoring unreadable crash marker %s: %s", marker, exc)
        return None


def _as_json(item: Any) -> Any:
    try:
        return json.loads(json.dumps(item))
    except (TypeError, ValueError):
        return None


def _set_aside(items: Iterable, earlier: Any) -> tuple[list, list]:
    """(the items without the one an earlier run crashed on, [that item] or [])."""
    items = list(items)
    for i, item in enumerate(items):
        if _as_json(item) == earlier:
            return items[:i] + items[i + 1 :], [item]
    return items, []


def _chain(first: Iterator, results: Iterator) -> Iterator:
    yield from first
    yield from results


def _retried_apart(
    factory: Callable, args: tuple, crashed: list, on_crash: Optional[Callable[[Any, str], Any]]
) -> Iterator:
    """The items an earlier single-process run died on, run in a worker process of their own: one
    that kills it again is handed to ``on_crash`` with ``CRASHED_EARLIER`` (``OpenFacePyError``
    without it); one that does not was not the cause (the job was killed) and is done."""
    if not crashed:
        return

    def report(item: Any, _reason: str) -> Any:
        log.warning("item %r: %s", item, CRASHED_EARLIER)
        if on_crash is None:
            raise OpenFacePyError(f"{item!r}: {CRASHED_EARLIER}")
        return on_crash(item, CRASHED_EARLIER)

    log.info("retrying %d item(s) an earlier run died on, in a worker process of their own", len(crashed))
    pool = _Pool(factory, args, 1)
    try:
        yield from pool.run(iter(crashed), 1, True, report)
    finally:
        pool.close()


def _in_process(fn: Callable, items: Iterable, marker: Optional[Path]) -> Iterator:
    """``fn`` over ``items`` here, each named in ``marker`` while it runs (module doc)."""
    for item in items:
        named = marker is not None and _write_marker(marker, item)
        try:
            result = fn(item)
        finally:  # a Python exception or Ctrl-C is not a crash: only a dead process leaves the file
            if named:
                marker.unlink(missing_ok=True)
        yield result


def _write_marker(marker: Path, item: Any) -> bool:
    """Name ``item`` in ``marker`` (not synced: it has to survive the process, not the machine)."""
    try:
        data = json.dumps(item).encode("utf-8")
    except (TypeError, ValueError):
        return False
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


class _Pool:
    """A ProcessPoolExecutor that is replaced when a worker dies."""

    def __init__(self, factory: Callable, args: tuple, workers: int) -> None:
        self.factory, self.args, self.workers = factory, args, workers
        self.ctx = _WorkerContext()  # spawn, with workers deaf to Ctrl-C
        self.executor: Optional[ProcessPoolExecutor] = None
        self.started = False

    def _executor(self) -> ProcessPoolExecutor:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                self.workers, mp_context=self.ctx, initializer=_init, initargs=(self.factory, self.args, os.getpid())
            )
            if not self.started:  # a pool that cannot even start is a set-up problem, not a bad item
                try:
                    self.executor.submit(_ready).result()
                except BrokenProcessPool:
                    self._discard()
                    raise OpenFacePyError(NO_START_HINT) from None
                self.started = True
        return self.executor

    def _discard(self) -> None:
        """Drop a broken (or abandoned) pool, stopping whatever workers it still has."""
        ex, self.executor = self.executor, None
        if ex is None:
            return
        procs = list((getattr(ex, "_processes", None) or {}).values())
        procs += [p for p in self.ctx.made if p._popen is not None and p not in procs]
        manager = getattr(ex, "_executor_manager_thread", None)
        results = getattr(ex, "_result_queue", None)
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
        if manager is not None and results is not None:
            # A worker stopped while it sent a result leaves half a message in the result pipe; the
            # executor's thread then waits for the rest forever, and so does the interpreter's exit
            # (it joins that thread). Closing our end of the pipe's writing side ends that wait.
            manager.join(timeout=0.5)
            if manager.is_alive():
                log.debug("closing the result pipe of a pool whose thread still waits for a result")
                writer = getattr(results, "_writer", None)
                if writer is not None:
                    writer.close()
                manager.join(timeout=1)

    def close(self) -> None:
        if self.executor is not None:
            self._discard()

    def run(
        self, source: Iterator, window: int, ordered: bool, on_crash: Optional[Callable[[Any, str], Any]]
    ) -> Iterator:
        pending: dict[Future, tuple[int, Any, bool]] = {}  # future -> (index, item, run alone?)
        suspects: deque[tuple[int, Any]] = deque()  # in flight when a worker died: retried one at a time
        requeued: deque[tuple[int, Any]] = deque()  # not yet started when the pool broke: submitted again
        ready: dict[int, Any] = {}  # ordered mode: results waiting for an earlier one
        next_index = next_out = 0
        exhausted = False

        def submit(idx: int, item: Any, alone: bool) -> bool:
            """Hand an item to the pool; False if the pool broke meanwhile (then it is rebuilt)."""
            try:
                pending[self._executor().submit(_call, item)] = (idx, item, alone)
                return True
            except BrokenProcessPool:  # a worker died while the consumer was busy between results
                (suspects if alone else requeued).appendleft((idx, item))
                suspects.extend((i, it) for i, it, _ in pending.values())
                pending.clear()
                log.warning("a worker process died; retrying the %d items in flight one at a time", len(suspects))
                self._discard()
                return False

        while True:
            if suspects:
                if not pending:
                    submit(*suspects.popleft(), True)
            else:
                while (requeued or not exhausted) and len(pending) + len(ready) < window:
                    if requeued:
                        idx, item = requeued.popleft()
                    else:
                        try:
                            item = next(source)
                        except StopIteration:
                            exhausted = True
                            break
                        idx, next_index = next_index, next_index + 1
                    if not submit(idx, item, False):
                        break
            if not pending:
                if exhausted and not suspects and not requeued:
                    return
                continue
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            finished: list[tuple[int, Any]] = []
            broken = False
            for fut in done:
                idx, item, alone = pending.pop(fut)
                try:
                    finished.append((idx, fut.result()))
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        log.warning("item %r: %s", item, WORKER_DIED)
                        if on_crash is None:
                            raise OpenFacePyError(f"{item!r}: {WORKER_DIED}") from None
                        finished.append((idx, on_crash(item, WORKER_DIED)))
                    else:
                        suspects.append((idx, item))
            if broken:
                # every other item in flight failed with the pool: retry each alone in a new pool
                for idx, item, _alone in pending.values():
                    suspects.append((idx, item))
                pending.clear()
                log.warning("a worker process died; retrying the %d items in flight one at a time", len(suspects))
                self._discard()
            for idx, result in sorted(finished, key=lambda t: t[0]):
                if not ordered:
                    yield result
                else:
                    ready[idx] = result
            while ordered and next_out in ready:
                yield ready.pop(next_out)
                next_out += 1
