"""Face alignment.

* ``OpenFaceAligner``: OpenFace's ``AlignDlib`` reimplemented. dlib's 68 landmarks are found
  in the face box; three of them (``OUTER_EYES_AND_NOSE`` = 36, 45, 33 or
  ``INNER_EYES_AND_BOTTOM_LIP`` = 39, 42, 57) are mapped by a 2D affine transform onto the
  same points of OpenFace's mean landmark template, min-max normalised per axis to [0, 1] and
  scaled to the output size (Amos et al., "OpenFace: A general-purpose face recognition
  library with mobile applications", CMU-CS-16-118, 2016; template from OpenFace's
  ``models/dlib/mean.csv``, Apache-2.0).
  With MTCNN's 5 points instead (``align_from="mtcnn5"``), the eye centres and the nose tip
  are mapped onto the template's eye centres (means of points 36-41 and 42-47) and nose tip
  (point 30) by the same kind of transform.
* ``DlibChipAligner``: dlib's own 5-point similarity-transform chip (150x150, padding 0.25),
  the input dlib's ResNet face recogniser was trained on.
* ``Intel5Aligner``: the alignment of Intel's face-reidentification-retail-0095 (MobileFaceNet):
  a least-squares similarity transform (rotation, uniform scale, shift; Umeyama 1991) of 5
  points (eye centres, nose tip, mouth corners, as seen in the image) onto Intel's template
  (``INTEL5_TEMPLATE``, fractions of the side), 128x128. The points are MTCNN's 5 when the
  detector was set to align from them (``align_from="mtcnn5"``), else dlib's 68 landmarks in
  the box reduced to 5 (means of 36-41 and 42-47, 30, 48, 54).

Each aligner has an ``AlignmentSpec``; embedders declare the spec they need, and aligned
folders record it, so faces aligned for one model are never fed to another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np

from openface_py import store
from openface_py.errors import UsageError
from openface_py.faces.detect import BoundingBox, DetectorSpec

#: Landmark index triples used by OpenFace (0-based indices into dlib's 68 points).
OUTER_EYES_AND_NOSE = (36, 45, 33)
INNER_EYES_AND_BOTTOM_LIP = (39, 42, 57)
LANDMARK_SETS = {
    "outerEyesAndNose": OUTER_EYES_AND_NOSE,
    "innerEyesAndBottomLip": INNER_EYES_AND_BOTTOM_LIP,
}

OPENFACE_METHOD = "openface-affine"
DLIB_CHIP_METHOD = "dlib-chip"
INTEL5_METHOD = "intel5-similarity"
#: Intel's 5-point template of face-reidentification-retail-0095, as fractions of the aligned side:
#: left eye, right eye, nose tip, left and right mouth corner (Open Model Zoo, the model's documentation).
INTEL5_TEMPLATE = (
    (0.31556875, 0.4615741),
    (0.6826229, 0.4615741),
    (0.5002625, 0.6405054),
    (0.3494719, 0.8246919),
    (0.6534187, 0.8246919),
)


@dataclass(frozen=True)
class AlignmentSpec:
    """What an aligned face is: method, output size, landmark set and padding."""

    method: str
    size: int
    landmarks: str
    padding: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in (OPENFACE_METHOD, DLIB_CHIP_METHOD, INTEL5_METHOD):
            raise UsageError(f"unknown alignment method {self.method!r}")
        if self.method == OPENFACE_METHOD and self.landmarks not in LANDMARK_SETS:
            raise UsageError(f"unknown landmark set {self.landmarks!r} (choose from {', '.join(LANDMARK_SETS)})")
        if not 8 <= int(self.size) <= 2048:
            raise UsageError(f"alignment size {self.size} out of range 8..2048")

    @property
    def identity(self) -> str:
        """A short string naming this alignment, written next to aligned faces and embeddings."""
        text = f"{self.method}/{self.size}/{self.landmarks}"
        return text + (f"/pad{self.padding:g}" if self.padding else "")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AlignmentSpec:
        return cls(
            method=str(data["method"]),
            size=int(data["size"]),
            landmarks=str(data["landmarks"]),
            padding=float(data.get("padding", 0.0)),
        )


def openface_spec(size: int = 96, landmarks: str = "outerEyesAndNose") -> AlignmentSpec:
    return AlignmentSpec(OPENFACE_METHOD, size, landmarks)


def dlib_chip_spec(size: int = 150, padding: float = 0.25) -> AlignmentSpec:
    return AlignmentSpec(DLIB_CHIP_METHOD, size, "dlib5", padding)


def intel5_spec(size: int = 128) -> AlignmentSpec:
    """Intel's 5-point similarity alignment (MobileFaceNet reid-0095), ``size`` square."""
    return AlignmentSpec(INTEL5_METHOD, size, "5points")


