"""Verification benchmark on any pair list: ``openface-py pairs-eval PAIRS_CSV IMAGE_ROOT``.

The pair list is a CSV file with one pair per row, ``path_a,path_b,same[,fold]``: two photo
paths relative to IMAGE_ROOT, ``same`` 1/0 (also true/false, yes/no), and optionally the 1-based
fold of the pair. A first row ``path_a,path_b,same[,fold]`` is read as a header. Without a fold
column the rows are cut into ``folds`` contiguous blocks in file order (as LFW's pairs.txt
is: write a list grouped by person so that no one crosses folds).

The protocol is LFW's (``eval/evaluate.py``): each fold's threshold is chosen on the other
folds, accuracy is measured on it; AUC, EER and TAR@FAR from the ROC of all pairs.
Photos where no face is found follow ``on_miss``: ``fail`` (the default) embeds nothing and
decides every pair with that photo "different", as a deployed system would; ``whole-image``
aligns the whole photo as the face's box (for photos that are already face crops). Their
count is reported either way.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.eval.evaluate import LfwResult, evaluate_both, write_reports
from openface_py.eval.lfw import LfwEmbeddings, embed_lfw_images, embedding_cache_path
from openface_py.eval.protocol import read_utf8
from openface_py.faces.align import detector_for
from openface_py.faces.detect import DetectorSpec
from openface_py.jobs.engine import Engine

HEADER = ("path_a", "path_b", "same", "fold")
TRUE, FALSE = {"1", "true", "yes", "same"}, {"0", "false", "no", "different"}


class PairListError(OpenFacePyError):
    """The pair list is malformed (the message names the line)."""


@dataclass(frozen=True)
class PairRow:
    """One pair of the list: ``fold`` is 0-based; ``line`` is where it was read."""

    fold: int
    path_a: str
    path_b: str
    same: bool
    line: int


def parse_pair_list(path: os.PathLike | str, folds: int = 10) -> list[PairRow]:
    """Read a pair list (see the module docstring); ``PairListError`` names the line of any fault:
    text that is not UTF-8, a wrong number of fields, a ``same`` or ``fold`` that is not one,
    a path that is empty, absolute or leaves IMAGE_ROOT, a fold column on some rows only."""
    text = read_utf8(path, PairListError)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if fields and any(f.strip() for f in fields):
                rows.append((reader.line_num, [f.strip() for f in fields]))
    except csv.Error as exc:
        raise PairListError(f"{path}:{reader.line_num}: {exc}") from None
    if rows and [f.lower() for f in rows[0][1]] in (list(HEADER[:3]), list(HEADER)):
        rows = rows[1:]
    if not rows:
        raise PairListError(f"{path}: no pairs (expected rows of path_a,path_b,same[,fold])")
    with_fold = len(rows[0][1]) == 4
    out = []
    for lineno, f in rows:
        where = f"{path}:{lineno}"
        if len(f) not in (3, 4):
            raise PairListError(f"{where}: expected 3 or 4 fields (path_a,path_b,same[,fold]), got {len(f)}")
        if (len(f) == 4) != with_fold:
            raise PairListError(f"{where}: the fold column must be on every row or on none")
        same = f[2].lower()
        if same not in TRUE | FALSE:
            raise PairListError(f"{where}: 'same' must be 1 or 0 (or true/false, yes/no), got {f[2]!r}")
        fold = -1
        if with_fold:
            if not (f[3].isascii() and f[3].isdigit()) or not 1 <= int(f[3]) <= 1000:
                raise PairListError(f"{where}: fold must be a number from 1 to 1000, got {f[3]!r}")
            fold = int(f[3]) - 1
        out.append(PairRow(fold, _rel_path(f[0], where), _rel_path(f[1], where), same in TRUE, lineno))
    if not with_fold:
        if folds < 2:
            raise UsageError(
                f"--folds {folds}: the protocol needs at least two folds (thresholds come from the other folds)"
            )
        if folds > len(out):
            raise PairListError(
                f"{path}: cannot cut {len(out)} pairs into {folds} folds (give --folds {len(out)} or fewer)"
            )
        out = [PairRow(i * folds // len(out), r.path_a, r.path_b, r.same, r.line) for i, r in enumerate(out)]
    used = sorted({r.fold for r in out})
    if len(used) < 2:
        raise PairListError(f"{path}: the protocol needs at least two folds (thresholds come from the other folds)")
    same_by_fold = {f: sum(r.same for r in out if r.fold == f) for f in used}
    size_by_fold = {f: sum(r.fold == f for r in out) for f in used}
    n_same = sum(same_by_fold.values())
    for fold in used:
        same_others = n_same - same_by_fold[fold]
        if same_others == 0 or same_others == len(out) - size_by_fold[fold]:
            raise PairListError(
                f"{path}: the folds other than {fold + 1} need same and different pairs to choose its threshold"
            )
    return out


def _rel_path(text: str, where: str) -> str:
    """A photo path below IMAGE_ROOT, written with '/' (no absolute paths, no '..')."""
    p = PurePosixPath(text.replace("\\", "/"))
    if not text or p.is_absolute() or ".." in p.parts or (p.parts and p.parts[0].endswith(":")):
        raise PairListError(f"{where}: {text!r} is not a path relative to IMAGE_ROOT")
    return p.as_posix()


@dataclass
class PairsEvalResult:
    plain: LfwResult
    flipped: LfwResult
    embeddings: LfwEmbeddings
    photos: int
    on_miss: str

    @property
    def not_found(self) -> list[str]:
        """Photos where no face was found (missed or aligned in the whole-image box)."""
        return sorted(set(self.embeddings.fallbacks) | set(self.embeddings.missed))


def run_pairs_eval(
    pairs_csv: os.PathLike | str,
    image_root: os.PathLike | str,
    out_dir: os.PathLike | str,
    embedder,
    metric: str = "sqeuclidean",
    detector: DetectorSpec = DetectorSpec(),
    on_miss: str = "fail",
    folds: int = 10,
    workers: int = 1,
    progress: bool = True,
    engine: Optional[Engine] = None,
    pick: str = "largest",
) -> PairsEvalResult:
    """Embed the pair list's photos (cached in ``out_dir``), score and evaluate with and without
    mirror averaging, and write the same reports as ``lfw``."""
    if on_miss not in ("fail", "whole-image"):
        raise OpenFacePyError(f"on_miss must be 'fail' or 'whole-image', not {on_miss!r}")
    detector = detector_for(detector, embedder.alignment)  # caches and reports name what ran
    pairs = parse_pair_list(pairs_csv, folds)
    root, out = Path(image_root), Path(out_dir)
    if not root.is_dir():
        raise OpenFacePyError(f"{root}: image folder not found")
    absent = [(r.line, p) for r in pairs for p in (r.path_a, r.path_b) if not (root / p).is_file()]
    if absent:
        shown = "; ".join(f"line {line}: {p}" for line, p in absent[:5])
        raise OpenFacePyError(f"{len(absent)} photo(s) of the pair list not found under {root} ({shown})")
    names = sorted({r.path_a for r in pairs} | {r.path_b for r in pairs})
    out.mkdir(parents=True, exist_ok=True)
    emb = embed_lfw_images(
        root,
        names,
        embedder,
        embedding_cache_path(out, embedder.identity, root, detector, on_miss, pick),
        workers,
        progress=progress,
        detector=detector,
        on_miss=on_miss,
        engine=engine,
        pick=pick,
    )
    plain, flipped = evaluate_both(pairs, emb, metric)
    result = PairsEvalResult(plain, flipped, emb, len(names), on_miss)
    extra = {
        "pair_list": str(Path(pairs_csv)),
        "images": len(names),
        **detector.to_dict(),
        "on_miss": on_miss,
        "pick": pick,
        "faces_not_found": len(result.not_found),
        "not_found_images": result.not_found,
    }
    for res in (plain, flipped):
        write_reports(out, res, embedder.name, extra)
    return result
