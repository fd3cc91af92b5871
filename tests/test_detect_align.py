"""Tests of openface_py.faces.detect, faces.align.

Detection and OpenFace alignment on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, SAMPLE

from openface_py.faces.align import (
    INNER_EYES_AND_BOTTOM_LIP,
    OUTER_EYES_AND_NOSE,
    AlignmentSpec,
    DlibChipAligner,
    OpenFaceAligner,
    mean_template,
    minmax_template,
    openface_destination,
    openface_spec,
    openface_transform,
)
from openface_py.faces.detect import BoundingBox, Detection, DetectorSpec, HogDetector, select_faces
from openface_py.io import list_images, load_image


@pytest.fixture(scope="module")
def hog():
    return HogDetector(upsample=1)


@pytest.fixture(scope="module")
def aligner():
    return OpenFaceAligner()


def test_template_is_openface_mean_normalised():
    tpl = mean_template()
    mm = minmax_template()
    assert tpl.shape == (68, 2)
    assert np.allclose(mm.min(axis=0), 0) and np.allclose(mm.max(axis=0), 1)
    # OpenFace's mean.csv, first row (models/dlib/mean.csv): 0.0792396913815, 0.339223741112
    assert np.allclose(tpl[0], [0.0792396913815, 0.339223741112])
    # Anatomy: left outer eye corner (36) left of right outer eye corner (45); nose tip (33) below both.
    assert mm[36, 0] < mm[45, 0] and mm[33, 1] > mm[36, 1] and mm[33, 1] > mm[45, 1]


def test_hog_finds_one_face_in_every_sample_photo(hog):
    counts = [len(hog.detect(load_image(SAMPLE / p))) for p in list_images(SAMPLE)]
    assert len(counts) == 100
    assert sum(c >= 1 for c in counts) == 100


def test_two_face_photo_left_to_right(hog):
    dets = hog.detect(load_image(EXAMPLES / "longoria-cooper.jpg"))
    assert len(dets) == 2
    assert dets[0].box.center[0] < dets[1].box.center[0]
    assert len(select_faces(dets, multi=False)) == 1
    assert select_faces(dets, multi=False)[0].box.area == max(d.box.area for d in dets)
    assert select_faces(dets, multi=False, skip_multi=True) == []


def test_no_face_in_a_blank_image(hog):
    assert hog.detect(np.full((200, 200, 3), 127, np.uint8)) == []


def test_cnn_detector_agrees_with_hog(hog):
    rgb = load_image(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg")
    cnn = DetectorSpec("cnn", upsample=0).make()
    c, h = cnn.detect(rgb), hog.detect(rgb)
    assert len(c) == 1 and len(h) == 1
    (cx, cy), (hx, hy) = c[0].box.center, h[0].box.center
    assert abs(cx - hx) < 20 and abs(cy - hy) < 20


def test_detector_rejects_wrong_input(hog):
    with pytest.raises(ValueError, match="RGB uint8"):
        hog.detect(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="unknown detector"):
        DetectorSpec("retinaface").make()


def test_affine_transform_matches_independent_solution():
    # Solve [x y 1] A = [u v] for the 2x3 matrix with numpy and compare with cv2's.
    rng = np.random.default_rng(0)
    a = np.deg2rad(12.0)  # a face-like landmark set: the template scaled, rotated, moved, jittered
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (140 * minmax_template()) @ rot.T + [55, 40] + rng.normal(0, 2, size=(68, 2))
    for idx in (OUTER_EYES_AND_NOSE, INNER_EYES_AND_BOTTOM_LIP):
        H = openface_transform(pts, 96, idx)
        src = np.hstack([pts[list(idx)], np.ones((3, 1))])
        dst = 96 * minmax_template()[list(idx)]
        A = np.linalg.solve(src, dst).T
        assert np.allclose(H, A, rtol=1e-4, atol=1e-3)


def test_alignment_puts_landmarks_on_the_template(hog, aligner):
    """Landmarks found again *in the aligned image* sit on the template (independent check)."""
    rgb = load_image(SAMPLE / "George_W_Bush" / "George_W_Bush_0001.jpg")
    det = hog.detect(rgb)[0]
    face = aligner.align(rgb, det.box)
    assert face.image.shape == (96, 96, 3) and face.image.dtype == np.uint8
    assert face.landmarks.shape == (68, 2)
    # landmarks in the photo lie inside (or near) the detected box
    assert (face.landmarks[:, 0] > det.box.left - 15).all() and (face.landmarks[:, 0] < det.box.right + 15).all()
    # re-detect landmarks on a 4x upscale of the aligned face, with the box OpenFace's template implies
    big = cv2.resize(face.image, (384, 384), interpolation=cv2.INTER_CUBIC)
    pts = aligner.find_landmarks(big, BoundingBox(0, 0, 383, 383)) / 4.0
    want = openface_destination(96, OUTER_EYES_AND_NOSE)
    err = np.linalg.norm(pts[list(OUTER_EYES_AND_NOSE)] - want, axis=1)
    assert err.max() < 4.0, err  # pixels in the 96x96 image


def test_warp_samples_the_photo_where_the_transform_says(hog, aligner):
    rgb = load_image(SAMPLE / "Hugo_Chavez" / "Hugo_Chavez_0001.jpg")
    box = hog.detect(rgb)[0].box
    face = aligner.align(rgb, box)
    H = openface_transform(face.landmarks, 96, OUTER_EYES_AND_NOSE)
    Hinv = cv2.invertAffineTransform(H)
    for u, v in [(20, 30), (48, 48), (70, 60), (50, 80)]:
        x, y = Hinv @ np.array([u, v, 1.0])
        expected = cv2.getRectSubPix(rgb, (1, 1), (float(x), float(y)))[0, 0].astype(int)
        assert np.abs(face.image[v, u].astype(int) - expected).max() <= 3


def test_inner_eyes_landmark_set_and_size(hog):
    rgb = load_image(SAMPLE / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg")
    al = OpenFaceAligner(size=128, landmarks="innerEyesAndBottomLip")
    face = al.align(rgb, hog.detect(rgb)[0].box)
    assert face.image.shape == (128, 128, 3)
    assert al.spec.identity == "openface-affine/128/innerEyesAndBottomLip"


def test_dlib_chip_aligner(hog):
    rgb = load_image(SAMPLE / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg")
    face = DlibChipAligner().align(rgb, hog.detect(rgb)[0].box)
    assert face.image.shape == (150, 150, 3) and face.landmarks.shape == (5, 2)


def test_alignment_spec_validation():
    with pytest.raises(ValueError):
        AlignmentSpec("openface-affine", 96, "noseOnly")
    with pytest.raises(ValueError):
        AlignmentSpec("warp-3d", 96, "outerEyesAndNose")
    spec = AlignmentSpec("openface-affine", 96, "outerEyesAndNose")
    assert AlignmentSpec.from_dict(spec.to_dict()) == spec


def test_select_faces_largest():
    small = Detection(BoundingBox(0, 0, 9, 9), 1.0)
    large = Detection(BoundingBox(50, 50, 99, 99), 0.5)
    assert select_faces([small, large], multi=False) == [large]
    assert select_faces([], multi=False) == []


def test_the_central_pick_takes_the_subject_of_a_centred_photo(hog):
    """A 250x250 photo centred on a face with a larger face in its corner, made from two real
    photos: ``largest`` takes the corner face, ``central`` the centred one; a face alone is picked
    by both."""
    from openface_py.faces.stage import FaceStage, FaceStageSpec, central_face

    a = load_image(sorted((SAMPLE / "Tony_Blair").glob("*.jpg"))[0])
    b = load_image(sorted((SAMPLE / "Colin_Powell").glob("*.jpg"))[0])
    canvas = np.full((250, 250, 3), 90, np.uint8)
    subject = cv2.resize(a[60:190, 60:190], (76, 76), interpolation=cv2.INTER_AREA)  # a face of ~50 px
    big = cv2.resize(b[50:200, 50:200], (110, 110), interpolation=cv2.INTER_AREA)  # one of ~75 px
    canvas[87:163, 87:163] = subject
    canvas[0:110, 0:110] = big  # covers the subject tile's top-left corner (hair), not its face
    stage = FaceStage(FaceStageSpec(DetectorSpec("hog", upsample=1), openface_spec(), pick="largest"))
    dets = stage.detector.detect(canvas)
    assert len(dets) == 2, dets
    largest = select_faces(dets, multi=False)[0]
    central = central_face(dets, 250, 250)
    assert largest.box.area > central.box.area
    assert central.box.left < 125 < central.box.right and central.box.top < 125 < central.box.bottom  # the subject
    assert largest.box.right < 110 and largest.box.bottom < 110  # the corner tile's face
    assert stage.find(canvas).faces[0].box == largest.box
    assert stage.find(canvas, pick="central").faces[0].box == central.box
    alone = stage.detector.detect(a)
    assert central_face(alone, a.shape[1], a.shape[0]) == select_faces(alone, multi=False)[0]


def test_adaptive_and_downscaled_detection():
    import cv2

    from openface_py.faces.detect import AdaptiveHogDetector, DetectorSpec, DownscaledDetector, HogDetector
    from openface_py.io import load_image

    rgb = load_image(SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg")
    up0, up1 = HogDetector(upsample=0).detect(rgb), HogDetector(upsample=1).detect(rgb)
    adaptive = AdaptiveHogDetector(upsample=1)
    assert up0 and adaptive.detect(rgb) == up0  # found at upsample 0: no second pass
    # a face too small for upsample 0 is found by the upsampled pass
    small = cv2.resize(rgb, (100, 100), interpolation=cv2.INTER_AREA)
    assert not HogDetector(upsample=0).detect(small)
    assert adaptive.detect(small) == HogDetector(upsample=1).detect(small) != []
    # detection on a downscaled copy maps the box back to the full photo
    big = cv2.resize(rgb, (1000, 1000), interpolation=cv2.INTER_CUBIC)
    boxes = DownscaledDetector(HogDetector(upsample=1), max_side=250).detect(big)
    assert len(boxes) == 1
    ref = up1[0].box
    b = boxes[0].box
    assert max(abs(b.left - 4 * ref.left), abs(b.top - 4 * ref.top), abs(b.right - 4 * ref.right)) <= 8
    assert DetectorSpec("hog-adaptive", max_side=300).make().name == "hog-adaptive@300"
    with pytest.raises(ValueError, match="unknown detector"):
        DetectorSpec("yolo").make()
