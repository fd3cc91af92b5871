"""recognize/verify.py: one "same person?" rule for compare, the service, galleries and the database."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from conftest import EXAMPLES, cli

from openface_py.recognize.verify import DistanceCalibration, Verification, is_same, squared_distance, verify

PHOTOS = ("clapton-1.jpg", "clapton-2.jpg", "lennon-1.jpg", "lennon-2.jpg")


@pytest.fixture(scope="module")
def reps(default_embedder) -> dict[str, np.ndarray]:
    """The largest face of four example photos (two of Eric Clapton, two of John Lennon)."""
    from openface_py.io import load_image
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline(None, embedder=default_embedder)
    return {name: pipe.process(load_image(EXAMPLES / name), multi=False)[0].embedding for name in PHOTOS}


def test_a_distance_at_the_threshold_is_the_same_person(reps):
    a, b = reps["clapton-1.jpg"], reps["lennon-1.jpg"]
    d = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)) ** 2)
    assert squared_distance(a, b) == pytest.approx(d, rel=1e-12)
    assert squared_distance(a, b) == squared_distance(b, a)
    assert verify(a, a, 0.0).same is True and verify(a, a).distance == 0.0
    exact = squared_distance(a, b)
    assert verify(a, b, exact).same is True
    assert verify(a, b, math.nextafter(exact, 0.0)).same is False
    assert verify(a, b).same is None and is_same(exact, None) is None  # no threshold, no verdict
    with pytest.raises(ValueError):
        squared_distance(np.zeros(0), np.zeros(0))


def test_probability_is_the_platt_sigmoid_of_the_distance(reps):
    cal = DistanceCalibration(a=30.0, b=4.5)  # P = 1 / (1 + exp(-(b - a d))): 0.5 at d = 0.15
    for name in PHOTOS[1:]:
        v = verify(reps["clapton-1.jpg"], reps[name], 0.15, cal)
        assert v.p_same == pytest.approx(1.0 / (1.0 + math.exp(-(4.5 - 30.0 * v.distance))), rel=1e-9)
        assert (v.p_same >= 0.5) == v.same
    assert cal.p_same(0.15) == pytest.approx(0.5)
    assert (np.diff(cal.p_same(np.linspace(0, 2, 50))) < 0).all()  # farther apart, less likely the same
    assert DistanceCalibration.from_json(None) is None
    assert DistanceCalibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    out = verify(reps["clapton-1.jpg"], reps["clapton-2.jpg"], 0.15, cal).to_json()
    assert set(out) == {"method", "distance", "threshold", "same", "p_same"} and out["method"] == "distance"


def test_same_people_and_strangers_with_the_models_threshold(reps, default_embedder):
    """The default model's LFW threshold on people the filenames name: the two photos of each
    person are the same person, the two people are not (four cross pairs)."""
    t = default_embedder.same_person_threshold
    assert t is not None
    assert verify(reps["clapton-1.jpg"], reps["clapton-2.jpg"], t).same
    assert verify(reps["lennon-1.jpg"], reps["lennon-2.jpg"], t).same
    for x in ("clapton-1.jpg", "clapton-2.jpg"):
        for y in ("lennon-1.jpg", "lennon-2.jpg"):
            assert verify(reps[x], reps[y], t) == Verification(squared_distance(reps[x], reps[y]), t, False)


def test_compare_gives_the_librarys_answers(reps, empty_home):
    rc, out, err = cli("compare", *(str(EXAMPLES / p) for p in PHOTOS), "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert len(res["pairs"]) == 6
    for pair in res["pairs"]:
        a, b = (reps[pair[k].rsplit("/", 1)[1]] for k in ("image1", "image2"))
        v = verify(a, b, res["threshold"])
        assert pair["squared_l2"] == pytest.approx(v.distance, abs=1e-4) and pair["same"] == v.same
        people = [pair[k].rsplit("/", 1)[1].split("-")[0] for k in ("image1", "image2")]  # clapton-1.jpg: clapton
        assert pair["same"] == (people[0] == people[1])


def test_the_identification_threshold_holds_the_stranger_rate_for_the_gallery_size(caplog):
    """1:N: the threshold at which a stranger against N independent faces is named with chance
    ``fpir``, checked against the definition 1 - (1 - FAR(t))^N on a curve where FAR(t) is known in
    closed form (log10 FAR linear in t, which the log-FAR interpolation reproduces exactly)."""
    from openface_py.recognize.verify import identification_threshold

    def far_of(t: float) -> float:  # 1e-5 at t = 1.0 up to 1e-2 at t = 1.6
        return 10 ** (-5 + 3 * (t - 1.0) / 0.6)

    curve = [(t, far_of(t)) for t in (1.0, 1.2, 1.4, 1.6)]
    for n in (10, 100, 1000):
        t = identification_threshold(1.5, curve, n, fpir=0.01)
        assert 1.0 < t < 1.5
        assert 1 - (1 - far_of(t)) ** n == pytest.approx(0.01, rel=1e-6)
    # a bigger gallery needs a stricter threshold; never looser than the pair threshold
    assert identification_threshold(1.5, curve, 1000) < identification_threshold(1.5, curve, 10)
    assert identification_threshold(1.1, curve, 2) == 1.1
    # beyond the measured points: the nearest one, with a warning; no curve or one face: the pair threshold
    with caplog.at_level(logging.WARNING, logger="openface_py.recognize.verify"):
        assert identification_threshold(1.5, curve, 10**9) == 1.0
    assert "strangers are named more often" in caplog.text
    assert identification_threshold(1.5, (), 100) == 1.5 and identification_threshold(1.5, curve, 1) == 1.5
