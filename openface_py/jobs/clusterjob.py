"""``openface-py cluster``: the faces of a ``run`` output folder, or of a folder of photos, grouped into people.

A folder of photos (``cluster_photos``) is first run through ``stream.run_folder`` with every face
of each photo into ``OUT/run/`` (resumable: a rerun continues it, as ``run`` does), then clustered
as a run output folder. Reads the run's embedding files (``embeddings.load_embeddings``: one model identity, checked
against ``run.json``) and ``faces.json`` (photo, face index and box of each row), or a ``--format
parquet`` run's ``faces.parquet`` (every row of one model), clusters them
with ``recognize.cluster`` (two faces of one photo never together) and writes, each file
atomically, into an output folder it owns (``outdir.OutputFolder``, marker ``clusters.json``):

- ``clusters.csv``: ``path,face,cluster`` per face (the photo as the run's ``labels.csv`` names
  it; ``face`` its index in the photo as in ``faces.json``; ``cluster`` empty when unassigned);
- ``sheets/cluster-NNNN.png``: per cluster, largest first, its faces cut from the photos as
  thumbnails in one image (``contactsheet``; at most ``MAX_FACES`` per sheet);
- ``people/cluster-NNNN/`` and ``people/unassigned/`` (``links``): symbolic links to the photos of
  each cluster's faces, to browse in a file manager; built in a temporary folder and swapped in
  whole, and removed on a rerun without ``links``, but only while it holds nothing else;
- ``clusters.json`` (last, so a complete folder has it): settings, counts, the members of each
  cluster and the photos that could not be read for the sheets.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.errors import Failure, ImageLoadError, OpenFacePyError, UsageError
from openface_py.faces.detect import DetectorSpec
from openface_py.io import (
    TEMP_PREFIX,
    atomic_output,
    atomic_write_bytes,
    atomic_write_text,
    encode_png,
    list_images,
    load_image,
)
from openface_py.jobs import contactsheet
from openface_py.jobs.batch import AlignReport
from openface_py.jobs.embeddings import EMBED_META, load_embeddings
from openface_py.jobs.outdir import OS_LITTER, OutputFolder
from openface_py.jobs.source import INSTALL_HINT
from openface_py.jobs.stream import PARQUET, RUN_META, run_folder
from openface_py.recognize.cluster import DEFAULT_K, DEFAULT_MIN_SIZE, Clustering, ClusterSettings, cluster_faces

log = logging.getLogger(__name__)

CLUSTERS_CSV = "clusters.csv"
CLUSTERS_JSON = "clusters.json"
SHEETS = "sheets"
#: where ``cluster_photos`` writes the run output of a folder of photos
RUN_SUBDIR = "run"
#: the folder of links (``links``): one folder per cluster, and ``UNASSIGNED``
PEOPLE = "people"
UNASSIGNED = "unassigned"
_LINK_FOLDER = re.compile(r"cluster-\d{4,}|" + UNASSIGNED)
#: clusters whose sheets are built together (their photos read once); bounds the memory sheets take
SHEET_BATCH = 32


@dataclass
class RunFaces:
    """The faces of a run output folder, in its row order."""

    embeddings: np.ndarray
    paths: list[str]  # each face's photo as labels.csv names it
    photos: list[str]  # each face's photo below the run's input (faces.json)
    faces: list[int]  # index of the face in its photo
    boxes: list[list[int]]
    model: str
    identity: str


@dataclass
class ClusterReport:
    """What ``cluster_run`` did."""

    clustering: Clustering
    faces: int
    photos: int
    model: str
    identity: str
    sheets: int = 0
    too_small: int = 0  # faces left out by the face-size floor
    unreadable: list[Failure] = field(default_factory=list)
    links: int = 0  # links written under people/
    unlinked: list[str] = field(default_factory=list)  # photos not found on this machine: no link
    run: Optional[AlignReport] = None  # the run of a folder of photos (``PhotoRun``)

    def to_json(self) -> dict:
        c = self.clustering
        return {
            "model": self.model,
            "identity": self.identity,
            "settings": c.settings.to_dict(),
            "faces": self.faces,
            "photos": self.photos,
            "clusters": c.n_clusters,
            "clustered_faces": int(self.faces - c.unassigned),
            "unassigned": c.unassigned,
            "too_small": self.too_small,
            "merges_refused_same_photo": c.refused,
            "separated_same_photo": c.separated,
            "sheets": self.sheets,
            "unreadable": [{"path": f.path, "reason": f.reason} for f in self.unreadable],
            "links": self.links,
            "unlinked": self.unlinked,
            **({"run": self.run.to_json()} if self.run else {}),
        }


def is_run_output(folder: Path) -> bool:
    """Whether ``folder`` holds a run's (or represent's) embedding files rather than photos."""
    return (Path(folder) / EMBED_META).is_file() or (Path(folder) / PARQUET).is_file()


def read_run_faces(run_dir: Path) -> RunFaces:
    """A run output folder's faces (either ``--format``); anything else, or a damaged or mixed
    folder, is an ``OpenFacePyError``."""
    run_dir = Path(run_dir)
    if not (run_dir / EMBED_META).is_file():
        if (run_dir / PARQUET).is_file():
            return _check_identity(run_dir, _read_parquet(run_dir / PARQUET))
        raise OpenFacePyError(
            f"{run_dir}: not an openface-py run output folder (no {EMBED_META} / faces.json); a folder of "
            "photos is clustered with cluster_run(..., photos=PhotoRun(...))"
        )
    reps, _, paths, meta = load_embeddings(run_dir)
    faces_path = run_dir / "faces.json"
    try:
        rows = json.loads(faces_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OpenFacePyError(f"{run_dir}: no faces.json (a represent output? cluster needs a run output)") from None
    except (OSError, ValueError) as exc:
        raise OpenFacePyError(f"{faces_path}: cannot read ({exc})") from None
    ok = isinstance(rows, list) and all(
        isinstance(r, dict) and isinstance(r.get("path"), str) and isinstance(r.get("face"), int)
        and isinstance(r.get("box"), list) and len(r["box"]) == 4 for r in rows
    )  # fmt: skip
    if not ok:
        raise OpenFacePyError(f"{faces_path}: expected a list of {{path, face, box}} rows (damaged file?)")
    if len(rows) != len(reps):
        raise OpenFacePyError(f"{run_dir}: {len(reps)} embeddings but {len(rows)} rows in faces.json (mixed folders?)")
    faces = RunFaces(
        reps.astype(np.float32), list(paths), [r["path"] for r in rows], [int(r["face"]) for r in rows],
        [[int(v) for v in r["box"]] for r in rows], meta["model"], meta["identity"],
    )  # fmt: skip
    return _check_identity(run_dir, faces)


def _read_parquet(path: Path) -> RunFaces:
    """``run --format parquet``'s ``faces.parquet``: one model's identity on every row."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise OpenFacePyError(f"{path}: reading a --format parquet run needs pyarrow: {INSTALL_HINT}") from None
    try:
        table = pq.read_table(path, columns=["path", "face", "box", "embedding", "identity"])
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        embeddings = table.column("embedding").combine_chunks()
        dim = embeddings.type.list_size
        reps = embeddings.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
        identities = set(table.column("identity").unique().to_pylist())
    except (OSError, ValueError, KeyError, AttributeError) as exc:  # pyarrow's errors are OSError / ValueError
        raise OpenFacePyError(f"{path}: cannot read as a run's faces ({type(exc).__name__}: {exc})") from None
    identity = meta.get("identity", "")
    if identities - {identity}:
        raise OpenFacePyError(
            f"{path}: rows of {', '.join(sorted(identities | {identity}))}: embeddings of more than one model, "
            "which cannot be compared"
        )
    if not np.isfinite(reps).all():
        raise OpenFacePyError(f"{path}: NaN or infinite embeddings (damaged file)")
    paths = table.column("path").to_pylist()
    boxes = table.column("box").to_pylist()
    return RunFaces(reps, paths, paths, table.column("face").to_pylist(), boxes, meta.get("model", ""), identity)


