"""``train-net``: learn or fine-tune a network (NN4-small2 or MobileFaceNet, ``nets/networks.py``)
on labeled aligned faces with a metric loss.

One run = one output folder: ``checkpoint.pt`` (everything needed to continue, written atomically
at least every ``checkpoint_minutes`` and after each epoch), ``training.jsonl`` (a line per batch
and per epoch), ``training.png`` (loss and held-out figures per epoch), and at the end ``model.pt``
(weights of the epoch best on the held-out people, with their same-person threshold),
``training.json`` (settings, data, parent model, per-epoch figures, wall time, device, command)
and for ``--loss siamese`` ``verifier.pt``. Rerunning the same command after a kill continues from
the checkpoint and ends with the weights an uninterrupted run would have (batches, augmentation
and pair samples are pure functions of the seed).

Held-out people (``val_people``, split by person) are scored before training and after every
epoch: verification accuracy (10 folds, balanced pairs), AUC and TAR at FAR = 1e-3 over all
same-person pairs and >= 10,000 different ones. The best epoch is chosen by held-out AUC, never
by LFW (``lfw_dir`` is monitoring only).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io as _io
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from openface_py.device import describe_device, resolve_device
from openface_py.errors import OpenFacePyError, UsageError
from openface_py.io import atomic_write_bytes, atomic_write_text
from openface_py.metrics import auc, best_split_threshold, k_fold_accuracy, roc_curve, val_at_far
from openface_py.nets.networks import DEFAULT_NETWORK, NETWORKS, Network
from openface_py.nets.nn4 import preprocess
from openface_py.train.augment import Augment, augment
from openface_py.train.data import (
    LabeledFaces,
    PairSet,
    PKSampler,
    balanced,
    describe,
    read_labeled_faces,
    split_people,
    verification_pairs,
)
from openface_py.train.losses import MININGS, OBJECTIVES, Objective, make_objective, parent_term
from openface_py.train.scaffold import (
    CheckpointTimer,
    append_record,
    cosine_factor,
    embed_faces,
    embed_features,
    freeze,
    frozen_features,
    load_checkpoint,
    param_group,
    save_checkpoint,
    scale_input,
    scale_rates,
    set_threads,
    split_params,
    train_mode,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MARKER = "train-net.json"
CHECKPOINT_KEYS = {"fingerprint", "model", "objective", "optimizer", "history", "best", "epoch", "batch"}
MODEL = "model.pt"
VERIFIER = "verifier.pt"
SUMMARY = "training.json"
LOG = "training.jsonl"
PLOT = "training.png"
SCRATCH = "scratch"
#: Most memory the precomputed frozen-block outputs of the training faces may take.
FAST_PATH_BYTES = 6 * 2**30
#: Settings that may change between a run and its continuation. They do not change what is learnt,
#: except that another thread count (or device) may round float sums differently.
RESUMABLE_CHANGES = ("aligned_dir", "device", "threads", "checkpoint_minutes", "lfw_dir", "progress", "command")


@dataclass
class NetSettings:
    """Every setting of a ``train-net`` run (saved in the checkpoint and training.json)."""

    aligned_dir: str
    arch: str = DEFAULT_NETWORK  # a network of nets/networks.py
    loss: str = "triplet"
    mining: str = "semihard"
    margin: Optional[float] = None  # None: the loss's published default
    center_weight: float = 0.1
    init: Optional[str] = None  # None: the network's pretrained model (Network.pretrained)
    freeze_blocks: Optional[int] = None  # None: 3 (NN4: stem, 3a, 3b) from pretrained weights, 0 from scratch
    bn: str = "auto"  # fixed | update | auto (fixed for pretrained weights, update from scratch)
    lr: Optional[float] = None  # trained blocks; None: 1e-5 from pretrained weights, 1e-3 from scratch
    lr_dense: Optional[float] = None  # the final linear layer (None: same as lr)
    lr_head: float = 1e-3  # the loss's own parameters (centres, class weights, Siamese head)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine (to 0 over all epochs) | constant
    parent_weight: Optional[float] = None  # None: 1.0 from pretrained weights, 0 from scratch
    epochs: int = 5
    batch_people: int = 15
    batch_images: int = 20
    mirror: float = 0.5
    shift: float = 2.0
    scale: float = 0.05
    jitter: float = 0.1
    val_people: float = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    checkpoint_minutes: float = 10.0
    lfw_dir: Optional[str] = None
    progress: bool = True
    command: str = ""

    def check(self) -> None:
        loss = OBJECTIVES.get(self.loss)
        blocks = self.network.block_names
        if self.mining not in MININGS:
            raise UsageError(f"unknown mining {self.mining!r}; one of {', '.join(MININGS)}")
        if self.scratch and self.frozen > 0:
            raise UsageError(
                "--init scratch trains every block: frozen random blocks would never learn (--freeze-blocks 0)"
            )
        if self.margin is not None and loss.margin is None:
            takes = [name for name in OBJECTIVES if OBJECTIVES.get(name).margin is not None]
            raise UsageError(f"--margin applies to the {' and '.join(takes)} losses, not {self.loss}")
        if not 0 <= self.frozen < len(blocks):
            raise UsageError(
                f"--freeze-blocks must be 0..{len(blocks) - 1} for {self.arch} (blocks: {', '.join(blocks)})"
            )
        if self.bn not in ("auto", "fixed", "update"):
            raise UsageError("--bn must be auto, fixed or update")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError("--schedule must be cosine or constant")
        if self.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        resolve_device(self.device)  # an unknown device, or a GPU torch does not see: exit 2 with why

    @property
    def network(self) -> Network:
        return NETWORKS.get(self.arch)

    @property
    def start(self) -> str:
        """What the run starts from: ``init``, else the network's pretrained model."""
        return self.network.pretrained if self.init is None else self.init

    @property
    def scratch(self) -> bool:
        return self.start == SCRATCH

    @property
    def frozen(self) -> int:
        if self.freeze_blocks is not None:
            return int(self.freeze_blocks)
        return 0 if self.scratch else 3

    @property
    def rate(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 1e-3 if self.scratch else 1e-5

    @property
    def keep_parent(self) -> float:
        if self.parent_weight is not None:
            return float(self.parent_weight)
        return 0.0 if self.scratch else 1.0

    @property
    def bn_mode(self) -> str:
        return ("update" if self.scratch else "fixed") if self.bn == "auto" else self.bn

    def fingerprint(self) -> dict:
        """The settings that decide the result (what a continuation must share)."""
        out = {k: v for k, v in asdict(self).items() if k not in RESUMABLE_CHANGES}
        if out["arch"] == DEFAULT_NETWORK:
            del out["arch"]  # checkpoints written before --arch existed name none: they are NN4-small2's
        return out


@dataclass
class EpochFigures:
    epoch: int
    loss: Optional[float]
    val: dict = field(default_factory=dict)
    lfw: Optional[dict] = None
    seconds: float = 0.0


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    model_path: Path
    best_epoch: int
    history: list
    summary: dict
    verifier_path: Optional[Path] = None


# ---- starting weights --------------------------------------------------------------------


def initial_model(init: str, network: Network, seed: int) -> tuple[torch.nn.Module, Optional[str], Optional[str]]:
    """(model, parent name, parent SHA-256) for ``--init``: a model name, a weights path or scratch."""
    from openface_py.store import sha256sum

    path = init_weights(init, network)
    torch.manual_seed(seed)
    model = network.build()
    if path is None:
        return model, None, None
    from openface_py.nets.embed import network_state

    model.load_state_dict(network_state(path, network.name))
    return model.eval(), init, sha256sum(path) if Path(path).is_file() else None


def init_weights(init: str, network: Network) -> Optional[Path]:
    """The weights file ``--init`` names (None for scratch); ``UsageError`` when there is none or
    it holds another network. Cheap: ``train_net`` checks it before it claims the output folder."""
    from openface_py.errors import ModelNotInstalledError
    from openface_py.nets import catalog, embed

    if init == SCRATCH:
        return None
    if init in catalog.EMBEDDERS:
        entry = catalog.EMBEDDERS.get(init)
        if entry.network != network.name:
            trains = [n for n in catalog.EMBEDDERS if catalog.EMBEDDERS.get(n).network is not None]
            hint = (
                f"use --arch {entry.network}"
                if entry.network
                else f"train-net trains {', '.join(NETWORKS.names())} ({', '.join(trains)})"
            )
            raise UsageError(f"--init {init} is not a {network.name} network ({hint}, or --init scratch)")
        try:
            return embed.installed_weights(init)
        except ModelNotInstalledError as exc:
            raise UsageError(str(exc)) from None
    path = Path(init)
    if not path.exists():
        names = [n for n in catalog.EMBEDDERS if catalog.EMBEDDERS.get(n).network == network.name]
        raise UsageError(
            f"--init {init}: not a model name ({', '.join(names + [SCRATCH])}) nor an existing weights file"
        )
    held = embed.weights_network(path)
    if held != network.name:
        raise UsageError(f"--init {init} holds {held} weights, not {network.name} (use --arch {held})")
    return path


def train_net_groups(model: torch.nn.Module, objective: Objective, s: NetSettings) -> list[dict]:
    """Trained blocks at ``lr``, the final projection at ``lr_dense``, the loss's parameters at
    ``lr_head`` (the frozen blocks, ``scaffold.freeze``, take no gradient and are in none)."""
    dense, body = split_params(model, lambda name: name.startswith(s.network.dense_prefix))
    lr_dense = s.rate if s.lr_dense is None else s.lr_dense
    groups = [param_group(body, s.rate, "blocks"), param_group(dense, lr_dense, "dense")]
    own = [p for p in objective.parameters() if p.requires_grad]
    if own:
        groups.append(param_group(own, s.lr_head, "loss"))
    return [g for g in groups if g["params"]]


# ---- evaluation --------------------------------------------------------------------------


def pair_figures(reps: np.ndarray, pairs, order: np.ndarray) -> dict:
    """Held-out verification figures from embeddings: accuracy, AUC, TAR@FAR=1e-3, threshold."""
    d = ((reps[pairs.a] - reps[pairs.b]) ** 2).sum(axis=1).astype(np.float64)
    fpr, tpr, _ = roc_curve(-d, pairs.same)
    folds = k_fold_accuracy(-d[order], pairs.same[order], pairs.folds[order])
    t, _ = best_split_threshold(-d[order][pairs.same[order]], -d[order][~pairs.same[order]])
    return {
        "accuracy": float(np.mean([f.accuracy for f in folds])),
        "auc": float(auc(fpr, tpr)),
        "tar_at_far_1e-3": float(val_at_far(fpr, tpr, 1e-3)),
        "threshold": float(-t),
        "pairs_same": int(pairs.same.sum()),
        "pairs_different": int((~pairs.same).sum()),
    }


@dataclass
class LfwProbe:
    """LFW pair crops aligned once, scored with the network as it trains (monitoring only).

    The crops are those ``openface-py lfw`` embeds (HOG upsample 1, the same fallback box), cached
    under the user cache folder and shared by every run; only the plain faces are embedded per epoch
    (``lfw`` reports the mirror-averaged figure as well).
    """

    pairs: list
    names: list
    faces: np.ndarray
    faces_flip: np.ndarray
    feats: Optional[torch.Tensor] = None  # frozen blocks' output, when the run has frozen blocks
    blocks: int = 0

    @classmethod
    def load(cls, lfw_dir: Path, network: Network, progress: bool) -> LfwProbe:
        from openface_py.eval.lfw import align_lfw_images
        from openface_py.eval.protocol import image_name, parse_pairs

        if not (lfw_dir / "pairs.txt").is_file():
            raise UsageError(f"--lfw {lfw_dir}: no pairs.txt (expected LFW's view-2 pairs file)")
        images = lfw_dir / "deepfunneled"
        if not images.is_dir():
            raise UsageError(f"--lfw {lfw_dir}: no deepfunneled/ image folder")
        pairs, _, _ = parse_pairs(lfw_dir / "pairs.txt")
        names = sorted({image_name(p.name1, p.num1) for p in pairs} | {image_name(p.name2, p.num2) for p in pairs})
        from openface_py.eval.lfw import embedding_cache_path
        from openface_py.store import cache_dir

        spec = network.alignment
        cache = embedding_cache_path(cache_dir() / "lfw-crops", "crops-" + spec.identity, images)
        cache.parent.mkdir(parents=True, exist_ok=True)
        faces, flips, _ = align_lfw_images(images, names, spec, cache, workers=os.cpu_count() or 1, progress=progress)
        return cls(pairs, names, faces, flips)

    def score(self, model: torch.nn.Module, device: torch.device) -> dict:
        from openface_py.eval.evaluate import evaluate, score_pairs
        from openface_py.eval.lfw import LfwEmbeddings

        if self.feats is not None:
            reps = embed_features(model, self.feats, self.blocks)
        else:
            reps = embed_faces(model, self.faces, device)
        emb = LfwEmbeddings("train-net", self.names, reps, reps, [])
        plain = evaluate(self.pairs, score_pairs(emb, self.pairs, "sqeuclidean", False), "sqeuclidean", False)
        return {"accuracy": plain.mean, "auc": float(plain.auc)}


# ---- checkpoints -------------------------------------------------------------------------


def _state(obj) -> dict:
    return {k: v.detach().cpu().clone() for k, v in obj.state_dict().items()}


def _rewrite_log(path: Path, epoch: int, batch: int) -> None:
    """Keep the log lines up to the checkpoint's position (batches after it are trained again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if rec.get("type") == "epoch":
            done = rec["epoch"] < epoch
        else:
            done = (rec["epoch"], rec["batch"]) < (epoch, batch)
        if done:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


# ---- the loop ----------------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    """The training device for ``--device`` (``openface_py.device``: auto, cpu, cuda[:N])."""
    return torch.device(resolve_device(name))


def train_net(
    settings: NetSettings,
    out_dir: os.PathLike | str,
    on_checkpoint: Optional[Callable[[Path, dict], None]] = None,
) -> TrainResult:
    """Train (or continue training) into ``out_dir``; see the module doc for what is written."""
    from openface_py.jobs.outdir import OutputFolder

    settings.check()
    # defaults that depend on --init, resolved so that training.json and the checkpoint show what ran
    settings = dataclasses.replace(
        settings,
        init=settings.start,
        freeze_blocks=settings.frozen,
        lr=settings.rate,
        parent_weight=settings.keep_parent,
        bn=settings.bn_mode,
    )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder")
    # arguments and inputs checked before the folder is claimed (a failed start leaves nothing there)
    if not Path(settings.aligned_dir).is_dir():
        raise UsageError(f"{settings.aligned_dir}: aligned folder not found")
    init_weights(settings.start, settings.network)
    with OutputFolder(out, MARKER, "train-net") as folder:
        if not folder.owned:
            atomic_write_text(out / MARKER, json.dumps({"settings": asdict(settings)}, indent=2) + "\n")
        return _train(settings, out, on_checkpoint)


@dataclass
class _Run:
    """What one ``train-net`` run trains and scores with, built before its first batch."""

    s: NetSettings
    out: Path
    device: torch.device
    data: LabeledFaces  # every face read (its skipped files go to training.json)
    train: LabeledFaces
    val: Optional[LabeledFaces]  # the held-out people (None when none are held out)
    sampler: PKSampler
    model: torch.nn.Module  # a network of nets/networks.py (s.network)
    parent: Optional[str]  # the starting weights' name and SHA-256 (None from scratch)
    parent_sha: Optional[str]
    fingerprint: dict
    objective: Objective
    optimizer: torch.optim.Optimizer
    frozen: list  # the frozen blocks' modules (kept in eval mode)
    parent_model: Optional[torch.nn.Module] = None  # the starting model, when the loss keeps near it

    @property
    def blocks(self) -> int:
        return self.s.frozen


@dataclass
class _Progress:
    """Where the run is: what a checkpoint saves besides the weights and the optimiser."""

    history: list  # asdict(EpochFigures) per epoch, epoch 0 = before training
    best: dict  # epoch, held-out AUC and weights of the best epoch so far
    epoch: int = 1
    batch: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    elapsed: float = 0.0  # seconds trained by earlier calls


@dataclass
class _Batch:
    feats: torch.Tensor  # the frozen blocks' output (the input itself when none are frozen)
    target: Optional[torch.Tensor]  # the starting model's embeddings, when the loss keeps near them


def _train(s: NetSettings, out: Path, on_checkpoint) -> TrainResult:
    set_threads(s.threads)
    started = time.time()
    run = _build_run(s, out, pick_device(s.device))
    ckpt = _load_matching_checkpoint(run)
    scorer = _Scorer.build(run)
    inputs = _batch_inputs(run)
    if ckpt is None:
        progress = _start(run, scorer)
    else:
        progress = _resume(run, ckpt)

    def checkpoint() -> None:
        payload = _checkpoint_payload(run, progress, progress.elapsed + (time.time() - started))
        save_checkpoint(out / CHECKPOINT, payload)
        if on_checkpoint is not None:
            on_checkpoint(out / CHECKPOINT, payload)

    timer = CheckpointTimer(s.checkpoint_minutes)
    while progress.epoch <= s.epochs:
        epoch_start = time.time()
        _train_epoch(run, inputs, progress, timer, checkpoint)
        _end_epoch(run, scorer, progress, time.time() - epoch_start)
        checkpoint()
        timer.reset()
    return _finish(run, progress, progress.elapsed + (time.time() - started))


def _build_run(s: NetSettings, out: Path, device: torch.device) -> _Run:
    """Read and split the faces, build the network, the objective and the optimiser."""
    data = read_labeled_faces(s.aligned_dir, s.network.alignment)
    train_people, val_people = split_people(data.people, data.counts(), s.val_people, s.seed)
    train = data.subset(train_people)
    val = data.subset(val_people) if val_people else None
    # pair and triplet losses need two faces of a person; classification losses can use one
    min_images = 1 if OBJECTIVES.get(s.loss).classifies else 2
    sampler = PKSampler(train.labels, s.batch_people, s.batch_images, s.seed, min_images=min_images)
    log.info(
        "%d people / %d faces to train (%d batches of %d x %d per epoch), %d people / %d faces held out",
        len(train.people),
        len(train.labels),
        len(sampler),
        sampler.people,
        s.batch_images,
        len(val_people),
        0 if val is None else len(val.labels),
    )

    model, parent, parent_sha = initial_model(s.start, s.network, s.seed)
    data_digest = hashlib.sha256("\n".join(data.paths).encode()).hexdigest()[:16]
    fingerprint = {**s.fingerprint(), "data": data_digest, "parent_sha256": parent_sha}
    model.to(device)
    torch.manual_seed(s.seed)
    objective = make_objective(s.loss, len(train.people), s.mining, s.margin, s.center_weight, s.network.dim).to(device)
    parent_model = None
    if s.keep_parent > 0:
        parent_model = copy.deepcopy(model).eval()
        parent_model.requires_grad_(False)
    frozen = freeze(model, s.frozen)
    optimizer = torch.optim.Adam(train_net_groups(model, objective, s), weight_decay=s.weight_decay)
    return _Run(
        s=s,
        out=out,
        device=device,
        data=data,
        train=train,
        val=val,
        sampler=sampler,
        model=model,
        parent=parent,
        parent_sha=parent_sha,
        fingerprint=fingerprint,
        objective=objective,
        optimizer=optimizer,
        frozen=frozen,
        parent_model=parent_model,
    )


def _load_matching_checkpoint(run: _Run) -> Optional[dict]:
    """The run folder's checkpoint, if any; ``UsageError`` when it was made with other settings."""
    ckpt = load_checkpoint(run.out / CHECKPOINT, CHECKPOINT_KEYS, "train-net")
    if ckpt is not None and ckpt["fingerprint"] != run.fingerprint:
        theirs, mine = ckpt["fingerprint"], run.fingerprint
        diff = ", ".join(
            f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}"
            for k in sorted(set(theirs) | set(mine))
            if theirs.get(k) != mine.get(k)
        )
        raise UsageError(
            f"{run.out} holds a run with other settings ({diff}); continue it with the same settings "
            "or choose another output folder"
        )
    return ckpt


