"""``align_folder``: a folder of photos -> aligned PNGs (class sub-folders mirrored).

It keeps going past bad files and reports each failure (path + reason); it
writes every PNG atomically, journals each finished photo (done or failed) to
``.openface-py-align.jsonl`` in the output folder, and on a rerun skips what the journal or
an existing output says is finished, so a job killed half-way resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

from openface_py import __version__
from openface_py.errors import AlignmentMismatchError, Failure, OpenFacePyError
from openface_py.faces.align import AlignmentSpec
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.stage import FaceStage, FaceStageSpec, StageResult, guarded
from openface_py.io import (
    atomic_write_bytes,
    atomic_write_text,
    encode_png,
    file_signature,
    list_images,
    load_image,
)
from openface_py.jobs.journal import Journal, changed, read_journal, signed
from openface_py.jobs.outdir import OutputFolder, outside_output_folders
from openface_py.jobs.parallel import mapped

log = logging.getLogger(__name__)

ALIGN_META = "openface-py-align.json"
ALIGN_JOURNAL = ".openface-py-align.jsonl"
ALIGN_IN_PROGRESS = ".openface-py-align.current"  # the photo a single-process align is on (parallel.mapped)
ALIGN_REPORT = "align-report.json"


@dataclass
class AlignReport:
    """What an ``align_folder`` run did."""

    total: int = 0
    aligned: int = 0
    already_done: int = 0
    failures: list[Failure] = field(default_factory=list)
    done_ok_total: int = 0  # aligned photos in the output folder, this run and earlier ones

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "aligned": self.aligned,
            "already_done": self.already_done,
            "failed": len(self.failures),
            "aligned_total": self.done_ok_total,
            "failures": [{"path": f.path, "reason": f.reason} for f in self.failures],
        }


@dataclass(frozen=True)
class AlignJob:
    """Settings shared by every photo of an align run (picklable, sent to workers once)."""

    input_dir: str
    output_dir: str
    stage: FaceStageSpec

    @property
    def spec(self) -> AlignmentSpec:
        return self.stage.alignment


def output_names(rels: list[Path], taken: Optional[dict[str, Path]] = None) -> dict[Path, Path]:
    """Input path -> output PNG path, unique within its folder.

    ``x.jpg`` -> ``x.png``; where two photos share a stem (``a.jpg``, ``a.png``) the full name
    is kept (``a.jpg.png``), and ``~N`` is added if even that is taken. ``taken`` maps input paths
    (posix) to names an earlier run already wrote: they are kept, so adding photos to a folder
    never renames (or overwrites) the output of a photo finished earlier.
    """
    taken = dict(taken or {})
    stems: dict[Path, int] = {}
    for r in rels:
        key = r.with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    used = {Path(p) for p in taken.values()}
    out: dict[Path, Path] = {}
    for r in rels:
        if r.as_posix() in taken:
            out[r] = Path(taken[r.as_posix()])
            continue
        cands = ([r.with_suffix(".png")] if stems[r.with_suffix("")] == 1 else []) + [r.with_name(r.name + ".png")]
        name = next((c for c in cands if c not in used), None)
        n = 1
        while name is None:
            c = r.with_name(f"{r.name}~{n}.png")
            name = c if c not in used else None
            n += 1
        used.add(name)
        out[r] = name
    return out


class _AlignWorker:
    """Holds one process's face stage; aligns one photo per call."""

    def __init__(self, job: AlignJob) -> None:
        self.job = job
        self.stage = FaceStage(job.stage)

    def __call__(self, item: tuple[str, str]) -> tuple[str, str, str]:
        rel, out_rel = item

        def work() -> StageResult:
            found = self.stage.find(load_image(Path(self.job.input_dir) / rel))
            if found.ok:
                atomic_write_bytes(Path(self.job.output_dir) / out_rel, encode_png(found.faces[0].image))
            return found

        found = guarded(work, rel)
        return (rel, "ok", "") if found.ok else (rel, "failed", found.reason)


def warn_unlabeled(root: os.PathLike | str, rels: list, what: str = "photos") -> None:
    """Warn that files directly in ``root`` have no person label (their class is ""): align, run
    and represent take each photo's label from its sub-folder, as OpenFace does."""
    top = sum(1 for r in rels if len(PurePosixPath(Path(r).as_posix()).parts) == 1)
    if top:
        log.warning(
            "%d %s directly in %s have no person label; OpenFace's layout is %s/PERSON/photo.jpg "
            "(train and classifiers need one sub-folder per person)",
            top, what, root, root,
        )  # fmt: skip