#: How a face was aligned: dlib's 68 landmarks in the detector's box, or the detector's 5 points.
DLIB68, MTCNN5, DLIB5 = "dlib68", "mtcnn5", "dlib5"


@dataclass
class AlignedFace:
    """An aligned face: where it was, its landmarks in the photo (68 from dlib or the detector's
    5), the aligned RGB image, and which landmarks aligned it (``aligned_from``)."""

    box: BoundingBox
    landmarks: np.ndarray
    image: np.ndarray
    score: float = 0.0
    aligned_from: str = DLIB68


@lru_cache(maxsize=1)
def mean_template() -> np.ndarray:
    """OpenFace's mean positions of dlib's 68 landmarks, shape (68, 2), as shipped."""
    text = resources.files("openface_py").joinpath("data/openface-dlib-mean-landmarks.csv").read_text()
    tpl = np.loadtxt(text.splitlines(), delimiter=",", dtype=np.float64)
    if tpl.shape != (68, 2):
        raise ValueError(f"mean landmark template has shape {tpl.shape}, expected (68, 2)")
    return tpl


def minmax_template() -> np.ndarray:
    """The template min-max normalised per axis to [0, 1] (OpenFace's ``MINMAX_TEMPLATE``)."""
    tpl = mean_template()
    lo, hi = tpl.min(axis=0), tpl.max(axis=0)
    return (tpl - lo) / (hi - lo)


