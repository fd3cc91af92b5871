"""nets/catalog.py: the embedder table, and every name lookup of nets/embed.py reading it (an
embedder is one entry; an unknown name is one error)."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from openface_py import store
from openface_py.errors import UnknownNameError, UsageError, WeightsError
from openface_py.faces.align import intel5_spec, openface_spec
from openface_py.nets import embed
from openface_py.nets.catalog import (
    DEFAULT_PREFERENCE,
    DLIB_RESNET_V1,
    EMBEDDERS,
    MOBILEFACENET_REID,
    MODEL_NAMES,
    NN4_SMALL2_DISTILLED,
    NN4_SMALL2_V1,
    SAME_PERSON_THRESHOLDS,
    SQUARED_L2,
)
from openface_py.nets.modelfiles import WEIGHTS_META_KEY
from openface_py.nets.networks import NETWORKS
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


def test_each_network_agrees_with_its_models():
    """A network's pretrained model is a model of that network; every model of a network takes the
    network's faces and gives its embeddings, and the network class is built with that interface."""
    for name in NETWORKS:
        net = NETWORKS.get(name)
        assert EMBEDDERS.get(net.pretrained).network == name
        models = [m for m in EMBEDDERS if EMBEDDERS.get(m).network == name]
        assert models and all(
            (EMBEDDERS.get(m).alignment, EMBEDDERS.get(m).dim) == (net.alignment, net.dim) for m in models
        )
        model = net.build().eval()
        size = net.alignment.size
        x = torch.rand(2, 3, size, size) * model.input_range
        with torch.no_grad():
            y = model(x)
            # the blocks run in two parts and then the head: the network's own forward
            assert torch.allclose(y, model.head(model.features(model.features(x, 0, 2), 2)), atol=1e-6)
        assert y.shape == (2, net.dim)
        # the blocks' modules hold parameters; freezing every block leaves the head (and the
        # final projection, --lr-dense's) trainable
        in_blocks = {id(p) for i in range(len(net.block_names)) for m in model.block_modules(i) for p in m.parameters()}
        dense = [p for k, p in model.named_parameters() if k.startswith(net.dense_prefix)]
        assert all(model.block_modules(i) for i in range(len(net.block_names)))
        assert dense and not {id(p) for p in dense} & in_blocks and len(in_blocks) < len(list(model.parameters()))
    assert EMBEDDERS.get(DLIB_RESNET_V1).network is None


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


def test_weights_by_path_are_known_by_content(tmp_path):
    """A copy of a shipped file is that model (NN4-small2's and MobileFaceNet's alike); other
    weights are NN4-small2's (a folder, files naming no network) or the network their metadata names."""
    models = store.project_models_dir()
    shutil.copy(models / store.NN4_SMALL2_DISTILLED.filename, tmp_path / "a.pt")
    shutil.copy(models / store.MOBILEFACENET_REID0095.filename, tmp_path / "b.pt")
    assert embed.known_weights(tmp_path / "a.pt") == NN4_SMALL2_DISTILLED
    assert embed.known_weights(tmp_path / "b.pt") == MOBILEFACENET_REID
    assert (
        embed.alignment_for(str(tmp_path / "b.pt")) == intel5_spec()
        and embed.embedding_dim(str(tmp_path / "b.pt")) == 256
    )
    assert embed.describe_model(str(tmp_path / "b.pt"))[1:] == (MOBILEFACENET_REID, intel5_spec())
    assert embed.alignment_for(str(tmp_path)) == openface_spec() and embed.embedding_dim(str(tmp_path)) == 128
    assert embed.same_person_threshold("nn4.small2@sha256:0123456789abcdef") is None

    # MobileFaceNet weights that are no named model's: named by network and digest, loaded as one
    state = torch.load(str(tmp_path / "b.pt"), map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state["embedding.weight"] = state["embedding.weight"] * 2.0  # other bytes, same embeddings once normalised
    torch.save({"state_dict": state, WEIGHTS_META_KEY: {"network": "mobilefacenet"}}, tmp_path / "c.pt")
    name, shown, spec = embed.describe_model(str(tmp_path / "c.pt"))
    assert shown.startswith("mobilefacenet@sha256:") and spec == intel5_spec()
    emb = embed.load_embedder(str(tmp_path / "c.pt"), backend="eager")
    assert emb.dim == 256 and emb.name == shown and emb.same_person_threshold is None
    ref = embed.load_embedder(MOBILEFACENET_REID, backend="eager")
    face = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    assert np.allclose(emb.embed(face), ref.embed(face), atol=1e-5)
    # a network this version does not know is refused, not loaded as NN4-small2
    torch.save({"state_dict": state, WEIGHTS_META_KEY: {"network": "resnet-1000"}}, tmp_path / "d.pt")
    with pytest.raises(WeightsError, match="does not know"):
        embed.load_embedder(str(tmp_path / "d.pt"))


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
        network=None,
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
