"""`lfw`, `pairs-eval`, `lfw-classify`: the verification and classification benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openface_py.cli.common import (
    EXIT_OK,
    MODEL_HELP,
    add_detector_args,
    add_device_arg,
    add_engine_args,
    detector_spec,
    device_of,
    embedder_for,
    engine_choice,
)


def register(add_command) -> None:
    """Add this family's sub-commands (each parser beside its handler's module)."""
    p = add_command("lfw", help="LFW view-2 verification benchmark (10 folds, ROC, AUC, EER, VAL@FAR)")
    p.add_argument("lfw_dir", type=Path, help="folder with pairs.txt and the per-person image folders")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (reports and embedding cache)")
    p.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    p.add_argument("--metric", choices=("sqeuclidean", "cosine", "jb"), default="sqeuclidean")
    p.add_argument("--images", default="deepfunneled", help="image sub-folder of LFW_DIR (default: deepfunneled)")
    p.add_argument("--flip", action="store_true", help="headline figures with mirror-averaged embeddings")
    p.add_argument("--folds", default=None, help="comma-separated 1-based folds to use (default: all 10)")
    p.add_argument("--pairs-per-fold", type=int, default=None, help="use only the first N pairs of each fold")
    _add_pick(p)
    add_engine_args(p, "detection/alignment processes of the local engine (default: 1)")
    add_detector_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_lfw)

    p = add_command(
        "pairs-eval",
        help="verification benchmark on any pair list (CSV path_a,path_b,same[,fold]): LFW's protocol and reports",
    )
    p.add_argument("pairs_csv", type=Path, help="CSV rows path_a,path_b,same[,fold] (paths relative to IMAGE_ROOT)")
    p.add_argument("image_root", type=Path, help="folder the pair list's paths are relative to")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (reports and embedding cache)")
    p.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    p.add_argument("--metric", choices=("sqeuclidean", "cosine", "jb"), default="sqeuclidean")
    p.add_argument("--flip", action="store_true", help="headline figures with mirror-averaged embeddings")
    p.add_argument(
        "--folds", type=int, default=10, help="without a fold column: cut the list into N blocks in order (default 10)"
    )
    p.add_argument(
        "--on-miss",
        choices=("fail", "whole-image"),
        default="fail",
        help="a photo with no face found: fail = its pairs are decided 'different' (default); "
        "whole-image = align the whole photo as the face's box (for face crops)",
    )
    _add_pick(p)
    add_engine_args(p, "detection/alignment processes of the local engine (default: 1)")
    add_detector_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_pairs_eval)

    p = add_command("lfw-classify", help="OpenFace's LFW classification experiment (accuracy vs number of people)")
    p.add_argument("lfw_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    p.add_argument("--images", default="deepfunneled")
    p.add_argument("--people", type=int, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--classifiers", nargs="+", default=None, help="default: all but GridSearchSvm")
    p.add_argument("--min-images", type=int, default=20, help="people with at least this many photos (default 20)")
    p.add_argument("--train-per-person", type=int, default=10)
    p.add_argument("--runs", type=int, default=5, help="repetitions with other people and photos")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_device_arg(p)
    p.set_defaults(handler=cmd_lfw_classify)


def _add_pick(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pick",
        choices=("largest", "central"),
        default="largest",
        help="the face of a photo with several: largest (OpenFace's; default) or central (size less distance "
        "from the photo's centre, facenet's rule: photos centred on their subject, as LFW's are)",
    )


def cmd_lfw(args: argparse.Namespace) -> int:
    from openface_py.eval.evaluate import run_lfw

    engine = engine_choice(args, workers_default=1)
    embedder = embedder_for(args.model, engine, device=device_of(args))
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    plain, flipped, emb = run_lfw(
        args.lfw_dir,
        args.output,
        embedder,
        metric=args.metric,
        images=args.images,
        folds=folds,
        per_fold=args.pairs_per_fold,
        progress=not args.quiet,
        detector=detector_spec(args),
        engine=engine,
        pick=args.pick,
    )
    title = f"LFW {args.images}"
    found = f"Faces not found (central-box fallback): {len(emb.fallbacks)} of {len(emb.names)} images"
    return _report(args, embedder, plain, flipped, title, found)


def cmd_pairs_eval(args: argparse.Namespace) -> int:
    from openface_py.eval.pairs import run_pairs_eval

    engine = engine_choice(args, workers_default=1)
    embedder = embedder_for(args.model, engine, device=device_of(args))
    res = run_pairs_eval(
        args.pairs_csv,
        args.image_root,
        args.output,
        embedder,
        metric=args.metric,
        detector=detector_spec(args),
        on_miss=args.on_miss,
        folds=args.folds,
        progress=not args.quiet,
        engine=engine,
        pick=args.pick,
    )
    policy = "pairs decided 'different'" if args.on_miss == "fail" else "whole photo aligned"
    found = f"Faces not found ({policy}): {len(res.not_found)} of {res.photos} photos"
    return _report(args, embedder, res.plain, res.flipped, str(args.pairs_csv), found)


def _report(args: argparse.Namespace, embedder, plain, flipped, title: str, found: str) -> int:
    """Print a verification result as ``lfw`` does (or the summaries with --json)."""
    main_res, other = (flipped, plain) if args.flip else (plain, flipped)
    if args.json:
        print(json.dumps({"headline": main_res.tag, "results": [
            json.loads((args.output / f"summary-{r.tag}.json").read_text()) for r in (main_res, other)
        ]}, indent=2))  # fmt: skip
        return EXIT_OK
    print(f"{title}, {main_res.n_pairs} pairs, model {embedder.identity}, metric {args.metric}"
          f"{', flip-averaged' if args.flip else ''}")  # fmt: skip
    print(found)
    print(f"fold  threshold ({main_res.threshold_meaning})  accuracy")
    for f in main_res.folds:
        print(f"{f.fold + 1:4d}  {main_res.shown(f.threshold):9.4g}  {f.accuracy:.4f}")
    for line in main_res.lines():
        print(line)
    print(f"({'without' if args.flip else 'with'} flip averaging: accuracy {other.mean:.4f} +- {other.std:.4f}, "
          f"AUC {other.auc:.3f})")  # fmt: skip
    tag = main_res.tag
    print(f"Reports: {args.output}/accuracies-{tag}.txt, roc-{tag}.csv/.png, summary-{tag}.json")
    return EXIT_OK


def cmd_lfw_classify(args: argparse.Namespace) -> int:
    from openface_py.eval.evaluate import run_lfw_classify
    from openface_py.nets.embed import best_installed_model, load_embedder

    embedder = load_embedder(args.model or best_installed_model(), device=device_of(args))
    kwargs = {"classifiers": args.classifiers} if args.classifiers else {}
    rows, skipped = run_lfw_classify(
        args.lfw_dir, args.output, embedder, people_counts=args.people, min_images=args.min_images,
        train_per_person=args.train_per_person, runs=args.runs, images=args.images, workers=args.workers,
        seed=args.seed, progress=not args.quiet, **kwargs,
    )  # fmt: skip
    for n in skipped:
        print(f"N={n}: skipped, LFW has fewer people with >= {args.min_images} photos (try --min-images 10)")
    print(f"{'people':>6s} {'classifier':14s} {'accuracy':>16s} {'train s':>8s} {'ms/face':>8s}")
    for r in rows:
        print(f"{r.people:6d} {r.classifier:14s} {r.accuracy_mean:.4f} +- {r.accuracy_std:.4f} "
              f"{r.train_s:8.3f} {r.predict_ms:8.3f}")  # fmt: skip
    print(f"Results: {args.output}/classification.csv, accuracies.png, train-times.png")
    return EXIT_OK
