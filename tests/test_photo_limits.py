"""Tests of openface_py.io (shape and size limits), faces.detect.

Issue 23, items 1 and 3: no photo's shape or size can crash a process or cost unbounded time or
memory. Photos are generated PNGs (a thin one compresses to a few KB); detectors run for real,
the crash checks in a subprocess of the command line."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from openface_py.errors import ImageLoadError
from openface_py.io import DEFAULT_MAX_ASPECT, DEFAULT_MAX_SIDE, composite_on_white, load_image, release_memory

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "lfw-sample"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def gray_png(width: int, height: int, value: int = 128, with_data: bool = True) -> bytes:
    """An 8-bit gray PNG of one value (written by hand: a 34,000,000 x 1 one is 33 KB);
    ``with_data=False`` gives the header alone, which no decoder can decode."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if not with_data:
        return head + _chunk(b"IEND", b"")
    row = b"\x00" + bytes([value]) * width  # filter type 0, then the pixels
    return head + _chunk(b"IDAT", zlib.compress(row * height, 6)) + _chunk(b"IEND", b"")


AT_LIMITS = [  # (width, height): the longest side and the most elongated shape accepted, and tiny ones
    (DEFAULT_MAX_SIDE, int(DEFAULT_MAX_SIDE / DEFAULT_MAX_ASPECT) + 1),
    (int(DEFAULT_MAX_SIDE / DEFAULT_MAX_ASPECT) + 1, DEFAULT_MAX_SIDE),
    (20, 1),
    (1, 20),
    (1, 1),
    (9, 100),
]


@pytest.mark.parametrize(
    "width,height,reason",
    [
        (34_000_000, 1, "max_side"),  # segfaulted dlib's HOG (33 KB file)
        (1, 34_000_000, "max_side"),
        (DEFAULT_MAX_SIDE + 1, 2000, "max_side"),
        (2100, 100, "max_aspect"),  # 21:1
        (100, 2100, "max_aspect"),
    ],
)
def test_shapes_no_detector_can_take_are_refused_from_the_header(tmp_path, width, height, reason):
    # the header alone: refused for its shape, not reported as corrupt, so nothing was decoded
    with pytest.raises(ImageLoadError, match=reason) as err:
        load_image(gray_png(width, height, with_data=False))
    assert f"{width}x{height}" in err.value.reason
    if width * height <= 34_000_000:  # and a whole file, from a path
        path = tmp_path / "w.png"
        path.write_bytes(gray_png(width, height))
        with pytest.raises(ImageLoadError, match=reason):
            load_image(path)


def test_shape_limits_are_configurable_and_shapes_at_them_load():
    for w, h in AT_LIMITS[:2]:
        assert load_image(gray_png(w, h)).shape == (h, w, 3)
    wide = gray_png(2100, 100)
    assert load_image(wide, max_aspect=0).shape == (100, 2100, 3)  # 0: no limit
    assert load_image(wide, max_aspect=25).shape == (100, 2100, 3)
    with pytest.raises(ImageLoadError, match="limit of 2000 pixels"):
        load_image(wide, max_side=2000)
    assert load_image(wide, max_side=0, max_aspect=0).shape == (100, 2100, 3)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "detector,full_size",
    [
        ("hog", True),  # the detector that crashed, at the longest side and the thinnest shape
        *[(d, False) for d in ("hog-adaptive", "mtcnn", "hog-mtcnn", "cnn")],
        *[pytest.param(d, True, marks=SLOW) for d in ("hog-adaptive", "mtcnn", "hog-mtcnn", "cnn")],  # 20-90 s each
    ],
)
def test_every_detector_survives_shapes_at_the_limits(tmp_path, detector, full_size):
    """In a subprocess, as a user runs it: before, the 34,000,000 x 1 photo ended `detect` with
    SIGSEGV (hog), and a 9 x 100 one ended the CNN's process with SIGBUS. ``full_size``: the
    20:1 shapes at the longest side; otherwise at 1000 x 50 (the CNN: 2 GB and 40 s each there)."""
    files = []
    for w, h in [(34_000_000, 1), *AT_LIMITS]:
        if not full_size and max(w, h) == DEFAULT_MAX_SIDE:
            w, h = (1000, 50) if w > h else (50, 1000)
        path = tmp_path / f"{w}x{h}.png"
        path.write_bytes(gray_png(w, h))
        files.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "openface_py", "detect", "--json", "--landmarks", "--detector", detector, *files]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    results = json.loads(done.stdout)
    assert "max_side" in results[0]["error"]
    for r in results[1:]:
        assert "error" not in r and r["faces"] == []
        assert f"{r['width']}x{r['height']}" in r["path"]


