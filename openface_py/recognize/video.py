"""Face recognition on video (files or a camera), fast enough for live use on a CPU.

Per frame: HOG detection on a downscaled copy every ``detect_every`` frames (and whenever a
track is lost or there are no tracks); in between, each face is followed on the downscaled
frame by a tracker: ``template`` (default: normalised cross-correlation of the face's grey
patch near its last position, ~1 ms per face) or ``correlation`` (dlib's correlation tracker,
which also follows changes of size, ~6-10 ms per face on a 2-core CPU). Each track is recognised (align on the full
frame + embed + classifier or gallery) when it starts and then every ``recognise_every``
frames; its displayed name is the majority of its last few answers, so a single unsure frame
does not flip it. A recognition that contradicts the track starts a new identity vote (and a
new track number): the face's embedding moved farther than the model's same-person threshold
from the track's, or it is named as another person (not unknown). That is how a cut to another
person at the same place is seen; a face the tracker lost and detection found again is
recognised at once. ``annotate`` draws boxes, names and the frame rate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.faces.align import dlib_box_for, make_aligner
from openface_py.faces.detect import BoundingBox, DetectorSpec
from openface_py.io import TEMP_PREFIX, fsync_dir
from openface_py.nets.embedders import Embedder
from openface_py.recognize.classify import UNKNOWN

log = logging.getLogger(__name__)

#: Recognise embeddings -> one (name, confidence or distance) per row.
Recogniser = Callable[[np.ndarray], list[tuple[str, float]]]


def classifier_recogniser(model, threshold: Optional[float] = None) -> Recogniser:
    """Names from a trained classifier (``classify.TrainedModel``), with its unknown threshold."""

    def recognise(reps: np.ndarray) -> list[tuple[str, float]]:
        return [(p.name, float(p.confidence)) for p in model.predict(reps, threshold=threshold)]

    return recognise


def gallery_recogniser(gallery, threshold: float) -> Recogniser:
    """Names from a gallery (``gallery.Gallery``): the nearest person within ``threshold``."""
    from openface_py.recognize.gallery import identify

    def recognise(reps: np.ndarray) -> list[tuple[str, float]]:
        return [(answer, dist) for answer, _, dist in identify(gallery, reps, threshold, UNKNOWN)]

    return recognise


@dataclass
class TrackedFace:
    track: int
    box: BoundingBox
    name: str
    score: float  # the classifier's confidence or the gallery distance of the last recognition


@dataclass
class FrameResult:
    index: int
    faces: list[TrackedFace]
    detected: bool  # detection ran on this frame
    recognised: int  # faces embedded on this frame
    seconds: float

    def to_json(self) -> dict:
        return {
            "frame": self.index,
            "detected": self.detected,
            "recognised": self.recognised,
            "ms": round(1000 * self.seconds, 2),
            "faces": [
                {"track": f.track, "box": f.box.as_list(), "name": f.name, "score": round(f.score, 4)}
                for f in self.faces
            ],
        }


@dataclass
class _Track:
    id: int
    tracker: object
    box: BoundingBox  # full-frame coordinates
    last_recognised: int = -(10**9)
    answers: deque = field(default_factory=lambda: deque(maxlen=5))
    score: float = 0.0
    embeddings: deque = field(default_factory=lambda: deque(maxlen=5))  # of the current vote
    lost: bool = False  # the tracker lost it on this frame: recognise again once re-detected

    def contradicts(self, rep: np.ndarray, name: str, jump: Optional[float]) -> bool:
        """Whether a new recognition (embedding, answer) is another person than this track's vote:
        named as someone else, or farther than ``jump`` (squared L2) from the vote's mean embedding."""
        if not self.answers:
            return False
        if name != UNKNOWN and self.name not in (UNKNOWN, name):
            return True
        if jump is None:
            return False
        mean = np.mean(np.stack(self.embeddings), axis=0)
        return float(np.sum((np.asarray(rep, np.float64) - mean) ** 2)) > jump

    @property
    def name(self) -> str:
        if not self.answers:
            return UNKNOWN
        return Counter(self.answers).most_common(1)[0][0]


