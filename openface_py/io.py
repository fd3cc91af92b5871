"""Image loading and atomic file output.

``load_image`` turns a path or encoded bytes into an RGB ``uint8`` array of shape (H, W, 3),
whatever the file holds: EXIF orientation is applied, gray / gray+alpha / RGBA / palette /
CMYK / 16-bit images are converted, and anything unreadable raises ``ImageLoadError`` naming
the file and the reason. Pillow does the decoding because it exposes EXIF, every PNG mode and
truncation errors, which ``cv2.imread`` hides behind a silent ``None``.
"""

from __future__ import annotations

import io as _io
import json
import os
import sys
import tempfile
import threading
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import numpy as np

from openface_py.errors import ImageLoadError

#: Default cap on decoded pixels (width x height): 64 MP, about a 9000 x 7000 photo.
#: A face toolkit has no use for more; the cap stops decompression bombs and OOM kills.
DEFAULT_MAX_PIXELS = 64_000_000

#: Default cap on either side, in pixels. dlib's HOG detector corrupts its heap or segfaults on
#: very wide photos (measured with upsample 1: 70,000 x 100 passes, 80,000 x 100 aborts,
#: 34,000,000 x 1 segfaults; BENCHMARKS.md "Photo limits"); 16384 is well inside that even at
#: upsample 2, and wider than any camera's photo.
DEFAULT_MAX_SIDE = 16_384

#: Default cap on the ratio of the longer side to the shorter: a face photo, even a panorama
#: (16000 x 2400 is 6.7:1), never needs more, and thin strips are where native code breaks.
DEFAULT_MAX_ASPECT = 20.0

#: File name endings treated as images when walking folders (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

#: The Pillow decoders ``load_image`` uses: the formats of ``IMAGE_EXTENSIONS`` (PPM also reads
#: PGM/PBM; JPEG also multi-picture MPO). Pillow knows some 40 more; they are refused, because
#: each is more decoder to attack and some decode while opening: an ICO "icon" holding a large
#: PNG was decoded whole inside ``Image.open``, before the pixel cap could be checked.
DECODER_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")

ImageSource = Union[str, os.PathLike, bytes, bytearray]

#: Every temporary file this package writes starts with this: cleanup deletes nothing else.
TEMP_PREFIX = ".openface-py-tmp."


_CAP_LOCK = threading.Lock()
_cap_users = 0
_cap_saved: Optional[int] = None


def _pillow_cap_off() -> None:
    """Switch Pillow's own pixel cap off while any thread is in ``load_image`` (ours is checked
    first); counted, so concurrent threads cannot leave it off for good."""
    global _cap_users, _cap_saved
    from PIL import Image

    with _CAP_LOCK:
        if _cap_users == 0:
            _cap_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _cap_users += 1


def _pillow_cap_restore() -> None:
    global _cap_users
    from PIL import Image

    with _CAP_LOCK:
        _cap_users -= 1
        if _cap_users == 0:
            Image.MAX_IMAGE_PIXELS = _cap_saved


