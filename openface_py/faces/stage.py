"""The face stage: photo -> detect -> choose -> align, built once per worker from a
``DetectorSpec`` and an ``AlignmentSpec``. Every job that turns photos into aligned faces uses it:
``align``, ``run``, ``db import``, ``lfw``/``pairs-eval``, the distillation ``prepare``, the
service, video and ``FacePipeline``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from openface_py.errors import ImageLoadError, UsageError
from openface_py.faces.align import AlignedFace, AlignmentSpec, align_detection, detector_for, make_aligner
from openface_py.faces.detect import BoundingBox, Detection, DetectorSpec, select_faces

log = logging.getLogger(__name__)

#: Which faces of a photo a job keeps: every face left to right, the largest (OpenFace's
#: ``getLargestFaceBoundingBox``), the largest only if it is alone (OpenFace's ``--skipMulti``,
#: for training folders where a second face would mislabel), or the central one (``central_face``:
#: benchmark photos centred on their subject, as LFW's are).
PICKS = ("all", "largest", "only", "central")
#: What to do with a photo where no face is found: nothing (``NO_FACE``), or align in LFW's
#: central box (deep funnelling centres the face; OpenFace fell back to the deep-funneled crops
#: likewise for the 58 of 13,233 raw LFW photos where dlib failed), or in the whole photo.
ON_MISS = ("fail", "central-box", "whole-image")
#: LFW's central box (250 x 250 images).
CENTRAL_BOX = BoundingBox(70, 70, 179, 179)

NO_FACE = "no face found"


def too_many_faces(n: int) -> str:
    """The reason a photo with ``n`` faces gives none under the ``only`` pick."""
    return f"{n} faces found and --skip-multi is set"


def pick_of(multi: bool = False, skip_multi: bool = False) -> str:
    """The pick named by the command line's ``--multi`` / ``--skip-multi`` (``--multi`` wins)."""
    return "all" if multi else ("only" if skip_multi else "largest")


def central_face(dets: list[Detection], width: int, height: int) -> Detection:
    """The face a photo centred on its subject is of: the largest area less twice the squared
    distance (px) of its centre from the photo's centre. The rule of Sandberg's facenet
    (``align_dataset_mtcnn``, used for its LFW figures); on LFW's deep-funneled photos it picks
    another face than the largest in 35 of 7,701 pair images (MTCNN), e.g. a bigger face behind."""

    def score(d: Detection) -> float:
        b = d.box
        dx, dy = (b.left + b.right) / 2 - width / 2, (b.top + b.bottom) / 2 - height / 2
        return b.area - 2.0 * (dx * dx + dy * dy)

    return max(dets, key=score)


def _check_pick(pick: str) -> str:
    if pick not in PICKS:
        raise UsageError(f"unknown pick {pick!r} (choose from {', '.join(PICKS)})")
    return pick


@dataclass(frozen=True)
class FaceStageSpec:
    """Everything a worker needs to build its face stage (frozen, picklable, sent once)."""

    detector: DetectorSpec
    alignment: AlignmentSpec
    pick: str = "largest"
    on_miss: str = "fail"

    def __post_init__(self) -> None:
        _check_pick(self.pick)
        # align_from="auto" made concrete for this alignment: the stage records what it runs
        object.__setattr__(self, "detector", detector_for(self.detector, self.alignment))
        if self.on_miss not in ON_MISS:
            raise UsageError(f"unknown on_miss {self.on_miss!r} (choose from {', '.join(ON_MISS)})")


@dataclass
class StageResult:
    """A photo's aligned faces, or why there are none (``reason``). ``fallback``: no face was
    found and the one face was aligned in the ``on_miss`` box; ``found``: how many the detector saw."""

    faces: list[AlignedFace] = field(default_factory=list)
    reason: str = ""
    fallback: bool = False
    found: int = 0

    @property
    def ok(self) -> bool:
        return not self.reason


class FaceStage:
    """A detector and an aligner, built once (they load models) and used for many photos."""

    def __init__(self, spec: FaceStageSpec) -> None:
        self.spec = spec
        self.detector = spec.detector.make()
        self.aligner = make_aligner(spec.alignment)

    def find(self, rgb: np.ndarray, pick: Optional[str] = None) -> StageResult:
        """Detect, choose (``pick``, default the spec's) and align the faces of one RGB uint8 photo."""
        pick = _check_pick(pick or self.spec.pick)
        dets = self.detector.detect(rgb)
        if not dets:
            if self.spec.on_miss == "fail":
                return StageResult(reason=NO_FACE)
            h, w = rgb.shape[:2]
            box = CENTRAL_BOX if self.spec.on_miss == "central-box" else BoundingBox(0, 0, w - 1, h - 1)
            return StageResult([self.aligner.align(rgb, box)], fallback=True)
        if pick == "central":
            chosen = [central_face(dets, rgb.shape[1], rgb.shape[0])]
        else:
            chosen = select_faces(dets, multi=pick == "all", skip_multi=pick == "only")
        if not chosen:
            return StageResult(reason=too_many_faces(len(dets)), found=len(dets))
        return StageResult([align_detection(self.aligner, rgb, d) for d in chosen], found=len(dets))

    def photo(self, load: Callable[[], np.ndarray], name: Optional[str] = None) -> StageResult:
        """``find`` on the photo ``load()`` reads, through ``guarded``."""
        return guarded(lambda: self.find(load()), name)


def guarded(work: Callable[[], StageResult], name: Optional[str] = None) -> StageResult:
    """``work()``'s result, or the reason it failed: a photo that cannot be read or processed
    gives its reason instead of an exception (one bad photo must not stop a batch)."""
    try:
        return work()
    except ImageLoadError as exc:
        return StageResult(reason=exc.reason)
    except Exception as exc:  # noqa: BLE001 - reported per photo, with its type
        log.debug("unexpected error on %s", name, exc_info=True)
        return StageResult(reason=f"{type(exc).__name__}: {exc}")