def check_or_write_align_meta(output_dir: Path, job: AlignJob, model: Optional[str]) -> None:
    """Record the alignment of ``output_dir``; refuse to mix alignments in one folder."""
    meta_path = output_dir / ALIGN_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        existing = AlignmentSpec.from_dict(meta["alignment"])
        if existing != job.spec:
            raise AlignmentMismatchError(
                f"{output_dir} holds faces aligned as {existing.identity}, not {job.spec.identity}; "
                "use another output folder"
            )
        return
    meta = {
        "alignment": job.spec.to_dict(),
        "alignment_identity": job.spec.identity,
        "model": model,
        **job.stage.detector.to_dict(),
        "skip_multi": job.stage.pick == "only",
        "openface_py_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


def align_folder(
    input_dir: os.PathLike | str,
    output_dir: os.PathLike | str,
    alignment: AlignmentSpec,
    detector: DetectorSpec | str = DetectorSpec(),
    pick: str = "largest",
    workers: int = 1,
    model: Optional[str] = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> AlignReport:
    """Align every photo below ``input_dir`` into ``output_dir`` (class sub-folders mirrored):
    the largest face of each found by ``detector`` (``pick`` "largest", or "only" to skip photos
    with several faces, OpenFace's ``--skipMulti``)."""
    in_dir, out_dir = Path(input_dir), Path(output_dir)
    if not in_dir.is_dir():
        raise OpenFacePyError(f"{in_dir}: input folder not found")
    if pick not in ("largest", "only"):  # 'central' is for benchmark photos (lfw, pairs-eval)
        raise OpenFacePyError("align keeps one face per photo: pick 'largest' or 'only'")
    stage = FaceStageSpec(DetectorSpec.of(detector), alignment, pick)
    job = AlignJob(str(in_dir), str(out_dir), stage)
    with OutputFolder(out_dir, ALIGN_META, "align", bookkeeping=(ALIGN_JOURNAL,)):
        check_or_write_align_meta(out_dir, job, model)
        return _align(job, out_dir, workers, retry_failed, progress)


def _align(job: AlignJob, out_dir: Path, workers: int, retry_failed: bool, progress: bool) -> AlignReport:
    in_dir = Path(job.input_dir)
    rels = outside_output_folders(in_dir, list_images(in_dir), own=[out_dir])
    warn_unlabeled(in_dir, rels)
    journal_path = out_dir / ALIGN_JOURNAL
    journal = read_journal(journal_path)
    names = output_names(rels, {k: e["out"] for k, e in journal.items() if e.get("out")})
    report = AlignReport(total=len(rels))
    todo: list[tuple[str, str]] = []
    adopted = []  # written (atomically, so whole) by a run killed before it journaled them
    sigs = {rel.as_posix(): file_signature(in_dir / rel) for rel in rels}
    for rel in rels:
        key, out_rel = rel.as_posix(), names[rel]
        entry = journal.get(key)
        if entry and changed(entry, sigs[key]):  # redone; if it fails now, its old face must not stay
            log.info("%s changed since it was aligned; aligning it again", key)
            (out_dir / out_rel).unlink(missing_ok=True)
            todo.append((key, out_rel.as_posix()))
        elif (out_dir / out_rel).is_file() and (entry is None or entry["status"] == "ok"):
            report.already_done += 1
            report.done_ok_total += 1
            if entry is None:
                adopted.append(
                    {"src": key, "status": "ok", "reason": "", "out": out_rel.as_posix(), **signed(sigs[key])}
                )
        elif entry and entry["status"] == "failed" and not retry_failed:
            report.already_done += 1
            report.failures.append(Failure(key, entry.get("reason", "failed earlier")))
        else:
            todo.append((key, out_rel.as_posix()))
    log.info("%d photos, %d finished earlier, %d to align", len(rels), report.already_done, len(todo))

    from tqdm import tqdm

    workers = max(1, int(workers))
    out_of = dict(todo)
    with (
        Journal(journal_path) as jnl,
        tqdm(total=len(todo), unit="photo", desc="align", disable=not progress) as bar,
        mapped(
            _AlignWorker,
            (job,),
            todo,
            workers,
            ordered=False,
            on_crash=lambda item, why: (item[0], "failed", why),
            crash_marker=out_dir / ALIGN_IN_PROGRESS,
        ) as results,
    ):
        if adopted:
            jnl.append(adopted)
        for rel, status, reason in results:
            jnl.append([{"src": rel, "status": status, "reason": reason, "out": out_of[rel], **signed(sigs[rel])}])
            if status == "ok":
                report.aligned += 1
                report.done_ok_total += 1
            else:
                report.failures.append(Failure(rel, reason))
                log.warning("%s: %s", rel, reason)
            bar.update(1)
    report.failures.sort(key=lambda f: f.path)
    atomic_write_text(out_dir / ALIGN_REPORT, json.dumps(report.to_json(), indent=2) + "\n")
    return report
