"""Face detection: dlib's HOG detector (default, as OpenFace), dlib's CNN (MMOD) detector, MTCNN
(``faces/mtcnn.py``, finds turned faces and gives 5 landmarks), and a HOG-then-MTCNN cascade."""

from __future__ import annotations

import json
import logging
import math
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from openface_py import store
from openface_py.device import is_gpu, parse_device, resolve_device
from openface_py.errors import ModelNotInstalledError, UsageError
from openface_py.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoundingBox:
    """A face box in pixel coordinates (dlib convention: right/bottom are the last pixel)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left + 1

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def to_dlib(self):
        import dlib

        return dlib.rectangle(int(self.left), int(self.top), int(self.right), int(self.bottom))

    @classmethod
    def from_dlib(cls, rect) -> BoundingBox:
        return cls(int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


@dataclass(frozen=True)
class Detection:
    """One detected face: its box, the detector's score (HOG margin, MMOD confidence or MTCNN
    probability) and, from MTCNN, its 5 landmarks: ((x, y) of the left eye, right eye, nose tip,
    left and right mouth corner, as seen in the image). ``align_with_points``: the detector was
    asked to have faces aligned from these 5 points (True) rather than from dlib's 68 (False), or
    as the alignment prefers (None, ``align_from="auto"``).
    ``raw_box``: MTCNN's own box where ``box`` is that box cut to the photo (alignment uses it)."""

    box: BoundingBox
    score: float
    points: Optional[tuple[tuple[float, float], ...]] = None
    align_with_points: Optional[bool] = False
    found_by: str = ""
    raw_box: Optional[BoundingBox] = None

    def to_json(self) -> dict:
        out: dict = {"box": self.box.as_list(), "score": round(self.score, 4)}
        if self.points is not None:
            out["points5"] = [[round(x, 2), round(y, 2)] for x, y in self.points]
        if self.found_by:
            out["found_by"] = self.found_by
        return out


class Detector(Protocol):
    """Anything that finds faces in an RGB uint8 image.

    ``key`` names the detector with every setting that changes what it finds: caches of
    detection results (galleries) are keyed by it.
    """

    name: str
    key: str

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


#: Above this many pixels after upsampling, dlib's detectors run on a copy of the model that is
#: dropped after the photo: dlib keeps its working buffers, sized by the largest photo it has
#: seen, inside the detector, so one large photo would hold that memory for the process's life.
KEEP_BUFFERS_PIXELS = 4_000_000


def _working_pixels(rgb: np.ndarray, upsample: int) -> int:
    return int(rgb.shape[0]) * int(rgb.shape[1]) * 4 ** int(upsample)


class HogDetector:
    """dlib's HOG + linear SVM frontal face detector (OpenFace's default).

    ``upsample`` doubles the image that many times before detecting (OpenFace uses 1), which
    finds smaller faces at about 4x the cost per step.
    """

    name = "hog"

    def __init__(self, upsample: int = 1, threshold: float = 0.0) -> None:
        import dlib

        if upsample < 0:
            raise UsageError("upsample must be >= 0")
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.key = f"hog(upsample={self.upsample},threshold={self.threshold:g})"
        self._detector = dlib.get_frontal_face_detector()
        self._model = pickle.dumps(self._detector)  # a fresh copy loads in about 1 ms

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        # dlib keeps its pyramid's buffers in the detector, sized by the largest photo so far
        # (350 MB after 13 MP at upsample 1): a large photo gets a copy that frees them after.
        large = _working_pixels(rgb, self.upsample) > KEEP_BUFFERS_PIXELS
        detector = pickle.loads(self._model) if large else self._detector
        rects, scores, _ = detector.run(_as_dlib_image(rgb), self.upsample, self.threshold)
        return sort_left_to_right([Detection(BoundingBox.from_dlib(r), float(s)) for r, s in zip(rects, scores)])