def _check_identity(run_dir: Path, faces: RunFaces) -> RunFaces:
    """The model the run recorded (``run.json``) must be the one its embeddings say."""
    run_meta = run_dir / "run.json"
    if run_meta.is_file():
        try:
            ran = json.loads(run_meta.read_text(encoding="utf-8")).get("identity")
        except (OSError, ValueError, AttributeError) as exc:
            raise OpenFacePyError(f"{run_meta}: cannot read ({exc})") from None
        if ran != faces.identity:
            raise OpenFacePyError(
                f"{run_dir}: run.json says {ran} but its embeddings say {faces.identity}: embeddings of "
                "two models in one folder, which cannot be compared"
            )
    return faces


def threshold_for(model: str) -> float:
    """The default clustering threshold of ``model`` (``cluster.default_threshold`` of its
    same-person threshold); a model without one needs an explicit threshold (``UsageError``)."""
    from openface_py.nets.catalog import SAME_PERSON_THRESHOLDS
    from openface_py.recognize.cluster import default_threshold

    same = SAME_PERSON_THRESHOLDS.get(model)
    if same is None:
        raise UsageError(f"the model {model} has no same-person threshold to start from: give --threshold")
    return default_threshold(same)


@dataclass(frozen=True)
class PhotoRun:
    """How ``cluster_run`` embeds a folder of photos first (``stream.run_folder``'s settings)."""

    embedder: object  # a loaded ``nets.embedders.Embedder``
    detector: DetectorSpec
    workers: int = 0  # 0: one process per core
    progress: bool = True


