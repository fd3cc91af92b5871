"""Tests of openface_py.io.

Image loading: every kind of bad or unusual input gives RGB uint8 or a clear ImageLoadError.
The .npz files caches and jobs write (save_npz / load_npz) and the photo signature they compare."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, SAMPLE
from PIL import Image

from openface_py.errors import ImageLoadError
from openface_py.io import (
    NPZ_ERRORS,
    TEMP_PREFIX,
    atomic_write_bytes,
    file_signature,
    list_images,
    load_image,
    load_npz,
    save_npz,
    to_rgb_uint8,
)

PHOTO = SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg"


def test_jpeg_loads_as_rgb_matching_opencv():
    rgb = load_image(PHOTO)
    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    assert rgb.dtype == np.uint8 and rgb.shape == (250, 250, 3)
    # Pillow and libjpeg-turbo in OpenCV may differ by rounding in the IDCT: compare loosely.
    assert np.abs(rgb.astype(int) - bgr[:, :, ::-1].astype(int)).mean() < 1.5


def test_bytes_and_path_give_the_same_pixels():
    assert np.array_equal(load_image(PHOTO.read_bytes()), load_image(PHOTO))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"this is not a picture\n", "not a recognised image format"),
    ],
)
def test_non_images_are_refused_with_the_reason(tmp_path, content, reason):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(content)
    with pytest.raises(ImageLoadError) as exc:
        load_image(bad)
    assert reason in str(exc.value) and str(bad) in str(exc.value)


def test_truncated_jpeg_is_refused(tmp_path):
    data = PHOTO.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(bad)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_pixel_cap_refuses_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((3000, 3000, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(big, max_pixels=4_000_000)
    assert load_image(big, max_pixels=9_000_000).shape == (3000, 3000, 3)


def test_gray_16bit_rgba_palette(tmp_path):
    rgb = load_image(PHOTO)
    gray8 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    p = tmp_path / "gray.png"
    cv2.imwrite(str(p), gray8)
    out = load_image(p)
    assert out.shape == (250, 250, 3) and np.array_equal(out[:, :, 0], gray8) and np.array_equal(out[:, :, 2], gray8)

    p16 = tmp_path / "gray16.png"
    cv2.imwrite(str(p16), gray8.astype(np.uint16) * 257)
    assert np.array_equal(load_image(p16)[:, :, 1], gray8)

    p48 = tmp_path / "rgb16.png"
    cv2.imwrite(str(p48), (rgb[:, :, ::-1].astype(np.uint16) * 257))
    assert np.abs(load_image(p48).astype(int) - rgb.astype(int)).max() <= 1

    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner composites onto white
    pa = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(pa)
    out = load_image(pa)
    assert np.array_equal(out[20:, 20:], rgb[20:, 20:]) and (out[:10, :10] == 255).all()

    pp = tmp_path / "palette.gif"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(pp)
    out = load_image(pp)
    assert out.shape == (250, 250, 3) and np.abs(out.astype(int) - rgb.astype(int)).mean() < 12


def test_exif_orientation_is_applied(tmp_path):
    rgb = load_image(PHOTO)
    # Store the photo rotated and tag it with orientation 6 ("rotate 90 CW to display").
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(p, exif=exif, quality=98)
    out = load_image(p)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 4


def test_unicode_path(tmp_path):
    p = tmp_path / "Zoë Ödegård – 写真.jpg"
    p.write_bytes(PHOTO.read_bytes())
    assert load_image(p).shape == (250, 250, 3)


def test_to_rgb_uint8_normalises_arrays():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb_uint8(g).shape == (3, 4, 3)
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    assert to_rgb_uint8(np.ones((2, 2, 4), np.uint8) * 255).shape == (2, 2, 3)
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


def test_list_images_and_atomic_write(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.JPG").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "y.png").write_bytes(b"1")
    assert [p.as_posix() for p in list_images(tmp_path)] == ["a/x.JPG"]
    atomic_write_bytes(tmp_path / "deep" / "f.bin", b"data")
    assert (tmp_path / "deep" / "f.bin").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["f.bin"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "deep" / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    assert len(list_images(EXAMPLES)) == 7


def test_npz_round_trip_keeps_arrays_and_json_and_refuses_pickles(tmp_path):
    path = tmp_path / "cache" / "c.npz"
    reps = np.arange(12, dtype=np.float32).reshape(3, 4)
    meta = {"setup": "nn4|hog", "names": ["a/1.jpg", "é/2.jpg"], "stamps": {"a/1.jpg": [1, 2]}}
    save_npz(path, reps=reps, names=np.array(["x", "y"]), meta=meta, rows=[])
    got = load_npz(path, json_keys=("meta", "rows"))
    assert got["meta"] == meta and got["rows"] == []
    assert got["reps"].dtype == np.float32 and np.array_equal(got["reps"], reps)
    assert got["names"].tolist() == ["x", "y"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]  # no temporary file left
    # numpy's own reader sees the same file: the format is plain .npz
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["meta", "names", "reps", "rows"]
    np.savez(tmp_path / "p.npz", obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        load_npz(tmp_path / "p.npz")
    (tmp_path / "half.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(NPZ_ERRORS):
        load_npz(tmp_path / "half.npz")
    with pytest.raises(NPZ_ERRORS):
        load_npz(tmp_path / "missing.npz")


def test_file_signature_tells_a_changed_photo(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(PHOTO.read_bytes())
    st = photo.stat()
    assert file_signature(photo) == [st.st_size, st.st_mtime_ns]
    before = file_signature(photo)
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_signature(photo) != before
    assert file_signature(tmp_path / "gone.jpg") is None