#: dlib's CNN fails on thin photos (measured: a side under 10 pixels at upsample 0, under 4 at
#: upsample 1) with an error, and its process may then die (3 x 100 at upsample 1: SIGABRT;
#: 9 x 100 at upsample 0: SIGBUS once); 16 x 16 works at upsample 0-2 (``bench_photo_cost.py
#: --shapes``). Its smallest face is larger, so there is nothing to find.
CNN_MIN_SIDE = 16


class CnnDetector:
    """dlib's CNN face detector (MMOD, ``mmod_human_face_detector.dat``).

    More robust to pose than HOG and slow on a CPU (hundreds of ms per photo). Detections
    with confidence below ``min_confidence`` are dropped.
    """

    name = "cnn"

    def __init__(self, upsample: int = 1, min_confidence: float = 0.0, model_path: Optional[Path] = None) -> None:
        import dlib

        path = Path(model_path) if model_path else store.dlib_model_path(store.DLIB_MMOD_DETECTOR)
        self.upsample = int(upsample)
        self.min_confidence = float(min_confidence)
        self.key = f"cnn(upsample={self.upsample},min_confidence={self.min_confidence:g})"
        self._path = str(path)
        self._detector = dlib.cnn_face_detection_model_v1(self._path)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        import dlib

        if min(rgb.shape[:2]) < CNN_MIN_SIDE:  # dlib fails on these (CNN_MIN_SIDE)
            return []
        # as HOG's (about 0.6 GB kept after 1 MP at upsample 1): a large photo gets its own copy (2 ms)
        large = _working_pixels(rgb, self.upsample) > KEEP_BUFFERS_PIXELS
        net = dlib.cnn_face_detection_model_v1(self._path) if large else self._detector
        found = net(_as_dlib_image(rgb), self.upsample)
        return sort_left_to_right(
            [
                Detection(BoundingBox.from_dlib(d.rect), float(d.confidence))
                for d in found
                if d.confidence >= self.min_confidence
            ]
        )


class AdaptiveHogDetector:
    """HOG at the photo's own resolution first; upsampled only when that finds no face.

    Most faces in photos are large enough for upsample 0 (about a quarter of the cost of
    upsample 1); small faces are still found by the second pass. ``benchmarks/bench_detection.py``
    measures each strategy's recall on LFW.
    """

    name = "hog-adaptive"

    def __init__(self, upsample: int = 1, threshold: float = 0.0) -> None:
        self.passes = [HogDetector(upsample=u, threshold=threshold) for u in range(0, max(0, int(upsample)) + 1)]
        self.upsample = int(upsample)
        self.key = f"hog-adaptive(upsample={self.upsample},threshold={float(threshold):g})"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        for det in self.passes:
            found = det.detect(rgb)
            if found:
                return found
        return []


