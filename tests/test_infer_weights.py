"""Tests of openface_py.cli.people (infer), cli.video.

`infer` (and `video --classifier`) with a classifier trained on weights given by path
(issue 23 item 7): the classifier knows its weights only by their SHA-256, so `--model PATH`
gives them again and is checked against it."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import ROOT, SAMPLE, cli

PEOPLE = ("Colin_Powell", "Tony_Blair", "Jacques_Chirac")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, empty_home):
    """Weights that differ from the shipped file by 1e-4 in one bias (so they are known by SHA-256),
    `run` with them on 4 photos of 3 people, and a classifier trained on that."""
    base = tmp_path_factory.mktemp("infer-path")
    state = torch.load(ROOT / "models" / "nn4.small2.distilled-v2.pt", map_location="cpu", weights_only=True)
    state["conv1.bias"] = state["conv1.bias"] + 1e-4
    weights = base / "tuned.pt"
    torch.save(state, weights)
    photos = base / "photos"
    for person in PEOPLE:
        (photos / person).mkdir(parents=True)
        for k in range(1, 5):
            shutil.copy(SAMPLE / person / f"{person}_000{k}.jpg", photos / person)
    rc, out, err = cli("run", str(photos), str(base / "reps"), "--model", str(weights), "--workers", "1",
                        "--detector", "hog")  # fmt: skip
    assert rc == 0, err
    rc, out, err = cli("train", str(base / "reps"), "-o", str(base / "clf.skops"), "--no-open-set")
    assert rc == 0, err
    return weights, base / "clf.skops"


def test_infer_with_the_weights_given_by_path(trained):
    weights, clf = trained
    photo = SAMPLE / "Tony_Blair" / "Tony_Blair_0008.jpg"
    rc, out, err = cli("infer", str(clf), str(photo), "--model", str(weights))
    assert rc == 0 and "Predict Tony_Blair" in out, out + err


def test_infer_without_the_weights_says_which_to_give(trained):
    weights, clf = trained
    photo = str(SAMPLE / "Tony_Blair" / "Tony_Blair_0008.jpg")
    rc, out, err = cli("infer", str(clf), photo)
    assert rc == 2 and "nn4.small2@sha256:" in err and "--model PATH" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    rc, out, err = cli("infer", str(clf), photo, "--model", "nn4.small2.distilled-v2")  # other weights
    assert rc == 2 and "give the weights it was trained on" in err and "Traceback" not in err, err


def test_video_classifier_with_the_weights_given_by_path(trained, tmp_path):
    from openface_py.recognize.video import make_recognizer

    weights, clf = trained
    rec = make_recognizer(clf, None, str(weights))
    assert rec.embedder.identity.startswith("nn4.small2@sha256:")


def test_models_convert_of_a_skops_file_says_it_is_already_safe(trained, tmp_path):
    """Before: 'persistent IDs in protocol 0 must be ASCII strings' (pickle's words for a zip)."""
    weights, clf = trained
    rc, out, err = cli("models", "convert", str(clf), "-o", str(tmp_path / "new.skops"), "--trust-pickle")
    assert rc == 2 and "already in the safe format" in err and "Traceback" not in err, err
    assert not (tmp_path / "new.skops").exists()
