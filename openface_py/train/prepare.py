"""Build the distillation cache: student crops + teacher embeddings for every training photo.

For each photo: dlib HOG detection (largest face), OpenFace's 96x96 OUTER_EYES_AND_NOSE
crop (the student's input), dlib's 150x150 5-point chip and the teacher's (dlib ResNet)
embedding of that chip. Optionally (``--flip-teacher``) the teacher's embedding of the
mirrored chip, so that mirrored student crops have a correct target.

Photos are processed in fixed shards of ``--shard-size`` photos per source; a finished shard
is an ``.npz`` written atomically, so a killed run resumes at the first missing shard.
The same is done for the images of LFW's ``pairs.txt`` (source ``lfw-pairs``): they are the
evaluation set and the reference for the leakage filter (``openface_py.train.leakage``), and
are never trained on.

    python -m openface_py.train.prepare --cache DIR --source utkface=PATH[:fallback] ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py.io import iter_chunks, list_images, load_npz, save_npz
from openface_py.jobs.parallel import mapped

log = logging.getLogger(__name__)

#: The cache's source name for the images of LFW's pairs.txt (evaluation only, never trained on).
LFW_SOURCE = "lfw-pairs"
#: The cache's source name for LFW photos of people who are in no pair (training data).
LFW_UNPAIRED = "lfw-unpaired"
STUDENT_SIZE = 96
CHIP_SIZE = 150


@dataclass(frozen=True)
class Source:
    """A folder of photos. ``fallback``: where HOG finds no face, skip the photo (``none``) or
    use LFW's central box (``lfw``, for LFW's evaluation images only)."""

    name: str
    root: Path
    fallback: str = "none"

    @classmethod
    def parse(cls, text: str) -> Source:
        """``name=PATH`` (photos without a detected face are skipped)."""
        name, _, rest = text.partition("=")
        if not name or not rest or name == LFW_SOURCE:
            raise argparse.ArgumentTypeError(f"expected name=PATH (name not 'lfw-pairs'), got {text!r}")
        return cls(name, Path(rest))


class _PhotoWorker:
    """Per-process: detect, align both ways, teacher-embed (models loaded once per worker).

    LFW photos are searched exactly as ``openface-py lfw`` does (HOG at upsample 1, LFW's central
    box as fallback) so evaluation here equals the real command; training photos with
    ``hog-adaptive`` (their own resolution first, upsampled only when that finds nothing: more
    faces found on UTKFace's 200x200 crops, at a quarter of the cost) and skipped where none is found.
    """

    def __init__(self, fallback: str, flip_teacher: bool) -> None:
        from openface_py.faces.align import DlibChipAligner, openface_spec
        from openface_py.faces.detect import DetectorSpec
        from openface_py.faces.stage import FaceStage, FaceStageSpec
        from openface_py.nets.embedders import DlibResnetEmbedder

        lfw = fallback == "lfw"
        detector = DetectorSpec("hog" if lfw else "hog-adaptive", upsample=1)
        on_miss = "central-box" if lfw else "fail"
        self.flip_teacher = flip_teacher
        self.stage = FaceStage(FaceStageSpec(detector, openface_spec(STUDENT_SIZE), on_miss=on_miss))
        self.chip_aligner = DlibChipAligner(CHIP_SIZE, 0.25)
        self.teacher = DlibResnetEmbedder()

    def __call__(self, path: str) -> dict:
        from openface_py.errors import ImageLoadError
        from openface_py.io import load_image

        try:
            rgb = load_image(path)
        except ImageLoadError as exc:
            return {"path": path, "error": str(exc)}
        found = self.stage.find(rgb)
        if not found.ok:
            return {"path": path, "error": found.reason}
        face = found.faces[0]
        crop = face.image
        chip = self.chip_aligner.align(rgb, face.box).image
        chips = [chip, np.ascontiguousarray(chip[:, ::-1])] if self.flip_teacher else [chip]
        emb = self.teacher.embed(chips, batch_size=2)
        return {
            "path": path,
            "crop": crop,
            "chip": chip,
            "teacher": emb[0],
            "teacher_flip": emb[1] if self.flip_teacher else np.full(128, np.nan, np.float32),
            "detected": not found.fallback,
        }


class _MirrorTeacher:
    """Per-process: the teacher's embedding of a mirrored cached chip."""

    def __init__(self) -> None:
        from openface_py.nets.embedders import DlibResnetEmbedder

        self.teacher = DlibResnetEmbedder()

    def __call__(self, chip: np.ndarray) -> np.ndarray:
        return self.teacher.embed([np.ascontiguousarray(chip[:, ::-1])], batch_size=1)[0]


def _without_mirror(names: np.ndarray, teacher_flip: np.ndarray, keep: Optional[set[str]]) -> np.ndarray:
    """Rows still lacking the mirrored teacher embedding (among ``keep`` when given)."""
    wanted = np.isnan(teacher_flip).any(1)
    if keep is not None:
        wanted &= np.isin(names, list(keep))
    return wanted


def add_mirror_teacher(cache: Path, source: str, workers: int = 2, keep: Optional[set[str]] = None) -> int:
    """Fill ``teacher_flip`` of a source's finished shards from their cached chips (no new
    detection); each shard is rewritten atomically, so a killed run resumes. With ``keep``
    (names the leakage filter kept) only those photos are done. Returns the count."""
    from tqdm import tqdm

    todo = []
    for f in sorted((cache / source).glob("shard-*.npz")):
        with np.load(f, allow_pickle=False) as z:
            wanted = _without_mirror(z["names"], z["teacher_flip"], keep)
            if wanted.any():
                todo.append((f, int(wanted.sum())))
    log.info("%s: %d shards without mirrored teacher embeddings", source, len(todo))
    done = 0
    bar = tqdm(total=sum(n for _, n in todo), desc=f"{source} (mirrored)", unit="img")
    for f, _ in todo:
        data = load_npz(f)
        wanted = _without_mirror(data["names"], data["teacher_flip"], keep)
        with mapped(_MirrorTeacher, (), list(data["chips"][wanted]), workers) as results:
            flips = []
            for r in results:
                flips.append(r)
                bar.update()
        data["teacher_flip"][wanted] = np.stack(flips).astype(np.float32)
        save_npz(f, **data)
        done += len(flips)
    bar.close()
    return done


def shard_path(cache: Path, source: str, index: int) -> Path:
    return cache / source / f"shard-{index:05d}.npz"


def write_shard(path: Path, results: list[dict], root: Path) -> dict:
    """Write the successful results of one shard; returns its summary (counts, failures)."""
    ok = [r for r in results if "error" not in r]
    failures = [{"path": os.path.relpath(r["path"], root), "reason": r["error"]} for r in results if "error" in r]
    save_npz(
        path,
        names=np.array([os.path.relpath(r["path"], root) for r in ok], dtype=str),
        crops=np.stack([r["crop"] for r in ok]) if ok else np.zeros((0, STUDENT_SIZE, STUDENT_SIZE, 3), np.uint8),
        chips=np.stack([r["chip"] for r in ok]) if ok else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8),
        teacher=np.stack([r["teacher"] for r in ok]).astype(np.float32) if ok else np.zeros((0, 128), np.float32),
        teacher_flip=(
            np.stack([r["teacher_flip"] for r in ok]).astype(np.float32) if ok else np.zeros((0, 128), np.float32)
        ),
        detected=np.array([r["detected"] for r in ok], dtype=bool),
        failures=failures,  # stored as one JSON string
    )
    return {"ok": len(ok), "failed": len(failures), "fallback": int(sum(not r["detected"] for r in ok))}


