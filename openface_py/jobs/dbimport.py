"""``db import``: enroll a gallery folder (one sub-folder per person) into a face database.

Incremental and resumable: the database is the journal. A photo whose path, size and
modification time are already recorded (enrolled, or failed earlier) is not read again; a
changed photo replaces what its earlier version enrolled. Each photo is committed in its own
transaction as soon as it is embedded, so a killed import keeps everything committed
and a rerun does only the rest. Photos are detected and aligned in worker processes and embedded
here in batches, or all on Ray (``jobs.engine``, shared with ``run``); the database is written by
this process alone.

``unlabeled``: a folder of photos of anyone (any depth, no person folders): every face of every
photo is added without a person (``recognize.dbcluster``); a photo without a face is recorded as
having none, not as failed. The new faces join the person or cluster nearest on average when
close enough (``dbcluster.attach_faces``), the others wait for ``db cluster``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.errors import Failure, OpenFacePyError, UsageError
from openface_py.faces.align import AlignmentSpec
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.stage import NO_FACE, FaceStage, FaceStageSpec
from openface_py.io import list_images, load_image
from openface_py.jobs.engine import EmbedderSpec, Engine, PhotoFaces, embed_photos
from openface_py.jobs.outdir import outside_output_folders
from openface_py.jobs.parallel import interrupts_deferred
from openface_py.recognize import dbcluster
from openface_py.recognize.facedb import FaceDatabase, FaceRecord, valid_name
from openface_py.recognize.gallery import note_top_level, person_of

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
    #: ``unlabeled``: faces added, and of those how many joined a person or cluster
    faces_added: int = 0
    joined: int = 0
    unlabeled: bool = False

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
            **({"faces_added": self.faces_added, "joined": self.joined} if self.unlabeled else {}),
        }


@dataclass(frozen=True)
class ImportJob:
    """What every worker needs to build its face stage: the gallery and how faces are found."""

    gallery_dir: str
    detector: DetectorSpec = DetectorSpec()
    unlabeled: bool = False


class _ImportFaces:
    """One worker's face stage (of ``jobs.engine.embed_photos``): the largest face of one gallery
    photo (``unlabeled``: every face, and none is not a failure), with the photo's SHA-256 and
    the faces' boxes and landmarks."""

    def __init__(self, job: ImportJob, spec: AlignmentSpec) -> None:
        self.root = Path(job.gallery_dir)
        self.unlabeled = job.unlabeled
        self.stage = FaceStage(FaceStageSpec(job.detector, spec, pick="all" if job.unlabeled else "largest"))

    def __call__(self, item: tuple[str, int, int]) -> PhotoFaces:
        try:
            data = (self.root / item[0]).read_bytes()
        except OSError as exc:
            return PhotoFaces(item, f"cannot read: {exc.strerror or exc}")
        found = self.stage.photo(lambda: load_image(data), item[0])
        if self.unlabeled and found.reason == NO_FACE:
            return PhotoFaces(item, "", [], {"sha256": hashlib.sha256(data).hexdigest(), "faces": []})
        if not found.ok:
            return PhotoFaces(item, found.reason)
        info = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "faces": [
                {"box": f.box.as_list(), "landmarks": None if f.landmarks is None else np.asarray(f.landmarks).tolist()}
                for f in found.faces
            ],
        }
        return PhotoFaces(item, "", [f.image for f in found.faces], info)


DUPLICATE = "duplicate"


def _still_enrolled(db: FaceDatabase, root: Path, rel: Path, unlabeled: bool = False) -> bool:
    """Whether the photo a recorded duplicate repeats is still enrolled for the same person
    (``unlabeled``: still in the database as an unlabeled photo)."""
    try:
        sha = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    except OSError:
        return False
    if unlabeled:
        return (
            db.conn.execute("SELECT 1 FROM photos WHERE sha256 = ? AND person_id IS NULL", (sha,)).fetchone()
            is not None
        )
    row = db.conn.execute(
        "SELECT 1 FROM photos p JOIN people q ON q.id = p.person_id WHERE q.name = ? AND p.sha256 = ?",
        (valid_name(person_of(rel)), sha),
    ).fetchone()
    return row is not None


def _in_progress(db: FaceDatabase) -> Path:
    """Beside the database: the photo a single-process import is on (``parallel.mapped``), so a
    photo that crashes the process is recorded as failed by the rerun instead of crashing it."""
    return Path(db.path).with_name(Path(db.path).name + ".importing")


def _enroll_all(
    db: FaceDatabase,
    job: ImportJob,
    root: Path,
    todo: list[tuple[str, int, int]],
    known: dict,
    embedder,
    engine: Engine,
    progress: bool,
    report: ImportReport,
    new_faces: list[int],
) -> None:
    """Detect, align and embed ``todo`` on ``engine`` and commit each photo as it comes back."""
    if not todo:
        return
    from tqdm import tqdm

    identity = embedder.identity
    with (
        tqdm(total=len(todo), unit="photo", desc="import", disable=not progress) as bar,
        embed_photos(
            _ImportFaces, (job, embedder.alignment), todo, embedder, engine, crash_marker=_in_progress(db)
        ) as results,
    ):
        for photo in results:
            with interrupts_deferred():  # Ctrl-C after this photo's transaction, never inside it
                if job.unlabeled:
                    _record_unlabeled(db, photo, root, known, identity, report, new_faces)
                else:
                    _record(db, photo, root, known, identity, report)
            bar.update(1)


