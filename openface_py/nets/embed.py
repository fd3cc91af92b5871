"""Embedders by name or weights path: load one, or describe it without loading it.

The named models are the table in ``catalog.py`` (``MODEL_NAMES``); their classes are in
``embedders.py``; both are imported from here as well, the one place callers need.

Anywhere a model is named, a path to weights works too: NN4-small2's (``.pt``, ``.t7`` or a CSV
folder) or a ``.pt`` whose metadata names another network of ``networks.py`` (what ``train-net
--arch mobilefacenet`` writes). A path is identified by the weights' content (SHA-256), never by
its file name: a copy of a known file *is* that model (name, threshold), and other weights are
named ``<network>@sha256:<first 16 hex digits>``. Each embedder states the alignment it needs and an
``identity`` string (model and alignment) that is written next to every embedding file, and
its ``same_person_threshold`` (None: uncalibrated weights, no same/different verdict).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from openface_py.errors import ModelNotInstalledError, UnknownNameError, WeightsError
from openface_py.faces.align import AlignmentSpec
from openface_py.nets.catalog import (
    DEFAULT_PREFERENCE,
    EMBEDDERS,
    MOBILEFACENET_REID,
    NN4_SMALL2_DISTILLED,
    NN4_SMALL2_V1,
    EmbedderEntry,
)
from openface_py.nets.embedders import (
    Embedder,
    MobileFaceNetEmbedder,
    NN4Embedder,
)
from openface_py.nets.modelfiles import digest_name, weights_metadata
from openface_py.nets.networks import DEFAULT_NETWORK, MOBILEFACENET, NETWORKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    """What ``models list`` reports about one named model."""

    name: str
    installed: bool
    path: Optional[str]
    alignment: str
    note: str


def model_statuses() -> list[ModelStatus]:
    """Every named model, whether it is installed here, and where."""
    out = []
    for name in EMBEDDERS:
        entry = EMBEDDERS.get(name)
        path = entry.weights.locate()
        note = entry.description + ("" if path else entry.install_hint)
        out.append(ModelStatus(name, path is not None, str(path) if path else None, entry.alignment.identity, note))
    return out


def best_installed_model() -> str:
    """What no ``--model`` means: the first installed of ``DEFAULT_PREFERENCE`` (the official
    nn4.small2.v1 if downloaded, else the shipped distilled NN4-small2, else dlib's ResNet)."""
    installed = {st.name for st in model_statuses() if st.installed}
    for name in DEFAULT_PREFERENCE:
        if name in installed:
            return name
    raise ModelNotInstalledError("no embedding model is installed; " + nn4_missing_message())


def _required(entry: EmbedderEntry) -> Path:
    """The entry's weights file (unchecked); ``ModelNotInstalledError`` saying how to get it, and for
    a download what is installed instead (the default first, as ``--model`` uses it)."""
    try:
        return entry.weights.require(entry.name)
    except ModelNotInstalledError as exc:
        raise ModelNotInstalledError(f"{exc}{_installed_instead(entry)}") from None


def _installed_instead(entry: EmbedderEntry) -> str:
    if not entry.weights.downloadable:
        return ""
    installed = {st.name for st in model_statuses() if st.installed}
    others = [name for name in DEFAULT_PREFERENCE if name in installed and name != entry.name]
    if not others:
        return ""
    return f" Installed instead: {', '.join(repr(n) for n in others)} (the default without --model is '{others[0]}')."


def nn4_missing_message() -> str:
    """How to get nn4.small2.v1, and what is installed instead (the default first, as --model uses it)."""
    entry = EMBEDDERS.get(NN4_SMALL2_V1)
    return entry.weights.missing_message(entry.name) + _installed_instead(entry)


def installed_weights(name: str) -> Path:
    """The checked weights file of a named model; ``ModelNotInstalledError`` (saying how to get it)
    when it is not here, ``WeightsError`` when it is damaged."""
    entry = EMBEDDERS.get(name)
    path = _required(entry)
    entry.weights.check(path)
    return path


def find_nn4_small2_v1() -> Optional[Path]:
    """The installed official nn4.small2.v1 weights (.pt preferred over .t7), or None."""
    return EMBEDDERS.get(NN4_SMALL2_V1).weights.locate()


def find_nn4_small2_distilled() -> Optional[Path]:
    """The shipped distilled weights (``models/``), or None if this installation lacks them."""
    return EMBEDDERS.get(NN4_SMALL2_DISTILLED).weights.locate()


def find_mobilefacenet_reid() -> Optional[Path]:
    """The shipped MobileFaceNet reid-0095 weights (``models/``), or None if this installation lacks them."""
    return EMBEDDERS.get(MOBILEFACENET_REID).weights.locate()


def downloadable_models() -> tuple[str, ...]:
    """The models ``openface-py models download`` fetches."""
    return tuple(name for name in EMBEDDERS if EMBEDDERS.get(name).weights.downloadable)


def known_weights(path: Union[str, Path]) -> Optional[str]:
    """The named model whose weights ``path`` holds byte for byte (the shipped or official file), or None."""
    p = Path(path)
    if not p.is_file():
        return None
    for name in EMBEDDERS:
        entry = EMBEDDERS.get(name)
        if entry.network is not None and entry.weights.holds(p):
            return name
    return None


def weights_network(path: Union[str, Path]) -> str:
    """The network (``networks.py``) of the weights at ``path``: a named model's when it is a copy of
    its file, else what the ``.pt``'s metadata names, else NN4-small2 (``.t7``, CSV folders and
    files from before networks were named). ``WeightsError`` for a network this version lacks."""
    known = known_weights(path)
    if known is not None:
        return EMBEDDERS.get(known).network
    network = weights_metadata(path).get("network", DEFAULT_NETWORK)
    if network not in NETWORKS:
        raise WeightsError(f"{path}: weights of a network this version does not know ({network!r})")
    return network


def network_state(path: Union[str, Path], network: str) -> dict:
    """The checked state dict of ``network`` weights at ``path`` (``WeightsError`` when they are not)."""
    if network == MOBILEFACENET:
        from openface_py.nets.embedders import checked_mobilefacenet_state, load_mobilefacenet_state

        return checked_mobilefacenet_state(load_mobilefacenet_state(path))
    from openface_py.nets.weights import load_weights

    return load_weights(path)


def resolve_model(model: Optional[str] = None) -> str:
    """``model`` as given when it is a model name or an existing weights file or folder, the default
    model when it is None; ``UnknownNameError`` (a usage error) otherwise. Loads nothing."""
    if not model:
        return best_installed_model()
    if model not in EMBEDDERS and not Path(model).exists():
        raise UnknownNameError(EMBEDDERS.kind, model, EMBEDDERS.names(), "an existing weights file or folder")
    return model


def load_embedder(
    model: Optional[str] = None, threads: Optional[int] = None, backend: str = "auto", device: str = "auto"
) -> Embedder:
    """An embedder by name (``MODEL_NAMES``) or by a path to weights (``weights_network`` says whose).

    ``backend`` (NN4-small2 and MobileFaceNet): ``auto``, ``eager``, ``compile``, ``onnx`` or ``openvino``
    (``backends.py``); ``device``: ``auto`` (the GPU when torch sees one), ``cpu`` or ``cuda[:N]``
    (``openface_py.device``; dlib's ResNet runs on dlib's own build, the CPU).
    """
    model = resolve_model(model)
    if model in EMBEDDERS:
        entry = EMBEDDERS.get(model)
        return entry.load(entry, installed_weights(model), threads, backend, device)
    p = Path(model)
    known = known_weights(p)
    if known is not None:
        log.info("%s is a copy of %s", p, known)
        entry = EMBEDDERS.get(known)
        return entry.load(entry, p, threads, backend, device)
    threshold = weights_metadata(p).get("same_person_threshold")
    threshold = None if threshold is None else float(threshold)
    network = weights_network(p)
    if network == MOBILEFACENET:
        return MobileFaceNetEmbedder(
            p,
            name=digest_name(p, network),
            threads=threads,
            backend=backend,
            device=device,
            same_person_threshold=threshold,
        )
    return NN4Embedder(p, threads=threads, backend=backend, device=device, same_person_threshold=threshold)


def describe_model(model: Optional[str] = None) -> tuple[str, str, AlignmentSpec]:
    """(model as ``load_embedder`` takes it, the embedder's ``name``, its alignment) without building
    the network (a named model loads nothing; a ``.pt`` path's metadata is read), so a job's driver
    can record the identity its workers will give."""
    model = resolve_model(model)
    if model in EMBEDDERS:
        entry = EMBEDDERS.get(model)
        _required(entry)
        return model, model, entry.alignment
    p = Path(model)
    # an absolute path: workers elsewhere (Ray's) do not share this process's working directory
    network = weights_network(p)
    return str(p.resolve()), known_weights(p) or digest_name(p, network), NETWORKS.get(network).alignment


def alignment_for(model: Optional[str]) -> AlignmentSpec:
    """The alignment a model needs, without loading its weights (None: the default model)."""
    name = resolve_model(model)
    return EMBEDDERS.get(name).alignment if name in EMBEDDERS else NETWORKS.get(weights_network(name)).alignment


def embedding_dim(model: Optional[str] = None) -> int:
    """Length of a model's embeddings, without loading it (256 for MobileFaceNet, else 128)."""
    name = resolve_model(model)
    return EMBEDDERS.get(name).dim if name in EMBEDDERS else NETWORKS.get(weights_network(name)).dim


def impostor_far(model_name: str) -> tuple[tuple[float, float], ...]:
    """A named model's measured impostor curve (``EmbedderEntry.impostor_far``); () for other weights."""
    return EMBEDDERS.get(model_name).impostor_far if model_name in EMBEDDERS else ()


def same_person_threshold(model_name: str) -> Optional[float]:
    """The squared-L2 same/different threshold of a named model; None for other weights (uncalibrated)."""
    return EMBEDDERS.get(model_name).threshold if model_name in EMBEDDERS else None
