"""LFW's view-2 protocol files (Huang et al., "Labeled Faces in the Wild", 2007).

``pairs.txt`` starts with ``<folds> <pairs per class>`` and then, fold by fold, that many
same-person lines ``name i j`` followed by that many different-person lines ``name1 i name2 j``
(tab or space separated, image numbers 1-based). Malformed lines are rejected with their line
number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from openface_py.errors import OpenFacePyError


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
    """Read pairs.txt; returns (pairs, folds, pairs per class per fold)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise PairsFormatError(f"{path}: empty file")
    head = lines[0].split()
    try:
        folds, per = int(head[0]), int(head[1])
        if len(head) != 2 or folds < 1 or per < 1:
            raise ValueError
    except (ValueError, IndexError):
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
                pair = Pair(fold, f[0], int(f[1]), f[0], int(f[2]))
            else:
                if len(f) != 4:
                    raise ValueError("a different-person line has 4 fields: name1 i name2 j")
                pair = Pair(fold, f[0], int(f[1]), f[2], int(f[3]))
                if pair.name1 == pair.name2:
                    raise ValueError("a different-person line names the same person twice")
            if pair.num1 < 1 or pair.num2 < 1:
                raise ValueError("image numbers start at 1")
        except ValueError as exc:
            raise PairsFormatError(f"{path}:{lineno}: {exc} (got {line.strip()!r})") from None
        pairs.append(pair)
    return pairs, folds, per