class DownscaledDetector:
    """Detect on a copy whose longer side is at most ``max_side`` pixels and whose area is at most
    ``max_pixels``; boxes (and MTCNN's points) map back to the photo. A photo within both bounds
    is passed on untouched, so its detections are exactly the inner detector's.

    For large photos (phone pictures, video frames): HOG's cost grows with the pixel count,
    and faces large enough to matter stay large enough to find. ``DetectorSpec.make`` wraps every
    detector in one with its default ``max_pixels`` (``DetectorKind.default_max_pixels``),
    so no photo costs a detector more than that working size.
    """

    def __init__(self, detector: Detector, max_side: Optional[int] = None, max_pixels: Optional[int] = None) -> None:
        if max_side is not None and max_side < 32:
            raise UsageError("max_side must be at least 32 pixels")
        if max_pixels is not None and max_pixels < 32 * 32:
            raise UsageError("max_pixels must be at least 1024 pixels")
        self.inner = detector
        self.max_side = int(max_side) if max_side else None
        self.max_pixels = int(max_pixels) if max_pixels else None
        self.name = f"{detector.name}@{self.max_side}" if self.max_side else detector.name
        self.key = detector.key + (f"@max_side={self.max_side}" if self.max_side else "")
        self.key += f"@max_pixels={self.max_pixels}" if self.max_pixels else ""

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the copy the inner detector sees for a ``width`` x ``height`` photo."""
        scale = 1.0
        if self.max_side:
            scale = min(scale, self.max_side / max(width, height))
        if self.max_pixels:
            scale = min(scale, math.sqrt(self.max_pixels / (width * height)))
        if scale >= 1.0:
            return width, height
        return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        import cv2

        h, w = rgb.shape[:2]
        sw, sh = self.working_size(w, h)
        if (sw, sh) == (w, h):
            return self.inner.detect(rgb)
        log.debug("detecting on a %dx%d copy of a %dx%d photo", sw, sh, w, h)
        small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
        fx, fy = w / sw, h / sh

        def back(b: BoundingBox, clip: bool) -> BoundingBox:
            x1, x2 = int(b.left * fx), int(b.right * fx)
            y1, y2 = int(b.top * fy), int(b.bottom * fy)
            return (
                BoundingBox(max(0, x1), max(0, y1), min(w - 1, x2), min(h - 1, y2))
                if clip
                else BoundingBox(x1, y1, x2, y2)
            )

        out = []
        for d in self.inner.detect(small):
            pts = None if d.points is None else tuple((x * fx, y * fy) for x, y in d.points)
            raw = None if d.raw_box is None else back(d.raw_box, clip=False)
            out.append(Detection(back(d.box, clip=True), d.score, pts, d.align_with_points, d.found_by, raw))
        return out


#: Which landmarks align a face found by MTCNN: its own 5 points, dlib's 68 in its box, or
#: ``auto``: the better for the alignment (measured on LFW, BENCHMARKS.md): dlib's 68 for OpenFace's
#: affine (NN4-small2: "Detectors"), MTCNN's 5 points for Intel's 5-point template (MobileFaceNet:
#: 0.9920 against 0.9883 from 5 of dlib's 68).
ALIGN_FROM = ("auto", "mtcnn5", "dlib68")
MTCNN_ALIGN_DEFAULT = "auto"
#: ``align_from`` as a detection carries it: align from the 5 points (True), from dlib's 68
#: (False), or as the alignment prefers (None).
_USE_POINTS = {"mtcnn5": True, "dlib68": False, "auto": None}


class MtcnnDetector:
    """MTCNN (``faces/mtcnn.py``): finds turned and tilted faces that HOG misses, with 5 landmarks
    (measured on in-the-wild and rotated photos; profiles not measured here, BENCHMARKS.md).

    ``min_face``: the smallest face side searched for, in pixels (cost grows as it shrinks);
    ``thresholds``: P-, R- and O-Net's score thresholds; ``align_from``: ``mtcnn5`` to align
    faces from MTCNN's own 5 points, ``dlib68`` from dlib's 68 landmarks in MTCNN's box, ``auto``
    as the alignment prefers (``ALIGN_FROM``).
    """

    name = "mtcnn"

    def __init__(
        self,
        min_face: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        align_from: str = MTCNN_ALIGN_DEFAULT,
        weights: Optional[Path] = None,
        device: str = "cpu",
    ) -> None:
        from openface_py.faces.mtcnn import Mtcnn

        if align_from not in ALIGN_FROM:
            raise UsageError(f"unknown align_from {align_from!r} (choose from {', '.join(ALIGN_FROM)})")
        self.cascade = Mtcnn(min_face=min_face, thresholds=thresholds, weights=weights, device=device)
        self.align_from = align_from
        self.key = self.key_of(self.cascade.min_face, self.cascade.thresholds, align_from)

    @staticmethod
    def key_of(min_face: int, thresholds: Sequence[float], align_from: str) -> str:
        """The ``key`` of an MTCNN detector with these settings, without building it."""
        t = ",".join(f"{float(v):g}" for v in thresholds)
        return f"mtcnn(min_face={int(min_face)},thresholds={t},align_from={align_from})"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.detect_many([rgb])[0]

    def detect_many(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Several photos at once (same-size photos share the P-Net passes)."""
        use = _USE_POINTS[self.align_from]
        out = []
        for img, faces in zip(images, self.cascade.detect([_as_dlib_image(im) for im in images])):
            dets = []
            h, w = img.shape[:2]
            for f in faces:
                # reported and compared cut to the photo: a face cut by the edge is not "largest" by
                # its unseen part (MTCNN's box may reach far outside); aligned from the whole box
                x1, y1, x2, y2 = (int(round(v)) for v in f.box)
                raw = BoundingBox(x1, y1, x2, y2)
                box = BoundingBox(max(0, x1), max(0, y1), min(w - 1, x2), min(h - 1, y2))
                pts = tuple((float(x), float(y)) for x, y in f.points)
                dets.append(Detection(box, f.score, pts, use, "mtcnn", raw))
            out.append(sort_left_to_right(dets))
        return out


