"""`train`, `infer`, `compare`, `identify`: naming and verifying people."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    MODEL_HELP,
    add_detector_args,
    largest_face_reps,
    log,
    per_image,
    pipeline_for,
    print_results,
)
from openface_py.errors import UsageError


def register(add_command) -> None:
    """Add this family's sub-commands (each parser beside its handler's module)."""
    from openface_py.recognize.classifiers import CLASSIFIER_NAMES

    p = add_command("train", help="train a classifier on `represent` output (with an unknown-person threshold)")
    p.add_argument("reps_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.skops + .sha256)")
    p.add_argument("--classifier", choices=CLASSIFIER_NAMES, default="LinearSvm")
    p.add_argument("--ldaDim", "--lda-dim", dest="lda_dim", type=int, default=None, help="LDA projection in front")
    p.add_argument("--threshold", type=float, default=None, help="unknown threshold instead of the measured one")
    p.add_argument("--no-open-set", action="store_true", help="never answer unknown (closed-set classifier)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="do not write the reliability plot (OUTPUT.reliability.png)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    p = add_command("infer", help="name the people in photos with a trained classifier")
    p.add_argument("model_file", metavar="MODEL", type=Path, help="a classifier file from `train`")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument(
        "--model",
        dest="weights",
        default=None,
        help="the embedding weights the classifier was trained on: needed when they were given by path "
        "(checked against the classifier); default: the model named in the classifier",
    )
    p.add_argument("--multi", action="store_true", help="every face, left to right (default: the largest)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's unknown threshold")
    add_detector_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_infer)

    p = add_command("compare", help="squared L2 distance and same/different verdict for each pair of photos")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    p.add_argument(
        "--verifier",
        type=Path,
        default=None,
        help="a JointBayesian model file from `train`, or a Siamese verifier.pt from `train-net --loss siamese`",
    )
    p.add_argument("--threshold", type=float, default=None, help="same-person threshold")
    add_detector_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_compare)

    p = add_command(
        "identify",
        help="one-shot identification against a gallery folder (one sub-folder per person) or a face database",
    )
    p.add_argument("gallery_dir", type=Path, help="gallery folder, or a database file from `db create`")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="squared-L2 distance above which a face is unknown (default: the model's same-person threshold, for a "
        "gallery folder tightened for the gallery's size so that a stranger is named about 1%% of the time, "
        "where the model's impostor curve is measured (down to 1e-5 per face, about 1,000 gallery faces))",
    )
    add_detector_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_identify)


def cmd_train(args: argparse.Namespace) -> int:
    from openface_py.jobs.embeddings import load_embeddings
    from openface_py.recognize.classify import train_model
    from openface_py.recognize.openset import write_reliability_plot

    reps, labels, paths, meta = load_embeddings(args.reps_dir)
    model = train_model(
        reps,
        labels,
        args.classifier,
        embedder_name=meta["model"],
        embedder_identity=meta["identity"],
        alignment=meta["alignment"],
        lda_dim=args.lda_dim,
        paths=paths,
        open_set=not args.no_open_set and args.threshold is None,
        seed=args.seed,
    )
    if args.threshold is not None:
        model.threshold = args.threshold
    model.save(args.output)
    plot = None
    if model.open_set is not None and model.open_set.reliability and not args.no_plot:
        plot = write_reliability_plot(
            model.open_set,
            args.output.with_name(args.output.name + ".reliability.png"),
        )
    report = {
        "model": str(args.output),
        "classifier": model.classifier.name,
        "people": len(model.classes),
        "photos": model.n_train,
        "embedder": model.embedder_identity,
        "cv_accuracy": model.cv_accuracy,
        "threshold": model.threshold,
        "score_kind": model.classifier.score_kind,
        "open_set": model.open_set.__dict__ if model.open_set else None,
        "pair_threshold": model.pair_threshold,
        "calibrated": model.calibrator is not None,
        "reliability_plot": str(plot) if plot else None,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"Trained {model.classifier.name} on {model.n_train} photos of {len(model.classes)} people -> {args.output}")
    if model.cv_accuracy is not None:
        print(f"Cross-validated accuracy: {model.cv_accuracy:.4f}")
    else:
        print("Cross-validated accuracy: not measurable (some people have a single photo)")
    if model.open_set is not None:
        o = model.open_set
        print("Open set: " + o.summary())
        if o.ece is not None:
            print(
                f"Confidence = P(answer right), measured on held-out people and photos (out of fold): "
                f"ECE {o.ece:.3f}, median confidence of right answers {o.median_confidence_right:.3f}; "
                f"strangers rejected {100 * o.unknown_rejection:.1f}%, enrolled named correctly "
                f"{100 * o.known_accuracy:.1f}%"
            )
        if plot is not None:
            print(f"Reliability plot: {plot}")
    elif args.threshold is not None:
        print(f"Unknown threshold: {args.threshold} (given)")
    else:
        print("Open set: no unknown threshold (needs three or more people, or --threshold)")
    if model.pair_threshold is not None:
        print(f"Same/different threshold for `compare --verifier`: {model.pair_threshold:.4g}")
    return EXIT_OK


def cmd_infer(args: argparse.Namespace) -> int:
    from openface_py.recognize.classify import format_prediction
    from openface_py.recognize.modelfile import load_model

    model = load_model(args.model_file)
    pipe = pipeline_for(model.embedder_model(args.weights), args)
    if pipe.embedder.identity != model.embedder_identity:
        raise UsageError(
            f"--model {args.weights or model.embedder_name} gives {pipe.embedder.identity}, but {args.model_file} "
            f"was trained on {model.embedder_identity}: give the weights it was trained on"
        )

    def run(rgb):
        found = pipe.run(rgb, multi=args.multi)
        faces = found.faces
        preds = model.predict(np.stack([f.embedding for f in faces]), args.threshold) if faces else []
        return {"faces_found": found.found, "faces": [(f, p) for f, p in zip(faces, preds)]}

    results, failed = per_image(args.images, run)
    if args.json:
        for r in results:
            r["faces"] = [
                {
                    "box": f.box.as_list(),
                    "name": p.name,
                    "best_match": p.best,
                    "confidence": round(p.confidence, 4),
                    "score": round(p.score, 4),
                }
                for f, p in r.get("faces", [])
            ]
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"=== {r['path']} ===")
            if "error" in r:
                print(f"ERROR {r['error']}")
            elif not r["faces"]:
                print("No face found.")
            for f, p in r.get("faces", []):
                print(format_prediction(p, f.box.center[0]))
            if r.get("faces_found", 0) > len(r.get("faces", [])):
                print(f"({r['faces_found']} faces found: the largest named; --multi names every face)")
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from openface_py.recognize.classifiers import ClassifierError, JointBayesianClassifier
    from openface_py.recognize.modelfile import load_model
    from openface_py.recognize.verify import PairScorer, verify

    if len(args.images) < 2:
        raise UsageError("compare needs two or more images")
    from openface_py.recognize.siamese import SiameseVerifier, is_siamese_file

    siamese = SiameseVerifier.load(args.verifier) if args.verifier and is_siamese_file(args.verifier) else None
    verifier = load_model(args.verifier) if args.verifier and siamese is None else None
    if verifier is not None and not isinstance(verifier.classifier, JointBayesianClassifier):
        raise ClassifierError(
            f"{args.verifier}: --verifier needs a JointBayesian model (train --classifier JointBayesian) "
            "or a Siamese verifier.pt (train-net --loss siamese)"
        )
    scorer = None
    if siamese is not None:
        pipe = pipeline_for(args.model or str(siamese.model_path(args.verifier)), args)
        siamese.check_identity(pipe.embedder.identity)
        threshold = args.threshold if args.threshold is not None else siamese.threshold
        scorer = PairScorer.siamese(siamese, threshold)
    elif verifier is not None:
        pipe = pipeline_for(verifier.embedder_model(args.model), args)
        verifier.check_identity(pipe.embedder.identity)
        threshold = args.threshold if args.threshold is not None else verifier.pair_threshold
        if threshold is None:
            raise ClassifierError(f"{args.verifier} has no same/different threshold; pass --threshold")
        scorer = PairScorer.joint_bayesian(verifier.classifier.jb, threshold)
    else:
        pipe = pipeline_for(args.model, args)
        threshold = args.threshold if args.threshold is not None else pipe.embedder.same_person_threshold
        if threshold is None:
            log.warning(
                "%s has no calibrated same-person threshold: distances only, no verdict (give --threshold)",
                pipe.embedder.name,
            )
    reps, errors = largest_face_reps(args.images, pipe)
    out = []
    for i in range(len(args.images)):
        for j in range(i + 1, len(args.images)):
            item = {"image1": str(args.images[i]), "image2": str(args.images[j])}
            if reps[i] is None or reps[j] is None:
                item["error"] = "; ".join(f"{args.images[k]}: {errors[k]}" for k in (i, j) if reps[k] is None)
            else:
                v = verify(reps[i], reps[j], threshold, scorer=scorer)
                item["squared_l2"] = round(v.distance, 4)
                if v.method == "siamese":
                    item["p_same"] = round(v.score, 4)
                elif v.method == "joint-bayesian":
                    item["jb_score"] = round(v.score, 4)
                item["same"] = v.same
            out.append(item)
    if args.json:
        print(json.dumps({"model": pipe.embedder.identity, "threshold": threshold, "pairs": out}, indent=2))
    else:
        for item in out:
            print(f"Comparing {item['image1']} with {item['image2']}.")
            if "error" in item:
                print(f"  + cannot compare: {item['error']}")
                continue
            print(f"  + Squared l2 distance between representations: {item['squared_l2']:0.3f}")
            if "p_same" in item:
                print(f"  + Siamese P(same person): {item['p_same']:.3f} (same person at or above {threshold:.3f})")
            if "jb_score" in item:
                print(f"  + Joint Bayesian score: {item['jb_score']:.3f} (same person at or above {threshold:.3f})")
            if item["same"] is None:
                print("  + no verdict: uncalibrated weights (no same-person threshold; give --threshold)")
                continue
            verdict = "same person" if item["same"] else "different people"
            print(f"  + {verdict} (threshold {threshold:.3f})")
    return EXIT_FAILED if all("error" in item for item in out) else EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    from openface_py.recognize.facedb import is_database
    from openface_py.recognize.gallery import build_gallery, identify, open_set_threshold

    if is_database(args.gallery_dir):
        return _identify_db(args)
    if not args.gallery_dir.is_dir():
        raise UsageError(f"{args.gallery_dir}: neither a gallery folder nor a face database (db create)")
    pipe = pipeline_for(args.model, args)
    threshold = args.threshold
    if threshold is None and pipe.embedder.same_person_threshold is None:
        raise UsageError(f"{pipe.embedder.name} has no calibrated same-person threshold; give one (--threshold)")
    gallery = build_gallery(args.gallery_dir, pipe, progress=not args.quiet)
    if threshold is None:
        threshold = open_set_threshold(gallery, pipe.embedder)

    def run(rgb):
        faces = pipe.process(rgb, multi=True)
        answers = identify(gallery, np.stack([f.embedding for f in faces]), threshold) if faces else []
        return {
            "faces": [
                {"box": f.box.as_list(), "name": a, "nearest": n, "distance": round(d, 4)}
                for f, (a, n, d) in zip(faces, answers)
            ]
        }

    def face_lines(r):
        for face in r["faces"]:
            x = (face["box"][0] + face["box"][2]) / 2.0
            yield f"  x={x:.0f}: {face['name']} (nearest {face['nearest']}, distance {face['distance']:.3f})"

    results, failed = per_image(args.images, run)
    if args.json:
        print(json.dumps({"threshold": threshold, "model": pipe.embedder.identity, "results": results}, indent=2))
    else:
        print_results(results, False, face_lines)
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def _identify_db(args: argparse.Namespace) -> int:
    """``identify DB PHOTO...``: answers from a face database (as ``db search``)."""
    from openface_py.cli.db import search_photos
    from openface_py.recognize.facedb import FaceDatabase

    with FaceDatabase.open(args.gallery_dir) as db:
        if args.model is not None and args.model != db.model:
            raise UsageError(f"{args.gallery_dir} was made with --model {db.model}; not {args.model}")
        return search_photos(db, args, args.images, top_k=1)
