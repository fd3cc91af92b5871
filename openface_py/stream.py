"""``openface-py run``: photos -> embeddings in one pass (detect + align + embed), resumable.

Decoding, detection and alignment run in worker processes (models loaded once per worker);
the aligned faces stream back through a bounded window (``max_pending`` photos in flight, so
memory stays flat on any number of photos) and are embedded in the main process in batches by
the fastest embedding backend. No aligned PNGs are written unless asked (``save_aligned``).

Resumable like ``align``: each embedded batch is written atomically as a part file
(``.parts/part-NNNNNN.npz``) and only then journaled (``.openface-py-run.jsonl``, one line per
photo: ok with its faces, or failed with the reason). A rerun skips every photo the journal
names; a batch lost in a kill is simply redone. At the end the parts are gathered into the
same files ``represent`` writes (``reps.csv``, ``labels.csv``, ``reps.npy``, ``labels.json``,
``embeddings.json``) plus ``faces.json`` (photo, face index, box, score per row) and
``run-report.json`` with every failure.
"""

from __future__ import annotations

import io as _io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.align import AlignmentSpec, make_aligner
from openface_py.batch import AlignReport, Failure, read_journal, remove_stale_temp_files, write_embeddings
from openface_py.detect import make_detector, select_faces
from openface_py.embed import Embedder
from openface_py.errors import ImageLoadError, OpenFacePyError
from openface_py.io import atomic_write_bytes, atomic_write_text, encode_png, list_images, load_image
from openface_py.parallel import mapped

log = logging.getLogger(__name__)

RUN_JOURNAL = ".openface-py-run.jsonl"
RUN_REPORT = "run-report.json"
PARTS = ".parts"


@dataclass(frozen=True)
class RunJob:
    """Per-photo settings, sent to each worker once."""

    input_dir: str
    spec: AlignmentSpec
    detector: str = "hog"
    upsample: int = 1
    multi: bool = False
    skip_multi: bool = False
    aligned_dir: Optional[str] = None  # also write aligned PNGs here
    max_side: Optional[int] = None


class _FaceWorker:
    """One process's detector + aligner: a photo -> its aligned faces (or the failure reason)."""

    def __init__(self, job: RunJob) -> None:
        self.job = job
        self.detector = make_detector(job.detector, upsample=job.upsample, max_side=job.max_side)
        self.aligner = make_aligner(job.spec)

    def __call__(self, rel: str) -> tuple[str, str, list]:
        try:
            rgb = load_image(Path(self.job.input_dir) / rel)
            dets = self.detector.detect(rgb)
            if not dets:
                return rel, "no face found", []
            chosen = select_faces(dets, multi=self.job.multi, skip_multi=self.job.skip_multi)
            if not chosen:
                return rel, f"{len(dets)} faces found and --skip-multi is set", []
            faces = []
            for k, det in enumerate(chosen):
                img = self.aligner.align(rgb, det.box, score=det.score).image
                if self.job.aligned_dir:
                    name = Path(rel).with_suffix("") if len(chosen) == 1 else Path(f"{Path(rel).with_suffix('')}-{k}")
                    atomic_write_bytes(Path(self.job.aligned_dir) / f"{name}.png", encode_png(img))
                faces.append((img, det.box.as_list(), det.score))
            return rel, "", faces
        except ImageLoadError as exc:
            return rel, exc.reason, []
        except Exception as exc:  # one bad photo must not stop the run; the reason is reported
            log.debug("unexpected error on %s", rel, exc_info=True)
            return rel, f"{type(exc).__name__}: {exc}", []


def _write_part(out_dir: Path, index: int, rows: list[dict], reps: np.ndarray) -> str:
    buf = _io.BytesIO()
    np.savez(buf, reps=reps.astype(np.float32), rows=np.array(json.dumps(rows)))
    name = f"part-{index:06d}.npz"
    atomic_write_bytes(out_dir / PARTS / name, buf.getvalue())
    return name


