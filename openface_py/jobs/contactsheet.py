"""Contact sheets: the faces of one cluster as thumbnails in one image, so a person can look
instead of read. Thumbnails are cut from the original photos by the boxes ``run`` found (with a
margin, clipped to the photo); a photo that cannot be read leaves its cells grey and is reported."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

#: side of a thumbnail, px; the margin around a face's box, as a fraction of its side
THUMB = 96
MARGIN = 0.2
#: thumbnails per row; at most this many faces on one sheet
COLUMNS = 8
MAX_FACES = 64
GAP = 2
BACKGROUND = 255
MISSING = 200  # the grey of a face whose photo could not be read


def face_thumbnail(rgb: np.ndarray, box: Sequence[int], size: int = THUMB) -> np.ndarray:
    """The square around ``box`` ([left, top, right, bottom], dlib's convention) plus a margin,
    clipped to the photo and scaled to ``size`` x ``size``."""
    import cv2

    left, top, right, bottom = (int(v) for v in box)
    side = max(right - left + 1, bottom - top + 1)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half = side * (1 + 2 * MARGIN) / 2
    h, w = rgb.shape[:2]
    x0, x1 = max(0, int(round(cx - half))), min(w, int(round(cx + half)) + 1)
    y0, y1 = max(0, int(round(cy - half))), min(h, int(round(cy + half)) + 1)
    if x1 <= x0 or y1 <= y0:
        return np.full((size, size, 3), MISSING, np.uint8)
    crop = rgb[y0:y1, x0:x1]
    scale = size / max(crop.shape[:2])
    small = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    out = np.full((size, size, 3), BACKGROUND, np.uint8)
    oy, ox = (size - small.shape[0]) // 2, (size - small.shape[1]) // 2
    out[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small[:size, :size]
    return out


def sheet_shape(count: int, columns: int = COLUMNS, size: int = THUMB) -> tuple[int, int, int]:
    """(height, width, 3) of a sheet of ``count`` thumbnails."""
    cols = max(1, min(columns, count))
    rows = max(1, math.ceil(count / cols))
    return rows * (size + GAP) + GAP, cols * (size + GAP) + GAP, 3


def blank_sheet(count: int, columns: int = COLUMNS, size: int = THUMB) -> np.ndarray:
    """A sheet with ``count`` grey cells, to be filled by ``place``."""
    sheet = np.full(sheet_shape(count, columns, size), BACKGROUND, np.uint8)
    for slot in range(count):
        y, x = _cell(slot, min(columns, max(count, 1)), size)
        sheet[y : y + size, x : x + size] = MISSING
    return sheet


def place(sheet: np.ndarray, slot: int, thumb: np.ndarray, columns: int = COLUMNS) -> None:
    """Put ``thumb`` into cell ``slot`` of ``sheet`` (row by row)."""
    size = thumb.shape[0]
    cols = (sheet.shape[1] - GAP) // (size + GAP)
    y, x = _cell(slot, min(columns, cols), size)
    sheet[y : y + size, x : x + size] = thumb


def _cell(slot: int, columns: int, size: int) -> tuple[int, int]:
    row, col = divmod(slot, max(columns, 1))
    return GAP + row * (size + GAP), GAP + col * (size + GAP)
