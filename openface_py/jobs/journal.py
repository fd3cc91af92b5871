"""Append-only JSON-lines journals of finished work, safe against kills and torn lines.

A folder job (``align``, ``run``) records each finished photo as one JSON line. A kill can
stop a write half-way and leave a torn last line; appending onto it would glue the next entry
to the fragment, and that entry (a finished photo) would be unreadable and forgotten. So
``Journal`` cuts a torn tail off before it appends anything.

Durability policy: every ``append`` writes whole lines with one ``os.write`` on an
``O_APPEND`` descriptor and then ``fsync``s the file, so an entry that ``append`` returned
from survives a kill of the process and a crash of the machine. Callers journal a photo only
after its outputs are on disk (atomically written and synced), so a journaled photo is never
lost and an unjournaled one is simply redone.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from openface_py.io import read_at

log = logging.getLogger(__name__)


def read_journal(path: Union[str, os.PathLike], key: str = "src") -> dict[str, dict]:
    """The last entry for each ``key`` value. A torn last line (a kill mid-write) is skipped;
    unreadable lines elsewhere are skipped with a warning (their photos are done again)."""
    done: dict[str, dict] = {}
    p = Path(path)
    if not p.is_file():
        return done
    data = p.read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or a torn entry
    bad = 0
    for line in complete:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            done[entry[key]] = entry
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable journal lines; those photos will be done again", p, bad)
    return done


def signed(signature: Optional[list]) -> dict:
    """The fields a journal entry keeps of a photo's ``[size, mtime_ns]`` (none when unknown)."""
    return {} if signature is None else {"size": signature[0], "mtime_ns": signature[1]}


def changed(entry: dict, signature: Optional[list]) -> bool:
    """Whether the photo differs from the one ``entry`` was written for: another size or
    modification time (the rule of ``db import``). Entries of older versions, which recorded
    neither, and photos whose file system tells neither count as unchanged."""
    if signature is None or "size" not in entry:
        return False
    return [entry.get("size"), entry.get("mtime_ns")] != list(signature)


class Journal:
    """An open journal for appending; repairs a torn tail first. Use as a context manager."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
        try:
            cut = _torn_tail_length(fd)
            if cut:
                size = os.fstat(fd).st_size
                os.ftruncate(fd, size - cut)
                os.fsync(fd)
                log.warning("%s: removed a torn last entry (%d bytes) left by an interrupted run", self.path, cut)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def append(self, entries: Iterable[dict]) -> None:
        """Write the entries as complete lines in one write, then fsync (see the module doc)."""
        if self._fd is None:
            raise ValueError("journal is not open")
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _torn_tail_length(fd: int, block: int = 1 << 16) -> int:
    """Bytes after the file's last newline (0 when it is empty or ends with one)."""
    size = os.fstat(fd).st_size
    pos = size
    while pos > 0:
        start = max(0, pos - block)
        chunk = read_at(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return size - (start + i + 1)
        pos = start
    return size
