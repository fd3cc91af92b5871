"""Tests of openface_py.faces.mtcnn.

MTCNN on the real photos in data/: against the original PyTorch port's own output, the shipped
weights' pins, 5-point alignment, the cascade, and the commands that take ``--detector mtcnn``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, cli

from openface_py import store
from openface_py.faces.align import MTCNN5, OpenFaceAligner, align_detection, five_point_destination
from openface_py.faces.detect import DetectorSpec
from openface_py.faces.mtcnn import Mtcnn
from openface_py.io import load_image

REFERENCE = json.loads((ROOT / "tests" / "data" / "mtcnn-reference.json").read_text())


@pytest.fixture(scope="module")
def mtcnn() -> Mtcnn:
    return Mtcnn()


# min40 (other thresholds and pyramid) runs with `make test-all`: make test stays within its budget
@pytest.mark.parametrize("config", ["default", pytest.param("min40", marks=pytest.mark.slow)])
def test_same_faces_boxes_and_landmarks_as_the_original_port(config):
    """facenet-pytorch 2.6.0, run in a venv of its own (tests/data/mtcnn-reference.json): every
    face found by both, boxes and the 5 points within 1 px (the issue's bar)."""
    ref = REFERENCE["configs"][config]
    det = Mtcnn(min_face=ref["settings"]["min_face"], thresholds=ref["settings"]["thresholds"])
    paths = sorted(ref["images"])
    assert len(paths) == 37 and sum(len(v) for v in ref["images"].values()) == 38
    got_all = det.detect([load_image(ROOT / p) for p in paths])
    for path, got in zip(paths, got_all):
        want = ref["images"][path]
        assert len(got) == len(want), path
        free = list(range(len(got)))
        for w in want:  # matched one to one
            box = np.array(w["box"]) - 1.0  # the port's 1-based boxes
            k = min(free, key=lambda j: np.abs(np.array(got[j].box) - box).max())
            free.remove(k)
            assert np.abs(np.array(got[k].box) - box).max() <= 1.0, path
            assert np.abs(got[k].points - np.array(w["points"])).max() <= 1.0, path
            assert got[k].score == pytest.approx(w["prob"], abs=1e-3), path


def test_shipped_weights_are_the_pinned_file_and_a_changed_file_is_refused(tmp_path, monkeypatch):
    path = store.project_models_dir() / store.MTCNN_WEIGHTS.filename
    assert store.sha256sum(path) == store.MTCNN_WEIGHTS.sha256
    bad = tmp_path / "models"
    bad.mkdir()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    (bad / store.MTCNN_WEIGHTS.filename).write_bytes(bytes(data))
    monkeypatch.setattr(store, "project_models_dir", lambda: bad)
    from openface_py.errors import ModelNotInstalledError

    with pytest.raises(ModelNotInstalledError, match="SHA-256"):
        Mtcnn()


def test_batched_images_give_the_same_faces_as_one_at_a_time(mtcnn):
    imgs = [load_image(EXAMPLES / n) for n in ("clapton-2.jpg", "longoria-cooper.jpg")]
    imgs.append(np.ascontiguousarray(imgs[0][:, ::-1]))  # same size as the first: one P-Net batch
    together = mtcnn.detect(imgs)
    for img, faces in zip(imgs, together):
        alone = mtcnn.detect([img])[0]
        assert len(faces) == len(alone)
        assert np.abs(np.array([f.box for f in faces]) - np.array([f.box for f in alone])).max() < 1e-3


def _rotated(img: np.ndarray, degrees: float):
    h, w = img.shape[:2]
    R = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, R, (w, h), borderMode=cv2.BORDER_REPLICATE), R


