"""nets/catalog.py: the embedder table, and every name lookup of nets/embed.py reading it (an
embedder is one entry; an unknown name is one error)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from openface_py import store
from openface_py.errors import UnknownNameError, UsageError
from openface_py.faces.align import openface_spec
from openface_py.nets import embed
from openface_py.nets.catalog import (
    DEFAULT_PREFERENCE,
    DLIB_RESNET_V1,
    EMBEDDERS,
    MODEL_NAMES,
    NN4_SMALL2_DISTILLED,
    NN4_SMALL2_V1,
    SAME_PERSON_THRESHOLDS,
    SQUARED_L2,
)
from openface_py.registry import Registry


def test_every_lookup_reads_the_table():
    assert MODEL_NAMES == EMBEDDERS.names() and len(MODEL_NAMES) == 4
    for name in EMBEDDERS:
        entry = EMBEDDERS.get(name)
        assert entry.name == name and entry.metric == SQUARED_L2
        assert embed.alignment_for(name) == entry.alignment and entry.input_size == entry.alignment.size
        assert embed.embedding_dim(name) == entry.dim
        assert embed.same_person_threshold(name) == entry.threshold == SAME_PERSON_THRESHOLDS[name]
    assert [st.name for st in embed.model_statuses()] == list(MODEL_NAMES)
    assert DEFAULT_PREFERENCE == (NN4_SMALL2_V1, NN4_SMALL2_DISTILLED, DLIB_RESNET_V1)
    assert embed.downloadable_models() == (NN4_SMALL2_V1,)
    assert EMBEDDERS.get(NN4_SMALL2_V1).weights.files is store.NN4_SMALL2_V1_FILES


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EMBEDDERS.get(DLIB_RESNET_V1).threshold = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "lookup",
    [
        embed.resolve_model,
        embed.load_embedder,
        embed.describe_model,
        embed.alignment_for,
        embed.embedding_dim,
        embed.installed_weights,
    ],
)
def test_an_unknown_name_is_one_error(lookup):
    with pytest.raises(UnknownNameError, match="unknown model 'nope'") as caught:
        lookup("nope")
    assert isinstance(caught.value, UsageError) and caught.value.choices == MODEL_NAMES


def test_weights_by_path_are_nn4_small2_and_known_by_content(tmp_path):
    """A copy of the shipped NN4-small2 file is that model; a copy of MobileFaceNet's is not a
    model given by path (paths load as NN4-small2), as before the table."""
    models = store.project_models_dir()
    shutil.copy(models / store.NN4_SMALL2_DISTILLED.filename, tmp_path / "a.pt")
    shutil.copy(models / store.MOBILEFACENET_REID0095.filename, tmp_path / "b.pt")
    assert embed.known_weights(tmp_path / "a.pt") == NN4_SMALL2_DISTILLED
    assert embed.known_weights(tmp_path / "b.pt") is None
    assert embed.alignment_for(str(tmp_path / "b.pt")) == openface_spec() and embed.embedding_dim(str(tmp_path)) == 128
    assert embed.same_person_threshold("nn4.small2@sha256:0123456789abcdef") is None


def test_a_new_embedder_is_one_entry(monkeypatch):
    """An entry added to the table is listed, described, loaded and given its threshold and
    identity by the same functions as the shipped models, with no other change."""
    table: Registry = Registry(EMBEDDERS.kind)
    for name in EMBEDDERS:
        table.add(name, EMBEDDERS.get(name))
    entry = dataclasses.replace(
        EMBEDDERS.get(NN4_SMALL2_DISTILLED),
        name="test-nn4",
        threshold=0.5,
        description="a test entry",
        default_candidate=False,
        known_by_path=False,
    )
    table.add(entry.name, entry)
    monkeypatch.setattr(embed, "EMBEDDERS", table)

    assert embed.resolve_model("test-nn4") == "test-nn4"
    assert embed.describe_model("test-nn4") == ("test-nn4", "test-nn4", openface_spec())
    (st,) = [st for st in embed.model_statuses() if st.name == "test-nn4"]
    assert st.installed and st.note == "a test entry"
    emb = embed.load_embedder("test-nn4", backend="eager")
    assert emb.identity == "test-nn4|openface-affine/96/outerEyesAndNose" and emb.same_person_threshold == 0.5
    assert emb.embed([np.zeros((96, 96, 3), np.uint8)]).shape == (1, embed.embedding_dim("test-nn4"))
    assert embed.best_installed_model() != "test-nn4"
