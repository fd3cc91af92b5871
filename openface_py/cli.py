"""The ``openface-py`` command line (also ``python -m openface_py``).

Exit codes: 0 success; 1 the job failed (nothing could be processed, unreadable input);
2 bad arguments; 3 a model is not installed (the message says how to get it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from openface_py import __version__
from openface_py.errors import ModelNotInstalledError, OpenFacePyError, UsageError

log = logging.getLogger("openface_py")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL = 0, 1, 2, 3


def _add_detector_args(p: argparse.ArgumentParser, default: str = "hog") -> None:
    from openface_py.detect import DETECTOR_NAMES

    p.add_argument(
        "--detector",
        choices=DETECTOR_NAMES,
        default=default,
        help=f"face detector (default: {default}; hog = OpenFace's; hog-adaptive = upsample only when "
        "nothing is found at the photo's own resolution; cnn = dlib MMOD)",
    )
    p.add_argument("--upsample", type=int, default=1, help="times to upsample before detecting (default: 1)")
    p.add_argument(
        "--max-side", type=int, default=None, help="detect on a copy downscaled to this longer side (large photos)"
    )


def build_parser() -> argparse.ArgumentParser:
    from openface_py.backends import BACKENDS
    from openface_py.embed import DEFAULT_PREFERENCE, MODEL_NAMES

    BACKEND_CHOICES = ("auto",) + BACKENDS

    model_help = (
        f"model name ({', '.join(MODEL_NAMES)}) or path to NN4-small2 weights (.pt, .t7, CSV folder); "
        f"default: the first installed of {', '.join(DEFAULT_PREFERENCE)}"
    )
    parser = argparse.ArgumentParser(
        prog="openface-py",
        description="OpenFace-style face detection, alignment and embedding.",
        epilog="Exit codes: 0 ok, 1 job failed, 2 bad arguments, 3 model not installed.",
    )
    parser.add_argument("--version", action="version", version=f"openface-py {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    # -v/-q are accepted after the sub-command too; SUPPRESS keeps a global flag from being reset
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars; warnings and errors only",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_command(name: str, **kw) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], **kw)

    p = add_command("align", help="detect and align the faces of a folder of photos (resumable)")
    p.add_argument("input_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help="align for this model's input (" + model_help + ")")
    p.add_argument("--size", type=int, default=None, help="output size for OpenFace alignment (default 96)")
    p.add_argument(
        "--landmarks",
        choices=("outerEyesAndNose", "innerEyesAndBottomLip"),
        default=None,
        help="landmark triple for OpenFace alignment (default outerEyesAndNose)",
    )
    _add_detector_args(p)
    p.add_argument("--skip-multi", action="store_true", help="skip photos with more than one face")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="retry photos that failed in an earlier run")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")

    p = add_command("represent", help="embed a folder of aligned faces; writes reps.csv, labels.csv, reps.npy")
    p.add_argument("aligned_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="NN4-small2 backend (default: auto)")

    p = add_command("run", help="detect, align and embed a folder of photos in one pass (parallel, resumable)")
    p.add_argument("input_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help=model_help)
    _add_detector_args(p, default="hog-adaptive")
    p.add_argument("--multi", action="store_true", help="every face of a photo (default: the largest)")
    p.add_argument("--skip-multi", action="store_true", help="skip photos with more than one face")
    p.add_argument("--workers", type=int, default=0, help="detection/alignment processes (default: one per core)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="NN4-small2 backend (default: auto)")
    p.add_argument("--save-aligned", action="store_true", help="also write the aligned faces (OUTPUT_DIR/aligned)")
    p.add_argument("--retry-failed", action="store_true", help="retry photos that failed in an earlier run")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")

    p = add_command("video", help="recognise faces in a video file or camera stream (detect + track + name)")
    p.add_argument("source", help="video file, or a camera index such as 0")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--classifier", type=Path, help="a model file from `train`")
    who.add_argument("--gallery", type=Path, help="a gallery folder (one sub-folder of photos per person)")
    p.add_argument("--model", default=None, help=model_help + " (gallery only; a classifier knows its model)")
    p.add_argument("--threshold", type=float, default=None, help="unknown threshold (classifier) / distance (gallery)")
    p.add_argument("--output", type=Path, default=None, help="write the annotated video here (.mp4)")
    p.add_argument("--results", type=Path, default=None, help="write one JSON line per frame here")
    p.add_argument("--scale", type=float, default=0.5, help="detect and track on a frame scaled by this")
    p.add_argument("--detect-every", type=int, default=10, help="re-detect every N frames (and when a track is lost)")
    p.add_argument("--recognise-every", type=int, default=15, help="re-recognise each face every N frames")
    p.add_argument(
        "--tracker",
        choices=("template", "correlation"),
        default="template",
        help="between detections: template (fast, follows position) or correlation (dlib's, follows size too)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = add_command("detect", help="find faces in photos")
    p.add_argument("images", nargs="+", type=Path)
    _add_detector_args(p)
    p.add_argument("--landmarks", action="store_true", help="also report the 68 dlib landmarks")
    p.add_argument("--json", action="store_true")

    p = add_command("embed", help="detect, align and embed the faces of photos")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--multi", action="store_true", help="every face, left to right (default: the largest)")
    _add_detector_args(p)
    p.add_argument("--json", action="store_true")

    from openface_py.classify import CLASSIFIER_NAMES

    p = add_command("train", help="train a classifier on `represent` output (with an unknown-person threshold)")
    p.add_argument("reps_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write (.skops + .sha256)")
    p.add_argument("--classifier", choices=CLASSIFIER_NAMES, default="LinearSvm")
    p.add_argument("--ldaDim", "--lda-dim", dest="lda_dim", type=int, default=None, help="LDA projection in front")
    p.add_argument("--threshold", type=float, default=None, help="unknown threshold instead of the measured one")
    p.add_argument("--no-open-set", action="store_true", help="never answer unknown (closed-set classifier)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = add_command("infer", help="name the people in photos with a trained classifier")
    p.add_argument("model", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--multi", action="store_true", help="every face, left to right (default: the largest)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's unknown threshold")
    _add_detector_args(p)
    p.add_argument("--json", action="store_true")

    p = add_command("compare", help="squared L2 distance and same/different verdict for each pair of photos")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=model_help + " (default: best installed)")
    p.add_argument("--verifier", type=Path, default=None, help="a JointBayesian model file from `train`")
    p.add_argument("--threshold", type=float, default=None, help="same-person threshold")
    _add_detector_args(p)
    p.add_argument("--json", action="store_true")

    p = add_command("identify", help="one-shot identification against a gallery folder (one sub-folder per person)")
    p.add_argument("gallery_dir", type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=model_help + " (default: best installed)")
    p.add_argument("--threshold", type=float, default=None, help="squared-L2 distance above which a face is unknown")
    _add_detector_args(p)
    p.add_argument("--json", action="store_true")

    p = add_command("lfw", help="LFW view-2 verification benchmark (10 folds, ROC, AUC, EER, VAL@FAR)")
    p.add_argument("lfw_dir", type=Path, help="folder with pairs.txt and the per-person image folders")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (reports and embedding cache)")
    p.add_argument("--model", default=None, help=model_help + " (default: best installed)")
    p.add_argument("--metric", choices=("sqeuclidean", "cosine", "jb"), default="sqeuclidean")
    p.add_argument("--images", default="deepfunneled", help="image sub-folder of LFW_DIR (default: deepfunneled)")
    p.add_argument("--flip", action="store_true", help="headline figures with mirror-averaged embeddings")
    p.add_argument("--folds", default=None, help="comma-separated 1-based folds to use (default: all 10)")
    p.add_argument("--pairs-per-fold", type=int, default=None, help="use only the first N pairs of each fold")
    p.add_argument("--workers", type=int, default=1, help="detection/alignment processes")
    p.add_argument("--json", action="store_true")

    p = add_command("lfw-classify", help="OpenFace's LFW classification experiment (accuracy vs number of people)")
    p.add_argument("lfw_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--model", default=None, help=model_help + " (default: best installed)")
    p.add_argument("--images", default="deepfunneled")
    p.add_argument("--people", type=int, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--classifiers", nargs="+", default=None, help="default: all but GridSearchSvm")
    p.add_argument("--min-images", type=int, default=20, help="people with at least this many photos (default 20)")
    p.add_argument("--train-per-person", type=int, default=10)
    p.add_argument("--runs", type=int, default=5, help="repetitions with other people and photos")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)

    p = add_command("models", help="list or download models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pl = msub.add_parser("list", parents=[common], help="show which models are installed and which is the default")
    pl.add_argument("--json", action="store_true")
    pd = msub.add_parser(
        "download", parents=[common], help="fetch a model's released weights into the cache (md5-checked)"
    )
    pd.add_argument("name", choices=("nn4.small2.v1",))
    pd.add_argument("--format", choices=("pt", "t7"), default="pt")
    pd.add_argument("--url", default=None, help="base URL (default: OpenFace's model storage) or a full file URL")
    pd.add_argument("--from-file", type=Path, default=None, help="install a copy you already have (md5-checked)")
    pc = msub.add_parser(
        "convert", parents=[common], help="convert a classifier pickle of an older version to the safe format (once)"
    )
    pc.add_argument("old", type=Path, help="the old model file (its .sha256 must be beside it)")
    pc.add_argument("-o", "--output", type=Path, required=True, help="the new model file (.skops)")
    pc.add_argument(
        "--trust-pickle", action="store_true", help="required: unpickling runs code; only for files you made or trust"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "models" and args.models_command is None:
        parser.parse_args(["models", "--help"])
    try:
        return COMMANDS[args.command](args)
    except ModelNotInstalledError as exc:
        log.error("%s", exc)
        return EXIT_NO_MODEL
    except UsageError as exc:  # arguments that cannot work (checked where they are used)
        log.error("%s", exc)
        return EXIT_USAGE
    except (OpenFacePyError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return 130


def cmd_align(args: argparse.Namespace) -> int:
    from openface_py.align import DLIB_CHIP_METHOD, openface_spec
    from openface_py.batch import align_folder
    from openface_py.embed import alignment_for, best_installed_model

    args.model = args.model or best_installed_model()
    spec = alignment_for(args.model)
    if spec.method == DLIB_CHIP_METHOD:
        if args.size is not None or args.landmarks is not None:
            raise UsageError(f"--size/--landmarks apply to OpenFace alignment; {args.model} needs {spec.identity}")
    else:
        spec = openface_spec(args.size or 96, args.landmarks or "outerEyesAndNose")
    report = align_folder(
        args.input_dir,
        args.output_dir,
        spec,
        detector=args.detector,
        upsample=args.upsample,
        max_side=args.max_side,
        skip_multi=args.skip_multi,
        workers=args.workers,
        model=args.model,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    return _folder_report(report, args.json, "aligned", args.output_dir / "align-report.json")


def _folder_report(report, as_json: bool, done: str, report_path: Path, note: str = "") -> int:
    """Print an align/run report (failures on stderr) and return the exit code: 1 if nothing is done."""
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for f in report.failures:
            print(f"FAILED {f.path}: {f.reason}", file=sys.stderr)
        print(
            f"{report.total} photos: {report.aligned} {done} now, {report.already_done} finished earlier, "
            f"{len(report.failures)} failed; {note}report in {report_path}"
        )
    return EXIT_OK if report.done_ok_total > 0 else EXIT_FAILED


def cmd_represent(args: argparse.Namespace) -> int:
    from openface_py.batch import represent_folder
    from openface_py.embed import load_embedder

    embedder = load_embedder(args.model, threads=args.threads, backend=args.backend)
    res = represent_folder(
        args.aligned_dir, args.output_dir, embedder, batch_size=args.batch_size, progress=not args.quiet
    )
    for f in res.failures:
        print(f"FAILED {f.path}: {f.reason}", file=sys.stderr)
    print(
        f"{len(res.labels)} faces of {len(set(res.labels))} classes embedded with {res.identity} -> {args.output_dir}"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from openface_py.embed import load_embedder
    from openface_py.stream import RUN_REPORT, run_folder

    embedder = load_embedder(args.model, backend=args.backend)
    report = run_folder(
        args.input_dir,
        args.output_dir,
        embedder,
        detector=args.detector,
        upsample=args.upsample,
        max_side=args.max_side,
        multi=args.multi,
        skip_multi=args.skip_multi,
        workers=args.workers,
        batch_size=args.batch_size,
        save_aligned=args.save_aligned,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    return _folder_report(report, args.json, "embedded", args.output_dir / RUN_REPORT, f"{embedder.identity}; ")


def cmd_video(args: argparse.Namespace) -> int:
    from openface_py.video import make_recognizer, process_video

    rec = make_recognizer(
        args.classifier,
        args.gallery,
        args.model,
        args.threshold,
        progress=not args.quiet,
        scale=args.scale,
        detect_every=args.detect_every,
        recognise_every=args.recognise_every,
        tracker=args.tracker,
    )
    summary = process_video(args.source, rec, output=args.output, results_path=args.results)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"{summary['frames']} frames in {summary['seconds']} s of processing: {summary['fps']} fps"
            + (f"; annotated video {args.output}" if args.output else "")
        )
    return EXIT_OK if summary["frames"] else EXIT_FAILED


def _per_image(paths: Sequence[Path], fn) -> tuple[list[dict], int]:
    """Run ``fn(rgb) -> dict`` on each image, collecting errors instead of stopping."""
    from openface_py.errors import ImageLoadError
    from openface_py.io import load_image

    out, failed = [], 0
    for path in paths:
        try:
            out.append({"path": str(path), **fn(load_image(path))})
        except ImageLoadError as exc:
            failed += 1
            out.append({"path": str(path), "error": exc.reason})
    return out, failed


def cmd_detect(args: argparse.Namespace) -> int:
    from openface_py.align import OpenFaceAligner
    from openface_py.detect import make_detector

    detector = make_detector(args.detector, upsample=args.upsample, max_side=args.max_side)
    aligner = OpenFaceAligner() if args.landmarks else None

    def run(rgb):
        faces = []
        for d in detector.detect(rgb):
            item = {"box": d.box.as_list(), "score": round(d.score, 4)}
            if aligner is not None:
                item["landmarks"] = aligner.find_landmarks(rgb, d.box).astype(int).tolist()
            faces.append(item)
        return {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "faces": faces}

    results, failed = _per_image(args.images, run)
    _print_results(results, args.json, lambda r: [f"  face box={f['box']} score={f['score']}" for f in r["faces"]])
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create(args.model, detector=args.detector, upsample=args.upsample, max_side=args.max_side)

    def run(rgb):
        faces = pipe.process(rgb, multi=args.multi)
        return {"model": pipe.embedder.identity, "faces": [f.to_json() for f in faces]}

    results, failed = _per_image(args.images, run)

    def lines(r):
        return [f"  box={f['box']} " + " ".join(f"{v:.4f}" for v in f["embedding"]) for f in r["faces"]]

    _print_results(results, args.json, lines)
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def _print_results(results: list[dict], as_json: bool, face_lines) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        if "error" in r:
            print(f"{r['path']}: ERROR {r['error']}")
            continue
        print(f"{r['path']}: {len(r['faces'])} face(s)")
        for line in face_lines(r):
            print(line)


def cmd_models(args: argparse.Namespace) -> int:
    from openface_py.embed import best_installed_model, model_statuses

    if args.models_command == "download":
        return _download(args)
    if args.models_command == "convert":
        from openface_py.classify import convert_pickle

        if not args.trust_pickle:
            raise UsageError(f"{args.old}: loading a pickle runs the code inside it; if you made this file "
                             "yourself or trust it, add --trust-pickle")  # fmt: skip
        model = convert_pickle(args.old, args.output)
        print(f"converted {args.old} ({model.classifier.name}, {len(model.classes)} people) -> {args.output}")
        return EXIT_OK
    statuses = model_statuses()
    try:
        best = best_installed_model()
    except ModelNotInstalledError:
        best = None
    if args.json:
        print(json.dumps([{**st.__dict__, "default": st.name == best} for st in statuses], indent=2))
        return EXIT_OK
    for st in statuses:
        mark = "*" if st.name == best else " "
        state = f"installed at {st.path}" if st.installed else "NOT INSTALLED"
        print(f"{mark} {st.name:24s} {st.alignment:40s} {state}")
        print(f"    {st.note}")
    print("* = the default: what commands use when no --model is given")
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    from openface_py import store

    info = store.NN4_SMALL2_V1_FILES[args.format]
    dest = store.cache_dir() / info.filename
    if args.from_file is not None:
        store.install_local_file(args.from_file, info.md5, dest)
        print(f"installed {args.from_file} -> {dest} (md5 ok)")
        return EXIT_OK
    base = args.url or store.OPENFACE_MODEL_BASE_URL
    url = base if base.endswith(info.filename) else base.rstrip("/") + "/" + info.filename
    if dest.is_file() and store.md5sum(dest) == info.md5:
        print(f"{dest} already installed (md5 ok)")
        return EXIT_OK
    try:
        store.download(url, dest, md5=info.md5, progress=not args.quiet)
    except store.DownloadError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    print(f"downloaded {url} -> {dest} (md5 {info.md5} ok)")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from openface_py.batch import load_embeddings
    from openface_py.classify import train_model

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
        print("Open set: " + model.open_set.summary())
    elif args.threshold is not None:
        print(f"Unknown threshold: {args.threshold} (given)")
    else:
        print("Open set: no unknown threshold (needs three or more people, or --threshold)")
    if model.pair_threshold is not None:
        print(f"Same/different threshold for `compare --verifier`: {model.pair_threshold:.4g}")
    return EXIT_OK


def _pipeline_for(model_name: Optional[str], args: argparse.Namespace):
    from openface_py.embed import best_installed_model
    from openface_py.pipeline import FacePipeline

    return FacePipeline.create(
        model_name or best_installed_model(), detector=args.detector, upsample=args.upsample, max_side=args.max_side
    )


def cmd_infer(args: argparse.Namespace) -> int:
    from openface_py.classify import format_prediction, load_model

    model = load_model(args.model)
    pipe = _pipeline_for(model.embedder_name, args)
    model.check_identity(pipe.embedder.identity)

    def run(rgb):
        faces = pipe.process(rgb, multi=args.multi)
        preds = model.predict(np.stack([f.embedding for f in faces]), args.threshold) if faces else []
        return {"faces": [(f, p) for f, p in zip(faces, preds)]}

    results, failed = _per_image(args.images, run)
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
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def _largest_face_reps(paths: Sequence[Path], pipe) -> tuple[list[Optional[np.ndarray]], list[str]]:
    from openface_py.errors import ImageLoadError
    from openface_py.io import load_image

    reps, errors = [], []
    for p in paths:
        try:
            faces = pipe.process(load_image(p), multi=False)
            reps.append(faces[0].embedding if faces else None)
            errors.append("" if faces else "no face found")
        except ImageLoadError as exc:
            reps.append(None)
            errors.append(exc.reason)
    return reps, errors


def cmd_compare(args: argparse.Namespace) -> int:
    from openface_py.classify import ClassifierError, JointBayesianClassifier, load_model

    if len(args.images) < 2:
        raise UsageError("compare needs two or more images")
    verifier = load_model(args.verifier) if args.verifier else None
    if verifier is not None and not isinstance(verifier.classifier, JointBayesianClassifier):
        raise ClassifierError(
            f"{args.verifier}: --verifier needs a JointBayesian model (train --classifier JointBayesian)"
        )
    pipe = _pipeline_for(verifier.embedder_name if verifier else args.model, args)
    if verifier is not None:
        verifier.check_identity(pipe.embedder.identity)
        threshold = args.threshold if args.threshold is not None else verifier.pair_threshold
        if threshold is None:
            raise ClassifierError(f"{args.verifier} has no same/different threshold; pass --threshold")
    else:
        threshold = args.threshold if args.threshold is not None else pipe.embedder.same_person_threshold
        if threshold is None:
            log.warning(
                "%s has no calibrated same-person threshold: distances only, no verdict (give --threshold)",
                pipe.embedder.name,
            )
    reps, errors = _largest_face_reps(args.images, pipe)
    out = []
    for i in range(len(args.images)):
        for j in range(i + 1, len(args.images)):
            item = {"image1": str(args.images[i]), "image2": str(args.images[j])}
            if reps[i] is None or reps[j] is None:
                item["error"] = "; ".join(f"{args.images[k]}: {errors[k]}" for k in (i, j) if reps[k] is None)
            else:
                d = float(np.sum((reps[i] - reps[j]) ** 2))
                item["squared_l2"] = round(d, 4)
                if verifier is not None:
                    r = float(verifier.classifier.jb.score(reps[i], reps[j])[0])
                    item["jb_score"] = round(r, 4)
                    item["same"] = r > threshold
                else:
                    item["same"] = None if threshold is None else d < threshold
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
            if "jb_score" in item:
                print(f"  + Joint Bayesian score: {item['jb_score']:.3f} (same person above {threshold:.3f})")
            if item["same"] is None:
                print("  + no verdict: uncalibrated weights (no same-person threshold; give --threshold)")
                continue
            verdict = "same person" if item["same"] else "different people"
            print(f"  + {verdict} (threshold {threshold:.3f})")
    return EXIT_FAILED if all("error" in item for item in out) else EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    from openface_py.gallery import build_gallery, identify

    pipe = _pipeline_for(args.model, args)
    threshold = args.threshold if args.threshold is not None else pipe.embedder.same_person_threshold
    if threshold is None:
        raise UsageError(f"{pipe.embedder.name} has no calibrated same-person threshold; give one (--threshold)")
    gallery = build_gallery(args.gallery_dir, pipe, progress=not args.quiet)

    def run(rgb):
        faces = pipe.process(rgb, multi=True)
        answers = identify(gallery, np.stack([f.embedding for f in faces]), threshold) if faces else []
        return {
            "faces": [
                {"box": f.box.as_list(), "name": a, "nearest": n, "distance": round(d, 4)}
                for f, (a, n, d) in zip(faces, answers)
            ]
        }

    results, failed = _per_image(args.images, run)
    if args.json:
        print(json.dumps({"threshold": threshold, "model": pipe.embedder.identity, "results": results}, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['path']}: ERROR {r['error']}")
                continue
            print(f"{r['path']}: {len(r['faces'])} face(s)")
            for face in r["faces"]:
                x = (face["box"][0] + face["box"][2]) / 2.0
                print(f"  x={x:.0f}: {face['name']} (nearest {face['nearest']}, distance {face['distance']:.3f})")
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def cmd_lfw(args: argparse.Namespace) -> int:
    from openface_py.embed import best_installed_model, load_embedder
    from openface_py.evaluate import run_lfw

    embedder = load_embedder(args.model or best_installed_model())
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    plain, flipped, emb = run_lfw(
        args.lfw_dir,
        args.output,
        embedder,
        metric=args.metric,
        images=args.images,
        folds=folds,
        per_fold=args.pairs_per_fold,
        workers=args.workers,
        progress=not args.quiet,
    )
    main_res, other = (flipped, plain) if args.flip else (plain, flipped)
    if args.json:
        print(json.dumps({"headline": main_res.tag, "results": [
            json.loads((args.output / f"summary-{r.tag}.json").read_text()) for r in (main_res, other)
        ]}, indent=2))  # fmt: skip
        return EXIT_OK
    print(f"LFW {args.images}, {main_res.n_pairs} pairs, model {embedder.identity}, metric {args.metric}"
          f"{', flip-averaged' if args.flip else ''}")  # fmt: skip
    print(f"Faces not found (central-box fallback): {len(emb.fallbacks)} of {len(emb.names)} images")
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
    from openface_py.embed import best_installed_model, load_embedder
    from openface_py.evaluate import run_lfw_classify

    embedder = load_embedder(args.model or best_installed_model())
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


COMMANDS = {
    "lfw-classify": cmd_lfw_classify,
    "lfw": cmd_lfw,
    "train": cmd_train,
    "infer": cmd_infer,
    "compare": cmd_compare,
    "identify": cmd_identify,
    "align": cmd_align,
    "represent": cmd_represent,
    "run": cmd_run,
    "video": cmd_video,
    "detect": cmd_detect,
    "embed": cmd_embed,
    "models": cmd_models,
}