def prepare_source(
    cache: Path,
    source: Source,
    paths: Optional[list[Path]] = None,
    shard_size: int = 512,
    workers: int = 2,
    flip_teacher: bool = False,
    limit: Optional[int] = None,
) -> dict:
    """Fill the cache for one source, skipping finished shards; returns totals."""
    from tqdm import tqdm

    paths = sorted(paths if paths is not None else [source.root / p for p in list_images(source.root)])
    if limit:
        paths = paths[:limit]
    shards = list(iter_chunks([str(p) for p in paths], shard_size))
    todo = [(k, s) for k, s in enumerate(shards) if not shard_path(cache, source.name, k).is_file()]
    log.info("%s: %d photos, %d shards, %d to do", source.name, len(paths), len(shards), len(todo))
    (cache / source.name).mkdir(parents=True, exist_ok=True)
    totals = {"ok": 0, "failed": 0, "fallback": 0}
    with mapped(_PhotoWorker, (source.fallback, flip_teacher), [p for _, s in todo for p in s], workers) as results:
        bar = tqdm(total=sum(len(s) for _, s in todo), desc=source.name, unit="img")
        for k, shard in todo:
            got = []
            for _ in shard:
                got.append(next(results))
                bar.update()
            summary = write_shard(shard_path(cache, source.name, k), got, source.root)
            for key in totals:
                totals[key] += summary[key]
        bar.close()
    return totals


