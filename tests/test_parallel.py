"""Tests of openface_py.jobs.parallel.

parallel.mapped: a worker that dies is reported, never hangs the job; no fork after threads."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from openface_py.errors import OpenFacePyError
from openface_py.jobs.parallel import WORKER_DIED, mapped, start_method


class Squarer:
    """A worker that dies (SIGKILL, as the OOM killer does) on the items in ``deadly``."""

    def __init__(self, deadly: tuple = (), marker_dir: str = "") -> None:
        self.deadly = set(deadly)
        self.marker_dir = marker_dir

    def __call__(self, x: int):
        first_try = True
        if self.marker_dir:  # record which process handled what, so the test can kill one
            pid_file = os.path.join(self.marker_dir, f"{x}.pid")
            first_try = not os.path.exists(pid_file)
            with open(pid_file, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        if x in self.deadly:
            os.kill(os.getpid(), signal.SIGKILL)
        if x == 5 and self.marker_dir and first_try:
            time.sleep(30)  # a long item the test kills from outside
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x, x * x, os.getpid(), threading.active_count()


def test_workers_do_not_use_fork():
    assert start_method() == "spawn"


def test_dead_worker_item_is_retried_once_then_reported(tmp_path):
    items = list(range(12))
    with mapped(Squarer, ((3, 8),), items, workers=2, ordered=True, on_crash=lambda x, why: (x, why)) as res:
        out = list(res)
    assert [o[0] for o in out] == items  # every item answered, in order, nothing lost
    for o in out:
        if o[0] in (3, 8):
            assert o[1] == WORKER_DIED  # died twice: in the pool, then alone
        else:
            assert o[1] == o[0] ** 2  # innocent items in flight were retried and succeeded


def test_dead_worker_without_handler_raises_instead_of_hanging():
    with pytest.raises(OpenFacePyError, match="worker process died"):
        with mapped(Squarer, ((2,),), range(6), workers=2) as res:
            list(res)


def test_worker_killed_from_outside_mid_job(tmp_path):
    """kill -9 of a worker busy on a long item: the job finishes, the item is redone elsewhere."""
    marker = tmp_path / "pids"
    marker.mkdir()
    results = []

    def consume():
        with mapped(Squarer, ((), str(marker)), range(10), workers=2, ordered=False, on_crash=lambda x, w: None) as r:
            results.extend(r)

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.time() + 60
    while not (marker / "5.pid").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    victim = int((marker / "5.pid").read_text().split()[0])
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=60)
    assert not t.is_alive(), "the job hung after a worker was killed"
    got = sorted(r[0] for r in results if r is not None)
    assert got == list(range(10))
    assert victim not in {r[2] for r in results if r is not None and r[0] == 5}


def test_callable_errors_propagate():
    with pytest.raises(ValueError, match="negative"):
        with mapped(Squarer, (), [1, -1, 2], workers=2) as res:
            list(res)


def test_pending_window_bounds_items_in_flight():
    seen = []

    def source():
        for i in range(50):
            seen.append(i)
            yield i

    with mapped(Squarer, (), source(), workers=2, max_pending=4) as res:
        first = next(res)
        assert first[0] == 0
        time.sleep(0.5)
        assert len(seen) <= 5  # at most the window (+ the one being taken) handed out
        rest = list(res)
    assert len(rest) == 49


def test_a_worker_that_cannot_start_raises_its_error_at_once():
    start = time.time()
    with pytest.raises(ValueError, match="bad setting"):
        with mapped(Broken, (), range(100), workers=2) as res:
            list(res)
    assert time.time() - start < 30  # not 100 items each retried in a fresh pool


class Broken:
    def __init__(self) -> None:
        raise ValueError("bad setting")


def test_script_without_main_guard_gets_a_clear_message(tmp_path):
    """Spawned workers import the main script again: without the guard they cannot start."""
    import subprocess
    import sys

    from conftest import ROOT, SAMPLE

    script = tmp_path / "noguard.py"
    script.write_text(
        "from openface_py.faces.align import openface_spec\n"
        "from openface_py.jobs.batch import align_folder\n"
        f"align_folder({str(SAMPLE / 'Tony_Blair')!r}, {str(tmp_path / 'out')!r}, openface_spec(), workers=2)\n"
    )
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'if __name__ == "__main__":' in r.stderr


class ExitOn3:
    """Dies (as a crash in native code would) on item 3."""

    def __call__(self, x: int):
        if x == 3:
            os._exit(1)
        time.sleep(0.05)
        return x


def test_worker_dying_while_the_consumer_is_busy(tmp_path):
    """The pool breaks between two results (the consumer is embedding a batch): the next
    hand-out must not raise, and every item is still answered (found by review)."""
    got = []
    with mapped(ExitOn3, (), range(10), workers=2, ordered=False, on_crash=lambda x, why: ("died", x)) as res:
        for r in res:
            got.append(r)
            time.sleep(0.4)  # the pool breaks while nobody is waiting on it
    assert sorted(r for r in got if not isinstance(r, tuple)) == [x for x in range(10) if x != 3]
    assert ("died", 3) in got


def test_image_errors_come_back_from_workers_as_themselves(tmp_path):
    from openface_py.errors import ImageLoadError

    class_path = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match="file not found"):
        with mapped(Loader, (), [str(class_path)], workers=2) as res:
            list(res)


class Loader:
    def __call__(self, path: str):
        from openface_py.io import load_image

        return load_image(path)
