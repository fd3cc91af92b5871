"""The network families the project can build and train: what each needs and gives.

A *model* (``catalog.py``) is a family plus weights; a *network* is the family itself: its
PyTorch class, the aligned faces it takes, the length of its embeddings, how its uint8 faces
become its input, the blocks ``train-net --freeze-blocks`` counts, its final projection (trained at
``--lr-dense``) and the named model a fine-tuning run starts from by default. Weights given by
path are this table's ``nn4.small2`` unless their ``.pt`` metadata names another network
(``train-net`` writes ``"network"``), so a fine-tuned MobileFaceNet loads anywhere a model is named.

Both networks expose the same training interface: ``features(x, start, stop)`` (training blocks
``start``..``stop``-1), ``head(features)`` (unit vectors), ``block_modules(i)`` (the modules
holding block ``i``'s parameters) and ``input_range`` (the network's input is ``[0, 1] x
input_range``). Reading the table loads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from openface_py.faces.align import AlignmentSpec, intel5_spec, openface_spec
from openface_py.registry import Registry

if TYPE_CHECKING:
    from torch import nn

NN4_SMALL2 = "nn4.small2"
MOBILEFACENET = "mobilefacenet"
#: The network of weights whose metadata names none (every file made before networks were named).
DEFAULT_NETWORK = NN4_SMALL2


@dataclass(frozen=True)
class Network:
    """One trainable network family."""

    name: str
    #: builds the network with fresh (random) weights; imports torch only when called
    build: Callable[[], nn.Module]
    alignment: AlignmentSpec
    dim: int
    #: its training blocks in order, as ``--freeze-blocks`` counts them from the first
    block_names: tuple[str, ...]
    #: parameter-name prefix of the final projection (``--lr-dense``)
    dense_prefix: str
    #: the named model ``train-net`` starts from unless ``--init`` says otherwise
    pretrained: str
    #: the backends ``auto`` tries, in order, when not ``backends.AUTO_ORDER`` (ONNX Runtime first):
    #: the fastest measured for this network first
    auto_backends: Optional[tuple[str, ...]] = None


def _nn4() -> nn.Module:
    from openface_py.nets.nn4 import NN4Small2

    return NN4Small2()


def _mobilefacenet() -> nn.Module:
    from openface_py.nets.mobilefacenet import MobileFaceNet

    return MobileFaceNet()


NETWORKS: Registry[Network] = Registry("network")
NETWORKS.add(
    NN4_SMALL2,
    Network(
        NN4_SMALL2,
        _nn4,
        openface_spec(),
        dim=128,
        block_names=("stem", "3a", "3b", "3c", "4a", "4e", "5a", "5b"),
        dense_prefix="ln.",
        pretrained="nn4.small2.distilled-v2",
    ),
)
NETWORKS.add(
    MOBILEFACENET,
    Network(
        MOBILEFACENET,
        _mobilefacenet,
        intel5_spec(),
        dim=256,
        block_names=("stem", "stage1", "stage2", "stage3", "stage4", "stage5"),
        dense_prefix="embedding.",
        pretrained="mobilefacenet-reid-0095",
        # OpenVINO (the openvino extra) runs this graph fastest in float32 (305 faces/s at batch 8);
        # ONNX Runtime at a third of NN4-small2's rate (its broadcast PReLU), eager PyTorch at
        # x1.7-1.9 of that; compile gains 14-33% more for an 11 s start (BENCHMARKS.md)
        auto_backends=("openvino", "eager"),
    ),
)