def run_folder(
    input_dir: os.PathLike | str,
    output_dir: os.PathLike | str,
    embedder: Embedder,
    detector: str = "hog-adaptive",
    upsample: int = 1,
    multi: bool = False,
    skip_multi: bool = False,
    workers: int = 0,
    batch_size: int = 32,
    max_pending: int = 256,
    save_aligned: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    max_side: Optional[int] = None,
) -> AlignReport:
    """Detect, align and embed every photo below ``input_dir``; outputs as described in the module doc.

    The default detector is ``hog-adaptive``: on LFW's 13,233 photos it misses 36 faces where
    OpenFace's HOG at upsample 1 misses 67, at a quarter of the detection cost (BENCHMARKS.md).

    ``workers`` = 0 means one per CPU core; 1 runs everything in this process.
    """
    from tqdm import tqdm

    in_dir, out_dir = Path(input_dir), Path(output_dir)
    if not in_dir.is_dir():
        raise OpenFacePyError(f"{in_dir}: input folder not found")
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out_dir)
    meta_path = out_dir / "run.json"
    settings = {
        "identity": embedder.identity,
        "detector": detector,
        "upsample": int(upsample),
        "multi": multi,
        "skip_multi": skip_multi,
    }
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        if old != settings:
            raise OpenFacePyError(f"{out_dir} holds a run with other settings ({old}); use another output folder")
    else:
        atomic_write_text(meta_path, json.dumps(settings, indent=2) + "\n")

    journal_path = out_dir / RUN_JOURNAL
    journal = read_journal(journal_path)
    rels = [r.as_posix() for r in list_images(in_dir)]
    report = AlignReport(total=len(rels))
    todo = []
    for rel in rels:
        entry = journal.get(rel)
        if entry and (entry["status"] == "ok" or not retry_failed):
            report.already_done += 1
            if entry["status"] == "ok":
                report.done_ok_total += 1
            else:
                report.failures.append(Failure(rel, entry.get("reason", "failed earlier")))
        else:
            todo.append(rel)
    parts = sorted((out_dir / PARTS).glob("part-*.npz"))
    next_part = 1 + max((int(p.stem.split("-")[1]) for p in parts), default=0)
    log.info("%d photos, %d finished earlier, %d to do", len(rels), report.already_done, len(todo))

    aligned_dir = out_dir / "aligned" if save_aligned else None
    job = RunJob(
        str(in_dir),
        embedder.alignment,
        detector,
        int(upsample),
        multi,
        skip_multi,
        str(aligned_dir) if aligned_dir else None,
    )
    workers = int(workers) or os.cpu_count() or 1
    pending_faces: list[np.ndarray] = []
    pending_rows: list[dict] = []
    pending_photos: list[tuple[str, int]] = []

    def flush(jfh) -> None:
        nonlocal next_part
        if not pending_photos:
            return
        reps = embedder.embed(pending_faces, batch_size=batch_size) if pending_faces else np.zeros((0, embedder.dim))
        part = _write_part(out_dir, next_part, pending_rows, reps)
        next_part += 1
        for rel, n in pending_photos:  # journaled only once their embeddings are on disk
            jfh.write(json.dumps({"src": rel, "status": "ok", "faces": n, "part": part}, ensure_ascii=False) + "\n")
        jfh.flush()
        report.aligned += len(pending_photos)
        report.done_ok_total += len(pending_photos)
        pending_faces.clear()
        pending_rows.clear()
        pending_photos.clear()

    with (
        open(journal_path, "a", encoding="utf-8") as jfh,
        tqdm(total=len(todo), unit="photo", desc="run", disable=not progress) as bar,
        mapped(_FaceWorker, (job,), todo, workers, ordered=False, chunksize=2, max_pending=max_pending) as results,
    ):
        for rel, reason, faces in results:
            bar.update(1)
            if reason:
                jfh.write(json.dumps({"src": rel, "status": "failed", "reason": reason}, ensure_ascii=False) + "\n")
                jfh.flush()
                report.failures.append(Failure(rel, reason))
                log.warning("%s: %s", rel, reason)
                continue
            for k, (img, box, score) in enumerate(faces):
                pending_faces.append(img)
                pending_rows.append({"path": rel, "face": k, "box": box, "score": round(float(score), 4)})
            pending_photos.append((rel, len(faces)))
            if len(pending_faces) >= batch_size:
                flush(jfh)
        flush(jfh)

    report.failures.sort(key=lambda f: f.path)
    _gather(out_dir, embedder, in_dir)
    atomic_write_text(out_dir / RUN_REPORT, json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _gather(out_dir: Path, embedder: Embedder, in_dir: Path) -> None:
    """Assemble the part files the journal vouches for into the final output files (sorted by path)."""
    journal = read_journal(out_dir / RUN_JOURNAL)
    wanted = {e["part"] for e in journal.values() if e["status"] == "ok"}
    reps, rows = [], []
    for name in sorted(wanted):
        with np.load(out_dir / PARTS / name, allow_pickle=False) as z:
            part_rows = json.loads(str(z["rows"]))
            part_reps = np.array(z["reps"])
        for i, row in enumerate(part_rows):
            entry = journal.get(row["path"])
            if entry and entry.get("part") == name:  # a photo redone after a kill counts once
                rows.append(row)
                reps.append(part_reps[i])
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["path"], rows[i]["face"]))
    rows = [rows[i] for i in order]
    matrix = np.stack([reps[i] for i in order]).astype(np.float32) if rows else np.zeros((0, embedder.dim), np.float32)
    labels = [Path(r["path"]).parent.as_posix() if Path(r["path"]).parent != Path(".") else "" for r in rows]
    paths = [str(in_dir / r["path"]) for r in rows]
    write_embeddings(out_dir, matrix, labels, paths, embedder)
    atomic_write_text(out_dir / "faces.json", json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