def test_a_head_tilted_50_degrees_is_found_by_mtcnn_and_the_cascade_not_by_hog():
    img = load_image(EXAMPLES / "lennon-2.jpg")
    upright = DetectorSpec("hog").make().detect(img)[0].box
    tilted, R = _rotated(img, 50)
    assert DetectorSpec("hog-adaptive").make().detect(tilted) == []
    for name in ("mtcnn", "hog-mtcnn"):
        found = DetectorSpec(name).make().detect(tilted)
        assert len(found) == 1 and found[0].found_by == "mtcnn"
        # where the upright face's centre went under the rotation (independent of MTCNN)
        cx, cy = R @ np.array([*upright.center, 1.0])
        assert abs(found[0].box.center[0] - cx) < 0.15 * upright.width
        assert abs(found[0].box.center[1] - cy) < 0.15 * upright.width
    frontal = DetectorSpec("hog-mtcnn").make().detect(img)
    assert len(frontal) == 1 and frontal[0].found_by == "hog-adaptive" and frontal[0].points is None


def test_five_point_alignment_puts_eyes_and_nose_on_the_template(mtcnn):
    img = load_image(EXAMPLES / "clapton-2.jpg")
    det = DetectorSpec("mtcnn", align_from="mtcnn5").make().detect(img)[0]
    # mark MTCNN's eye centres and nose tip in pure red and align the marked photo
    marked = img.copy()
    for x, y in det.points[:3]:
        cv2.circle(marked, (int(round(x)), int(round(y))), 2, (255, 0, 0), -1)
    face = align_detection(OpenFaceAligner(), marked, det)
    assert face.aligned_from == MTCNN5 and face.image.shape == (96, 96, 3)
    red = (face.image[..., 0] > 200) & (face.image[..., 1] < 80) & (face.image[..., 2] < 80)
    # the template's eye centres (means of dlib points 36-41, 42-47) and nose tip (30), from the CSV
    tpl = np.loadtxt(ROOT / "openface_py" / "data" / "openface-dlib-mean-landmarks.csv", delimiter=",")
    tpl = (tpl - tpl.min(axis=0)) / (tpl.max(axis=0) - tpl.min(axis=0)) * 96
    for x, y in (tpl[36:42].mean(axis=0), tpl[42:48].mean(axis=0), tpl[30]):
        assert red[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2].any()
    assert red.sum() < 60  # three small dots, nothing else red
    np.testing.assert_allclose(five_point_destination(96), np.stack([tpl[36:42].mean(0), tpl[42:48].mean(0), tpl[30]]))


def test_detect_json_and_run_say_how_faces_were_found_and_aligned(tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    tilted, _ = _rotated(load_image(EXAMPLES / "lennon-2.jpg"), 50)
    cv2.imwrite(str(photos / "tilted.jpg"), tilted[:, :, ::-1])
    (photos / "frontal.jpg").write_bytes((EXAMPLES / "clapton-2.jpg").read_bytes())
    out = cli("detect", str(photos / "tilted.jpg"), "--detector", "mtcnn", "--json")
    assert out.returncode == 0, out.stderr
    face = json.loads(out.stdout)[0]["faces"][0]
    assert face["found_by"] == "mtcnn" and len(face["points5"]) == 5
    run = cli("run", str(photos), str(tmp_path / "out"), "--detector", "hog-mtcnn", "--workers", "1")
    assert run.returncode == 0, run.stderr
    rows = {r["path"]: r for r in json.loads((tmp_path / "out" / "faces.json").read_text())}
    assert set(rows) == {"tilted.jpg", "frontal.jpg"}
    assert all(r["aligned_from"] == "dlib68" for r in rows.values())
    # the same run through the Python API resumes it (the settings are recorded in one form)
    from openface_py.jobs.stream import run_folder
    from openface_py.nets.embed import load_embedder

    again = run_folder(photos, tmp_path / "out", load_embedder(None), detector="hog-mtcnn", workers=1, progress=False)
    assert again.already_done == 2 and again.aligned == 0
    hog_opts = cli("detect", str(photos / "frontal.jpg"), "--min-face", "40")
    assert hog_opts.returncode == 2 and "apply to the mtcnn" in hog_opts.stderr
    bad = cli("detect", str(photos / "frontal.jpg"), "--align-from", "mtcnn5")
    assert bad.returncode == 2 and "--align-from applies to" in bad.stderr
