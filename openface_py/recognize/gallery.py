"""One-shot identification against a folder of people, with cached gallery embeddings.

A gallery is a folder with one sub-folder per person holding one or more photos of them
(a photo directly in the gallery folder is a person named after the file). Each photo's
largest face is embedded once; the embeddings are cached under the weights cache
(``$OPENFACE_PY_HOME/galleries``), keyed by the gallery's path, the embedder identity (which
names the weights by content) and the detector with its settings (``Detector.key``: upsample,
max side...), and a photo is embedded again only when it is added or changed (size or
modification time).

Hidden entries (names starting with ".") are skipped. Every other entry that cannot be used is
reported in ``Gallery.failures`` with the reason: unreadable photos, photos without a face,
broken or looping symbolic links, and symbolic links to folders (not followed: a link to an
ancestor would make the walk endless).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from openface_py import store
from openface_py.errors import Failure, ImageLoadError, OpenFacePyError
from openface_py.io import list_images, load_image, load_npz, save_npz
from openface_py.metrics import pairwise_sq_l2
from openface_py.pipeline import FacePipeline
from openface_py.recognize.verify import is_same

log = logging.getLogger(__name__)


@dataclass
class Gallery:
    """Enrolled embeddings: one row per photo, with the person's name and the photo's path."""

    names: list[str]
    reps: np.ndarray
    paths: list[str]
    identity: str
    failures: list[Failure] = field(default_factory=list)
    reused: int = 0

    @property
    def people(self) -> list[str]:
        return sorted(set(self.names))

    def nearest(self, probes: np.ndarray) -> tuple[list[str], np.ndarray]:
        """For each probe row: the person with the closest enrolled photo, and that squared L2 distance."""
        d = pairwise_sq_l2(probes, self.reps)
        best = d.argmin(axis=1)
        return [self.names[i] for i in best], d[np.arange(len(best)), best]


def person_of(rel: Path) -> str:
    """The person a gallery photo shows: its sub-folder, or the file's name for a photo at the top
    (``Ada.jpg`` is Ada: one photo per person needs no folders). ``identify`` and ``db import``
    share this rule."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def note_top_level(root: Path, rels: list[Path]) -> None:
    """Say (at INFO) how photos lying directly in the gallery folder are named, since a folder of
    one person's photos without a sub-folder would otherwise become as many people."""
    top = [r for r in rels if len(r.parts) == 1]
    if top:
        log.info(
            "%d photos lie directly in %s: each is its own person, named after the file (%s -> %s); "
            "several photos of one person go in %s/PERSON/",
            len(top), root, top[0].name, person_of(top[0]), root,
        )  # fmt: skip


def _cache_file(gallery_dir: Path, setup: str) -> Path:
    key = hashlib.sha1(f"{gallery_dir.resolve()}|{setup}".encode()).hexdigest()[:20]
    return store.cache_dir() / "galleries" / f"{key}.npz"


def _read_cache(path: Path, setup: str) -> dict[str, tuple[int, int, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        saved = load_npz(path, json_keys=("meta",))
        meta, reps = saved["meta"], saved["reps"]
        if meta.get("setup") != setup:
            return {}
        return {rel: (e["size"], e["mtime_ns"], reps[e["row"]]) for rel, e in meta["entries"].items()}
    except Exception as exc:  # a cache: whatever is wrong with it, embed again
        log.warning("ignoring unreadable gallery cache %s (%s: %s)", path, type(exc).__name__, exc)
        return {}


def _linked_folders(root: Path) -> list[Failure]:
    """A failure for each symbolic link to a folder below ``root``: ``list_images`` does not follow
    them, so without this their photos would be left out without a word."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                rel = Path(os.path.relpath(os.path.join(dirpath, d), root)).as_posix()
                found.append(Failure(rel, "symbolic link to a folder: not followed (copy the folder instead)"))
    return found


def build_gallery(gallery_dir: os.PathLike | str, pipeline: FacePipeline, progress: bool = True) -> Gallery:
    """Embed (or take from the cache) the largest face of every photo in the gallery."""
    root = Path(gallery_dir)
    if not root.is_dir():
        raise OpenFacePyError(f"{root}: gallery folder not found")
    if pipeline.embedder is None:
        raise ValueError("the pipeline needs an embedder")
    identity = pipeline.embedder.identity
    setup = f"{identity}|{pipeline.detector.key}"
    cache_path = _cache_file(root, setup)
    cached = _read_cache(cache_path, setup)
    rels = list_images(root)
    linked = _linked_folders(root)
    if not rels:
        also = f"; not followed: symbolic links to folders {', '.join(f.path for f in linked)}" if linked else ""
        raise OpenFacePyError(f"{root}: no photos in the gallery (expected one sub-folder per person){also}")

    note_top_level(root, rels)

    from tqdm import tqdm

    names, reps, paths, entries = [], [], [], {}
    failures = list(linked)
    reused = 0
    for rel in tqdm(rels, desc="gallery", unit="photo", disable=not progress):
        key = rel.as_posix()
        try:
            st = (root / rel).stat()
        except OSError as exc:  # a dangling or looping symbolic link; a file removed meanwhile
            reason = "broken symbolic link" if (root / rel).is_symlink() else "cannot read"
            failures.append(Failure(key, f"{reason}: {exc.strerror or exc}"))
            continue
        person = person_of(rel)
        hit = cached.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            rep = hit[2]
            reused += 1
        else:
            try:
                faces = pipeline.process(load_image(root / rel), multi=False)
            except ImageLoadError as exc:
                failures.append(Failure(key, exc.reason))
                continue
            if not faces:
                failures.append(Failure(key, "no face found"))
                continue
            rep = faces[0].embedding
        entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "row": len(reps)}
        names.append(person)
        reps.append(np.asarray(rep, dtype=np.float32))
        paths.append(str(root / rel))
    for f in failures:
        log.warning("gallery photo %s: %s", f.path, f.reason)
    if not reps:
        raise OpenFacePyError(f"{root}: no face found in any gallery photo")
    matrix = np.stack(reps)
    save_npz(cache_path, reps=matrix, meta={"setup": setup, "identity": identity, "entries": entries})
    log.info("gallery: %d photos of %d people (%d from cache)", len(reps), len(set(names)), reused)
    return Gallery(names, matrix, paths, identity, failures, reused)


def open_set_threshold(gallery: Gallery, embedder) -> float:
    """The distance threshold of a 1:N search of ``gallery`` (``identify``, ``video --gallery``): the
    embedder's pair threshold tightened for the gallery's size by its measured impostor curve
    (``verify.identification_threshold``). The embedder must have a pair threshold."""
    from openface_py.nets.embed import impostor_far
    from openface_py.recognize.verify import identification_threshold

    t = identification_threshold(embedder.same_person_threshold, impostor_far(embedder.name), len(gallery.names))
    log.info("open-set threshold %.4f for %d gallery faces", t, len(gallery.names))
    return t


def identify(
    gallery: Gallery, probes: np.ndarray, threshold: float, unknown: str = "unknown"
) -> list[tuple[str, str, float]]:
    """(answer, nearest person, squared distance) per probe; answer is ``unknown`` past the threshold."""
    names, dists = gallery.nearest(probes)
    return [(n if is_same(d, threshold) else unknown, n, float(d)) for n, d in zip(names, dists)]