def openface_destination(size: int, indices: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Where the chosen landmarks land in a ``size`` x ``size`` aligned image."""
    return size * minmax_template()[list(indices)] * scale + size * (1.0 - scale) / 2.0


def openface_transform(landmarks: np.ndarray, size: int, indices: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """The 2x3 affine matrix taking three photo landmarks onto the template (OpenFace's H)."""
    import cv2

    src = np.asarray(landmarks, dtype=np.float32)[list(indices)]
    dst = openface_destination(size, indices, scale).astype(np.float32)
    return cv2.getAffineTransform(src, dst)


def five_point_destination(size: int, scale: float = 1.0) -> np.ndarray:
    """Where the eye centres and the nose tip land on OpenFace's template, (3, 2)."""
    tpl = minmax_template()
    pts = np.stack([tpl[36:42].mean(axis=0), tpl[42:48].mean(axis=0), tpl[30]])
    return size * pts * scale + size * (1.0 - scale) / 2.0


def five_point_transform(points: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """The 2x3 affine matrix taking MTCNN's eye centres and nose tip (its first 3 of 5 points)
    onto the template's."""
    import cv2

    src = np.asarray(points, dtype=np.float32)[:3]
    return cv2.getAffineTransform(src, five_point_destination(size, scale).astype(np.float32))


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, shift; no reflection) that best maps ``src``
    onto ``dst`` in least squares (Umeyama, "Least-squares estimation of transformation parameters
    between two point patterns", IEEE TPAMI 1991). Both (K, 2), K >= 2."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def intel5_destination(size: int = 128) -> np.ndarray:
    """Where Intel's 5 template points land in a ``size`` x ``size`` aligned image, (5, 2)."""
    return np.asarray(INTEL5_TEMPLATE, dtype=np.float64) * size


def five_from_68(landmarks: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks -> the 5 points of MTCNN/Intel: eye centres, nose tip, mouth corners."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]])


class Aligner(Protocol):
    spec: AlignmentSpec

    def align(
        self, rgb: np.ndarray, box: BoundingBox, score: float = 0.0, points: Optional[np.ndarray] = None
    ) -> AlignedFace: ...


#: MTCNN's box -> the box dlib's HOG detector gives the same face (dlib's landmark predictors
#: were trained on HOG's boxes): centre moved by (dx * width, dy * height), square side
#: (sw * width + sh * height) / 2. Medians over the 468 of 500 CelebA in-the-wild photos where
#: HOG found one face and MTCNN that face (not LFW, which measures the result;
#: ``benchmarks/bench_detection.py --calibrate``).
MTCNN_TO_DLIB_BOX = {"dx": 0.0074, "dy": 0.0714, "sw": 1.0764, "sh": 0.8103}


def dlib_box_for(box: BoundingBox) -> BoundingBox:
    """Where dlib's HOG detector would put the box of a face MTCNN found in ``box``."""
    c = MTCNN_TO_DLIB_BOX
    cx, cy = box.center
    cx, cy = cx + c["dx"] * box.width, cy + c["dy"] * box.height
    half = (c["sw"] * box.width + c["sh"] * box.height) / 4.0
    return BoundingBox(int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))


def prefers_points(spec: AlignmentSpec) -> bool:
    """Whether faces for ``spec`` align better from MTCNN's 5 points than from dlib's 68 (measured
    on LFW: Intel's 5-point template does, OpenFace's affine does not); what ``align_from="auto"`` follows."""
    return spec.method == INTEL5_METHOD


def detector_for(detector: DetectorSpec, spec: AlignmentSpec) -> DetectorSpec:
    """``detector`` as a face stage aligning for ``spec`` runs it (``align_from="auto"`` made
    concrete), so that jobs, caches and reports record what ran."""
    return detector.resolved(prefers_points(spec))


def align_detection(aligner: Aligner, rgb: np.ndarray, det) -> AlignedFace:
    """Align one ``Detection``: from its 5 points when its detector was set to align from them
    (or to ``auto`` and the alignment is Intel's 5-point template, which they suit best) and the
    aligner can, else from dlib's landmarks in its box (an MTCNN box first mapped to the box dlib's
    landmark models expect, ``dlib_box_for``). The face keeps the detector's box."""
    use = det.align_with_points if det.align_with_points is not None else prefers_points(aligner.spec)
    if det.points is not None and use and aligner.spec.method in (OPENFACE_METHOD, INTEL5_METHOD):
        return aligner.align(rgb, det.box, score=det.score, points=np.asarray(det.points, dtype=np.float64))
    if det.found_by == "mtcnn":
        face = aligner.align(rgb, dlib_box_for(det.raw_box or det.box), score=det.score)
        face.box = det.box
        return face
    return aligner.align(rgb, det.box, score=det.score)


class OpenFaceAligner:
    """OpenFace's 2D affine alignment onto the mean template (see module docstring)."""

    def __init__(
        self,
        size: int = 96,
        landmarks: str = "outerEyesAndNose",
        predictor_path: Optional[Union[str, Path]] = None,
        scale: float = 1.0,
    ) -> None:
        import dlib

        self.spec = openface_spec(size, landmarks)
        self.indices = LANDMARK_SETS[landmarks]
        self.scale = float(scale)
        path = predictor_path or store.dlib_model_path(store.DLIB_LANDMARKS_68)
        self._predictor = dlib.shape_predictor(str(path))

    def find_landmarks(self, rgb: np.ndarray, box: BoundingBox) -> np.ndarray:
        """dlib's 68 landmarks inside ``box``, shape (68, 2) float64 (x, y)."""
        shape = self._predictor(np.ascontiguousarray(rgb), box.to_dlib())
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def warp(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        import cv2

        H = openface_transform(landmarks, self.spec.size, self.indices, self.scale)
        return cv2.warpAffine(rgb, H, (self.spec.size, self.spec.size))

    def align(
        self, rgb: np.ndarray, box: BoundingBox, score: float = 0.0, points: Optional[np.ndarray] = None
    ) -> AlignedFace:
        """Align from ``points`` (MTCNN's 5, see ``five_point_transform``) when given, else from
        dlib's 68 landmarks found in ``box``."""
        import cv2

        if points is not None:
            H = five_point_transform(points, self.spec.size, self.scale)
            image = cv2.warpAffine(rgb, H, (self.spec.size, self.spec.size))
            return AlignedFace(box, np.asarray(points, dtype=np.float64), image, score, MTCNN5)
        pts = self.find_landmarks(rgb, box)
        return AlignedFace(box=box, landmarks=pts, image=self.warp(rgb, pts), score=score)


class DlibChipAligner:
    """dlib's 5-point face chip (``get_face_chip``), the input of dlib's ResNet recogniser."""

    def __init__(
        self, size: int = 150, padding: float = 0.25, predictor_path: Optional[Union[str, Path]] = None
    ) -> None:
        import dlib

        self.spec = dlib_chip_spec(size, padding)
        path = predictor_path or store.dlib_model_path(store.DLIB_LANDMARKS_5)
        self._predictor = dlib.shape_predictor(str(path))

    def align(
        self, rgb: np.ndarray, box: BoundingBox, score: float = 0.0, points: Optional[np.ndarray] = None
    ) -> AlignedFace:
        """dlib's chip from its 5-point landmarks in ``box`` (``points`` from another detector are
        not used: dlib's chip is defined on dlib's own points)."""
        import dlib

        img = np.ascontiguousarray(rgb)
        shape = self._predictor(img, box.to_dlib())
        pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        chip = dlib.get_face_chip(img, shape, size=self.spec.size, padding=self.spec.padding)
        return AlignedFace(box=box, landmarks=pts, image=np.asarray(chip), score=score, aligned_from=DLIB5)


class Intel5Aligner:
    """Intel's 5-point similarity alignment (see module docstring), for MobileFaceNet reid-0095."""

    def __init__(self, size: int = 128, predictor_path: Optional[Union[str, Path]] = None) -> None:
        import dlib

        self.spec = intel5_spec(size)
        path = predictor_path or store.dlib_model_path(store.DLIB_LANDMARKS_68)
        self._predictor = dlib.shape_predictor(str(path))

    def warp(self, rgb: np.ndarray, points5: np.ndarray) -> np.ndarray:
        """The aligned face from 5 photo points (left eye, right eye, nose, mouth corners)."""
        import cv2

        m = similarity_transform(points5, intel5_destination(self.spec.size))
        size = self.spec.size
        return cv2.warpAffine(np.ascontiguousarray(rgb), m, (size, size), flags=cv2.INTER_LINEAR)

    def align(
        self, rgb: np.ndarray, box: BoundingBox, score: float = 0.0, points: Optional[np.ndarray] = None
    ) -> AlignedFace:
        """Align from ``points`` (a detector's 5) when given, else from dlib's 68 landmarks in ``box``."""
        if points is not None:
            pts = np.asarray(points, dtype=np.float64)
            return AlignedFace(box, pts, self.warp(rgb, pts), score, MTCNN5)
        shape = self._predictor(np.ascontiguousarray(rgb), box.to_dlib())
        pts68 = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return AlignedFace(box, pts68, self.warp(rgb, five_from_68(pts68)), score, DLIB68)


def make_aligner(spec: AlignmentSpec) -> Aligner:
    """The aligner that produces faces of ``spec``."""
    if spec.method == INTEL5_METHOD:
        return Intel5Aligner(size=spec.size)
    if spec.method == OPENFACE_METHOD:
        return OpenFaceAligner(size=spec.size, landmarks=spec.landmarks)
    return DlibChipAligner(size=spec.size, padding=spec.padding)
