"""The embedder table: every named model, what it needs, how it loads, what it gives.

One ``EmbedderEntry`` per model in ``EMBEDDERS`` (a ``registry.Registry``, in the order
``models list`` and ``--help`` show them); adding an embedder is adding an entry (and, for a new
network, its ``Embedder`` class in ``embedders.py``). Everything that depends on the model's name
reads the table: ``MODEL_NAMES``, the default (``DEFAULT_PREFERENCE``), thresholds, dims,
alignments, the ``models`` listing and ``embed.load_embedder``. Reading it loads nothing.

Models:

* ``nn4.small2.v1``: OpenFace's NN4-small2 in PyTorch (OpenFace 96x96 alignment,
  OUTER_EYES_AND_NOSE). Its weights are a download (``openface-py models download``).
* ``nn4.small2.distilled-v2``: the same network with the project's own complete weights,
  distilled from dlib's ResNet (``models/nn4.small2.distilled-v2.pt``, shipped, SHA-256
  pinned; see ``models/MODEL_CARD.md``). Used by default when nn4.small2.v1 is not installed.
* ``dlib-resnet-v1``: dlib's ResNet face recogniser (``dlib_face_recognition_resnet_model_v1.dat``,
  dlib's 150x150 5-point chip), installed with ``face_recognition_models``.
* ``mobilefacenet-reid-0095``: Intel's face-reidentification-retail-0095 (MobileFaceNet with SE
  blocks, Apache-2.0) in the project's PyTorch (``nets/mobilefacenet.py``), weights converted
  from Intel's IR and shipped (``models/mobilefacenet-reid-0095.pt``, SHA-256 pinned; see
  ``models/REID0095_CARD.md``); Intel's 5-point 128x128 alignment; **256-D** unit vectors, so
  the squared L2 distance is 2 - 2 cos.

Weights given by path instead of a name are known by their content: a copy of a named model's file
is that model; other weights are the network their metadata names (``networks.py``; NN4-small2
when they name none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from openface_py import store
from openface_py.faces.align import AlignmentSpec, dlib_chip_spec, intel5_spec, openface_spec
from openface_py.nets.modelfiles import DlibWeights, DownloadedWeights, ShippedWeights, WeightsSource
from openface_py.nets.networks import MOBILEFACENET, NN4_SMALL2
from openface_py.registry import Registry

if TYPE_CHECKING:
    from openface_py.nets.embedders import Embedder

log = logging.getLogger(__name__)

#: The distance every threshold is on: squared L2 between embeddings.
SQUARED_L2 = "squared-l2"


@dataclass(frozen=True)
class EmbedderEntry:
    """One named model: what it needs, how it loads, and what its embeddings are."""

    name: str
    #: the file it needs, where that is and how it is checked
    weights: WeightsSource
    #: (entry, checked weights path, threads, backend, device) -> the embedder; imports the network
    #: only when called
    load: Callable[[EmbedderEntry, Path, Optional[int], str, str], Embedder]
    #: the aligned faces it takes
    alignment: AlignmentSpec
    #: length of its embeddings
    dim: int
    #: same-person threshold on ``metric`` (None: not calibrated, no same/different verdict)
    threshold: Optional[float]
    #: what ``models list`` says of it
    description: str
    #: added to ``description`` when it is not installed
    install_hint: str = ""
    #: a candidate for the default model, tried in table order (``DEFAULT_PREFERENCE``)
    default_candidate: bool = True
    #: the network family (``networks.py``) its weights are for; None for a network the project
    #: does not build (dlib's ResNet). A weights file given by path that is a copy of this model's
    #: file is this model; ``train-net`` can start from it.
    network: Optional[str] = None
    metric: str = SQUARED_L2
    #: the impostor curve: (squared L2 distance t, fraction of LFW's different-person pairs at or
    #: below t) points, t ascending (``benchmarks/bench_impostor_far.py``); what ``identify`` sets
    #: its open-set threshold from (``recognize.verify.identification_threshold``). Empty: not measured.
    impostor_far: tuple[tuple[float, float], ...] = ()

    @property
    def input_size(self) -> int:
        """Side of the square RGB faces it embeds."""
        return self.alignment.size


def _nn4(entry: EmbedderEntry, path: Path, threads: Optional[int], backend: str, device: str) -> Embedder:
    from openface_py.nets.embedders import NN4Embedder

    return NN4Embedder(
        path, name=entry.name, threads=threads, backend=backend, device=device, same_person_threshold=entry.threshold
    )


def _dlib_resnet(entry: EmbedderEntry, path: Path, threads: Optional[int], backend: str, device: str) -> Embedder:
    """dlib's own build: ``threads`` and ``backend`` do not apply, nor ``device`` (dlib-bin runs on
    the CPU; a GPU asked for is checked to exist, then noted in the log)."""
    from openface_py.device import is_gpu, resolve_device
    from openface_py.nets.embedders import DlibResnetEmbedder

    if is_gpu(resolve_device(device)):
        log.info("%s runs on the CPU: dlib's installed build (dlib-bin) has no CUDA", entry.name)
    return DlibResnetEmbedder(path)


def _mobilefacenet(entry: EmbedderEntry, path: Path, threads: Optional[int], backend: str, device: str) -> Embedder:
    from openface_py.nets.embedders import MobileFaceNetEmbedder

    return MobileFaceNetEmbedder(
        path, name=entry.name, threads=threads, device=device, backend=backend, same_person_threshold=entry.threshold
    )


EMBEDDERS: Registry[EmbedderEntry] = Registry("model")

NN4_SMALL2_V1 = "nn4.small2.v1"
NN4_SMALL2_DISTILLED = "nn4.small2.distilled-v2"
DLIB_RESNET_V1 = "dlib-resnet-v1"
MOBILEFACENET_REID = "mobilefacenet-reid-0095"

# Same-person thresholds are on the squared L2 distance between embeddings, from LFW.
EMBEDDERS.add(
    NN4_SMALL2_V1,
    EmbedderEntry(
        NN4_SMALL2_V1,
        DownloadedWeights(store.NN4_SMALL2_V1_FILES, "OpenFace's"),
        _nn4,
        openface_spec(),
        dim=128,
        # OpenFace's mean LFW threshold 0.99 (OpenFace docs, "Demo 2: comparing two images")
        threshold=0.99,
        description="OpenFace's released weights (Apache-2.0); LFW 0.9292 +- 0.0134 as published",
        install_hint=f"; not installed: 'openface-py models download {NN4_SMALL2_V1}'",
        network=NN4_SMALL2,
    ),
)
EMBEDDERS.add(
    NN4_SMALL2_DISTILLED,
    EmbedderEntry(
        NN4_SMALL2_DISTILLED,
        ShippedWeights(store.NN4_SMALL2_DISTILLED),
        _nn4,
        openface_spec(),
        dim=128,
        threshold=0.160,  # the mean of its 10 LFW fold thresholds (models/MODEL_CARD.md)
        description="NN4-small2 distilled from dlib's ResNet, shipped with the project; "
        "LFW 0.9465 +- 0.0102 (mirror-averaged 0.9492) measured by `openface-py lfw`",
        network=NN4_SMALL2,
    ),
)
EMBEDDERS.add(
    DLIB_RESNET_V1,
    EmbedderEntry(
        DLIB_RESNET_V1,
        DlibWeights(store.DLIB_RESNET),
        _dlib_resnet,
        dlib_chip_spec(),
        dim=128,
        threshold=0.36,  # dlib's / face_recognition's tolerance 0.6 on the L2 distance, squared
        description="dlib's ResNet (from face_recognition_models); LFW 0.9938 as reported by dlib",
    ),
)
EMBEDDERS.add(
    MOBILEFACENET_REID,
    EmbedderEntry(
        MOBILEFACENET_REID,
        ShippedWeights(store.MOBILEFACENET_REID0095),
        _mobilefacenet,
        intel5_spec(),
        dim=256,
        # the mean of its 10 LFW fold thresholds (models/REID0095_CARD.md); on its unit 256-D
        # vectors squared L2 = 2 - 2 cos, so this is cos >= 1 - threshold / 2
        threshold=1.444,
        description="Intel's MobileFaceNet (Apache-2.0), shipped, 256-D; "
        "LFW 0.9960 +- 0.0031 with MTCNN's 5 points and --pick central (0.9883 with HOG + dlib68) by `openface-py lfw`",
        default_candidate=False,
        network=MOBILEFACENET,
        # LFW's 29.6 M different-person pairs of the 7,701 view-2 images, HOG + 5 points from dlib's
        # 68 (`python benchmarks/bench_impostor_far.py build/lfw-reid`, BENCHMARKS.md)
        impostor_far=((0.9676, 1e-5), (1.1449, 1e-4), (1.3193, 1e-3), (1.518, 1e-2)),
    ),
)

MODEL_NAMES = EMBEDDERS.names()
#: What "no --model" means: the first of these that is installed.
DEFAULT_PREFERENCE = tuple(name for name in EMBEDDERS if EMBEDDERS.get(name).default_candidate)
DEFAULT_MODEL = DEFAULT_PREFERENCE[0]
SAME_PERSON_THRESHOLDS = {name: EMBEDDERS.get(name).threshold for name in EMBEDDERS}
