"""LFW's view-2 protocol files (Huang et al., "Labeled Faces in the Wild", 2007).

``pairs.txt`` starts with ``<folds> <pairs per class>`` and then, fold by fold, that many
same-person lines ``name i j`` followed by that many different-person lines ``name1 i name2 j``
(tab or space separated, image numbers 1-based). Malformed lines are rejected with their line
number (lines end at ``\n``, as an editor counts them; ``\r\n`` is read too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openface_py.errors import OpenFacePyError
from openface_py.jobs.parallel import mapped


class PairsFormatError(OpenFacePyError):
    """pairs.txt does not follow LFW's format (the message names the line)."""


@dataclass(frozen=True)
class Pair:
    fold: int  # 0-based
    name1: str
    num1: int
    name2: str
    num2: int

    @property
    def same(self) -> bool:
        return self.name1 == self.name2


def image_name(name: str, num: int) -> str:
    """LFW's file name for a person's n-th photo: ``Name/Name_0001.jpg``."""
    return f"{name}/{name}_{num:04d}.jpg"


def parse_pairs(path: os.PathLike | str) -> tuple[list[Pair], int, int]:
    """Read pairs.txt; returns (pairs, folds, pairs per class per fold).

    Anything but LFW's format raises ``PairsFormatError`` with the line: text that is not UTF-8,
    a bad header, a wrong number of lines or fields, a number that is not plain ASCII digits, a
    name that is not a plain folder name (a path separator, ``.``/``..``, control characters).
    """
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as some Windows editors write
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise PairsFormatError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    # split at "\n" only: str.splitlines() also ends lines at \f, \v, \x1c-\x1e, \x85 and \u2028,
    # which would make the line numbers in the messages disagree with the file
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise PairsFormatError(f"{path}: empty file")
    head = lines[0].split()
    try:
        if len(head) != 2:
            raise ValueError
        folds, per = _count(head[0]), _count(head[1])
    except ValueError:
        raise PairsFormatError(f"{path}:1: expected '<folds> <pairs>', got {lines[0]!r}") from None
    body = [(n + 2, line) for n, line in enumerate(lines[1:]) if line.strip()]
    if len(body) != folds * 2 * per:
        raise PairsFormatError(
            f"{path}: expected {folds * 2 * per} pair lines for {folds} folds of {per}+{per}, found {len(body)}"
        )
    pairs: list[Pair] = []
    for k, (lineno, line) in enumerate(body):
        fold, pos = divmod(k, 2 * per)
        want_same = pos < per
        f = line.split()
        try:
            if want_same:
                if len(f) != 3:
                    raise ValueError("a same-person line has 3 fields: name i j")
                pair = Pair(fold, _name(f[0]), _count(f[1]), f[0], _count(f[2]))
            else:
                if len(f) != 4:
                    raise ValueError("a different-person line has 4 fields: name1 i name2 j")
                pair = Pair(fold, _name(f[0]), _count(f[1]), _name(f[2]), _count(f[3]))
                if pair.name1 == pair.name2:
                    raise ValueError("a different-person line names the same person twice")
        except ValueError as exc:
            raise PairsFormatError(f"{path}:{lineno}: {exc} (got {line.strip()!r})") from None
        pairs.append(pair)
    return pairs, folds, per


def _count(field: str) -> int:
    """A positive number in plain ASCII digits (``int()`` would also take '+1', '1_0' and '\u0661')."""
    if not (field.isascii() and field.isdigit()) or len(field) > 9:
        raise ValueError(f"expected a number from 1 to 999999999, got {field!r}")
    value = int(field)
    if value < 1:
        raise ValueError("counts and image numbers start at 1")
    return value


def _name(field: str) -> str:
    """A person's folder name: no path separators, not '.' or '..', no control characters."""
    if field in (".", "..") or any(c in "/\\" or not c.isprintable() for c in field):
        raise ValueError(f"{field!r} is not a person's folder name")
    return field


# ---- embedding the images of pairs.txt ----------------------------------------------------

#: Where no face is found in a 250x250 deep-funneled LFW photo, the face is taken to be this
#: central box (deep funnelling already centres the face); OpenFace fell back to the
#: deep-funneled crops likewise for the 58 of 13,233 raw photos where dlib failed.
FALLBACK_BOX = (70, 70, 179, 179)


@dataclass
class LfwEmbeddings:
    """Embeddings (plain and of the mirrored face) of LFW images, by ``Name/Name_0001.jpg``."""

    identity: str
    names: list
    reps: np.ndarray
    reps_flip: np.ndarray
    fallbacks: list

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


