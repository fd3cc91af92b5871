"""Map a callable object over items, in this process or in a pool of worker processes.

The callable is built once per process from a picklable factory and its arguments (models
are loaded once per worker, never per item). Results stream back as they finish.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Optional

# The one per-process object a worker builds in its pool initializer.
_PROCESS_CALLABLE: Any = None


def _init(factory: Callable, args: tuple) -> None:
    global _PROCESS_CALLABLE
    _PROCESS_CALLABLE = factory(*args)


def _call(item: Any) -> Any:
    assert _PROCESS_CALLABLE is not None, "worker process not initialised"
    return _PROCESS_CALLABLE(item)


@contextmanager
def mapped(
    factory: Callable,
    args: tuple,
    items: Iterable,
    workers: int = 1,
    ordered: bool = True,
    chunksize: int = 4,
    max_pending: Optional[int] = None,
) -> Iterator[Iterator]:
    """Yield an iterator of ``factory(*args)(item)`` for each item; ``workers`` > 1 uses processes.

    ``ordered=False`` returns results as soon as they are done. ``max_pending`` bounds how many
    items are handed out but not yet consumed, so large results (images) never pile up when the
    consumer is slower than the workers: memory stays flat however many items there are. The
    pool is closed (and its workers stopped) when the ``with`` block ends, also on an error or
    interrupt.
    """
    if workers <= 1:
        fn = factory(*args)
        yield (fn(item) for item in items)
        return
    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    pool = ctx.Pool(workers, initializer=_init, initargs=(factory, args))
    slots = threading.BoundedSemaphore(max_pending) if max_pending else None
    closing = threading.Event()

    def feed() -> Iterator:
        for item in items:
            if slots is not None:
                while not slots.acquire(timeout=0.1):
                    if closing.is_set():
                        return
            yield item

    def consume(results: Iterator) -> Iterator:
        for r in results:
            if slots is not None:
                slots.release()
            yield r

    try:
        source = feed() if slots is not None else list(items)
        yield consume((pool.imap if ordered else pool.imap_unordered)(_call, source, chunksize=chunksize))
    finally:
        closing.set()
        pool.terminate()
        pool.join()