class TemplateTracker:
    """Follows a face by matching its grey patch (OpenCV ``matchTemplate``, normalised
    correlation coefficient) inside a window ``search`` box-sizes around its last position.

    Translation only: the box keeps its size until the next detection renews track and
    template. ``update`` returns the best correlation (1 = identical patch), the quality.
    """

    def __init__(self, gray: np.ndarray, left: int, top: int, right: int, bottom: int, search: float = 0.5) -> None:
        h, w = gray.shape[:2]
        left, top = max(0, int(left)), max(0, int(top))
        right, bottom = min(w - 1, int(right)), min(h - 1, int(bottom))
        self.template = np.ascontiguousarray(gray[top : bottom + 1, left : right + 1])
        self.left, self.top = left, top
        self.search = search

    def update(self, gray: np.ndarray) -> float:
        import cv2

        th, tw = self.template.shape[:2]
        if th < 4 or tw < 4:
            return -1.0
        h, w = gray.shape[:2]
        m = max(4, int(self.search * max(th, tw)))
        x0, y0 = max(0, self.left - m), max(0, self.top - m)
        x1, y1 = min(w, self.left + tw + m), min(h, self.top + th + m)
        if x1 - x0 < tw or y1 - y0 < th:
            return -1.0  # the face left the frame
        scores = cv2.matchTemplate(gray[y0:y1, x0:x1], self.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (dx, dy) = cv2.minMaxLoc(scores)
        self.left, self.top = x0 + dx, y0 + dy
        return float(best)

    def position(self) -> tuple[float, float, float, float]:
        th, tw = self.template.shape[:2]
        return self.left, self.top, self.left + tw - 1, self.top + th - 1


class _DlibCorrelationTracker:
    """dlib's correlation tracker behind ``TemplateTracker``'s interface (quality = its PSR)."""

    def __init__(self, rgb: np.ndarray, left: int, top: int, right: int, bottom: int) -> None:
        import dlib

        self.tracker = dlib.correlation_tracker()
        self.tracker.start_track(rgb, dlib.rectangle(int(left), int(top), int(right), int(bottom)))

    def update(self, rgb: np.ndarray) -> float:
        return float(self.tracker.update(rgb))

    def position(self) -> tuple[float, float, float, float]:
        p = self.tracker.get_position()
        return p.left(), p.top(), p.right(), p.bottom()


#: Tracker name -> the quality below which a track counts as lost (NCC for template, PSR for dlib).
TRACKERS = {"template": 0.5, "correlation": 7.0}


def iou(a: BoundingBox, b: BoundingBox) -> float:
    ix = max(0, min(a.right, b.right) - max(a.left, b.left) + 1)
    iy = max(0, min(a.bottom, b.bottom) - max(a.top, b.top) + 1)
    inter = ix * iy
    return inter / float(a.area + b.area - inter) if inter else 0.0


class VideoRecognizer:
    """Stateful per-stream recogniser: call ``process(rgb)`` on consecutive frames."""

    def __init__(
        self,
        embedder: Embedder,
        recognise: Recogniser,
        scale: float = 0.5,
        detect_every: int = 10,
        recognise_every: int = 15,
        tracker: str = "template",
        min_track_quality: Optional[float] = None,
        detector: DetectorSpec = DetectorSpec("hog", upsample=0),
        new_identity_distance: Optional[float] = None,
    ) -> None:
        """``detector``: how faces are found on the scaled frame (``scale``).
        ``new_identity_distance``: the squared-L2 move of a track's embedding that starts a new
        identity vote (default: the embedder's same-person threshold; None there: names only)."""
        check_options(scale, tracker)
        self.embedder = embedder
        self.jump = embedder.same_person_threshold if new_identity_distance is None else new_identity_distance
        self.recognise = recognise
        self.aligner = make_aligner(embedder.alignment)
        # on the scaled frame; tracked faces are aligned from dlib's landmarks in the tracked box
        self.detector = detector.make()
        self.scale = scale
        self.detect_every = max(1, int(detect_every))
        self.recognise_every = max(1, int(recognise_every))
        self.tracker = tracker
        self.min_track_quality = TRACKERS[tracker] if min_track_quality is None else min_track_quality
        self.reset()

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        if self.scale == 1:
            return rgb
        h, w = rgb.shape[:2]
        return cv2.resize(
            rgb, (max(1, round(w * self.scale)), max(1, round(h * self.scale))), interpolation=cv2.INTER_AREA
        )

    def _to_full(self, left: float, top: float, right: float, bottom: float, shape) -> BoundingBox:
        s = 1.0 / self.scale
        h, w = shape[:2]
        return BoundingBox(
            max(0, int(left * s)), max(0, int(top * s)), min(w - 1, int(right * s)), min(h - 1, int(bottom * s))
        )

    def reset(self) -> None:
        """Forget every track (a new stream or a scene cut); the models stay loaded."""
        self.tracks: list[_Track] = []
        self.frame = 0
        self._next_id = 1

    def _track_image(self, small: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY) if self.tracker == "template" else small

    def _start_tracker(self, image: np.ndarray, box: BoundingBox):
        s = self.scale
        corners = (box.left * s, box.top * s, box.right * s, box.bottom * s)
        if self.tracker == "template":
            return TemplateTracker(image, *corners)
        return _DlibCorrelationTracker(image, *corners)

    def _detect(self, rgb: np.ndarray, small: np.ndarray, image: np.ndarray) -> None:
        found = []
        for d in self.detector.detect(small):
            # tracks are aligned from dlib's landmarks: MTCNN's box goes into dlib's convention
            b = dlib_box_for(d.raw_box or d.box) if d.found_by == "mtcnn" else d.box
            found.append(self._to_full(b.left, b.top, b.right, b.bottom, rgb.shape))
        kept: list[_Track] = []
        unmatched = list(range(len(found)))
        for tr in self.tracks:
            best = max(unmatched, key=lambda j: iou(tr.box, found[j]), default=None)
            if best is not None and iou(tr.box, found[best]) > 0.3:
                unmatched.remove(best)
                tr.box = found[best]
                tr.tracker = self._start_tracker(image, tr.box)
                if tr.lost:  # the face changed under the tracker (a cut, a turn): look again now
                    tr.last_recognised = -(10**9)
                    tr.lost = False
                kept.append(tr)
        for j in unmatched:
            kept.append(_Track(self._next_id, self._start_tracker(image, found[j]), found[j]))
            self._next_id += 1
        self.tracks = kept

    def _new_identity(self, tr: _Track) -> None:
        """Another person under an existing track: a new track number and an empty vote."""
        log.debug("frame %d: track %d is another person now (track %d)", self.frame, tr.id, self._next_id)
        tr.id, self._next_id = self._next_id, self._next_id + 1
        tr.answers.clear()
        tr.embeddings.clear()

    def _follow(self, rgb: np.ndarray, image: np.ndarray) -> bool:
        """Move every track; False if one was lost (then the caller re-detects)."""
        lost = False
        for tr in self.tracks:
            quality = tr.tracker.update(image)
            tr.box = self._to_full(*tr.tracker.position(), rgb.shape)
            tr.lost = quality < self.min_track_quality or tr.box.width < 8 or tr.box.height < 8
            lost = lost or tr.lost
        return not lost

    def process(self, rgb: np.ndarray) -> FrameResult:
        """Detect/track and recognise the faces of the next frame (RGB uint8)."""
        t0 = time.perf_counter()
        small = self._small(rgb)
        image = self._track_image(small)
        detected = False
        # tracks are followed on detection frames too: a face that changed under its tracker is
        # then recognised on this frame rather than at its next turn
        followed = self._follow(rgb, image) if self.tracks else False
        if not followed or self.frame % self.detect_every == 0:
            self._detect(rgb, small, image)
            detected = True
        due = [tr for tr in self.tracks if self.frame - tr.last_recognised >= self.recognise_every]
        if due:
            faces = [self.aligner.align(rgb, tr.box).image for tr in due]
            reps = self.embedder.embed(faces)
            for tr, rep, (name, score) in zip(due, reps, self.recognise(reps)):
                if tr.contradicts(rep, name, self.jump):
                    self._new_identity(tr)
                tr.answers.append(name)
                tr.embeddings.append(np.asarray(rep, np.float64))
                tr.score = score
                tr.last_recognised = self.frame
        result = FrameResult(
            self.frame,
            [TrackedFace(tr.id, tr.box, tr.name, tr.score) for tr in sorted(self.tracks, key=lambda t: t.box.left)],
            detected,
            len(due),
            time.perf_counter() - t0,
        )
        self.frame += 1
        return result


def annotate(bgr: np.ndarray, result: FrameResult, fps: Optional[float] = None) -> np.ndarray:
    """Draw boxes, names and the frame rate on a BGR frame (in place; returned for chaining)."""
    import cv2

    for f in result.faces:
        color = (0, 200, 0) if f.name != UNKNOWN else (0, 0, 230)
        cv2.rectangle(bgr, (f.box.left, f.box.top), (f.box.right, f.box.bottom), color, 2)
        label = f"{f.name} #{f.track}"
        y = max(12, f.box.top - 6)
        cv2.putText(bgr, label, (f.box.left, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(bgr, f"{fps:.1f} fps", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return bgr


def frames(source: Union[str, int, Path]) -> Iterator[np.ndarray]:
    """BGR frames of a video file or a camera index; a clear error if it cannot be opened."""
    import cv2

    cap = cv2.VideoCapture(int(source) if isinstance(source, int) or str(source).isdigit() else str(source))
    if not cap.isOpened():
        raise OpenFacePyError(f"{source}: cannot open this video or camera")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def process_video(
    source: Union[str, int, Path],
    recognizer: VideoRecognizer,
    output: Optional[Path] = None,
    fps_out: float = 25.0,
    on_frame: Optional[Callable[[np.ndarray, FrameResult, float], None]] = None,
    results_path: Optional[Path] = None,
) -> dict:
    """Run ``recognizer`` over every frame; optionally write an annotated video and JSON lines.

    Returns a summary (frames, seconds of processing, mean fps of the recogniser alone).
    """

    writer = None
    tmp_output = None
    if output is not None:  # written beside the target, renamed when complete: never a half video
        output = Path(output)
        if not output.parent.is_dir():
            raise OpenFacePyError(f"{output}: folder {output.parent} does not exist")
        tmp_output = output.with_name(f"{TEMP_PREFIX}{output.stem}.{os.getpid()}{output.suffix or '.mp4'}")
    out_lines = open(results_path, "w", encoding="utf-8") if results_path else None
    busy = 0.0
    n = 0
    recent: deque = deque(maxlen=30)
    try:
        for bgr in frames(source):
            rgb = np.ascontiguousarray(bgr[:, :, ::-1])
            res = recognizer.process(rgb)
            busy += res.seconds
            recent.append(res.seconds)
            fps = len(recent) / sum(recent) if sum(recent) > 0 else 0.0
            n += 1
            if out_lines:
                out_lines.write(json.dumps(res.to_json()) + "\n")
            if output is not None or on_frame is not None:
                annotate(bgr, res, fps)
            if output is not None:
                if writer is None:
                    h, w = bgr.shape[:2]
                    writer = _open_writer(tmp_output, fps_out, (w, h), output)
                writer.write(bgr)
            if on_frame is not None:
                on_frame(bgr, res, fps)
        if writer is not None:
            writer.release()
            writer = None
            if not tmp_output.is_file() or tmp_output.stat().st_size == 0:
                raise OpenFacePyError(f"{output}: the video writer wrote nothing")
            with open(tmp_output, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_output, output)
            fsync_dir(output.parent)
    finally:
        if writer is not None:
            writer.release()
        if tmp_output is not None and tmp_output.exists():
            tmp_output.unlink()
        if out_lines:
            out_lines.close()
    return {"frames": n, "seconds": round(busy, 3), "fps": round(n / busy, 1) if busy else 0.0}


def check_options(scale: float = 0.5, tracker: str = "template") -> None:
    """Refuse settings ``VideoRecognizer`` cannot use (before any model or gallery is loaded)."""
    if not 0 < scale <= 1:
        raise UsageError("scale must be in (0, 1]")
    if tracker not in TRACKERS:
        raise UsageError(f"unknown tracker {tracker!r} (choose from {', '.join(TRACKERS)})")


def _open_writer(path: Path, fps: float, size: tuple[int, int], shown: Path):
    """An mp4v VideoWriter, or an error saying why not (OpenCV gives no reason: a bad folder,
    a suffix OpenCV cannot write, or a missing codec)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise OpenFacePyError(
            f"{shown}: OpenCV cannot write this video (codec mp4v, {size[0]}x{size[1]}); use a .mp4 name "
            "in an existing, writable folder"
        )
    return writer


def make_recognizer(
    classifier: Optional[Path] = None,
    gallery_dir: Optional[Path] = None,
    model: Optional[str] = None,
    threshold: Optional[float] = None,
    progress: bool = False,
    device: str = "auto",
    **options,
) -> VideoRecognizer:
    """A ``VideoRecognizer`` naming faces with a classifier file from ``train`` or a gallery folder.

    The embedder is ``model``, else the one the classifier was trained with (weights given by
    path must be given again: ``TrainedModel.embedder_model``).
    ``options`` go to ``VideoRecognizer`` (scale, detect_every, ...). ``device``: where MTCNN and
    the embedder run (``openface_py.device``).
    """
    from openface_py.device import resolve_device
    from openface_py.nets.embed import load_embedder

    where = resolve_device(device)
    options["detector"] = replace(options.get("detector", DetectorSpec("hog", upsample=0)), device=where)
    if (classifier is None) == (gallery_dir is None):
        raise UsageError("give a classifier model file or a gallery folder (one of them)")
    check_options(**{k: options[k] for k in ("scale", "tracker") if k in options})
    if classifier is not None:
        from openface_py.recognize.modelfile import load_model

        trained = load_model(classifier)
        embedder = load_embedder(trained.embedder_model(model), device=where)
        if embedder.identity != trained.embedder_identity:
            raise UsageError(
                f"{classifier} was trained on {trained.embedder_identity}, not {embedder.identity}: give the "
                "weights it was trained on (--model)"
            )
        return VideoRecognizer(embedder, classifier_recogniser(trained, threshold), **options)
    from openface_py.pipeline import FacePipeline
    from openface_py.recognize.gallery import build_gallery, open_set_threshold

    embedder = load_embedder(model, device=where)
    limit = threshold if threshold is not None else embedder.same_person_threshold
    if limit is None:  # before the gallery is embedded
        raise UsageError(f"{embedder.name} has no calibrated same-person threshold; give one (--threshold)")
    # the gallery's photos at their own size, upsampled once as for `identify`, and aligned from
    # dlib's 68 landmarks as tracked faces are (a track has a box, no MTCNN points)
    photos = replace(options["detector"], upsample=1, align_from="dlib68")
    gallery = build_gallery(gallery_dir, FacePipeline(photos, embedder=embedder), progress=progress)
    if threshold is None:  # 1:N, as `identify` against a gallery folder
        limit = open_set_threshold(gallery, embedder)
    return VideoRecognizer(embedder, gallery_recogniser(gallery, limit), **options)
