"""``FacePipeline``: detect -> align -> embed for one image, used by the CLI and the demos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from openface_py.faces.align import AlignedFace, Aligner, align_detection, make_aligner
from openface_py.faces.detect import BoundingBox, Detector, make_detector, select_faces
from openface_py.nets.embed import Embedder, load_embedder


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


class FacePipeline:
    """Detector, aligner and (optionally) embedder, built once and reused for many images.

    The aligner defaults to the one the embedder needs, so the pieces always match.
    """

    def __init__(
        self, detector: Detector, aligner: Optional[Aligner] = None, embedder: Optional[Embedder] = None
    ) -> None:
        if aligner is None:
            if embedder is None:
                raise ValueError("give an aligner, an embedder, or both")
            aligner = make_aligner(embedder.alignment)
        if embedder is not None and aligner.spec != embedder.alignment:
            raise ValueError(
                f"aligner makes {aligner.spec.identity} faces but {embedder.name} needs {embedder.alignment.identity}"
            )
        self.detector = detector
        self.aligner = aligner
        self.embedder = embedder

    @classmethod
    def create(
        cls,
        model: Optional[str] = None,
        detector: str = "hog",
        upsample: int = 1,
        threads: Optional[int] = None,
        max_side: Optional[int] = None,
        detector_options: Optional[dict] = None,
    ) -> FacePipeline:
        """A pipeline for a named model (see ``embed.load_embedder``) and detector (``detect.make_detector``,
        with ``detector_options`` such as MTCNN's ``min_face``)."""
        found = make_detector(detector, upsample=upsample, max_side=max_side, **(detector_options or {}))
        return cls(found, embedder=load_embedder(model, threads=threads))

    def faces(self, rgb: np.ndarray, multi: bool = True, skip_multi: bool = False) -> list[AlignedFace]:
        """Detect and align: every face left to right (``multi``) or the largest one."""
        dets = select_faces(self.detector.detect(rgb), multi=multi, skip_multi=skip_multi)
        return [align_detection(self.aligner, rgb, d) for d in dets]

    def process(self, rgb: np.ndarray, multi: bool = True, skip_multi: bool = False) -> list[FaceResult]:
        """Detect, align and embed the faces of one RGB image."""
        aligned = self.faces(rgb, multi=multi, skip_multi=skip_multi)
        results = [FaceResult(a.box, a.score, a.landmarks, a.image, aligned_from=a.aligned_from) for a in aligned]
        if self.embedder is not None and results:
            reps = self.embedder.embed([r.aligned for r in results])
            for r, rep in zip(results, reps):
                r.embedding = rep
        return results
