"""LFW's (or any pair list's) photos through the face stage, cached: their embeddings, plain and
mirrored (``embed_lfw_images``, for ``lfw`` and ``pairs-eval``), and their aligned crops for a
network in training (``align_lfw_images``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.errors import OpenFacePyError
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.stage import NO_FACE, FaceStage, FaceStageSpec
from openface_py.io import file_signature, load_npz, save_npz
from openface_py.jobs.engine import Engine, PhotoFaces, embed_photos
from openface_py.jobs.parallel import mapped

#: The face stage's reason for a photo where no face is found and ``on_miss`` is "fail".
MISSED = "missed"


@dataclass
class LfwEmbeddings:
    """Embeddings (plain and of the mirrored face) of images by their path under the image root
    (``Name/Name_0001.jpg`` for LFW). ``fallbacks``: no face found, aligned from the ``on_miss``
    box; ``missed``: no face found and none embedded (``on_miss="fail"``; their rows are NaN)."""

    identity: str
    names: list
    reps: np.ndarray
    reps_flip: np.ndarray
    fallbacks: list
    missed: list = field(default_factory=list)

    def index(self) -> dict:
        return {n: i for i, n in enumerate(self.names)}

    def lookup(self, names: list, flip: bool) -> np.ndarray:
        """Embeddings of ``names``; with ``flip`` the normalised mean of face and mirror."""
        idx = self.index()
        rows = [idx[n] for n in names]
        if not flip:
            return self.reps[rows]
        m = self.reps[rows] + self.reps_flip[rows]
        return m / np.linalg.norm(m, axis=1, keepdims=True)


class _PhotoAligner:
    """Worker-side face stage of one photo (of ``jobs.engine``): its face (``pick``: the largest, as
    OpenFace, or the central one, ``faces.stage.central_face``) and the mirror
    image, with ``info`` "" (found) or "fallback" (aligned in the ``on_miss`` box, ``faces.stage.ON_MISS``:
    LFW's central box by default); reason ``MISSED`` when no face is found and ``on_miss`` is "fail"."""

    def __init__(
        self, root: str, spec, detector: DetectorSpec, on_miss: str = "central-box", pick: str = "largest"
    ) -> None:
        self.root = root
        self.stage = FaceStage(FaceStageSpec(detector, spec, pick=pick, on_miss=on_miss))

    def __call__(self, name: str) -> PhotoFaces:
        from openface_py.io import load_image

        found = self.stage.photo(lambda: load_image(Path(self.root) / name), name)
        if not found.ok:
            return PhotoFaces(name, MISSED if found.reason == NO_FACE else found.reason)
        face = found.faces[0].image
        return PhotoFaces(name, "", [face, np.ascontiguousarray(face[:, ::-1])], "fallback" if found.fallback else "")


def embedding_cache_path(
    out_dir: os.PathLike | str,
    identity: str,
    image_root: os.PathLike | str,
    detector: DetectorSpec = DetectorSpec(),
    on_miss: str = "central-box",
    pick: str = "largest",
) -> Path:
    """The embedding cache of one embedder, image folder and detector in an output folder (the
    identity made file-safe, the image folder as a short hash of its resolved path, a detector,
    miss policy or pick other than OpenFace's as a short hash of its settings)."""
    import hashlib
    import json

    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in identity)
    where = hashlib.sha1(str(Path(image_root).resolve()).encode()).hexdigest()[:10]
    how = ""
    if detector != DetectorSpec() or on_miss != "central-box" or pick != "largest":
        extra = {"on_miss": on_miss} | ({"pick": pick} if pick != "largest" else {})  # older names stay
        text = json.dumps({**detector.to_dict(), **extra}, sort_keys=True)
        how = f"-{detector.name}-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return Path(out_dir) / f"embeddings-{safe}-{where}{how}.npz"