class CascadeDetector:
    """A fast frontal detector first; MTCNN only on photos where it finds nothing.

    Frontal photos keep HOG's speed; turned, tilted and small faces, which HOG misses, are
    found by MTCNN. Each detection says which detector found it (``found_by``). MTCNN is built
    the first time HOG finds nothing (``make_fallback``): a worker or Ray actor whose photos all
    show frontal faces never imports torch nor loads MTCNN (2-3 s of start-up each).
    """

    def __init__(self, first: Detector, make_fallback: Callable[[], MtcnnDetector], fallback_key: str) -> None:
        self.first, self._make_fallback, self._fallback = first, make_fallback, None
        self.name = "hog-mtcnn" if first.name == "hog-adaptive" else f"{first.name}-mtcnn"  # as --detector names it
        self.key = f"cascade({first.key},{fallback_key})"

    @property
    def fallback(self) -> MtcnnDetector:
        if self._fallback is None:
            self._fallback = self._make_fallback()
        return self._fallback

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        found = self.first.detect(rgb)
        if found:
            name = self.first.name
            return [
                Detection(d.box, d.score, d.points, d.align_with_points, d.found_by or name, d.raw_box) for d in found
            ]
        return self.fallback.detect(rgb)


#: MTCNN's settings when none are given (the paper's released code).
MTCNN_DEFAULTS = {"min_face": 20, "thresholds": [0.6, 0.7, 0.7]}


@dataclass(frozen=True)
class DetectorKind:
    """One entry of the detector table: how a ``DetectorSpec`` of this name is built, and the
    largest photo (pixels, before dlib's own upsampling) it works on by default.

    ``default_max_pixels``: HOG and MTCNN 13 MP, above a 12 MP phone photo (4032 x 3024), about
    5 s and 0.6 GB for HOG at upsample 1 on 2 cores; dlib's CNN 0.5 MP (it needs about 3.9 GB and
    a minute per megapixel at upsample 1). For dlib's detectors the bound is for upsample 1 and a
    quarter of it for each further step (each doubles the sides): ``upsamples``.
    """

    build: Callable[[DetectorSpec], Detector]
    default_max_pixels: int
    upsamples: bool = True  # dlib's upsampling applies (and shrinks the default bound)
    mtcnn: bool = False  # MTCNN's settings apply


def _hog(spec: DetectorSpec) -> Detector:
    return HogDetector(upsample=spec.upsample)


def _hog_adaptive(spec: DetectorSpec) -> Detector:
    return AdaptiveHogDetector(upsample=spec.upsample)


def _cnn(spec: DetectorSpec) -> Detector:
    return CnnDetector(upsample=spec.upsample)


def _mtcnn(spec: DetectorSpec) -> MtcnnDetector:
    where = resolve_device(spec.device)
    return MtcnnDetector(min_face=spec.min_face, thresholds=spec.thresholds, align_from=spec.align_from, device=where)