def load_image(
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> np.ndarray:
    """Read ``source`` (a path or encoded bytes) as an RGB uint8 array, EXIF-rotated.

    Raises ``ImageLoadError`` for a missing, empty, non-image, corrupt or truncated file, and
    for an image of more than ``max_pixels`` pixels, with a side longer than ``max_side`` or a
    longer side more than ``max_aspect`` times the shorter (all checked from the header, before
    decoding; 0 switches a limit off).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray)):
        name = "<bytes>"
        if len(source) == 0:
            raise ImageLoadError(name, "empty data (0 bytes)")
        stream: object = _io.BytesIO(bytes(source))
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError(name, "file not found") from None
        except OSError as exc:
            raise ImageLoadError(name, f"cannot access file: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL in the path
            raise ImageLoadError(name, f"invalid path ({exc})") from None
        if path.is_dir():
            raise ImageLoadError(name, "is a directory, not an image file")
        if size == 0:
            raise ImageLoadError(name, "empty file (0 bytes)")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _pillow_cap_off()  # our own cap below, checked before decoding
            try:
                with Image.open(stream, formats=DECODER_FORMATS) as im:  # type: ignore[arg-type]
                    w, h = im.size
                    _check_shape(name, *im.size, max_pixels, max_side, max_aspect)
                    im.load()
                    if im.size != (w, h) and _shape_problem(*im.size, max_pixels, max_side, max_aspect):
                        # a decoder that changed the size
                        raise ImageLoadError(name, f"image too large: decoded as {im.size[0]}x{im.size[1]}")
                    ImageOps.exif_transpose(im, in_place=True)  # no full-size copy when not rotated
                    return _pil_to_rgb(im)
            finally:
                _pillow_cap_restore()
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, f"not a recognised image format (supported: {', '.join(DECODER_FORMATS)})") from None
    except PermissionError as exc:
        raise ImageLoadError(name, f"permission denied: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(name, f"corrupt or truncated image data ({exc})") from None
    except Exception as exc:
        # Pillow's decoders meet malformed data with whatever the parsing code raises (a mutated
        # TIFF offset tag: TypeError from seek; struct.error, IndexError, ZeroDivisionError...);
        # Pillow's own fuzzers accept any Exception from bad input, and so does this loader.
        raise ImageLoadError(name, f"corrupt image data ({type(exc).__name__}: {exc})") from None


def _shape_problem(w: int, h: int, max_pixels: int, max_side: int, max_aspect: float) -> Optional[str]:
    """Why a ``w`` x ``h`` image is refused under these limits (0 = no limit), or None."""
    if w <= 0 or h <= 0:
        return f"image has zero size ({w}x{h})"
    if max_pixels and w * h > max_pixels:
        return (
            f"image too large: {w}x{h} = {w * h / 1e6:.1f} MP exceeds the "
            f"limit of {max_pixels / 1e6:.1f} MP (max_pixels)"
        )
    if max_side and max(w, h) > max_side:
        return f"image too large: {w}x{h} has a side over the limit of {max_side} pixels (max_side)"
    if max_aspect and max(w, h) > max_aspect * min(w, h):
        return (
            f"image shape not supported: {w}x{h} is {max(w, h) / min(w, h):.0f}:1, "
            f"beyond the limit of {max_aspect:g}:1 (max_aspect)"
        )
    return None


def _check_shape(name: str, w: int, h: int, max_pixels: int, max_side: int, max_aspect: float) -> None:
    problem = _shape_problem(w, h, max_pixels, max_side, max_aspect)
    if problem:
        raise ImageLoadError(name, problem)


def _pil_to_rgb(im) -> np.ndarray:
    """Convert any Pillow image mode to an RGB uint8 array (alpha composited on white)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        # 16-bit data lives in 0..65535; 'I' images from 8-bit sources stay in 0..255.
        scale = 255.0 / 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        if arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("LA", "PA", "La"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "RGBa"):
        return composite_on_white(np.asarray(im if mode == "RGBA" else im.convert("RGBA")))
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def composite_on_white(rgba: np.ndarray, chunk_pixels: int = 1 << 18) -> np.ndarray:
    """RGB uint8 of an (H, W, 4) uint8 RGBA array laid on white, rounded to nearest.

    Integer arithmetic a block of rows at a time, so the only full-size allocation is the
    result (before: float32 copies of the whole photo, 3 GB for a 6300 x 6300 PNG); equal to
    the float formula ``rint(rgb * a/255 + 255 * (1 - a/255))`` for every value and alpha."""
    h, w = rgba.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, chunk_pixels // max(w, 1))
    for top in range(0, h, rows):
        block = rgba[top : top + rows].astype(np.uint32)
        alpha = block[:, :, 3:4]
        out[top : top + rows] = (block[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Normalise an in-memory array (gray, gray+1, RGB, RGBA; uint8/uint16/float) to RGB uint8.

    Arrays are taken to be in RGB channel order already; convert OpenCV BGR frames first.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif arr.dtype.kind == "f":
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        arr = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = np.rint(arr[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    elif not (arr.ndim == 3 and arr.shape[2] == 3):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    return np.ascontiguousarray(arr)


def release_memory() -> bool:
    """Hand memory the process has freed back to the system (glibc's ``malloc_trim(0)``).

    glibc keeps freed heap pages of a large photo (its decode, conversion and the detector's
    pyramid) mapped in the process, so a long-running one (the service) stays gigabytes above its
    baseline after one; call this after a large photo. Returns True when memory was released;
    False where there is no glibc (macOS, Windows, musl) or nothing could be released.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))


def list_images(root: Union[str, os.PathLike]) -> list[Path]:
    """All image files below ``root`` (recursive, sorted, relative to ``root``); hidden entries skipped."""
    base = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith("."):
                continue
            if fn.lower().endswith(IMAGE_EXTENSIONS):
                found.append((Path(dirpath) / fn).relative_to(base))
    return sorted(found)


@contextmanager
def atomic_output(path: Union[str, os.PathLike]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on success it is synced and renamed
    to ``path``, on any error (or an exception raised inside the block) it is removed. So
    ``path`` is either absent, the old file, or complete: never half-written.

    The temporary file is ``.openface-py-tmp.<name>.<random>`` (``TEMP_PREFIX``), so that
    ``remove_temp_files`` can find what a killed run left without touching anyone else's files."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_temp_files(root: Union[str, os.PathLike]) -> int:
    """Delete the temporary files ``atomic_output`` left below ``root`` (a killed writer's).

    Only names starting with ``TEMP_PREFIX`` are touched. Call it only on a folder this package
    owns and has locked (``outdir.OutputFolder``): another live writer's files look the same.
    """
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            if fn.startswith(TEMP_PREFIX):
                try:
                    os.unlink(os.path.join(dirpath, fn))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def fsync_dir(folder: Union[str, os.PathLike]) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the directory; elsewhere a no-op)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(fd: int, size: int, offset: int) -> bytes:
    """``os.pread`` where the platform has it (not on Windows): read without moving the file position."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    with atomic_output(path) as fh:
        fh.write(data)


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Atomically write UTF-8 text (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_signature(path: Union[str, os.PathLike]) -> Optional[list[int]]:
    """A file's ``[size, mtime_ns]``, None if it cannot be read. Journals, caches and the database
    compare it to tell a photo that changed since it was processed from one that did not."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


#: What ``load_npz`` raises for a missing, truncated or damaged file (or one without the keys asked).
NPZ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def save_npz(path: Union[str, os.PathLike], **values) -> None:
    """Write arrays to an ``.npz`` file atomically (see ``atomic_output``); a dict or list value is
    stored as one JSON string (``load_npz(..., json_keys=...)`` decodes it), so no pickle is needed."""
    arrays = {k: np.array(json.dumps(v)) if isinstance(v, (dict, list)) else v for k, v in values.items()}
    with atomic_output(path) as fh:
        np.savez(fh, **arrays)


def load_npz(path: Union[str, os.PathLike], json_keys: tuple[str, ...] = ()) -> dict:
    """Every entry of an ``.npz`` file read into memory once (each access to a lazily loaded
    archive decompresses the array again), the ``json_keys`` decoded; pickles are refused.
    A missing, damaged or incomplete file raises one of ``NPZ_ERRORS``."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: np.array(z[k]) for k in z.files}
    for k in json_keys:
        out[k] = json.loads(str(out[k]))
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def iter_chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
