"""Folder jobs: ``align_folder`` (photos -> aligned PNGs) and ``represent_folder`` (-> embeddings).

Both keep going past bad files and report each failure (path + reason). ``align_folder``
writes every PNG atomically, journals each finished photo (done or failed) to
``.openface-py-align.jsonl`` in the output folder, and on a rerun skips what the journal or
an existing output says is finished, so a job killed half-way resumes where it stopped.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np

from openface_py import __version__
from openface_py.errors import AlignmentMismatchError, Failure, ImageLoadError, OpenFacePyError
from openface_py.faces.align import AlignmentSpec
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.stage import FaceStage, FaceStageSpec, StageResult, guarded
from openface_py.io import (
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    encode_png,
    iter_chunks,
    list_images,
    load_image,
)
from openface_py.jobs.journal import Journal, changed, read_journal, signed
from openface_py.jobs.outdir import OutputFolder, outside_output_folders
from openface_py.jobs.parallel import mapped
from openface_py.nets.embed import Embedder

log = logging.getLogger(__name__)

ALIGN_META = "openface-py-align.json"
ALIGN_JOURNAL = ".openface-py-align.jsonl"
ALIGN_IN_PROGRESS = ".openface-py-align.current"  # the photo a single-process align is on (parallel.mapped)
ALIGN_REPORT = "align-report.json"
EMBED_META = "embeddings.json"


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
    if pick == "all":
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
    sigs = {rel.as_posix(): _signature(in_dir / rel) for rel in rels}
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


def _signature(path: Path) -> Optional[list]:
    """A photo's ``[size, mtime_ns]`` (``journal.changed`` compares them), None if it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


# ---- represent -------------------------------------------------------------------------


@dataclass
class RepresentResult:
    """What ``represent_folder`` wrote: embeddings, their labels and paths, and failures."""

    reps: np.ndarray
    labels: list[str]
    paths: list[str]
    failures: list[Failure]
    identity: str


def read_align_meta(aligned_dir: Path) -> Optional[AlignmentSpec]:
    meta_path = aligned_dir / ALIGN_META
    if not meta_path.is_file():
        return None
    return AlignmentSpec.from_dict(json.loads(meta_path.read_text(encoding="utf-8"))["alignment"])


def represent_folder(
    aligned_dir: os.PathLike | str,
    output_dir: os.PathLike | str,
    embedder: Embedder,
    batch_size: int = 32,
    progress: bool = True,
) -> RepresentResult:
    """Embed every aligned face below ``aligned_dir``; write OpenFace's reps.csv / labels.csv and more.

    Outputs (each written atomically): ``reps.csv`` (one 128-value row per face),
    ``labels.csv`` (``class_index,path``, 1-based, as OpenFace's batch-represent),
    ``reps.npy``, ``labels.json`` and ``embeddings.json`` (model identity and alignment).
    """
    a_dir, out_dir = Path(aligned_dir), Path(output_dir)
    if not a_dir.is_dir():
        raise OpenFacePyError(f"{a_dir}: aligned folder not found")
    spec = read_align_meta(a_dir)
    if spec is not None and spec != embedder.alignment:
        raise AlignmentMismatchError(
            f"{a_dir} was aligned as {spec.identity} but {embedder.name} needs {embedder.alignment.identity}; "
            f"run 'openface-py align INPUT_DIR OUTPUT_DIR --model {embedder.name}' first"
        )
    if spec is None:
        log.warning(
            "%s has no %s: assuming its faces are aligned as %s", a_dir, ALIGN_META, embedder.alignment.identity
        )
    rels = list_images(a_dir)
    if not rels:
        raise OpenFacePyError(f"{a_dir}: no aligned images found")
    warn_unlabeled(a_dir, rels, "faces")

    from tqdm import tqdm

    size = embedder.alignment.size
    reps: list[np.ndarray] = []
    kept: list[Path] = []
    failures: list[Failure] = []
    with tqdm(total=len(rels), unit="face", desc="represent", disable=not progress) as bar:
        for chunk in iter_chunks(rels, max(1, batch_size)):
            faces, ok = [], []
            for rel in chunk:
                try:
                    img = load_image(a_dir / rel)
                except ImageLoadError as exc:
                    failures.append(Failure(rel.as_posix(), exc.reason))
                    continue
                if img.shape[:2] != (size, size):
                    failures.append(
                        Failure(rel.as_posix(), f"is {img.shape[1]}x{img.shape[0]}, expected {size}x{size}")
                    )
                    continue
                faces.append(img)
                ok.append(rel)
            if faces:
                reps.append(embedder.embed(faces, batch_size=batch_size))
                kept.extend(ok)
            bar.update(len(chunk))
    for f in failures:
        log.warning("%s: %s", f.path, f.reason)
    if not kept:
        raise OpenFacePyError(f"{a_dir}: none of the {len(rels)} images could be embedded")
    matrix = np.concatenate(reps, axis=0)
    labels = [rel.parent.as_posix() if rel.parent != Path(".") else "" for rel in kept]
    paths = [os.path.join(str(aligned_dir), rel.as_posix()) for rel in kept]
    write_embeddings(out_dir, matrix, labels, paths, embedder)
    return RepresentResult(matrix, labels, paths, failures, embedder.identity)


