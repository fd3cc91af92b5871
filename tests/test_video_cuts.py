"""Tests of openface_py.recognize.video.

Video: a person replaced by another at the same place (a cut) gets the new person's name
(issue 24 item 13). The clip is written here from the sample photos with cv2.VideoWriter: 40
frames of Blair, then 40 of Powell, then 40 of Clapton, each face tile at the same position."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, SAMPLE, shipped_lfw_threshold

from openface_py.faces.detect import DetectorSpec
from openface_py.io import load_image
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
from openface_py.nets.embed import load_embedder
from openface_py.pipeline import FacePipeline
from openface_py.recognize.classify import train_model
from openface_py.recognize.gallery import build_gallery
from openface_py.recognize.video import VideoRecognizer, classifier_recogniser, gallery_recogniser, process_video

W, H, SIDE, AT = 640, 480, 300, (170, 90)
SEGMENT = 40
CUT = ["Tony_Blair", "Colin_Powell", "Eric_Clapton"]
#: the largest lag, in frames after a cut, before the new name shows (one recognition period)
RECOGNISE_EVERY = 15


def tile(rgb: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    return cv2.resize(rgb[top : top + side, left : left + side, ::-1], (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)


def make_cut_clip(path) -> list[str]:
    """The clip; returns the expected name per frame."""
    tiles = [
        tile(load_image(SAMPLE / "Tony_Blair" / "Tony_Blair_0009.jpg"), 50, 50, 150),
        tile(load_image(SAMPLE / "Colin_Powell" / "Colin_Powell_0009.jpg"), 50, 50, 150),
        tile(load_image(EXAMPLES / "clapton-2.jpg"), 145, 22, 255),  # the face with LFW's margin
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    expected = []
    for name, face in zip(CUT, tiles):
        for _ in range(SEGMENT):
            frame = np.full((H, W, 3), 60, np.uint8)
            frame[AT[1] : AT[1] + SIDE, AT[0] : AT[0] + SIDE] = face
            writer.write(frame)
            expected.append(name)
    writer.release()
    return expected


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Blair and Powell (photos 1-4, not the clip's 9), Chavez and Bush as distractors, and Clapton's
    two photos (KNN names a single Clapton photo's neighbour Chavez: a classifier's limit, not the
    tracker's)."""
    folder = tmp_path_factory.mktemp("cut-gallery")
    for person in ("Tony_Blair", "Colin_Powell", "Hugo_Chavez", "George_W_Bush"):
        (folder / person).mkdir()
        for n in range(1, 5):
            shutil.copy(SAMPLE / person / f"{person}_{n:04d}.jpg", folder / person)
    (folder / "Eric_Clapton").mkdir()
    for photo in ("clapton-1.jpg", "clapton-2.jpg"):
        shutil.copy(EXAMPLES / photo, folder / "Eric_Clapton")
    embedder = load_embedder(NN4_SMALL2_DISTILLED)
    return embedder, build_gallery(
        folder, FacePipeline(DetectorSpec("hog", upsample=1), embedder=embedder), progress=False
    )


def names_per_frame(tmp_path, recognizer) -> tuple[list[str], list[str], list[dict]]:
    clip = tmp_path / "cut.mp4"
    expected = make_cut_clip(clip)
    process_video(clip, recognizer, results_path=tmp_path / "frames.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) and all(len(r["faces"]) == 1 for r in rows)
    return [r["faces"][0]["name"] for r in rows], expected, rows


def runs(names: list[str]) -> list[tuple[int, str]]:
    """(first frame, name) where the name changes."""
    return [(i, n) for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def check(got: list[str], expected: list[str]) -> None:
    """Every frame named right, but for at most one recognition period after each cut."""
    wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    late = [i for i in wrong if i % SEGMENT >= RECOGNISE_EVERY or i < SEGMENT]
    assert not late, [(i, got[i], expected[i]) for i in wrong]


def check_tracks(rows: list[dict]) -> None:
    """A new track number for each person, from at most one recognition period after the cut."""
    starts = runs([str(r["faces"][0]["track"]) for r in rows])
    assert [i // SEGMENT for i, _ in starts] == [0, 1, 2], starts
    assert all(i % SEGMENT < RECOGNISE_EVERY for i, _ in starts), starts


def recognizer(embedder, recognise) -> VideoRecognizer:
    return VideoRecognizer(embedder, recognise, scale=0.5, detect_every=10, recognise_every=RECOGNISE_EVERY)


def test_cut_at_the_same_place_with_a_gallery(gallery, tmp_path):
    embedder, g = gallery
    got, expected, rows = names_per_frame(
        tmp_path, recognizer(embedder, gallery_recogniser(g, shipped_lfw_threshold()))
    )
    check(got, expected)
    check_tracks(rows)


def test_cut_at_the_same_place_with_a_classifier(gallery, tmp_path):
    embedder, g = gallery
    model = train_model(g.reps, g.names, "KNN", embedder.name, embedder.identity, {}, open_set=False)
    got, expected, rows = names_per_frame(tmp_path, recognizer(embedder, classifier_recogniser(model)))
    check(got, expected)
    check_tracks(rows)


def test_a_jump_of_the_embedding_alone_starts_a_new_track(gallery, tmp_path):
    """With a threshold no face passes, every answer is unknown: names cannot tell the cut, the
    embedding's move (beyond the model's same-person threshold) does."""
    embedder, g = gallery
    got, expected, rows = names_per_frame(tmp_path, recognizer(embedder, gallery_recogniser(g, 1e-9)))
    assert set(got) == {"unknown"}
    check_tracks(rows)