def load_shards(folder: Path, chips: bool = False) -> dict:
    """Concatenate one source's shards (names, crops, teacher, teacher_flip, detected[, chips])."""
    keys = ("names", "crops", "teacher", "teacher_flip", "detected") + (("chips",) if chips else ())
    parts: dict[str, list] = {k: [] for k in keys}
    for f in sorted(folder.glob("shard-*.npz")):
        with np.load(f, allow_pickle=False) as z:
            for k in parts:
                parts[k].append(np.array(z[k]))
    if not parts["names"]:
        raise FileNotFoundError(f"{folder}: no shards (run openface_py.train.prepare first)")
    return {k: np.concatenate(v) for k, v in parts.items()}


def lfw_pair_images(lfw_root: Path, pairs_path: Path) -> list[Path]:
    """Every image named in pairs.txt, once, in order of first appearance."""
    from openface_py.eval.protocol import image_name, parse_pairs

    pairs, _, _ = parse_pairs(pairs_path)
    names = dict.fromkeys(n for p in pairs for n in (image_name(p.name1, p.num1), image_name(p.name2, p.num2)))
    return [lfw_root / n for n in names]


def lfw_unpaired_images(lfw_root: Path, pairs_path: Path) -> list[Path]:
    """Every LFW image of a person who appears in no pair of pairs.txt (usable for training)."""
    from openface_py.eval.protocol import parse_pairs

    pairs, _, _ = parse_pairs(pairs_path)
    people = {p.name1 for p in pairs} | {p.name2 for p in pairs}
    return [lfw_root / n for n in list_images(lfw_root) if Path(n).parts[0] not in people]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m openface_py.train.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="cache folder (shards per source)")
    ap.add_argument(
        "--source", type=Source.parse, action="append", default=[], help="training photos: name=PATH (repeatable)"
    )
    ap.add_argument("--lfw", type=Path, help="LFW image root (deepfunneled); its pairs.txt images become 'lfw-pairs'")
    ap.add_argument("--pairs", type=Path, help="pairs.txt (default: LFW root's parent / pairs.txt)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument(
        "--flip-teacher",
        action="store_true",
        help="also embed the mirrored chip (2x teacher time); fills it in for shards made without it",
    )
    ap.add_argument(
        "--lfw-unpaired",
        action="store_true",
        help=f"with --lfw: also prepare the photos of LFW people in no pair as training source '{LFW_UNPAIRED}'",
    )
    ap.add_argument("--limit", type=int, help="at most this many photos per source (trials)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = {}
    if args.lfw:
        pairs = args.pairs or args.lfw.parent / "pairs.txt"
        src = Source(LFW_SOURCE, args.lfw, "lfw")
        summary[src.name] = prepare_source(
            args.cache, src, lfw_pair_images(args.lfw, pairs), args.shard_size, args.workers, args.flip_teacher
        )
        if args.lfw_unpaired:
            src = Source(LFW_UNPAIRED, args.lfw)
            paths = lfw_unpaired_images(args.lfw, pairs)[: args.limit]
            summary[src.name] = prepare_source(args.cache, src, paths, args.shard_size, args.workers, args.flip_teacher)
    elif args.lfw_unpaired:
        ap.error("--lfw-unpaired needs --lfw")
    for src in args.source:
        summary[src.name] = prepare_source(
            args.cache, src, None, args.shard_size, args.workers, args.flip_teacher, args.limit
        )
    if args.flip_teacher:  # shards written earlier without the mirrored embeddings
        # only for the photos the leakage filter kept, where it has run
        keep_file = args.cache / "keep.json"
        kept = json.loads(keep_file.read_text())["keep"] if keep_file.is_file() else {}
        for folder in sorted(d for d in args.cache.iterdir() if d.is_dir() and d.name != LFW_SOURCE):
            keep = set(kept[folder.name]) if folder.name in kept else None
            summary.setdefault(folder.name, {})["mirrored_added"] = add_mirror_teacher(
                args.cache, folder.name, args.workers, keep
            )
    log.info("prepared: %s", json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