def _hog_mtcnn(spec: DetectorSpec) -> Detector:
    # missing or damaged weights fail here, at start, though MTCNN is built on first use
    weights = store.project_models_dir() / store.MTCNN_WEIGHTS.filename
    if not weights.is_file():
        raise ModelNotInstalledError(f"MTCNN weights not found at {weights} (they ship with the package; reinstall it)")
    if store.sha256sum(weights) != store.MTCNN_WEIGHTS.sha256:
        raise ModelNotInstalledError(f"{weights}: SHA-256 differs from the pinned {store.MTCNN_WEIGHTS.sha256}")
    key = MtcnnDetector.key_of(spec.min_face, spec.thresholds, spec.align_from)
    cascade = CascadeDetector(AdaptiveHogDetector(upsample=spec.upsample), lambda: _mtcnn(spec), key)
    if spec.device != "cpu" and is_gpu(resolve_device(spec.device)):
        cascade.fallback  # noqa: B018  (on a GPU built now: a device that cannot hold it fails at start, not per photo)
    return cascade


#: Every detector by the name ``--detector`` takes; a new detector is one entry here.
DETECTORS: Registry[DetectorKind] = Registry("detector")
DETECTORS.add("hog", DetectorKind(_hog, 13_000_000))
DETECTORS.add("hog-adaptive", DetectorKind(_hog_adaptive, 13_000_000))
DETECTORS.add("cnn", DetectorKind(_cnn, 500_000))
DETECTORS.add("mtcnn", DetectorKind(_mtcnn, 13_000_000, upsamples=False, mtcnn=True))
DETECTORS.add("hog-mtcnn", DetectorKind(_hog_mtcnn, 13_000_000, mtcnn=True))  # hog-adaptive, MTCNN where it finds none
DETECTOR_NAMES = DETECTORS.names()