def cluster_run(
    run_dir: Path,
    out_dir: Path,
    threshold: Optional[float] = None,
    min_size: int = DEFAULT_MIN_SIZE,
    k: int = DEFAULT_K,
    min_face: int = 0,
    sheets: bool = True,
    links: bool = False,
    photos: Optional[PhotoRun] = None,
) -> ClusterReport:
    """Cluster the faces of ``run_dir`` and write the outputs (module doc) into ``out_dir``.

    ``threshold``: mean squared L2 between two groups at or below which they are one person
    (default: ``threshold_for`` the run's model); ``min_face``: faces whose box is smaller (px,
    its longer side) are not clustered; ``links``: also the folder of links, ``people/``.
    ``photos``: ``run_dir`` is a folder of photos, first run with these settings and every face
    of each photo into ``out_dir/run`` (resumed when there; the report's ``run``)."""
    out_dir = Path(out_dir)
    run_dir = Path(run_dir)
    if photos is None:
        faces = read_run_faces(run_dir)
        claim = OutputFolder(out_dir, CLUSTERS_JSON, "cluster")
    else:
        if not list_images(run_dir):
            raise OpenFacePyError(
                f"{run_dir}: no photos below it, and not an openface-py run output folder (no {EMBED_META} "
                f"or {PARQUET}): nothing to cluster"
            )
        # a folder holding only the run of a killed first attempt is ours too: its rerun resumes it
        resumed = (out_dir / RUN_SUBDIR / RUN_META).is_file() and not (out_dir / CLUSTERS_JSON).exists()
        claim = OutputFolder(out_dir, CLUSTERS_JSON, "cluster", bookkeeping=(RUN_SUBDIR,), owned=resumed)
    with claim:
        run = None
        if photos is not None:
            run = run_folder(
                run_dir, out_dir / RUN_SUBDIR, photos.embedder, photos.detector, pick="all",
                workers=photos.workers, progress=photos.progress, labeled=False,
            )  # fmt: skip
            faces = read_run_faces(out_dir / RUN_SUBDIR)
        settings = ClusterSettings(
            threshold=threshold_for(faces.model) if threshold is None else float(threshold), min_size=min_size, k=k
        )
        people = out_dir / PEOPLE
        if links and people.exists() and not _own_links(people):
            raise OpenFacePyError(
                f"{people} holds files openface-py did not make there; move them out (or the folder away) to "
                "write the links of the clusters"
            )
        side = np.array([max(b[2] - b[0], b[3] - b[1]) + 1 for b in faces.boxes], np.int64).reshape(-1)
        big = side >= min_face
        part = cluster_faces(faces.embeddings[big], [p for p, b in zip(faces.photos, big) if b], settings)
        labels = np.full(len(faces.paths), -1, np.int64)
        labels[big] = part.labels
        clustering = Clustering(labels, settings, separated=part.separated, refused=part.refused)
        report = ClusterReport(
            clustering, len(labels), len(set(faces.photos)), faces.model, faces.identity,
            too_small=int((~big).sum()), run=run,
        )  # fmt: skip
        if sheets:
            report.sheets, report.unreadable = _write_sheets(out_dir / SHEETS, faces, clustering)
        _remove_stale_sheets(out_dir / SHEETS, report.sheets)
        _remove_link_leftovers(out_dir)
        if links:
            report.links, report.unlinked = _write_links(out_dir, faces, clustering)
        elif people.exists():
            if _own_links(people):
                shutil.rmtree(people)  # an earlier run's links, of clusters this run no longer has
            else:
                log.warning("%s holds files openface-py did not make: left as it is", people)
        _write_csv(out_dir / CLUSTERS_CSV, faces, labels)
        doc = {**report.to_json(), "members": _members(faces, clustering)}
        atomic_write_text(out_dir / CLUSTERS_JSON, json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    log.debug("%d faces -> %d clusters, %d unassigned", report.faces, clustering.n_clusters, clustering.unassigned)
    return report


def _own_links(folder: Path) -> bool:
    """Whether ``folder`` holds only what ``_write_links`` makes: cluster folders of symbolic links
    (and the files file managers leave)."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    for sub in folder.iterdir():
        if sub.name in OS_LITTER and not sub.is_dir():
            continue
        if sub.is_symlink() or not sub.is_dir() or not _LINK_FOLDER.fullmatch(sub.name):
            return False
        if any(not (f.is_symlink() or (f.name in OS_LITTER and f.is_file())) for f in sub.iterdir()):
            return False
    return True


def _remove_link_leftovers(out_dir: Path) -> None:
    """The temporary links folders a killed run left (ours: named with ``TEMP_PREFIX``)."""
    for p in out_dir.glob(f"{TEMP_PREFIX}{PEOPLE}.*"):
        if _own_links(p):
            shutil.rmtree(p)


def _link_name(name: str, used: set[str]) -> str:
    """``name``, or ``stem~N.ext`` where a folder already has it (compared case-blind, as some file systems do)."""
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate.casefold() in used:
        candidate = f"{stem}~{n}{ext}"
        n += 1
    used.add(candidate.casefold())
    return candidate


def _write_links(out_dir: Path, faces: RunFaces, clustering: Clustering) -> tuple[int, list[str]]:
    """``people/cluster-NNNN/`` per cluster and ``people/unassigned/``: a link to each photo of
    their faces, named as the photo (``~N`` added where two share a name). Built in a temporary
    folder, then swapped for the earlier one. Returns (links made, photos not found: no link)."""
    tmp = out_dir / f"{TEMP_PREFIX}{PEOPLE}.{os.getpid()}"  # the folder is locked: the name is ours
    tmp.mkdir()
    made, missing = 0, {}
    try:
        groups = [(f"cluster-{c:04d}", idx) for c, idx in enumerate(clustering.groups())]
        groups.append((UNASSIGNED, np.flatnonzero(clustering.labels < 0)))
        for name, idx in groups:
            if not len(idx):
                continue
            folder = tmp / name
            folder.mkdir()
            used: set[str] = set()
            for photo in dict.fromkeys(faces.paths[i] for i in idx.tolist()):  # a photo once per folder
                target = Path(photo).absolute()
                if not target.is_file():
                    missing[photo] = None
                    continue
                os.symlink(target, folder / _link_name(target.name, used))
                made += 1
        _swap_in(tmp, out_dir / PEOPLE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for photo in missing:
        log.warning("%s: %s", photo, "not found on this machine: no link to it")
    return made, list(missing)


def _swap_in(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``: the earlier one moved aside, the new one renamed in,
    then the earlier one removed (a kill in between leaves it to ``_remove_link_leftovers``)."""
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f"{TEMP_PREFIX}{PEOPLE}.old")
    os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def sheet_name(cluster: int) -> str:
    return f"cluster-{cluster:04d}.png"