def _face_photo():
    return load_image(SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg")


def test_large_photo_detected_on_a_bounded_working_size(monkeypatch):
    """A 20 MP photo reaches HOG as a copy of at most DEFAULT_DETECT_MAX_PIXELS (before: whole,
    then upsampled to 80 MP); its face maps back to the full photo. An LFW-size photo reaches HOG
    as it is: the same array, so its detections are bit-identical."""
    import cv2

    from openface_py.faces import detect
    from openface_py.faces.detect import DETECTORS, DetectorSpec, HogDetector

    seen: list[np.ndarray] = []
    real = HogDetector.detect

    def recording(self, rgb):
        seen.append(rgb)
        return real(self, rgb)

    monkeypatch.setattr(detect.HogDetector, "detect", recording)
    rgb = _face_photo()
    det = DetectorSpec("hog", upsample=0).make()
    small = det.detect(rgb)
    assert len(seen) == 1 and seen[0] is rgb and small == HogDetector(upsample=0).detect(rgb)

    big = np.full((4000, 5000, 3), 90, np.uint8)  # 20 MP; the face 16x larger, 1000 px from the left
    big[:, 1000:5000] = cv2.resize(rgb, (4000, 4000), interpolation=cv2.INTER_LINEAR)
    seen.clear()
    found = det.detect(big)
    h, w = seen[0].shape[:2]
    assert h * w <= DETECTORS.get("hog").default_max_pixels and w / h == pytest.approx(5000 / 4000, rel=1e-3)
    assert len(found) == 1
    ref = small[0].box
    box = found[0].box
    expect = [1000 + 16 * ref.left, 16 * ref.top, 1000 + 16 * ref.right, 16 * ref.bottom]
    # HOG's boxes step with its pyramid's scales: the same face within a tenth of its size
    assert max(abs(a - b) for a, b in zip(box.as_list(), expect)) <= 0.1 * (expect[2] - expect[0]), (box, expect)
    unbounded = DetectorSpec("hog", upsample=0, max_pixels=0).make()  # the bound can be switched off
    seen.clear()
    unbounded.detect(rgb)
    assert seen[0] is rgb and "max_pixels" not in unbounded.key and "max_pixels=13000000" in det.key
    # each dlib upsample step past 1 doubles both sides: the bound shrinks 4x per step
    assert DetectorSpec("hog", upsample=2).make().working_size(5000, 4000) == (2015, 1612)


def test_alpha_composited_exactly_without_full_size_float_copies(tmp_path):
    from PIL import Image

    v, a = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([v, 255 - v, v, a], -1).astype(np.uint8)
    f = rgba.astype(np.float32)
    alpha = f[:, :, 3:4] / 255.0
    expected = np.clip(np.rint(f[:, :, :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
    assert np.array_equal(composite_on_white(rgba), expected)  # every value at every alpha

    big = np.tile(rgba, (8, 8, 1))  # 2048 x 2048 RGBA: 16 MiB, 12 MiB as RGB, 64 MiB as float32 RGBA
    path = tmp_path / "rgba.png"
    Image.fromarray(big, "RGBA").save(path, compress_level=1)
    tracemalloc.start()
    try:
        out = load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, np.tile(expected, (8, 8, 1)))
    assert peak < 4 * out.nbytes, f"peak {peak / 2**20:.0f} MiB for a {out.nbytes / 2**20:.0f} MiB photo"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_returns_freed_heap_to_the_system():
    """What a large photo leaves: freed blocks below a live one stay in the process until trimmed."""
    code = (
        "from openface_py.io import release_memory\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "blocks = [bytearray(4000) for _ in range(50_000)]; keep = bytearray(4000)\n"
        "del blocks; before = rss(); ok = release_memory(); print(ok, before - rss())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    ok, released = out.stdout.split()
    assert ok == "True" and int(released) > 100 * 2**20, out.stdout + out.stderr
    assert isinstance(release_memory(), bool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim, /proc")
def test_memory_returns_near_baseline_after_a_large_photo():
    """dlib's HOG kept its pyramid's buffers (about 27 MB per megapixel at upsample 1) inside the
    detector for the life of the process; now a large photo's are freed with it, and trimming
    hands them back to the system. Same boxes as the detector's own instance."""
    code = (
        "import ctypes, dlib, numpy as np\n"
        "from openface_py.faces.detect import BoundingBox, HogDetector\n"
        "from openface_py.io import load_image\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "det = HogDetector(upsample=1)\n"
        f"face = load_image({str(SAMPLE / 'Colin_Powell' / 'Colin_Powell_0001.jpg')!r})\n"
        "det.detect(face); ctypes.CDLL('libc.so.6').malloc_trim(0); base = rss()\n"
        "big = np.full((1500, 2000, 3), 118, np.uint8); big[500:750, 800:1050] = face\n"
        "found = [d.box for d in det.detect(big)]\n"
        "ctypes.CDLL('libc.so.6').malloc_trim(0); kept = rss() - base\n"
        "ref = [BoundingBox.from_dlib(r) for r in dlib.get_frontal_face_detector()(big, 1)]\n"
        "print(kept // 2**20, len(found) == 1 and found == ref)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    kept_mb, same = out.stdout.split()
    assert same == "True" and int(kept_mb) < 25, out.stdout + out.stderr