@dataclass(frozen=True)
class DetectorSpec:
    """How faces are found: a detector by name (``DETECTORS``) with every setting it runs with.

    Frozen and picklable, so one value travels from the command line to every job, worker, Ray
    actor, the service and video, and is compared and recorded as it is (``to_dict``, ``key``).
    ``upsample`` applies to dlib's detectors; ``min_face`` (smallest face side searched, pixels),
    ``thresholds`` (P-, R-, O-Net scores) and ``align_from`` (``mtcnn5``: MTCNN's own 5 points,
    ``dlib68``: dlib's 68 landmarks in its box, ``auto``: as the alignment prefers) to MTCNN.
    ``max_side``: detect on a copy at most this long (None: the photo's size); ``max_pixels``: the
    working-size bound (None: the detector's default, ``DetectorKind``; 0: none). Photos within the
    bounds are detected as they are.

    ``device``: where MTCNN runs (``openface_py.device``: ``auto``, ``cpu``, ``cuda[:N]``, made
    concrete when MTCNN is built; dlib's detectors run on the CPU). It changes where, not what: it
    is left out of ``to_dict``, ``key`` and comparisons, so caches and run folders do not depend on it.
    """

    name: str = "hog"
    upsample: int = 1
    max_side: Optional[int] = None
    min_face: int = MTCNN_DEFAULTS["min_face"]
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    align_from: str = MTCNN_ALIGN_DEFAULT
    max_pixels: Optional[int] = None
    device: str = field(default="auto", compare=False)

    def __post_init__(self) -> None:
        DETECTORS.get(self.name)  # an unknown name fails here, before any work
        if int(self.upsample) < 0:
            raise UsageError("upsample must be >= 0")
        if int(self.min_face) < 12:
            raise UsageError("MTCNN's minimum face size is 12 pixels (P-Net's window)")
        object.__setattr__(self, "device", parse_device(self.device))
        if self.max_side is not None and 0 < int(self.max_side) < 32:
            raise UsageError("max_side must be at least 32 pixels")
        if self.max_pixels and int(self.max_pixels) < 32 * 32:
            raise UsageError("max_pixels must be at least 1024 pixels (0: no bound)")
        if self.align_from not in ALIGN_FROM:
            raise UsageError(f"unknown align_from {self.align_from!r} (choose from {', '.join(ALIGN_FROM)})")
        thresholds = tuple(float(t) for t in self.thresholds)
        if len(thresholds) != 3:
            raise UsageError(f"MTCNN takes three thresholds (P-, R-, O-Net), got {len(thresholds)}")
        object.__setattr__(self, "upsample", int(self.upsample))
        object.__setattr__(self, "max_side", int(self.max_side) if self.max_side else None)
        object.__setattr__(self, "min_face", int(self.min_face))
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "max_pixels", None if self.max_pixels is None else int(self.max_pixels))

    def resolved(self, prefer_points: bool) -> DetectorSpec:
        """This spec with ``align_from="auto"`` made concrete for an alignment that prefers MTCNN's
        5 points (``mtcnn5``) or dlib's 68 (``dlib68``), so that jobs record and compare what ran."""
        if self.align_from != "auto" or not self.uses_mtcnn:
            return self  # (dlib's detectors give no points: their specs stay as they are)
        return replace(self, align_from="mtcnn5" if prefer_points else "dlib68")

    @classmethod
    def of(cls, value: DetectorSpec | str | None) -> DetectorSpec:
        """A spec as given, or a detector name with its default settings (None: HOG)."""
        if isinstance(value, DetectorSpec):
            return value
        return cls() if value is None else cls(str(value))

    @property
    def kind(self) -> DetectorKind:
        return DETECTORS.get(self.name)

    @property
    def uses_mtcnn(self) -> bool:
        return self.kind.mtcnn

    def mtcnn_settings(self) -> dict:
        """MTCNN's settings in their recorded JSON form; {} for dlib's detectors."""
        if not self.uses_mtcnn:
            return {}
        return {"min_face": self.min_face, "thresholds": list(self.thresholds), "align_from": self.align_from}

    def to_dict(self) -> dict:
        """The settings as run folders, caches and reports record and compare them."""
        out: dict = {"detector": self.name, "upsample": self.upsample, "max_side": self.max_side}
        if how := self.mtcnn_settings():
            out["detector_options"] = how
        if self.max_pixels is not None:
            out["max_pixels"] = self.max_pixels
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DetectorSpec:
        how = data.get("detector_options") or {}
        return cls(
            data.get("detector", "hog"),
            int(data.get("upsample", 1)),
            data.get("max_side"),
            int(how.get("min_face", MTCNN_DEFAULTS["min_face"])),
            tuple(how.get("thresholds", MTCNN_DEFAULTS["thresholds"])),
            how.get("align_from", MTCNN_ALIGN_DEFAULT),
            data.get("max_pixels"),
        )

    @property
    def key(self) -> str:
        """One string naming every setting (cache names, ``--json`` reports)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def working_pixels(self) -> Optional[int]:
        """The working-size bound in pixels (None: unbounded)."""
        if self.max_pixels is not None:
            return self.max_pixels or None
        steps = max(0, self.upsample - 1) if self.kind.upsamples else 0
        return max(self.kind.default_max_pixels // 4**steps, 32 * 32)

    def make(self) -> Detector:
        """The detector, bounded to its working size (``DownscaledDetector``); loads its model."""
        det = self.kind.build(self)
        bound = self.working_pixels()
        return DownscaledDetector(det, self.max_side, bound) if (self.max_side or bound) else det


def sort_left_to_right(dets: Sequence[Detection]) -> list[Detection]:
    """Detections ordered by the x of their box centre (the order OpenFace's demos report)."""
    return sorted(dets, key=lambda d: (d.box.center[0], d.box.top))


def select_faces(dets: Sequence[Detection], multi: bool = True, skip_multi: bool = False) -> list[Detection]:
    """Choose which detections to use.

    ``multi``: all faces, left to right. Otherwise the largest face, as OpenFace's
    ``getLargestFaceBoundingBox``; with ``skip_multi`` a photo with several faces gives none
    (OpenFace's ``--skipMulti``, for training folders where a second face would mislabel).
    """
    if multi:
        return list(dets)
    if not dets:
        return []
    if skip_multi and len(dets) > 1:
        return []
    return [max(dets, key=lambda d: d.box.area)]


def _as_dlib_image(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)