def _members(faces: RunFaces, clustering: Clustering) -> list[dict]:
    out = []
    for c, members in enumerate(clustering.groups()):
        idx = members.tolist()
        out.append({"cluster": c, "size": len(idx), "sheet": f"{SHEETS}/{sheet_name(c)}",
                    "faces": [{"path": faces.paths[i], "face": faces.faces[i]} for i in idx]})  # fmt: skip
    return out


def _write_csv(path: Path, faces: RunFaces, labels: np.ndarray) -> None:
    with atomic_output(path) as fh:
        text = _io.TextIOWrapper(fh, "utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "face", "cluster"])
        for p, f, c in zip(faces.paths, faces.faces, labels.tolist()):
            writer.writerow([p, f, "" if c < 0 else c])
        text.flush()
        text.detach()  # atomic_output syncs and closes the file itself


def _write_sheets(folder: Path, faces: RunFaces, clustering: Clustering) -> tuple[int, list[Failure]]:
    """One contact sheet per cluster, largest first, ``SHEET_BATCH`` clusters at a time (each
    photo of a batch read once); returns (sheets written, photos that could not be read)."""
    folder.mkdir(exist_ok=True)
    unreadable: dict[str, str] = {}
    groups = clustering.groups()
    n = len(groups)
    for start in range(0, n, SHEET_BATCH):
        batch = range(start, min(n, start + SHEET_BATCH))
        members = {c: groups[c][: contactsheet.MAX_FACES].tolist() for c in batch}
        sheet = {c: contactsheet.blank_sheet(len(m)) for c, m in members.items()}
        by_photo: dict[str, list[tuple[int, int, int]]] = {}
        for c, idx in members.items():
            for slot, i in enumerate(idx):
                by_photo.setdefault(faces.paths[i], []).append((c, slot, i))
        for path, cells in by_photo.items():
            if path in unreadable:
                continue
            try:
                rgb = load_image(path)
            except ImageLoadError as exc:
                unreadable[path] = exc.reason
                log.warning("%s: %s", path, exc.reason)
                continue
            for c, slot, i in cells:
                contactsheet.place(sheet[c], slot, contactsheet.face_thumbnail(rgb, faces.boxes[i]))
        for c in batch:
            atomic_write_bytes(folder / sheet_name(c), encode_png(sheet[c]))
    return n, [Failure(p, r) for p, r in unreadable.items()]


def _remove_stale_sheets(folder: Path, keep: int) -> None:
    """Sheets an earlier run of this folder wrote for clusters this one does not have."""
    if not folder.is_dir():
        return
    for p in folder.glob("cluster-*.png"):
        number = p.stem.removeprefix("cluster-")
        if number.isdigit() and int(number) >= keep:
            p.unlink(missing_ok=True)
