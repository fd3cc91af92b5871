"""`train-net`: learn or fine-tune NN4-small2 or MobileFaceNet on an aligned folder of labeled faces."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from openface_py.cli.common import EXIT_OK, add_device_arg


def register(add_command) -> None:
    from openface_py.nets.networks import NETWORKS
    from openface_py.train.losses import LOSSES, MININGS
    from openface_py.train.trainer import NetSettings

    d = NetSettings(aligned_dir="")
    p = add_command(
        "train-net",
        help="train or fine-tune NN4-small2 or MobileFaceNet on labeled faces (triplet, center, contrastive, "
        "siamese, arcface)",
        description="Learn the embedding from ALIGNED_DIR (the output of `openface-py align`: one sub-folder per "
        "person, aligned for the network: `align --model mobilefacenet-reid-0095` for --arch mobilefacenet). "
        "Writes OUT_DIR/model.pt (use it with --model in every command), training.json, training.jsonl, "
        "training.png; rerun the same command to continue after an interruption.",
    )
    p.add_argument("aligned_dir", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (model.pt, training.json, checkpoint)")
    g = p.add_argument_group("objective")
    g.add_argument("--loss", choices=LOSSES, default=d.loss, help="default: triplet (FaceNet)")
    g.add_argument(
        "--mining", choices=MININGS, default=d.mining, help="triplet mining in each batch (default: semihard)"
    )
    g.add_argument(
        "--margin",
        type=float,
        default=None,
        help="triplet margin on squared L2 (default 0.2) or contrastive margin on L2 (default 1.0)",
    )
    g.add_argument(
        "--center-weight", type=float, default=d.center_weight, help="lambda of the center loss (default 0.1)"
    )
    g.add_argument(
        "--parent-weight",
        type=float,
        default=None,
        help="weight of mean(1 - cos) to the starting model's embeddings, which keeps a pretrained "
        "model from drifting on a small labeled set (default: 1.0 from pretrained weights, 0 from scratch)",
    )
    g = p.add_argument_group("network")
    g.add_argument(
        "--arch",
        choices=NETWORKS.names(),
        default=d.arch,
        help="the network: nn4.small2 (OpenFace's, 96x96, 128-D; default) or mobilefacenet (Intel's reid-0095, "
        "128x128, 256-D, far more accurate)",
    )
    pretrained = ", ".join(f"{NETWORKS.get(n).pretrained} for {n}" for n in NETWORKS)
    g.add_argument(
        "--init",
        default=None,
        help=f"starting weights: a model name of the network, a weights path, or scratch (default: {pretrained})",
    )
    blocks = "; ".join(f"{n}: {', '.join(NETWORKS.get(n).block_names)}" for n in NETWORKS)
    g.add_argument(
        "--freeze-blocks",
        type=int,
        default=None,
        help=f"leading blocks kept as initialised ({blocks}; default: 3 from pretrained weights, 0 from scratch)",
    )
    g.add_argument(
        "--bn",
        choices=("auto", "fixed", "update"),
        default=d.bn,
        help="batch-norm statistics: fixed (pretrained default) or updated (scratch default)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument(
        "--lr", type=float, default=None, help="learning rate of the trained blocks (default: 1e-5, from scratch 1e-3)"
    )
    g.add_argument(
        "--lr-dense", type=float, default=None, help="learning rate of the final linear layer (default: --lr)"
    )
    g.add_argument(
        "--lr-head",
        type=float,
        default=d.lr_head,
        help=f"learning rate of the loss's parameters: centres, class weights, Siamese head (default {d.lr_head:g})",
    )
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--schedule", choices=("cosine", "constant"), default=d.schedule)
    g.add_argument("--batch-people", type=int, default=d.batch_people, help="P people per batch (default 15, OpenFace)")
    g.add_argument("--batch-images", type=int, default=d.batch_images, help="K faces per person (default 20, OpenFace)")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("augmentation")
    g.add_argument("--mirror", type=float, default=d.mirror, help="probability of a left-right flip (default 0.5)")
    g.add_argument("--shift", type=float, default=d.shift, help="largest shift in pixels (default 2)")
    g.add_argument("--scale", type=float, default=d.scale, help="largest relative zoom (default 0.05)")
    g.add_argument("--jitter", type=float, default=d.jitter, help="largest brightness/contrast change (default 0.1)")
    g = p.add_argument_group("validation and running")
    g.add_argument(
        "--val-people",
        type=float,
        default=d.val_people,
        help="fraction of people held out (split by person) and scored after every epoch (default 0.1)",
    )
    g.add_argument(
        "--lfw",
        type=Path,
        default=None,
        dest="lfw_dir",
        help="LFW folder (pairs.txt + deepfunneled/): 10-fold accuracy after every epoch, monitoring only",
    )
    add_device_arg(g, "training and its held-out and LFW scoring run")
    g.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: torch's choice)")
    g.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=d.checkpoint_minutes,
        help="save a checkpoint at least this often (and after every epoch)",
    )
    g.add_argument("--json", action="store_true", help="print training.json's summary as JSON")
    p.set_defaults(handler=cmd_train_net)


def cmd_train_net(args: argparse.Namespace) -> int:
    from openface_py.train.trainer import NetSettings, train_net

    settings = NetSettings(
        aligned_dir=str(args.aligned_dir),
        arch=args.arch,
        loss=args.loss,
        mining=args.mining,
        margin=args.margin,
        center_weight=args.center_weight,
        init=args.init,
        freeze_blocks=args.freeze_blocks,
        bn=args.bn,
        lr=args.lr,
        lr_dense=args.lr_dense,
        lr_head=args.lr_head,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        parent_weight=args.parent_weight,
        epochs=args.epochs,
        batch_people=args.batch_people,
        batch_images=args.batch_images,
        mirror=args.mirror,
        shift=args.shift,
        scale=args.scale,
        jitter=args.jitter,
        val_people=args.val_people,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        checkpoint_minutes=args.checkpoint_minutes,
        lfw_dir=str(args.lfw_dir) if args.lfw_dir else None,
        progress=not args.quiet if hasattr(args, "quiet") else True,
        command=shlex.join(["openface-py"] + sys.argv[1:]),
    )
    result = train_net(settings, args.out)
    s = result.summary
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    first, best = result.history[0], result.history[result.best_epoch]
    print(
        f"Trained {s['identity']} in {s['wall_seconds'] / 60:.1f} min on {s['device']}; best epoch {result.best_epoch} "
        f"({s['selected_by']})"
    )
    if first["val"]:
        for key, label in (("accuracy", "accuracy"), ("auc", "AUC"), ("tar_at_far_1e-3", "TAR@FAR=1e-3")):
            print(f"  held-out people {label}: {first['val'][key]:.4f} -> {best['val'][key]:.4f}")
        print(f"  same-person threshold (squared L2): {best['val']['threshold']:.4f}")
    if first.get("lfw"):
        print(f"  LFW accuracy (monitoring): {first['lfw']['accuracy']:.4f} -> {best['lfw']['accuracy']:.4f}")
    print(f"Model: {result.model_path}")
    if result.verifier_path:
        print(f"Siamese verifier: {result.verifier_path} (openface-py compare --verifier {result.verifier_path} A B)")
    return EXIT_OK