def _record(db: FaceDatabase, photo, root: Path, known: dict, identity: str, report: ImportReport) -> None:
    """Commit one photo's faces (or its failure) to the database."""
    rel, size, mtime_ns = photo.item
    reason = photo.reason
    source = (root / rel).resolve().as_posix()
    seen = source in known  # enrolled or recorded before: this run's record replaces that one
    changed = seen and known[source][2] is None  # it had faces
    if reason and photo.retry:  # lost by the engine: reported, not recorded, so a rerun tries it again
        report.failures.append(Failure(rel, reason))
        log.warning("%s: %s", rel, reason)
    elif reason:  # a changed photo that now fails: its earlier faces go too
        db.record_failure(source, size, mtime_ns, reason, replace=changed)
        report.failures.append(Failure(rel, reason))
        log.warning("%s: %s", rel, reason)
    else:
        faces = [
            FaceRecord(f["box"], rep, None if f["landmarks"] is None else np.asarray(f["landmarks"]))
            for f, rep in zip(photo.info["faces"], photo.reps)
        ]
        res = db.enroll(
            person_of(Path(rel)), photo.info["sha256"], faces, identity, source=source, size=size,
            mtime_ns=mtime_ns, replace_source=seen,
        )  # fmt: skip
        if res.duplicate:
            report.duplicates += 1
            db.record_failure(source, size, mtime_ns, f"{DUPLICATE}: the same photo is already enrolled")
        else:
            report.enrolled += 1
            report.replaced += int(changed)


def _record_unlabeled(
    db: FaceDatabase, photo, root: Path, known: dict, identity: str, report: ImportReport, new_faces: list[int]
) -> None:
    """Commit every face of one unlabeled photo (or its failure); ``new_faces`` gets their ids."""
    rel, size, mtime_ns = photo.item
    source = (root / rel).resolve().as_posix()
    seen = source in known
    if photo.reason:
        report.failures.append(Failure(rel, photo.reason))
        log.warning("%s: %s", rel, photo.reason)
        if not photo.retry:
            db.record_failure(source, size, mtime_ns, photo.reason, replace=seen and known[source][2] is None)
        return
    faces = [
        FaceRecord(f["box"], rep, None if f["landmarks"] is None else np.asarray(f["landmarks"]))
        for f, rep in zip(photo.info["faces"], photo.reps)
    ]
    res = dbcluster.add_unlabeled_photo(
        db, photo.info["sha256"], faces, identity, source=source, size=size, mtime_ns=mtime_ns, replace_source=seen
    )
    if res.duplicate:
        report.duplicates += 1
        db.record_failure(source, size, mtime_ns, f"{DUPLICATE}: the same photo is already in the database")
    else:
        report.enrolled += 1
        report.replaced += int(seen and not res.unchanged)
        new_faces.extend(res.face_ids)


def import_folder(
    db: FaceDatabase,
    gallery_dir: os.PathLike | str,
    detector: DetectorSpec | str = DetectorSpec(),
    workers: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    engine: Optional[Engine] = None,
    unlabeled: bool = False,
    device: str = "auto",
) -> ImportReport:
    """Enroll every new or changed photo of ``gallery_dir`` into ``db`` (see the module's docstring;
    ``unlabeled``: every face of photos of anyone).

    ``engine``: detection and alignment in ``workers`` local processes and embedding here
    (default), or both on Ray (``jobs.engine``). ``device``: where MTCNN and the embedder run
    locally (``openface_py.device``; Ray places its own)."""
    from openface_py.device import resolve_device
    from openface_py.nets.embed import load_embedder

    root = Path(gallery_dir)
    if not root.is_dir():
        raise UsageError(f"{root}: gallery folder not found")
    started = time.monotonic()
    engine = engine or Engine("local", workers=max(1, int(workers)))
    # checked once here; Ray's actors check they load the same weights
    where = "cpu" if engine.name == "ray" else resolve_device(device)
    embedder = EmbedderSpec.of(db.model) if engine.name == "ray" else load_embedder(db.model, device=where)
    identity = embedder.identity
    if identity != db.identity:
        raise OpenFacePyError(f"{db.path} holds {db.identity} embeddings, but {db.model} now gives {identity}")
    known = db.known_sources()
    rels = outside_output_folders(root, list_images(root))  # an align/run output inside is not the gallery
    report = ImportReport(total=len(rels), unlabeled=unlabeled)
    if not unlabeled:
        note_top_level(root, rels)
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
            if not unlabeled:
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

    job = ImportJob(str(root.resolve()), replace(DetectorSpec.of(detector), device=where), unlabeled)
    new_faces: list[int] = []
    _enroll_all(db, job, root, todo, known, embedder, engine, progress, report, new_faces)
    # recorded duplicates whose original is no longer enrolled (it changed or went): imported now
    again = [
        (rel.as_posix(), size, mt) for rel, size, mt in duplicates if not _still_enrolled(db, root, rel, unlabeled)
    ]
    report.already_done += len(duplicates) - len(again)
    _enroll_all(db, job, root, again, known, embedder, engine, progress, report, new_faces)
    report.faces_added = len(new_faces)
    with interrupts_deferred():
        if new_faces:
            report.joined = dbcluster.attach_faces(db, new_faces)
        db.sync_index()
        db.save_index()
    info = db.info()
    report.people, report.faces = info["people"], info["faces"]
    report.failures.sort(key=lambda f: f.path)
    report.seconds = time.monotonic() - started
    return report