def write_embeddings(
    out_dir: Path,
    reps: np.ndarray,
    labels: list[str],
    paths: list[str],
    embedder: Embedder,
    csv_paths: Optional[list[str]] = None,
) -> None:
    """Write reps/labels in OpenFace's CSV format and as .npy/.json, plus the identity metadata.

    ``csv_paths``: labels.csv's paths where they differ from ``paths``. OpenFace's classifier
    takes each label from its path's parent folder, which a chained URL's last part is not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes: list[str] = []
    for lab in labels:
        if lab not in classes:
            classes.append(lab)
    index = {c: i + 1 for i, c in enumerate(classes)}
    # streamed to the (temporary) files in slices: no second copy of the whole output in memory
    with atomic_output(out_dir / "reps.csv") as fh:
        for rows in iter_chunks(range(len(reps)), 4096):
            np.savetxt(fh, reps[rows.start : rows.stop], delimiter=",", fmt="%.9g")
    with atomic_output(out_dir / "labels.csv") as fh:
        text = _io.TextIOWrapper(fh, "utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        for lab, p in zip(labels, paths if csv_paths is None else csv_paths):
            writer.writerow([index[lab], p])
        text.flush()
        text.detach()  # atomic_output syncs and closes the file itself
    with atomic_output(out_dir / "reps.npy") as fh:
        np.save(fh, np.asarray(reps, dtype=np.float32))
    atomic_write_text(
        out_dir / "labels.json",
        json.dumps({"classes": classes, "labels": labels, "paths": paths}, ensure_ascii=False, indent=1) + "\n",
    )
    meta = {
        "identity": embedder.identity,
        "model": embedder.name,
        "alignment": embedder.alignment.to_dict(),
        "count": int(reps.shape[0]),
        "dim": int(reps.shape[1]),
        "openface_py_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(out_dir / EMBED_META, json.dumps(meta, indent=2) + "\n")


def load_embeddings(reps_dir: os.PathLike | str) -> tuple[np.ndarray, list[str], list[str], dict]:
    """Read what ``represent_folder`` wrote: (reps, labels, paths, metadata).

    Every file is checked before it is used: a missing, truncated, damaged or foreign file raises
    ``OpenFacePyError`` naming it and saying what is wrong (never a bare KeyError/ValueError).
    """
    d = Path(reps_dir)
    meta_path = d / EMBED_META
    if not meta_path.is_file():
        raise OpenFacePyError(f"{d}: no {EMBED_META} (not an openface-py represent output folder)")
    meta = _read_json_object(meta_path)
    for key, kind in (("identity", str), ("model", str), ("alignment", dict)):
        if not isinstance(meta.get(key), kind):
            raise OpenFacePyError(f"{meta_path}: {key!r} is missing or not a {kind.__name__} (damaged file?)")
    reps = _read_reps(d / "reps.npy")
    lab_path = d / "labels.json"
    lab = _read_json_object(lab_path)
    for key in ("labels", "paths"):
        v = lab.get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise OpenFacePyError(f"{lab_path}: {key!r} is missing or not a list of strings (damaged file?)")
    labels, paths = lab["labels"], lab["paths"]
    if reps.shape[0] != len(labels):
        raise OpenFacePyError(f"{d}: {reps.shape[0]} embeddings but {len(labels)} labels")
    if len(paths) != len(labels):
        raise OpenFacePyError(f"{lab_path}: {len(labels)} labels but {len(paths)} paths")
    for key, got in (("count", reps.shape[0]), ("dim", reps.shape[1])):
        if key in meta and meta[key] != got:
            raise OpenFacePyError(f"{meta_path}: {key} is {meta[key]!r} but reps.npy has {got} (mixed folders?)")
    return reps, labels, paths, meta


def _read_json_object(path: Path) -> dict:
    """A JSON file holding an object; any other content is an ``OpenFacePyError`` naming the file."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise OpenFacePyError(f"{path}: missing (incomplete represent output folder)") from None
    except OSError as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise OpenFacePyError(f"{path}: not UTF-8 text (byte {exc.start}): damaged file") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise OpenFacePyError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise OpenFacePyError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_reps(path: Path) -> np.ndarray:
    """reps.npy as a finite 2-D float array. The header is checked against the file's size before
    anything is allocated, so a damaged header cannot ask for terabytes."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            version = npy.read_magic(fh)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = readers[version](fh)
            data_bytes = os.fstat(fh.fileno()).st_size - fh.tell()
    except FileNotFoundError:
        raise OpenFacePyError(f"{path}: missing (incomplete represent output folder)") from None
    except OSError as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError...
        raise OpenFacePyError(f"{path}: not a valid .npy file ({type(exc).__name__}: {exc})") from None
    if dtype.kind != "f" or len(shape) != 2 or shape[1] < 1:
        raise OpenFacePyError(f"{path}: expected a 2-D float array of embeddings, found {dtype} {shape}")
    want = shape[0] * shape[1] * dtype.itemsize
    if want != data_bytes:
        raise OpenFacePyError(f"{path}: header says {shape} {dtype} ({want} bytes) but the file holds {data_bytes}")
    try:
        reps = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc})") from None
    bad = int(np.count_nonzero(~np.isfinite(reps)))
    if bad:
        raise OpenFacePyError(f"{path}: {bad} values are NaN or infinite (damaged file)")
    return reps
