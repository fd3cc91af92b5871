"""Output folders that folder jobs own: a marker, a lock against a second writer, and cleanup.

A folder job writes into a folder only if it is new, empty, or already marked as an output
folder of the same kind (its marker file, e.g. ``run.json``): ``openface-py run photos ~``
is refused instead of writing into (and cleaning up) a home folder. While a job runs it holds
an exclusive lock on ``.openface-py.lock`` in the folder, so a second job on the same folder
is refused with a message naming the first one's process; the operating system drops the lock
when the process ends, however it ends, so a killed job never leaves a stale lock. Only under
that lock are temporary files of a killed earlier run deleted, and only files named with
``io.TEMP_PREFIX``.

A job that fails before it has done any work (a bad argument found by a worker, an unreadable
input) leaves nothing behind: a fresh claim ends by removing the marker, the lock and the job's
still-empty bookkeeping files, and the folder itself when the claim created it, so the corrected
command can use the same folder. A folder with any other file in it (finished work) is kept.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence, Union

from openface_py.errors import OpenFacePyError
from openface_py.io import TEMP_PREFIX, read_at, remove_temp_files

log = logging.getLogger(__name__)

LOCK_NAME = ".openface-py.lock"
#: Files that mark a folder as openface-py's output: the lock every folder job leaves, align's
#: record of its alignment, represent's (and run's) embedding metadata, train-net's marker.
OUTPUT_MARKERS = (LOCK_NAME, "openface-py-align.json", "embeddings.json", "train-net.json")


def settings_changes(old: dict, new: dict) -> dict[str, tuple]:
    """What differs between the settings a folder (or checkpoint) recorded and the ones given
    now: key -> (recorded, now), for the message that refuses to mix two runs in one folder."""
    return {k: (old.get(k), new.get(k)) for k in sorted({**old, **new}) if old.get(k) != new.get(k)}


class OutputFolderError(OpenFacePyError):
    """The output folder is not ours to write into, or another job is writing into it."""


class OutputFolder:
    """Claim ``path`` for a folder job whose marker file is ``marker`` (context manager).

    On entry: create the folder if needed, refuse a non-empty folder without the marker, take
    the lock (refuse if another process holds it), and remove temporary files a killed run left.
    ``owned`` tells whether the marker was there before (a rerun / resume). ``bookkeeping``: names
    of the job's own files and folders (journal, part folder) that mean no work was done while
    they are empty; a fresh claim left by an exception with nothing else in the folder is undone
    (see the module doc). ``owned``: the folder is this job's even without its marker (the caller
    knows an earlier attempt of the job left it, e.g. ``cluster``'s run of a folder of photos).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        marker: str,
        kind: str,
        bookkeeping: tuple[str, ...] = (),
        owned: bool = False,
    ) -> None:
        self.path = Path(path)
        self.marker = marker
        self.kind = kind
        self.bookkeeping = tuple(bookkeeping)
        self.owned = owned
        self.created = False
        self._fd: Optional[int] = None

    def __enter__(self) -> OutputFolder:
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.owned = self.owned or (self.path / self.marker).is_file()
        if not self.owned:
            others = sorted(p.name for p in self.path.iterdir() if not _ignorable(p.name))
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                raise OutputFolderError(
                    f"{self.path} is not empty ({shown}) and is not an openface-py {self.kind} output folder "
                    f"(no {self.marker}); choose a new or empty output folder"
                )
        self._fd = _lock(self.path / LOCK_NAME, self.kind)
        removed = remove_temp_files(self.path)
        if removed:
            log.info("removed %d temporary files left by an interrupted run in %s", removed, self.path)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.owned and self._fd is not None:
                self._undo_claim()
        finally:
            if self._fd is not None:
                os.close(self._fd)  # closing the descriptor releases the lock
                self._fd = None

    def _undo_claim(self) -> None:
        """A fresh claim that failed before any work: remove what it made (module doc)."""
        try:
            entries = list(self.path.iterdir())
            for p in entries:
                if p.name == self.marker or _ignorable(p.name):
                    continue
                if p.name not in self.bookkeeping or not _empty(p):
                    return  # finished work (or someone's file): keep everything, a rerun resumes
            remove_temp_files(self.path)
            for p in entries:
                if p.name in (self.marker, LOCK_NAME, *self.bookkeeping) and p.exists():
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            if self.created and not any(self.path.iterdir()):
                self.path.rmdir()
            log.debug("a failed start left nothing in %s", self.path)
        except OSError as exc:  # cleaning up must not hide the error that ended the job
            log.debug("could not undo the claim of %s: %s", self.path, exc)


#: Files a folder may hold and still count as empty: what file browsers leave, our lock and temporaries.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", LOCK_NAME})


def _empty(p: Path) -> bool:
    """A file of no bytes, or a folder with no files below it."""
    if p.is_dir():
        return not any(f.is_file() for f in p.rglob("*"))
    return p.stat().st_size == 0


def _ignorable(name: str) -> bool:
    return name in OS_LITTER or name.startswith(TEMP_PREFIX)


def _lock(path: Path, kind: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    try:
        if not _try_lock(fd):
            try:
                holder = read_at(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise OutputFolderError(
                f"another openface-py {kind} (process {holder}) is writing to {path.parent}; "
                "wait for it to finish, or use another output folder"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the whole file; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the PID text, which others may read
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def outside_output_folders(
    root: Union[str, os.PathLike], rels: Sequence, own: Iterable[Union[str, os.PathLike]] = ()
) -> list:
    """``rels`` (photos below ``root``, as ``Path`` or POSIX ``str``) without those inside an
    output folder: the job's ``own`` (which may not exist yet) or any folder below ``root``
    holding one of ``OUTPUT_MARKERS``. So ``align photos photos/aligned`` never aligns its own
    faces again on a rerun. ``root`` itself is never skipped (``run aligned/ out/`` is fine)."""
    base = Path(root).resolve()
    skip: set[PurePosixPath] = set()
    for folder in own:
        try:
            skip.add(PurePosixPath(Path(folder).resolve().relative_to(base).as_posix()))
        except ValueError:  # not below the input folder
            pass
    seen: dict[PurePosixPath, bool] = {}

    def is_output(folder: PurePosixPath) -> bool:
        if folder not in seen:
            seen[folder] = folder in skip or any((base / folder / m).is_file() for m in OUTPUT_MARKERS)
        return seen[folder]

    kept, skipped = [], {}
    for rel in rels:
        parents = [p for p in reversed(PurePosixPath(Path(rel).as_posix()).parents) if p != PurePosixPath(".")]
        hit = next((p for p in parents if is_output(p)), None)
        if hit is None:
            kept.append(rel)
        else:
            skipped[hit] = skipped.get(hit, 0) + 1
    for folder, n in sorted(skipped.items()):
        log.warning("%s: skipped %d images in an openface-py output folder (never read as input)", base / folder, n)
    return kept