class _LfwAligner:
    """Worker-side detect + align of one LFW photo (plain and mirrored aligned face)."""

    def __init__(self, root: str, spec, upsample: int) -> None:
        from openface_py.faces.align import make_aligner
        from openface_py.faces.detect import HogDetector

        self.root = root
        self.detector = HogDetector(upsample=upsample)
        self.aligner = make_aligner(spec)

    def __call__(self, name: str):
        from openface_py.faces.detect import BoundingBox
        from openface_py.io import load_image

        rgb = load_image(Path(self.root) / name)
        dets = self.detector.detect(rgb)
        fallback = not dets
        box = max(dets, key=lambda d: d.box.area).box if dets else BoundingBox(*FALLBACK_BOX)
        face = self.aligner.align(rgb, box).image
        return name, face, np.ascontiguousarray(face[:, ::-1]), fallback


def embedding_cache_path(out_dir: os.PathLike | str, identity: str, image_root: os.PathLike | str) -> Path:
    """The embedding cache of one embedder and one image folder in an output folder (the identity
    made file-safe, the image folder as a short hash of its resolved path)."""
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in identity)
    where = hashlib.sha1(str(Path(image_root).resolve()).encode()).hexdigest()[:10]
    return Path(out_dir) / f"embeddings-{safe}-{where}.npz"


def embed_lfw_images(
    image_root: os.PathLike | str,
    names: list,
    embedder,
    cache_path: os.PathLike | str,
    workers: int = 1,
    upsample: int = 1,
    batch_size: int = 32,
    progress: bool = True,
) -> LfwEmbeddings:
    """Embed ``names`` (and their mirror images) under ``image_root``, reusing and extending the cache.

    Detection and alignment run in ``workers`` processes; embedding in this one, batched.
    The cache is written every 512 images, so an interrupted run resumes.
    """
    import io as _io
    import json

    from tqdm import tqdm

    from openface_py.io import atomic_write_bytes

    cache_path = Path(cache_path)
    setup = {"identity": embedder.identity, "image_root": str(Path(image_root).resolve()), "upsample": int(upsample)}
    have: dict = {}
    fallbacks: set = set()
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if all(meta.get(k) == v for k, v in setup.items()):
                # read each array once: every z[...] access decompresses the whole array again
                reps, reps_flip = np.array(z["reps"]), np.array(z["reps_flip"])
                for i, n in enumerate(meta["names"]):
                    have[n] = (reps[i], reps_flip[i])
                fallbacks = set(meta["fallbacks"])

    def save() -> None:
        keys = sorted(have)
        buf = _io.BytesIO()
        np.savez(
            buf,
            reps=np.stack([have[k][0] for k in keys]),
            reps_flip=np.stack([have[k][1] for k in keys]),
            meta=np.array(json.dumps({**setup, "names": keys, "fallbacks": sorted(fallbacks)})),
        )
        atomic_write_bytes(cache_path, buf.getvalue())

    todo = [n for n in dict.fromkeys(names) if n not in have]
    if todo:
        pending: list = []

        def flush() -> None:
            faces = [p[1] for p in pending] + [p[2] for p in pending]
            reps = embedder.embed(faces, batch_size=batch_size)
            for k, p in enumerate(pending):
                have[p[0]] = (reps[k], reps[k + len(pending)])
                if p[3]:
                    fallbacks.add(p[0])
            pending.clear()

        args = (str(image_root), embedder.alignment, upsample)
        with mapped(_LfwAligner, args, todo, workers) as results:
            done = 0
            for item in tqdm(results, total=len(todo), desc="lfw embed", unit="img", disable=not progress):
                pending.append(item)
                done += 1
                if len(pending) >= batch_size:
                    flush()
                if done % 512 == 0:
                    flush()
                    save()
            if pending:
                flush()
            save()
    keys = list(dict.fromkeys(names))
    return LfwEmbeddings(
        embedder.identity,
        keys,
        np.stack([have[k][0] for k in keys]).astype(np.float32),
        np.stack([have[k][1] for k in keys]).astype(np.float32),
        sorted(fallbacks & set(keys)),
    )


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
    import json

    from tqdm import tqdm

    from openface_py.io import atomic_output

    cache_path = Path(cache_path)
    names = list(dict.fromkeys(names))
    setup = {"image_root": str(Path(image_root).resolve()), "upsample": int(upsample), "alignment": spec.identity}
    if cache_path.is_file():
        with np.load(cache_path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if all(meta.get(k) == v for k, v in setup.items()) and meta["names"] == names:
                return np.array(z["faces"]), np.array(z["faces_flip"]), list(meta["fallbacks"])
    got: dict = {}
    with mapped(_LfwAligner, (str(image_root), spec, upsample), names, workers) as results:
        for name, face, flip, fallback in tqdm(
            results, total=len(names), desc="lfw align", unit="img", disable=not progress
        ):
            got[name] = (face, flip, fallback)
    faces = np.stack([got[n][0] for n in names])
    flips = np.stack([got[n][1] for n in names])
    fallbacks = [n for n in names if got[n][2]]
    with atomic_output(cache_path) as f:
        np.savez(
            f,
            faces=faces,
            faces_flip=flips,
            meta=np.array(json.dumps({**setup, "names": names, "fallbacks": fallbacks})),
        )
    return faces, flips, fallbacks
