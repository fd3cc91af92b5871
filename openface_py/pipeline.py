"""``FacePipeline``: detect -> align -> embed for one image (the face stage and an embedder),
used by the CLI, the service, video, galleries and the Python API."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from openface_py.device import resolve_device
from openface_py.faces.align import AlignedFace, AlignmentSpec
from openface_py.faces.detect import BoundingBox, Detector, DetectorSpec
from openface_py.faces.stage import FaceStage, FaceStageSpec, pick_of
from openface_py.nets.embed import alignment_for, load_embedder
from openface_py.nets.embedders import Embedder


@dataclass
class FaceResult:
    """One face in a photo: box, detector score, landmarks, aligned image, embedding, and which
    landmarks aligned it (``dlib68``, ``mtcnn5`` or ``dlib5``: dlib's chip)."""

    box: BoundingBox
    score: float
    landmarks: np.ndarray
    aligned: np.ndarray
    embedding: Optional[np.ndarray] = None
    aligned_from: str = "dlib68"

    def to_json(self) -> dict:
        out = {"box": self.box.as_list(), "score": round(self.score, 4), "aligned_from": self.aligned_from}
        if self.embedding is not None:
            out["embedding"] = [round(float(v), 7) for v in self.embedding]
        return out


@dataclass
class PhotoResult:
    """The faces a photo gave (``faces``) and how many the detector found (``found``: more than
    ``len(faces)`` when only the largest was kept)."""

    faces: list[FaceResult] = field(default_factory=list)
    found: int = 0


class FacePipeline:
    """A face stage (detector + aligner) and, optionally, an embedder, built once and reused.

    The alignment defaults to the one the embedder needs, so the pieces always match.
    """

    def __init__(
        self,
        detector: DetectorSpec | str | None = None,
        embedder: Optional[Embedder] = None,
        alignment: Optional[AlignmentSpec] = None,
    ) -> None:
        if alignment is None:
            if embedder is None:
                raise ValueError("give an alignment, an embedder, or both")
            alignment = embedder.alignment
        if embedder is not None and alignment != embedder.alignment:
            raise ValueError(f"alignment {alignment.identity} but {embedder.name} needs {embedder.alignment.identity}")
        self.stage = FaceStage(FaceStageSpec(DetectorSpec.of(detector), alignment, pick="all"))
        self.embedder = embedder

    @classmethod
    def create(
        cls,
        model: Optional[str] = None,
        detector: DetectorSpec | str | None = None,
        threads: Optional[int] = None,
        backend: str = "auto",
        device: str = "auto",
        embed: bool = True,
    ) -> FacePipeline:
        """A pipeline for a named model or weights path (``nets.embed.load_embedder``; None: the
        default) and a detector (a ``DetectorSpec`` or a detector's name; None: HOG), with MTCNN and
        the embedder on ``device`` (``auto``: the GPU when torch sees one; ``openface_py.device``).
        ``embed=False``: no embedder, only the model's alignment (faces come out aligned for it, and
        are embedded elsewhere: the service's shared embedder)."""
        where = resolve_device(device)
        spec = replace(DetectorSpec.of(detector), device=where)
        if not embed:
            return cls(spec, alignment=alignment_for(model))
        return cls(spec, embedder=load_embedder(model, threads=threads, backend=backend, device=where))

    @property
    def detector(self) -> Detector:
        return self.stage.detector

    def faces(self, rgb: np.ndarray, multi: bool = True, skip_multi: bool = False) -> list[AlignedFace]:
        """Detect and align: every face left to right (``multi``) or the largest one."""
        return self.stage.find(rgb, pick=pick_of(multi, skip_multi)).faces

    def run(self, rgb: np.ndarray, multi: bool = True, skip_multi: bool = False) -> PhotoResult:
        """Detect, align and embed the faces of one RGB uint8 image, with the number found."""
        found = self.stage.find(rgb, pick=pick_of(multi, skip_multi))
        results = [FaceResult(a.box, a.score, a.landmarks, a.image, aligned_from=a.aligned_from) for a in found.faces]
        if self.embedder is not None and results:
            reps = self.embedder.embed([r.aligned for r in results])
            for r, rep in zip(results, reps):
                r.embedding = rep
        return PhotoResult(results, found.found)

    def process(self, rgb: np.ndarray, multi: bool = True, skip_multi: bool = False) -> list[FaceResult]:
        """Detect, align and embed the faces of one RGB image."""
        return self.run(rgb, multi=multi, skip_multi=skip_multi).faces
