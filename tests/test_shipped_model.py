"""Tests of the shipped weights in models/ through openface_py.nets.embed.

The shipped NN4-small2 weights (models/nn4.small2.distilled-v2.pt): pinned, default, and working."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import LFW, needs_lfw

from openface_py import store
from openface_py.errors import WeightsError
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
from openface_py.nets.embed import best_installed_model, load_embedder, model_statuses

SHIPPED = store.project_models_dir() / store.NN4_SMALL2_DISTILLED.filename


def test_shipped_file_matches_its_pinned_sha256():
    assert SHIPPED.is_file(), f"{SHIPPED} is missing from the checkout"
    assert store.sha256sum(SHIPPED) == store.NN4_SMALL2_DISTILLED.sha256
    assert 10e6 < SHIPPED.stat().st_size < 20e6


@pytest.fixture
def no_official(tmp_path, monkeypatch):
    """An empty weights cache; the checkout's models/ as it is (without the official weights)."""
    if (store.project_models_dir() / store.NN4_SMALL2_V1_FILES["pt"].filename).exists():
        pytest.skip("the official nn4.small2.v1 weights are in models/ here")
    monkeypatch.setenv("OPENFACE_PY_HOME", str(tmp_path / "home"))


def test_it_is_the_default_without_the_official_weights(no_official):
    assert best_installed_model() == NN4_SMALL2_DISTILLED
    emb = load_embedder()
    assert emb.name == NN4_SMALL2_DISTILLED
    assert emb.identity == "nn4.small2.distilled-v2|openface-affine/96/outerEyesAndNose"
    listed = {st.name: st for st in model_statuses()}
    assert listed[NN4_SMALL2_DISTILLED].installed and not listed["nn4.small2.v1"].installed


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "models"
    bad.mkdir()
    data = bytearray(SHIPPED.read_bytes())
    data[-100] ^= 0xFF
    (bad / SHIPPED.name).write_bytes(bytes(data))
    monkeypatch.setattr(store, "project_models_dir", lambda: bad)
    with pytest.raises(WeightsError, match="does not match the pinned"):
        load_embedder(NN4_SMALL2_DISTILLED)


def test_sample_people_are_separated(aligned_openface):
    """The 10 sample people (LFW photos; LFW pairs people were kept out of training)."""
    from openface_py.jobs.represent import represent_folder

    res = represent_folder(
        aligned_openface,
        aligned_openface.parent / "reps-distilled",
        load_embedder(NN4_SMALL2_DISTILLED),
        progress=False,
    )
    labels = np.array(res.labels)
    x = res.reps.astype(np.float64)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(labels), dtype=bool)
    ordered = total = 0
    for i in range(len(labels)):
        s, o = d[i][same[i] & off[i]], d[i][~same[i]]
        ordered += int((s[:, None] < o[None]).sum())
        total += s.size * o.size
    assert ordered / total >= 0.97
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(1)] == labels).mean() >= 0.95


@needs_lfw
def test_lfw_pairs_are_ordered():
    """First 10 same and 10 different pairs of pairs.txt fold 1: every same-person distance is
    compared with every different-person one."""
    from openface_py.eval.protocol import image_name, parse_pairs
    from openface_py.faces.align import OpenFaceAligner
    from openface_py.faces.detect import HogDetector
    from openface_py.io import load_image

    pairs, _, per = parse_pairs(LFW / "pairs.txt")
    chosen = pairs[:10] + pairs[per : per + 10]
    det, aligner, emb = HogDetector(1), OpenFaceAligner(), load_embedder(NN4_SMALL2_DISTILLED)

    def rep(name: str, num: int) -> np.ndarray:
        rgb = load_image(LFW / "deepfunneled" / image_name(name, num))
        box = max(det.detect(rgb), key=lambda d: d.box.area).box
        return emb.embed([aligner.align(rgb, box).image])[0]

    dist = np.array([np.sum((rep(p.name1, p.num1) - rep(p.name2, p.num2)) ** 2) for p in chosen])
    same, diff = dist[:10], dist[10:]
    assert (same[:, None] < diff[None]).mean() >= 0.95
    assert np.median(same) < np.median(diff)