@dataclass
class _Scorer:
    """Held-out (and LFW) figures of the network as it trains."""

    run: _Run
    pairs: Optional[PairSet]
    order: Optional[np.ndarray]
    val_feats: Optional[torch.Tensor]  # the frozen blocks' output for the held-out faces
    lfw: Optional[LfwProbe]

    @classmethod
    def build(cls, run: _Run) -> _Scorer:
        s, val, blocks = run.s, run.val, run.blocks
        pairs = order = None
        if val is not None:
            pairs = verification_pairs(val.labels, s.seed)
            order = balanced(pairs, s.seed)
        lfw = LfwProbe.load(Path(s.lfw_dir), s.network, s.progress) if s.lfw_dir else None
        # frozen blocks never change: their output for held-out and LFW faces is computed once
        val_feats = frozen_features(run.model, val.faces, blocks, run.device) if blocks and val is not None else None
        if blocks and lfw is not None:
            lfw.feats, lfw.blocks = frozen_features(run.model, lfw.faces, blocks, run.device), blocks
        return cls(run, pairs, order, val_feats, lfw)

    def figures(self, epoch: int, loss: Optional[float], seconds: float) -> EpochFigures:
        run = self.run
        fig = EpochFigures(epoch, loss, seconds=round(seconds, 1))
        if run.val is not None:
            if self.val_feats is not None:
                reps = embed_features(run.model, self.val_feats, run.blocks)
            else:
                reps = embed_faces(run.model, run.val.faces, run.device)
            fig.val = pair_figures(reps, self.pairs, self.order)
        if self.lfw is not None:
            fig.lfw = self.lfw.score(run.model, run.device)
        return fig


