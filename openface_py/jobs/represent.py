"""``represent_folder``: a folder of aligned faces -> embeddings in OpenFace's files
(``jobs.embeddings``), refusing faces aligned otherwise than the embedder needs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.errors import AlignmentMismatchError, Failure, ImageLoadError, OpenFacePyError
from openface_py.faces.align import AlignmentSpec
from openface_py.io import iter_chunks, list_images, load_image
from openface_py.jobs.batch import ALIGN_META, warn_unlabeled
from openface_py.jobs.embeddings import write_embeddings
from openface_py.nets.embedders import Embedder

log = logging.getLogger(__name__)


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
    batch_size: Optional[int] = None,
    progress: bool = True,
) -> RepresentResult:
    """Embed every aligned face below ``aligned_dir``; write OpenFace's reps.csv / labels.csv and more.

    Outputs (each written atomically): ``reps.csv`` (one 128-value row per face),
    ``labels.csv`` (``class_index,path``, 1-based, as OpenFace's batch-represent),
    ``reps.npy``, ``labels.json`` and ``embeddings.json`` (model identity and alignment).
    ``batch_size``: faces per batch (None: the embedder's, by its device).
    """
    batch_size = batch_size or embedder.batch_size
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
