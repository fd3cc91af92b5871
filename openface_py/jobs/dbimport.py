"""``db import``: enroll a gallery folder (one sub-folder per person) into a face database.

Incremental and resumable: the database is the journal. A photo whose path, size and
modification time are already recorded (enrolled, or failed earlier) is not read again; a
changed photo replaces what its earlier version enrolled. Each photo is committed in its own
transaction as soon as a worker has embedded it, so a killed import keeps everything committed
and a rerun does only the rest. Photos are detected, aligned and embedded in worker processes
(``jobs.parallel``, like ``run``); the database is written by this process alone.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from openface_py.errors import Failure, ImageLoadError, OpenFacePyError, UsageError
from openface_py.io import list_images, load_image
from openface_py.jobs.parallel import mapped
from openface_py.recognize.facedb import FaceDatabase, photo_faces, valid_name

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import did: photos seen, enrolled now, already there, duplicates, failures."""

    total: int = 0
    enrolled: int = 0
    already_done: int = 0
    duplicates: int = 0
    replaced: int = 0
    failures: list[Failure] = field(default_factory=list)
    people: int = 0
    faces: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "enrolled": self.enrolled,
            "already_done": self.already_done,
            "duplicates": self.duplicates,
            "replaced": self.replaced,
            "failed": len(self.failures),
            "failures": [{"path": f.path, "reason": f.reason} for f in self.failures],
            "people": self.people,
            "faces": self.faces,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class ImportJob:
    """What every worker needs to build its pipeline."""

    gallery_dir: str
    model: str
    detector: str = "hog"
    upsample: int = 1
    max_side: Optional[int] = None
    detector_options: Optional[dict] = None


class _ImportWorker:
    """One process's pipeline; embeds the largest face of one photo per call."""

    def __init__(self, job: ImportJob) -> None:
        from openface_py.pipeline import FacePipeline

        self.root = Path(job.gallery_dir)
        self.pipe = FacePipeline.create(
            job.model,
            detector=job.detector,
            upsample=job.upsample,
            max_side=job.max_side,
            threads=1,
            detector_options=job.detector_options,
        )

    def __call__(self, item: tuple[str, int, int]) -> tuple:
        rel = item[0]
        try:
            data = (self.root / rel).read_bytes()
            faces = photo_faces(self.pipe, load_image(data))
        except ImageLoadError as exc:
            return item, None, None, exc.reason
        except OSError as exc:
            return item, None, None, f"cannot read: {exc.strerror or exc}"
        if not faces:
            return item, None, None, "no face found"
        return item, hashlib.sha256(data).hexdigest(), faces, ""


DUPLICATE = "duplicate"


def _still_enrolled(db: FaceDatabase, root: Path, rel: Path) -> bool:
    """Whether the photo a recorded duplicate repeats is still enrolled for the same person."""
    try:
        sha = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    except OSError:
        return False
    row = db.conn.execute(
        "SELECT 1 FROM photos p JOIN people q ON q.id = p.person_id WHERE q.name = ? AND p.sha256 = ?",
        (valid_name(person_of(rel)), sha),
    ).fetchone()
    return row is not None


def person_of(rel: Path) -> str:
    """The person a gallery photo shows: its sub-folder, or the file's name for a photo at the top."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _enroll_all(
    db: FaceDatabase,
    job: ImportJob,
    root: Path,
    todo: list[tuple[str, int, int]],
    known: dict,
    identity: str,
    workers: int,
    progress: bool,
    report: ImportReport,
) -> None:
    """Embed ``todo`` in worker processes and commit each photo as it comes back."""
    if not todo:
        return
    from tqdm import tqdm

    with (
        tqdm(total=len(todo), unit="photo", desc="import", disable=not progress) as bar,
        mapped(
            _ImportWorker, (job,), todo, max(1, int(workers)), ordered=False,
            on_crash=lambda item, why: (item, None, None, why),
        ) as results,
    ):  # fmt: skip
        for (rel, size, mtime_ns), sha, faces, reason in results:
            source = (root / rel).resolve().as_posix()
            seen = source in known  # enrolled or recorded before: this run's record replaces that one
            changed = seen and known[source][2] is None  # it had faces
            if faces is None:  # a changed photo that now fails: its earlier faces go too
                db.record_failure(source, size, mtime_ns, reason, replace=changed)
                report.failures.append(Failure(rel, reason))
                log.warning("%s: %s", rel, reason)
            else:
                res = db.enroll(
                    person_of(Path(rel)), sha, faces, identity, source=source, size=size, mtime_ns=mtime_ns,
                    replace_source=seen,
                )  # fmt: skip
                if res.duplicate:
                    report.duplicates += 1
                    db.record_failure(source, size, mtime_ns, f"{DUPLICATE}: the same photo is already enrolled")
                else:
                    report.enrolled += 1
                    report.replaced += int(changed)
            bar.update(1)


def import_folder(
    db: FaceDatabase,
    gallery_dir: Path,
    detector: str = "hog",
    upsample: int = 1,
    max_side: Optional[int] = None,
    workers: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    detector_options: Optional[dict] = None,
) -> ImportReport:
    """Enroll every new or changed photo of ``gallery_dir`` into ``db`` (see the module's docstring)."""
    from openface_py.nets.embed import load_embedder

    root = Path(gallery_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: gallery folder not found")
    started = time.monotonic()
    identity = load_embedder(db.model).identity  # checked once here: workers load the same weights
    if identity != db.identity:
        raise OpenFacePyError(f"{db.path} holds {db.identity} embeddings, but {db.model} now gives {identity}")
    known = db.known_sources()
    rels = list_images(root)
    report = ImportReport(total=len(rels))
    todo: list[tuple[str, int, int]] = []
    duplicates: list[tuple[Path, int, int]] = []
    for rel in rels:
        key = (root / rel).resolve().as_posix()
        try:
            st = (root / rel).stat()
        except OSError as exc:
            report.failures.append(Failure(rel.as_posix(), f"cannot read: {exc.strerror or exc}"))
            continue
        try:
            valid_name(person_of(rel))
        except UsageError as exc:
            report.failures.append(Failure(rel.as_posix(), str(exc)))
            continue
        seen = known.get(key)
        if seen is not None and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
            if seen[2] is None:
                report.already_done += 1
                continue
            if seen[2].startswith(DUPLICATE):  # checked after the others: the photo it repeats may change now
                duplicates.append((rel, st.st_size, st.st_mtime_ns))
                continue
            if not retry_failed:
                report.already_done += 1
                report.failures.append(Failure(rel.as_posix(), f"{seen[2]} (earlier run; --retry-failed to retry)"))
                continue
        todo.append((rel.as_posix(), st.st_size, st.st_mtime_ns))
    log.info("%d photos, %d done earlier, %d to import", len(rels), report.already_done, len(todo))

    job = ImportJob(str(root), db.model, detector, upsample, max_side, detector_options or None)
    _enroll_all(db, job, root, todo, known, identity, workers, progress, report)
    # recorded duplicates whose original is no longer enrolled (it changed or went): imported now
    again = [(rel.as_posix(), size, mt) for rel, size, mt in duplicates if not _still_enrolled(db, root, rel)]
    report.already_done += len(duplicates) - len(again)
    _enroll_all(db, job, root, again, known, identity, workers, progress, report)
    db.sync_index()
    db.save_index()
    info = db.info()
    report.people, report.faces = info["people"], info["faces"]
    report.failures.sort(key=lambda f: f.path)
    report.seconds = time.monotonic() - started
    return report