class _Augmented:
    """Training batches augmented afresh (and run through the frozen blocks) every time."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.aug = Augment(run.s.mirror, run.s.shift, run.s.scale, run.s.jitter)

    def batch(self, rows: np.ndarray, gen: torch.Generator) -> _Batch:
        run = self.run
        x = scale_input(augment(preprocess(run.train.faces[rows]), self.aug, gen), run.model).to(run.device)
        target = None
        with torch.no_grad():
            feats = run.model.features(x, 0, run.blocks) if run.blocks else x
            if run.parent_model is not None:
                target = run.parent_model.head(run.parent_model.features(feats, run.blocks))
        return _Batch(feats, target)


class _Precomputed:
    """The fast path, when only mirroring augments: the frozen blocks' output of every training
    face and of its mirror image computed once (and the starting model's embeddings of both)."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        faces, blocks = run.train.faces, run.blocks
        self.plain = frozen_features(run.model, faces, blocks, run.device)
        self.mirrored = frozen_features(run.model, np.ascontiguousarray(faces[:, :, ::-1]), blocks, run.device)
        log.info(
            "frozen blocks' output precomputed for %d faces and their mirror images (%.0f MB)",
            len(self.plain),
            2 * self.plain.numel() * 4 / 1e6,
        )
        self.target = self.target_mirrored = None
        if run.parent_model is not None:
            self.target = torch.as_tensor(embed_features(run.parent_model, self.plain, blocks))
            self.target_mirrored = torch.as_tensor(embed_features(run.parent_model, self.mirrored, blocks))

    def batch(self, rows: np.ndarray, gen: torch.Generator) -> _Batch:
        r = torch.as_tensor(rows)
        flip = (torch.rand(len(rows), generator=gen) < self.run.s.mirror).to(self.plain.device)  # as augment() draws it
        feats = torch.where(flip[:, None, None, None], self.mirrored[r], self.plain[r]).to(self.run.device)
        target = None
        if self.target is not None:
            target = torch.where(flip[:, None].cpu(), self.target_mirrored[r], self.target[r]).to(self.run.device)
        return _Batch(feats, target)


def _batch_inputs(run: _Run) -> _Augmented | _Precomputed:
    """The fast path when the frozen blocks' output of the training faces (plain and mirrored)
    fits in ``FAST_PATH_BYTES`` and nothing but mirroring augments; else augmented batches."""
    s, blocks = run.s, run.blocks
    if blocks == 0 or s.shift or s.scale or s.jitter:
        return _Augmented(run)
    per_face = frozen_features(run.model, run.train.faces[:1], blocks, run.device).numel() * 4
    if 2 * per_face * len(run.train.faces) > FAST_PATH_BYTES:
        log.info("too many faces to keep the frozen blocks' output in memory: computed per batch")
        return _Augmented(run)
    return _Precomputed(run)


def _start(run: _Run, scorer: _Scorer) -> _Progress:
    """A new run: the starting weights scored (epoch 0), and a candidate for the best epoch."""
    history = [asdict(scorer.figures(0, None, 0.0))]
    # the starting weights are a candidate too: if no epoch beats them on the held-out people, they are kept
    best = {
        "epoch": 0,
        "auc": history[0]["val"].get("auc", -1.0),
        "model": _state(run.model),
        "objective": _state(run.objective),
    }
    if (run.out / LOG).exists():
        (run.out / LOG).unlink()
    append_record(run.out / LOG, {"type": "epoch", **history[0]})
    return _Progress(history, best)


def _resume(run: _Run, ckpt: dict) -> _Progress:
    """Weights, optimiser and position from the checkpoint; the log cut back to that position."""
    run.model.load_state_dict(ckpt["model"])
    run.objective.load_state_dict(ckpt["objective"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    progress = _Progress(
        ckpt["history"], ckpt["best"], ckpt["epoch"], ckpt["batch"], ckpt["loss_sum"], ckpt["loss_n"], ckpt["elapsed"]
    )
    _rewrite_log(run.out / LOG, progress.epoch, progress.batch)
    log.info("continuing %s from epoch %d, batch %d", run.out, progress.epoch, progress.batch)
    return progress


def _checkpoint_payload(run: _Run, progress: _Progress, elapsed: float) -> dict:
    return {
        "fingerprint": run.fingerprint,
        "settings": asdict(run.s),
        "model": _state(run.model),
        "objective": _state(run.objective),
        "optimizer": run.optimizer.state_dict(),
        "history": progress.history,
        "best": progress.best,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "loss_sum": progress.loss_sum,
        "loss_n": progress.loss_n,
        "elapsed": elapsed,
    }


def _train_epoch(
    run: _Run, inputs: _Augmented | _Precomputed, progress: _Progress, timer: CheckpointTimer, checkpoint
) -> None:
    """The batches of ``progress.epoch`` from ``progress.batch`` on, each logged; a checkpoint
    whenever one is due inside the epoch."""
    from tqdm import tqdm

    s, steps = run.s, len(run.sampler)
    train_mode(run.model, run.frozen, fixed_bn=s.bn_mode == "fixed")
    bar = tqdm(
        total=steps,
        initial=progress.batch,
        desc=f"epoch {progress.epoch}/{s.epochs}",
        unit="batch",
        disable=not s.progress,
    )
    while progress.batch < steps:
        record = _train_batch(run, inputs, progress.epoch, progress.batch)
        append_record(run.out / LOG, record)
        progress.loss_sum, progress.loss_n = progress.loss_sum + record["loss"], progress.loss_n + 1
        progress.batch += 1
        bar.update(1)
        bar.set_postfix(loss=f"{progress.loss_sum / progress.loss_n:.4f}")
        if progress.batch < steps and timer.due():
            checkpoint()
            timer.reset()
    bar.close()


def _train_batch(run: _Run, inputs: _Augmented | _Precomputed, epoch: int, batch: int) -> dict:
    """One optimiser step on batch ``batch`` of ``epoch``; returns its log record."""
    s, steps = run.s, len(run.sampler)
    rows = run.sampler.batch(epoch, batch)
    gen = torch.Generator().manual_seed(int(np.random.default_rng([s.seed, epoch, 2, batch]).integers(2**62)))
    b = inputs.batch(rows, gen)
    labels = torch.as_tensor(run.train.labels[rows], device=run.device)
    factor = 1.0 if s.schedule == "constant" else cosine_factor((epoch - 1) * steps + batch, s.epochs * steps)
    scale_rates(run.optimizer, factor)
    emb = run.model.head(run.model.features(b.feats, run.blocks))
    loss, figs = run.objective(emb, labels)
    total = loss
    if b.target is not None:
        keep = parent_term(emb, b.target)
        total = loss + s.keep_parent * keep
        figs["parent"] = float(keep.detach())
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    run.optimizer.step()
    value = total.item()
    if not math.isfinite(value):
        raise OpenFacePyError(
            f"the loss became {value} at epoch {epoch}, batch {batch}; lower the learning rates (--lr, --lr-head)"
        )
    return {
        "type": "batch",
        "epoch": epoch,
        "batch": batch,
        "loss": value,
        "metric_loss": loss.item(),
        **figs,
        "lr": s.rate * factor,
    }


def _end_epoch(run: _Run, scorer: _Scorer, progress: _Progress, seconds: float) -> None:
    """Score the finished epoch, log and plot it, keep it if it is the best so far, move on."""
    fig = scorer.figures(progress.epoch, progress.loss_sum / max(progress.loss_n, 1), seconds)
    progress.history.append(asdict(fig))
    append_record(run.out / LOG, {"type": "epoch", **asdict(fig)})
    _report_epoch(fig, progress.history[0])
    if run.val is None or fig.val["auc"] > progress.best["auc"]:
        progress.best = {
            "epoch": progress.epoch,
            "auc": fig.val.get("auc", -1.0),
            "model": _state(run.model),
            "objective": _state(run.objective),
        }
    progress.epoch, progress.batch, progress.loss_sum, progress.loss_n = progress.epoch + 1, 0, 0.0, 0
    write_plot(run.out / PLOT, progress.history)


def _report_epoch(fig: EpochFigures, start: dict) -> None:
    parts = [f"epoch {fig.epoch}: loss {fig.loss:.4f}"]
    if fig.val:
        parts.append(
            f"held-out accuracy {fig.val['accuracy']:.4f} (start {start['val']['accuracy']:.4f}), "
            f"AUC {fig.val['auc']:.4f} (start {start['val']['auc']:.4f}), "
            f"TAR@FAR=1e-3 {fig.val['tar_at_far_1e-3']:.3f}"
        )
    if fig.lfw:
        parts.append(f"LFW {fig.lfw['accuracy']:.4f} (start {start['lfw']['accuracy']:.4f})")
    log.info("; ".join(parts))


def write_plot(path: Path, history: list) -> None:
    """Loss and held-out (and LFW) accuracy per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [h for h in history if h["loss"] is not None]
    ax1.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], "o-")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (mean per batch)")
    ax1.grid(alpha=0.3)
    if history[0]["val"]:
        ax2.plot(epochs, [h["val"]["accuracy"] for h in history], "o-", label="held-out people: accuracy")
        ax2.plot(epochs, [h["val"]["auc"] for h in history], "s--", label="held-out people: AUC")
    if history[0].get("lfw"):
        ax2.plot(epochs, [h["lfw"]["accuracy"] for h in history], "^-", label="LFW accuracy (monitoring)")
    ax2.set_xlabel("epoch (0 = before training)")
    ax2.grid(alpha=0.3)
    if ax2.lines:
        ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def export_weights(path: Path, state: dict, meta: dict) -> None:
    """``model.pt``: a state dict any ``--model PATH`` accepts, with openface-py's metadata."""
    from openface_py.nets.modelfiles import WEIGHTS_META_KEY

    buf = _io.BytesIO()
    torch.save({"state_dict": state, WEIGHTS_META_KEY: meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _finish(run: _Run, progress: _Progress, seconds: float) -> TrainResult:
    """Export the best epoch's weights (``model.pt``, and ``verifier.pt`` for a verifier loss) and
    write ``training.json``."""
    from openface_py import __version__
    from openface_py.nets.embed import describe_model

    s, out, val, history, best = run.s, run.out, run.val, progress.history, progress.best
    best_epoch = best["epoch"]
    chosen = history[best_epoch]
    meta = {
        "trained_by": f"openface-py {__version__} train-net",
        "network": s.arch,
        "loss": s.loss,
        "parent": run.parent,
        "parent_sha256": run.parent_sha,
        "epoch": best_epoch,
    }
    if chosen["val"]:
        meta["same_person_threshold"] = chosen["val"]["threshold"]
    export_weights(out / MODEL, best["model"], meta)
    _, name, alignment = describe_model(str(out / MODEL))  # named without building a runner for it
    identity = f"{name}|{alignment.identity}"
    verifier_path = None
    if OBJECTIVES.get(s.loss).verifier:
        verifier_path = _export_verifier(out, best["objective"], identity, val, run, best["model"])
    if val is not None and best_epoch == 0 and not s.scratch:
        trained = max(h["val"]["auc"] for h in history[1:])
        log.warning(
            "no epoch beat the starting weights on the held-out people (AUC %.4f before training, at best %.4f "
            "after): model.pt holds the starting weights with a threshold measured on your people; try a lower "
            "--lr, more --freeze-blocks or a larger --parent-weight",
            history[0]["val"]["auc"],
            trained,
        )
    summary = {
        "model": str(out / MODEL),
        "identity": identity,
        "best_epoch": best_epoch,
        "selected_by": "held-out people AUC" if val is not None else "last epoch (no held-out people)",
        "settings": asdict(s),
        "data": {
            "aligned_dir": str(Path(s.aligned_dir).resolve()),
            "train": describe(run.train),
            "held_out": describe(val) if val is not None else None,
            "train_people": run.train.people,
            "held_out_people": val.people if val is not None else [],
            "skipped_files": [{"path": p, "reason": r} for p, r in run.data.skipped],
        },
        "parent": {"init": s.init, "name": run.parent, "sha256": run.parent_sha},
        "epochs": history,
        "wall_seconds": round(seconds, 1),
        "device": _describe_device(run.device),
        "torch_threads": torch.get_num_threads(),
        "command": s.command or " ".join(sys.argv),
    }
    if verifier_path is not None:
        summary["verifier"] = str(verifier_path)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return TrainResult(out, out / MODEL, best_epoch, history, summary, verifier_path)


def _describe_device(device: torch.device) -> str:
    return describe_device(str(device))


def _export_verifier(
    out: Path, objective_state: dict, identity: str, val: Optional[LabeledFaces], run: _Run, model_state: dict
) -> Path:
    """Save the Siamese head beside model.pt, its P(same) threshold set on the held-out pairs."""
    from openface_py.recognize.siamese import SiameseHead, SiameseVerifier

    head = SiameseHead(run.s.network.dim)
    head.load_state_dict({k[len("head.") :]: v for k, v in objective_state.items() if k.startswith("head.")})
    head.eval()
    verifier = SiameseVerifier(head, identity, MODEL)
    if val is not None:
        model = run.s.network.build()
        model.load_state_dict(model_state)
        reps = embed_faces(model.to(run.device), val.faces, run.device)
        pairs = verification_pairs(val.labels, run.s.seed)
        order = balanced(pairs, run.s.seed)
        p = verifier.probability(reps[pairs.a[order]], reps[pairs.b[order]])
        t, _ = best_split_threshold(p[pairs.same[order]], p[~pairs.same[order]])
        verifier.threshold = float(t)
    verifier.save(out / VERIFIER)
    return out / VERIFIER
