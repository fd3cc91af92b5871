"""Tests of openface_py.recognize.video.

Video: a clip made from sample photos is processed end to end with the right names on the right frames."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import SAMPLE, cli, shipped_lfw_threshold

from openface_py.faces.detect import DetectorSpec
from openface_py.io import load_image
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
from openface_py.nets.embed import load_embedder
from openface_py.pipeline import FacePipeline
from openface_py.recognize.gallery import build_gallery
from openface_py.recognize.video import VideoRecognizer, gallery_recogniser, process_video

W, H = 640, 480


def face_tile(person: str, num: int, size: int = 300) -> np.ndarray:
    """The central 150x150 of an LFW photo (the face and some margin), as a size x size BGR tile."""
    rgb = load_image(SAMPLE / person / f"{person}_{num:04d}.jpg")
    return cv2.resize(rgb[50:200, 50:200, ::-1], (size, size), interpolation=cv2.INTER_CUBIC)


def make_clip(path) -> list[list[str]]:
    """30 frames of Blair moving right, 30 of Powell moving down, 30 of both; returns the names per frame."""
    segments = [
        ([("Tony_Blair", 9, lambda i: (20 + 3 * i, 90))], ["Tony_Blair"]),
        ([("Colin_Powell", 9, lambda i: (330, 20 + 2 * i))], ["Colin_Powell"]),
        (
            [("Tony_Blair", 10, lambda i: (10, 90)), ("Colin_Powell", 10, lambda i: (330, 90))],
            ["Tony_Blair", "Colin_Powell"],
        ),
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    expected = []
    for people, names in segments:
        tiles = [(face_tile(p, n), where) for p, n, where in people]
        for i in range(30):
            frame = np.full((H, W, 3), 60, np.uint8)
            for tile, where in tiles:
                x, y = where(i)
                frame[y : y + 300, x : x + 300] = tile
            writer.write(frame)
            expected.append(names)
    writer.release()
    return expected


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    gallery = tmp_path_factory.mktemp("gallery")
    for person in ("Tony_Blair", "Colin_Powell", "Hugo_Chavez", "George_W_Bush"):
        (gallery / person).mkdir()
        for n in range(1, 5):
            shutil.copy(SAMPLE / person / f"{person}_{n:04d}.jpg", gallery / person)
    embedder = load_embedder(NN4_SMALL2_DISTILLED)
    g = build_gallery(gallery, FacePipeline(DetectorSpec("hog", upsample=1), embedder=embedder), progress=False)
    return lambda tracker="template": VideoRecognizer(
        embedder,
        gallery_recogniser(g, shipped_lfw_threshold()),  # from its LFW run, not the code under test
        scale=0.5,
        detect_every=10,
        recognise_every=15,
        tracker=tracker,
    )


@pytest.mark.parametrize("tracker", ["template", "correlation"])
def test_clip_names_on_the_expected_frames(recognizer, tracker, tmp_path):
    clip = tmp_path / "clip.mp4"
    expected = make_clip(clip)
    summary = process_video(
        clip, recognizer(tracker), output=tmp_path / "out.mp4", results_path=tmp_path / "frames.jsonl"
    )
    assert summary["frames"] == 90
    rows = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    got = [[f["name"] for f in r["faces"]] for r in rows]
    wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    # a scene cut may take one frame to settle (the old track is dropped at the next detection)
    assert all(i % 30 == 0 for i in wrong), [(i, got[i], expected[i]) for i in wrong]
    assert sum(r["detected"] for r in rows) < 30  # tracked, not detected, on most frames
    # between detections the box follows the face: Blair moves 3 px right per frame in frames 0-29
    # (measured from the box of the last detection: HOG's own boxes vary in size and place)
    centre = [(rows[i]["faces"][0]["box"][0] + rows[i]["faces"][0]["box"][2]) / 2 for i in range(30)]
    last = 0
    for i in range(30):
        if rows[i]["detected"]:
            last = i
        assert abs(centre[i] - centre[last] - 3 * (i - last)) <= 8, (i, last, centre)
    # the annotated video is readable and as long as the input
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 90
    cap.release()


def test_cli_video_with_a_classifier(tmp_path):
    clip = tmp_path / "clip.mp4"
    make_clip(clip)
    reps = tmp_path / "reps"
    people = tmp_path / "people"
    for person in ("Tony_Blair", "Colin_Powell", "Hugo_Chavez", "George_W_Bush"):
        (people / person).mkdir(parents=True)
        for n in range(1, 9):
            shutil.copy(SAMPLE / person / f"{person}_{n:04d}.jpg", people / person)

    def ok(*a):
        r = cli(*a)
        assert r.returncode == 0, r.stderr
        return r.stdout

    ok("run", str(people), str(reps))
    ok("train", str(reps), "-o", str(tmp_path / "knn.pkl"), "--classifier", "KNN")
    out = json.loads(
        ok(
            "video",
            str(clip),
            "--classifier",
            str(tmp_path / "knn.pkl"),
            "--results",
            str(tmp_path / "f.jsonl"),
            "--json",
        )
    )
    assert out["frames"] == 90
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [f["name"] for f in rows[45]["faces"]] == ["Colin_Powell"]
    assert [f["name"] for f in rows[75]["faces"]] == ["Tony_Blair", "Colin_Powell"]


def test_unreadable_source_is_a_clear_error(tmp_path):
    from openface_py.errors import OpenFacePyError
    from openface_py.recognize.video import frames

    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"nothing here")
    with pytest.raises(OpenFacePyError, match="cannot open"):
        next(frames(bad))