def embed_lfw_images(
    image_root: os.PathLike | str,
    names: list,
    embedder,
    cache_path: os.PathLike | str,
    workers: int = 1,
    batch_size: Optional[int] = None,
    progress: bool = True,
    detector: DetectorSpec = DetectorSpec(),
    on_miss: str = "central-box",
    engine: Optional[Engine] = None,
    pick: str = "largest",
) -> LfwEmbeddings:
    """Embed ``names`` (paths under ``image_root``) and their mirror images, reusing and extending
    the cache. The face ``pick`` chooses (the largest, as OpenFace, or ``central``) of those
    ``detector`` finds (default: HOG at upsample 1, as OpenFace) is aligned; where none is found,
    ``on_miss`` decides (``ON_MISS``).

    Detection and alignment run in ``workers`` processes, embedding in this one, batched; or
    both on Ray with ``engine`` (``jobs.engine``; ``embedder`` is then an ``EmbedderSpec``).
    The cache is written every 512 images, so an interrupted run resumes.
    """
    from tqdm import tqdm

    cache_path = Path(cache_path)
    root = Path(image_root)
    setup = {"identity": embedder.identity, "image_root": str(root.resolve()), "upsample": detector.upsample}
    if detector != DetectorSpec("hog", detector.upsample) or on_miss != "central-box":
        # (older caches lack these keys)
        setup.update(detector.to_dict(), on_miss=on_miss)
    if pick != "largest":
        setup["pick"] = pick
    have: dict = {}
    status: dict = {}

    stamps: dict = {}
    if cache_path.is_file():
        saved = load_npz(cache_path, json_keys=("meta",))
        meta, reps, reps_flip = saved["meta"], saved["reps"], saved["reps_flip"]
        if {k: v for k, v in meta.items() if k not in ("names", "fallbacks", "missed", "stamps")} == setup:
            old = meta.get("stamps", {})
            for i, n in enumerate(meta["names"]):
                now = file_signature(root / n)
                if n in old and now is not None and now != old[n]:
                    continue  # the photo changed since it was embedded
                have[n], stamps[n] = (reps[i], reps_flip[i]), old.get(n)
            status = {n: "fallback" for n in meta["fallbacks"]} | {n: "missed" for n in meta.get("missed", [])}
            status = {n: s for n, s in status.items() if n in have}

    def save() -> None:
        keys = sorted(have)
        save_npz(
            cache_path,
            reps=np.stack([have[k][0] for k in keys]),
            reps_flip=np.stack([have[k][1] for k in keys]),
            meta={**setup, "names": keys, **_status_lists(status), "stamps": stamps},
        )

    todo = [n for n in dict.fromkeys(names) if n not in have]
    if todo:
        nan = np.full(embedder.dim, np.nan, dtype=np.float32)
        args = (str(root.resolve()), embedder.alignment, detector, on_miss, pick)  # absolute: Ray's workers
        engine = engine or Engine("local", workers=max(1, int(workers)))
        with (
            embed_photos(_PhotoAligner, args, todo, embedder, engine, batch_size) as results,
            tqdm(total=len(todo), desc="embed pairs' photos", unit="img", disable=not progress) as bar,
        ):
            for done, photo in enumerate(results, 1):
                bar.update(1)
                name = photo.item
                if photo.reason == MISSED:
                    have[name], status[name] = (nan, nan), "missed"
                elif photo.reason:  # a photo that cannot be read: the benchmark cannot be run without it
                    raise OpenFacePyError(f"{Path(image_root) / name}: {photo.reason}")
                else:
                    have[name] = (photo.reps[0], photo.reps[1])
                    if photo.info:
                        status[name] = photo.info
                stamps[name] = file_signature(root / name)
                if done % 512 == 0:
                    save()
        save()
    keys = list(dict.fromkeys(names))
    lists = _status_lists({k: status[k] for k in keys if k in status})
    return LfwEmbeddings(
        embedder.identity,
        keys,
        np.stack([have[k][0] for k in keys]).astype(np.float32),
        np.stack([have[k][1] for k in keys]).astype(np.float32),
        lists["fallbacks"],
        lists["missed"],
    )


def _status_lists(status: dict) -> dict:
    return {
        "fallbacks": sorted(n for n, s in status.items() if s == "fallback"),
        "missed": sorted(n for n, s in status.items() if s == "missed"),
    }


def align_lfw_images(
    image_root: os.PathLike | str,
    names: list,
    spec,
    cache_path: os.PathLike | str,
    workers: int = 1,
    upsample: int = 1,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list]:
    """Aligned faces (and their mirror images) of LFW ``names``, as ``embed_lfw_images`` aligns them,
    for scoring a network that changes (``train-net --lfw``): aligned once, cached in ``cache_path``.

    Returns (faces, mirrored faces, names that fell back to the fixed box)."""
    from tqdm import tqdm

    cache_path = Path(cache_path)
    names = list(dict.fromkeys(names))
    setup = {"image_root": str(Path(image_root).resolve()), "upsample": int(upsample), "alignment": spec.identity}
    if cache_path.is_file():
        saved = load_npz(cache_path, json_keys=("meta",))
        meta = saved["meta"]
        if all(meta.get(k) == v for k, v in setup.items()) and meta["names"] == names:
            return saved["faces"], saved["faces_flip"], list(meta["fallbacks"])
    got: dict = {}
    with mapped(_PhotoAligner, (str(image_root), spec, DetectorSpec("hog", upsample)), names, workers) as results:
        for photo in tqdm(results, total=len(names), desc="lfw align", unit="img", disable=not progress):
            got[photo.item] = (photo.faces[0], photo.faces[1], photo.info == "fallback")
    faces = np.stack([got[n][0] for n in names])
    flips = np.stack([got[n][1] for n in names])
    fallbacks = [n for n in names if got[n][2]]
    save_npz(cache_path, faces=faces, faces_flip=flips, meta={**setup, "names": names, "fallbacks": fallbacks})
    return faces, flips, fallbacks
