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

    @property
    def path_a(self) -> str:
        return image_name(self.name1, self.num1)

    @property
    def path_b(self) -> str:
        return image_name(self.name2, self.num2)

    @property
    def people(self) -> tuple[str, str]:
        """Who is in each photo (LFW names them; Joint Bayesian trains on it)."""
        return self.name1, self.name2


def image_name(name: str, num: int) -> str:
    """LFW's file name for a person's n-th photo: ``Name/Name_0001.jpg``."""
    return f"{name}/{name}_{num:04d}.jpg"


def parse_pairs(path: os.PathLike | str) -> tuple[list[Pair], int, int]:
    """Read pairs.txt; returns (pairs, folds, pairs per class per fold).

    Anything but LFW's format raises ``PairsFormatError`` with the line: text that is not UTF-8,
    a bad header, a wrong number of lines or fields, a number that is not plain ASCII digits, a
    name that is not a plain folder name (a path separator, ``.``/``..``, control characters).
    """
    text = read_utf8(path, PairsFormatError)
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


def read_utf8(path: os.PathLike | str, error: type[Exception]) -> str:
    """A text file's content (a UTF-8 byte-order mark dropped); ``error`` names the line of a
    byte that is not UTF-8."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as some Windows editors write
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{lineno}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


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
