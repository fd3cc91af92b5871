"""``openface-py run``: photos -> embeddings in one pass (detect + align + embed), resumable.

Decoding, detection and alignment run in worker processes (models loaded once per worker);
the aligned faces stream back through a bounded window (``max_pending`` photos in flight, so
memory stays flat on any number of photos) and are embedded in the main process in batches by
the fastest embedding backend. No aligned PNGs are written unless asked (``save_aligned``).

Resumable like ``align``: each embedded batch is written atomically as a part file
(``.parts/part-NNNNNN.npz``) and only then journaled (``.openface-py-run.jsonl``, one line per
photo: ok with its faces, or failed with the reason; ``journal.Journal`` fsyncs each batch's
lines and cuts off a line torn by a kill). A rerun skips every photo the journal names; a batch
lost in a kill is simply redone, and so are photos whose part file is missing or damaged. The
output folder is locked while a run writes to it (``outdir.OutputFolder``). At the end the parts are gathered into the
same files ``represent`` writes (``reps.csv``, ``labels.csv``, ``reps.npy``, ``labels.json``,
``embeddings.json``) plus ``faces.json`` (photo, face index, box, score per row) and
``run-report.json`` with every failure.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import numpy as np

from openface_py.errors import Failure, OpenFacePyError
from openface_py.faces.align import detector_for
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.stage import FaceStage, FaceStageSpec, StageResult, guarded
from openface_py.io import (
    NPZ_ERRORS,
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    encode_png,
    load_npz,
    save_npz,
)
from openface_py.jobs.batch import AlignReport, output_names, warn_unlabeled
from openface_py.jobs.embeddings import EMBED_META, write_embeddings
from openface_py.jobs.engine import EmbedderSpec, Engine, PhotoFaces, embed_photos
from openface_py.jobs.journal import Journal, changed, read_journal, signed
from openface_py.jobs.outdir import OutputFolder, outside_output_folders, settings_changes
from openface_py.jobs.source import INSTALL_HINT, PhotoSource
from openface_py.nets.embedders import Embedder

log = logging.getLogger(__name__)

RUN_JOURNAL = ".openface-py-run.jsonl"
RUN_IN_PROGRESS = ".openface-py-run.current"  # the photo a single-process run is on (parallel.mapped)
RUN_REPORT = "run-report.json"
RUN_META = "run.json"
#: run.json settings recorded but not compared on a rerun (where it ran, not what it gives)
UNCOMPARED = ("device",)
PARTS = ".parts"
PARQUET = "faces.parquet"
#: What ``--format`` chooses between: OpenFace's files (``represent``'s, plus faces.json) or Parquet.
OUTPUT_FORMATS = ("openface", "parquet")
OPENFACE_FILES = ("reps.csv", "labels.csv", "reps.npy", "labels.json", EMBED_META, "faces.json")


@dataclass(frozen=True)
class RunJob:
    """Per-photo settings, sent to each worker once."""

    source: PhotoSource
    stage: FaceStageSpec
    aligned_dir: Optional[str] = None  # also write aligned PNGs here
    aligned_names: Optional[dict] = None  # photo -> aligned PNG name (unique; see batch.output_names)


class _FaceWorker:
    """One worker's face stage (of ``engine.embed_photos``): a photo's name -> its aligned faces
    with one ``{box, score, aligned_from}`` each, or the failure reason."""

    def __init__(self, job: RunJob) -> None:
        self.job = job
        self.stage = FaceStage(job.stage)

    def _aligned_path(self, rel: str, k: int) -> Path:
        """``<name>.png`` for the one face of a photo; ``<name>-K.png`` for each face with --multi."""
        name = Path(self.job.aligned_names[rel])
        if self.job.stage.pick == "all":
            name = name.with_name(f"{name.stem}-{k}.png")
        return Path(self.job.aligned_dir) / name

    def __call__(self, rel: str) -> PhotoFaces:
        def work() -> StageResult:
            found = self.stage.find(self.job.source.image(rel))
            if self.job.aligned_dir:
                for k, face in enumerate(found.faces):
                    atomic_write_bytes(self._aligned_path(rel, k), encode_png(face.image))
            return found

        found = guarded(work, rel)
        if not found.ok:
            return PhotoFaces(rel, found.reason)
        info = [{"box": f.box.as_list(), "score": round(float(f.score), 4), "aligned_from": f.aligned_from}
                for f in found.faces]  # fmt: skip
        return PhotoFaces(rel, "", [f.image for f in found.faces], info)


def _write_part(out_dir: Path, index: int, rows: list[dict], reps: np.ndarray) -> str:
    name = f"part-{index:06d}.npz"
    save_npz(out_dir / PARTS / name, reps=reps.astype(np.float32), rows=rows)
    return name


def run_folder(
    input_dir: os.PathLike | str,
    output_dir: os.PathLike | str,
    embedder: Embedder | EmbedderSpec,
    detector: DetectorSpec | str = DetectorSpec("hog-mtcnn"),
    pick: str = "largest",
    workers: int = 0,
    batch_size: Optional[int] = None,
    max_pending: int = 256,
    save_aligned: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    engine: Optional[Engine] = None,
    output_format: str = "openface",
    labeled: bool = True,
) -> AlignReport:
    """Detect, align and embed every photo below ``input_dir``; outputs as described in the module doc.

    ``input_dir``: a local folder or a URL (``jobs.source``). ``pick``: every face of a photo
    (``all``), the largest (``largest``), or the largest only when alone (``only``,
    ``faces.stage.PICKS``). The default detector is
    ``hog-mtcnn``: HOG as ``hog-adaptive`` (a quarter of OpenFace's HOG cost on LFW), and MTCNN
    only on photos where it finds nothing, which finds turned and tilted faces (BENCHMARKS.md,
    "Detectors").

    ``engine``: local worker processes (default; ``workers`` = 0 means one per CPU core, 1 runs
    everything in this process) or Ray (``Engine("ray", address=...)``, with an ``EmbedderSpec``).
    Either engine resumes a folder the other started. ``save_aligned`` also writes the aligned
    faces to ``OUTPUT_DIR/aligned`` (``<photo>.png``, or ``<photo>-K.png`` for each face with
    ``multi``; names never collide, see ``batch.output_names``). ``output_format``: ``openface``
    (the files ``represent`` writes, plus ``faces.json``) or ``parquet`` (``faces.parquet``, one row
    per face, written part by part: for outputs too large for CSV). ``labeled``: warn about
    photos directly in ``input_dir``, which have no person label (False: labels are not wanted).
    """
    if pick == "central":  # recorded as multi/skip_multi, which cannot say it; it is for benchmark photos
        raise OpenFacePyError("run picks 'all', 'largest' or 'only' faces ('central' is for lfw and pairs-eval)")
    if output_format not in OUTPUT_FORMATS:
        raise OpenFacePyError(f"unknown output format {output_format!r}: one of {', '.join(OUTPUT_FORMATS)}")
    if output_format == "parquet":
        try:
            import pyarrow  # noqa: F401  (checked before any work, not at the end)
        except ImportError:
            raise OpenFacePyError(f"--format parquet needs pyarrow: {INSTALL_HINT}") from None
    detector = detector_for(DetectorSpec.of(detector), embedder.alignment)
    batch_size = batch_size or embedder.batch_size
    engine = engine or Engine("local", workers=workers)
    if engine.name == "local" and workers and not engine.workers:
        engine = replace(engine, workers=workers)
    source = PhotoSource.open(input_dir)
    listing = source.listing()  # before the output folder is made: a source that cannot be listed leaves nothing
    out_dir = Path(output_dir)
    rels = list(listing)
    if source.local:  # this run's folder (with its aligned/) and other jobs' are not photos to embed
        rels = outside_output_folders(source.root, rels, own=[out_dir])
    signatures = {rel: listing[rel] for rel in rels}
    if labeled:
        warn_unlabeled(input_dir, rels)
    settings = {
        "identity": embedder.identity,
        **detector.to_dict(),
        "multi": pick == "all",
        "skip_multi": pick == "only",
        # where it ran (not compared: a run resumed on another device gives the same rows)
        "device": "ray" if engine.name == "ray" else embedder.device,
    }
    with OutputFolder(out_dir, RUN_META, "run", bookkeeping=(RUN_JOURNAL, PARTS)):
        _check_or_write_settings(out_dir, settings)
        (out_dir / PARTS).mkdir(exist_ok=True)
        journal = read_journal(out_dir / RUN_JOURNAL)
        names = None
        if save_aligned:
            taken = {k: e["aligned"] for k, e in journal.items() if e.get("aligned")}
            names = {r.as_posix(): n.as_posix() for r, n in output_names([Path(r) for r in rels], taken).items()}
        job = RunJob(
            source,
            FaceStageSpec(detector, embedder.alignment, pick),
            str((out_dir / "aligned").resolve()) if save_aligned else None,  # absolute: Ray's workers
            names,
        )
        report = _embed_missing(job, out_dir, embedder, engine, journal, signatures, batch_size, max_pending,
                                retry_failed, progress)  # fmt: skip
        if output_format == "parquet":
            _gather_parquet(out_dir, embedder, source, report)
        else:
            _gather(out_dir, embedder, source, report)
        atomic_write_text(out_dir / RUN_REPORT, json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _check_or_write_settings(out_dir: Path, settings: dict) -> None:
    """A run folder holds one run's settings: refuse other ones (older run.json files lack max_side)."""
    meta_path = out_dir / RUN_META
    if meta_path.is_file():
        old = {"max_side": None, **json.loads(meta_path.read_text(encoding="utf-8"))}
        compared = {k: v for k, v in settings.items() if k not in UNCOMPARED}
        if changed := settings_changes({k: v for k, v in old.items() if k not in UNCOMPARED}, compared):
            raise OpenFacePyError(
                f"{out_dir} holds a run with other settings (was, now: {changed}); use another output folder "
                "or the earlier settings (e.g. its --detector)"
            )
        if old != {"max_side": None, **settings}:  # the device of the latest run
            atomic_write_text(meta_path, json.dumps({**old, **settings}, indent=2) + "\n")
    else:
        atomic_write_text(meta_path, json.dumps(settings, indent=2) + "\n")


def _read_part(path: Path) -> tuple[list[dict], np.ndarray]:
    saved = load_npz(path, json_keys=("rows",))
    rows, reps = saved["rows"], saved["reps"]
    if reps.ndim != 2 or len(rows) != reps.shape[0]:
        raise ValueError(f"{len(rows)} rows but embeddings of shape {reps.shape}")
    return rows, reps


def _usable_parts(out_dir: Path, journal: dict[str, dict]) -> set[str]:
    """The part files named by the journal that are there and readable; a damaged one is removed."""
    usable = set()
    for name in sorted({e["part"] for e in journal.values() if e["status"] == "ok"}):
        path = out_dir / PARTS / name
        if not path.is_file():
            continue
        try:
            _read_part(path)
            usable.add(name)
        except NPZ_ERRORS as exc:
            log.warning("part file %s is unreadable (%s); removing it", path, exc)
            path.unlink()
    return usable


def _embed_missing(
    job: RunJob,
    out_dir: Path,
    embedder: Embedder | EmbedderSpec,
    engine: Engine,
    journal: dict[str, dict],
    signatures: dict[str, Optional[list]],
    batch_size: int,
    max_pending: int,
    retry_failed: bool,
    progress: bool,
) -> AlignReport:
    """Detect, align and embed every photo the journal does not vouch for; journal each part file.

    ``signatures``: each photo's ``[size, mtime_ns]`` (or None); a photo whose journal entry
    records another one changed since it was done, and is done again (its old rows and aligned
    faces replaced, an old failure retried), as ``db import`` does."""
    from tqdm import tqdm

    rels = list(signatures)
    parts = _usable_parts(out_dir, journal)
    report = AlignReport(total=len(rels))
    todo = []
    for rel in rels:
        entry = journal.get(rel)
        if entry and entry["status"] == "ok" and entry["part"] not in parts:
            log.warning("%s: its part file %s is missing or damaged; embedding it again", rel, entry["part"])
            entry = None
        if entry and changed(entry, signatures[rel]):
            log.info("%s changed since it was done; doing it again", rel)
            _remove_aligned(job, entry)
            entry = None
        if entry and (entry["status"] == "ok" or not retry_failed):
            report.already_done += 1
            if entry["status"] != "ok":
                report.failures.append(Failure(rel, entry.get("reason", "failed earlier")))
        else:
            todo.append(rel)
    # never reuse a part name: not of a file on disk, nor of one the journal still names (a
    # damaged part was deleted above; an entry of a photo not redone yet may still name it)
    names = {p.name for p in (out_dir / PARTS).glob("part-*.npz")}
    names |= {e["part"] for e in journal.values() if "part" in e}
    next_part = 1 + max((int(n[len("part-") : -len(".npz")]) for n in names), default=0)
    log.info("%d photos, %d finished earlier, %d to do", len(rels), report.already_done, len(todo))

    pending_reps: list[np.ndarray] = []
    pending_rows: list[dict] = []
    pending_photos: list[tuple[str, int]] = []

    def flush(jnl: Journal) -> None:
        nonlocal next_part
        if not pending_photos:
            return
        reps = np.concatenate(pending_reps) if pending_reps else np.zeros((0, embedder.dim), np.float32)
        part = _write_part(out_dir, next_part, pending_rows, reps)
        next_part += 1
        entries = []
        for rel, n in pending_photos:  # journaled only once their embeddings are on disk
            entry = {"src": rel, "status": "ok", "faces": n, "part": part, **signed(signatures[rel])}
            if job.aligned_names:
                entry["aligned"] = job.aligned_names[rel]
            entries.append(entry)
        jnl.append(entries)
        report.aligned += len(pending_photos)
        pending_reps.clear()
        pending_rows.clear()
        pending_photos.clear()

    with (
        Journal(out_dir / RUN_JOURNAL) as jnl,
        tqdm(total=len(todo), unit="photo", desc="run", disable=not progress) as bar,
        embed_photos(
            _FaceWorker, (job,), todo, embedder, engine, batch_size, max_pending, crash_marker=out_dir / RUN_IN_PROGRESS
        ) as results,
    ):
        for photo in results:
            bar.update(1)
            rel = photo.item
            if photo.reason:
                if not photo.retry:  # a photo lost by the engine is not journaled: a rerun tries it again
                    jnl.append([{"src": rel, "status": "failed", "reason": photo.reason, **signed(signatures[rel])}])
                report.failures.append(Failure(rel, photo.reason))
                log.warning("%s: %s", rel, photo.reason)
                continue
            for k, face in enumerate(photo.info):
                pending_rows.append({"path": rel, "face": k, **face})
            pending_reps.append(photo.reps)
            pending_photos.append((rel, len(photo.info)))
            if len(pending_rows) >= batch_size:
                flush(jnl)
        flush(jnl)
    report.failures.sort(key=lambda f: f.path)
    return report


def _remove_aligned(job: RunJob, entry: dict) -> None:
    """Delete the aligned faces ``--save-aligned`` wrote for a photo that changed (it may now have
    fewer faces, or none)."""
    if not (job.aligned_dir and entry.get("aligned")):
        return
    name = Path(job.aligned_dir) / entry["aligned"]
    for k in range(int(entry.get("faces") or 1)):
        name.with_name(f"{name.stem}-{k}.png").unlink(missing_ok=True)
    name.unlink(missing_ok=True)


def _vouched_parts(out_dir: Path) -> Iterator[tuple[list[dict], np.ndarray]]:
    """Each part file the journal vouches for, cut to the rows it vouches for (a photo redone
    after a kill counts once: only its journaled part holds it)."""
    journal = read_journal(out_dir / RUN_JOURNAL)
    for name in sorted({e["part"] for e in journal.values() if e["status"] == "ok"}):
        try:
            part_rows, part_reps = _read_part(out_dir / PARTS / name)
        except NPZ_ERRORS as exc:
            # only photos no longer in the input folder can get here (the others were redone)
            log.warning("part file %s is gone or unreadable (%s); its photos are left out", name, exc)
            continue
        keep = [i for i, row in enumerate(part_rows) if (journal.get(row["path"]) or {}).get("part") == name]
        yield [part_rows[i] for i in keep], part_reps[keep]


def _label(rel: str) -> str:
    """A photo's class: its folder below the input ("" for a photo at the top)."""
    parent = PurePosixPath(rel).parent.as_posix()
    return "" if parent == "." else parent


def _remove_outputs(out_dir: Path, names: tuple[str, ...]) -> None:
    """Drop the other format's files, so that a folder never holds two runs' worth of outputs."""
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


def _gather(out_dir: Path, embedder, source: PhotoSource, report: AlignReport) -> None:
    """Assemble the part files the journal vouches for into the final output files (sorted by path).

    Sets ``report.done_ok_total`` to the number of photos whose rows really are in the output.
    """
    reps, rows = [], []
    for part_rows, part_reps in _vouched_parts(out_dir):
        rows.extend(part_rows)
        reps.extend(part_reps)
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["path"], rows[i]["face"]))
    rows = [rows[i] for i in order]
    matrix = np.stack([reps[i] for i in order]).astype(np.float32) if rows else np.zeros((0, embedder.dim), np.float32)
    labels = [_label(r["path"]) for r in rows]
    paths = [source.where(r["path"]) for r in rows]
    csv_paths = [source.below(r["path"]) for r in rows] if source.archive else None  # OpenFace's labels
    write_embeddings(out_dir, matrix, labels, paths, embedder, csv_paths)
    atomic_write_text(out_dir / "faces.json", json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    _remove_outputs(out_dir, (PARQUET,))
    report.done_ok_total = len({r["path"] for r in rows})


def _gather_parquet(out_dir: Path, embedder, source: PhotoSource, report: AlignReport) -> None:
    """Write ``faces.parquet`` (one row per face: path, label, face, box, score, aligned_from,
    embedding, identity) one part file at a time, so memory stays flat on any number of faces;
    rows are in the order the parts were written (sort by ``path`` and ``face`` when needed)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise OpenFacePyError(f"--format parquet needs pyarrow: {INSTALL_HINT}") from None
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("face", pa.int32()),
            ("box", pa.list_(pa.int32(), 4)),
            ("score", pa.float32()),
            ("aligned_from", pa.string()),
            ("embedding", pa.list_(pa.float32(), embedder.dim)),
            ("identity", pa.string()),
        ],
        metadata={"identity": embedder.identity, "model": embedder.name},
    )
    photos = set()
    with atomic_output(out_dir / PARQUET) as fh, pq.ParquetWriter(fh, schema) as writer:
        for rows, reps in _vouched_parts(out_dir):
            if not rows:
                continue
            photos.update(r["path"] for r in rows)
            flat = pa.array(np.ascontiguousarray(reps, np.float32).reshape(-1), pa.float32())
            table = pa.table(
                {
                    "path": [source.where(r["path"]) for r in rows],
                    "label": [_label(r["path"]) for r in rows],
                    "face": pa.array([r["face"] for r in rows], pa.int32()),
                    "box": pa.array([r["box"] for r in rows], pa.list_(pa.int32(), 4)),
                    "score": pa.array([r["score"] for r in rows], pa.float32()),
                    "aligned_from": [r.get("aligned_from", "") for r in rows],
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, embedder.dim),
                    "identity": [embedder.identity] * len(rows),
                },
                schema=schema,
            )
            writer.write_table(table)
    _remove_outputs(out_dir, OPENFACE_FILES)
    report.done_ok_total = len(photos)
