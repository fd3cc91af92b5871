"""What the sub-command modules share: exit codes, common options, per-photo loops, printing."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

log = logging.getLogger("openface_py")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_MODEL = 0, 1, 2, 3


#: the loggers of the jobs whose per-photo failures the command lists once, at the end
JOB_LOGGERS = (
    "openface_py.jobs.stream",
    "openface_py.jobs.batch",
    "openface_py.jobs.dbimport",
    "openface_py.jobs.clusterjob",
)


class _PhotoFailureFilter(logging.Filter):
    """Drops a job's per-photo failure warnings ("PATH: REASON"): the command prints each failed
    photo once, in its final list (``folder_report``), not also as it happens."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.msg == "%s: %s")


def quiet_logs(verbose: bool) -> None:
    """The command line's logging beside ``basicConfig``: each failed photo reported once, and
    third-party start-up chatter (faiss's CPU-feature probing) only with -v."""
    if not verbose:
        logging.getLogger("faiss").setLevel(logging.WARNING)
    for name in JOB_LOGGERS:
        job_log = logging.getLogger(name)
        if not any(isinstance(f, _PhotoFailureFilter) for f in job_log.filters):
            job_log.addFilter(_PhotoFailureFilter())


def add_detector_args(
    p: argparse.ArgumentParser,
    default: str = "hog",
    choices: Optional[Sequence[str]] = None,
    upsample: int = 1,
    min_face_option: str = "--min-face",
) -> None:
    """The options ``detector_spec`` turns into one ``DetectorSpec``; ``min_face_option``: the
    spelling of MTCNN's smallest face (``cluster`` has a ``--min-face`` of its own)."""
    from openface_py.faces.detect import ALIGN_FROM, DETECTOR_NAMES, MTCNN_ALIGN_DEFAULT

    p.add_argument(
        "--detector",
        choices=tuple(choices or DETECTOR_NAMES),
        default=default,
        help=f"face detector (default: {default}; hog = OpenFace's; hog-adaptive = upsample only when "
        "nothing is found at the photo's own resolution; cnn = dlib MMOD; mtcnn = MTCNN, finds turned faces; "
        "hog-mtcnn = hog-adaptive, then MTCNN where it finds nothing)",
    )
    p.add_argument(
        "--upsample", type=int, default=upsample, help=f"times to upsample before detecting (default: {upsample})"
    )
    p.add_argument(
        "--max-side", type=int, default=None, help="detect on a copy downscaled to this longer side (large photos)"
    )
    p.add_argument(
        min_face_option,
        dest="detect_min_face",
        metavar="PX",
        type=int,
        default=20,
        help="mtcnn: smallest face side searched for, px (default: 20)",
    )
    p.set_defaults(min_face_option=min_face_option)
    p.add_argument(
        "--mtcnn-thresholds",
        type=_three_floats,
        default=(0.6, 0.7, 0.7),
        metavar="P,R,O",
        help="mtcnn: score thresholds of its three stages (default: 0.6,0.7,0.7)",
    )
    add_device_arg(p)
    p.add_argument(
        "--align-from",
        choices=ALIGN_FROM,
        default=None,
        help="mtcnn: align from its own 5 points or from dlib's 68 landmarks in its box; auto: dlib's 68 for "
        "NN4-small2's OpenFace alignment, MTCNN's 5 points for MobileFaceNet's (the better of each on LFW) "
        f"(default: {MTCNN_ALIGN_DEFAULT})",
    )


def _device_arg(text: str) -> str:
    from openface_py.device import parse_device

    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_arg(p, what: str = "MTCNN and the PyTorch embedders run") -> None:
    """``--device auto|cpu|cuda[:N]`` on a parser or argument group (``openface_py.device``)."""
    p.add_argument(
        "--device",
        type=_device_arg,
        default="auto",
        metavar="DEVICE",
        help=f"where {what}: auto (the GPU when torch sees one; default), cpu, cuda or cuda:N (exit 2 when "
        "torch sees no such GPU); dlib's HOG, CNN, landmarks and ResNet run on the CPU (dlib-bin)",
    )


def device_of(args: argparse.Namespace) -> str:
    """The command's concrete device (``device.resolve_device``: ``UsageError`` when a GPU asked for is
    absent). With ``--engine ray`` the face stage runs on the cluster's CPU actors and the embedding
    where Ray places it (GPU actors on a GPU cluster): ``cpu`` here."""
    from openface_py.device import resolve_device

    asked = getattr(args, "device", "auto")
    if getattr(args, "engine", "local") == "ray":  # not resolved here: the driver may have no GPU, the cluster may
        if asked != "auto":
            log.info("--engine ray: the cluster's resources decide where embedding runs (GPU actors where it has GPUs)")
        return "cpu"
    return resolve_device(asked)


def add_engine_args(p: argparse.ArgumentParser, workers_help: str) -> None:
    """``--engine local|ray``, ``--ray-address``, ``--workers``: where a folder job runs (``jobs.engine``)."""
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on this machine (default); ray: a Ray cluster (pip install 'openface-py[ray]')",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="with --engine ray: the cluster to join (auto: the one `ray start` runs here; default: start a "
        "private local Ray instance for this job)",
    )
    p.add_argument("--workers", type=int, default=None, help=workers_help)


def engine_choice(args: argparse.Namespace, workers_default: int):
    """``add_engine_args``'s options as a ``jobs.engine.Engine`` (the Ray engine is checked to be installed)."""
    from openface_py.errors import UsageError
    from openface_py.jobs.engine import Engine

    if args.engine == "ray":
        from openface_py.jobs.rayengine import require_ray

        require_ray()
        if args.workers is not None:
            raise UsageError("--workers sets local worker processes; Ray sizes its actor pools from the cluster")
    workers = workers_default if args.workers is None else int(args.workers)
    if workers_default == 1:  # these commands always took --workers 0 as one process
        workers = max(1, workers)
    return Engine(args.engine, workers=workers, address=args.ray_address)


def embedder_for(model: Optional[str], engine, backend: str = "auto", device: str = "cpu"):
    """The local engine's loaded embedder on ``device`` (a missing model fails before any work), or
    for Ray the ``EmbedderSpec`` its actors load."""
    from openface_py.jobs.engine import EmbedderSpec
    from openface_py.nets.embed import load_embedder

    if engine.name == "ray":
        return EmbedderSpec.of(model, backend)
    return load_embedder(model, backend=backend, device=device)


def _three_floats(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.6,0.7,0.7, got {text!r}") from None
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected three numbers between 0 and 1, got {text!r}")
    return vals  # type: ignore[return-value]


def detector_spec(args: argparse.Namespace):
    """``add_detector_args``'s options as one ``faces.detect.DetectorSpec``; MTCNN's options
    given with a dlib detector are a ``UsageError`` (exit 2)."""
    from openface_py.errors import UsageError
    from openface_py.faces.detect import DETECTORS, MTCNN_ALIGN_DEFAULT, MTCNN_DEFAULTS, DetectorSpec

    if not DETECTORS.get(args.detector).mtcnn:
        if getattr(args, "align_from", None):
            raise UsageError("--align-from applies to the mtcnn and hog-mtcnn detectors")
        if (
            int(args.detect_min_face) != MTCNN_DEFAULTS["min_face"]
            or list(args.mtcnn_thresholds) != MTCNN_DEFAULTS["thresholds"]
        ):
            raise UsageError(
                f"{args.min_face_option} and --mtcnn-thresholds apply to the mtcnn and hog-mtcnn detectors"
            )
    return DetectorSpec(
        args.detector,
        upsample=int(args.upsample),
        max_side=args.max_side,
        min_face=int(args.detect_min_face),
        thresholds=tuple(args.mtcnn_thresholds),
        align_from=args.align_from or MTCNN_ALIGN_DEFAULT,
        # dlib's detectors run on the CPU: no device to resolve (nor torch to import) for them
        device=device_of(args) if DETECTORS.get(args.detector).mtcnn else "cpu",
    )


def per_image(paths: Sequence[Path], fn) -> tuple[list[dict], int]:
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


def print_results(results: list[dict], as_json: bool, face_lines) -> None:
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        if "error" in r:
            print(f"{r['path']}: ERROR {r['error']}")
            continue
        found = r.get("faces_found", len(r["faces"]))
        skipped = f" of {found} found (the largest; --multi for every face)" if found > len(r["faces"]) else ""
        print(f"{r['path']}: {len(r['faces'])} face(s){skipped}")
        for line in face_lines(r):
            print(line)


def folder_report(report, as_json: bool, done: str, report_path: Path, note: str = "") -> int:
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


def pipeline_for(model_name: Optional[str], args: argparse.Namespace):
    from openface_py.nets.embed import best_installed_model
    from openface_py.pipeline import FacePipeline

    return FacePipeline.create(
        model_name or best_installed_model(), detector=detector_spec(args), device=device_of(args)
    )


def largest_face_reps(paths: Sequence[Path], pipe) -> tuple[list[Optional[np.ndarray]], list[str]]:
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


def MODEL_HELP() -> str:  # noqa: N802 (reads like the constant it replaces)
    """Help text of every --model option."""
    from openface_py.nets.catalog import DEFAULT_PREFERENCE, MODEL_NAMES

    return (
        f"model name ({', '.join(MODEL_NAMES)}) or path to weights (NN4-small2 .pt, .t7 or CSV folder, "
        "or a train-net model.pt); "
        f"default: the first installed of {', '.join(DEFAULT_PREFERENCE)}"
    )


def backend_choices() -> tuple[str, ...]:
    from openface_py.nets.backends import BACKENDS

    return ("auto",) + BACKENDS


#: the ``db`` actions about unnamed people and clusters (``cli/db.py``)
DB_CLUSTER_ACTIONS = (
    "cluster",
    "suggest-merges",
    "faces",
    "name",
    "merge",
    "move",
    "split",
    "reject",
    "forget",
    "different",
)

# The paths each command reads or writes, checked before its handler runs (``check_paths``), so
# that every command answers the same mistake the same way: exit 2 and one line. Keys are the
# argument as the user writes it (a positional's name, or an option); kinds: "dir" an existing
# folder; "file" an existing file; "dir|url" a folder or a URL (s3://...); "dir|file" a folder or
# a file (a gallery or a face database); "video" a file, a camera index or a stream URL;
# "out-dir" / "out-file" an output: the folder it goes into must exist (no command creates it)
# and it must not be the other kind. Photo lists are not here: each photo is reported on its own.
PATH_ARGS: dict[tuple[str, ...], dict[str, str]] = {
    ("align",): {"input_dir": "dir", "output_dir": "out-dir"},
    ("represent",): {"aligned_dir": "dir", "output_dir": "out-dir"},
    ("run",): {"input_dir": "dir|url", "output_dir": "out-dir"},
    ("cluster",): {"run_dir": "dir", "--output": "out-dir"},
    ("video",): {
        "source": "video",
        "--classifier": "file",
        "--gallery": "dir",
        "--output": "out-file",
        "--results": "out-file",
    },
    ("train",): {"reps_dir": "dir", "--output": "out-file"},
    ("infer",): {"model": "file"},
    ("compare",): {"--verifier": "file"},
    ("identify",): {"gallery_dir": "dir|file"},
    ("lfw",): {"lfw_dir": "dir", "--output": "out-dir"},
    ("pairs-eval",): {"pairs_csv": "file", "image_root": "dir", "--output": "out-dir"},
    ("lfw-classify",): {"lfw_dir": "dir", "--output": "out-dir"},
    ("train-net",): {"aligned_dir": "dir", "--out": "out-dir", "--lfw": "dir"},
    ("serve",): {"--db": "file"},
    ("models", "download"): {"--from-file": "file"},
    ("models", "convert"): {"old": "file", "--output": "out-file"},
    ("db", "create"): {"db": "out-file"},
    **{("db", a): {"db": "file"} for a in ("enroll", "list", "remove", "search", "threshold")},
    **{("db", a): {"db": "file"} for a in DB_CLUSTER_ACTIONS},
    ("db", "import"): {"db": "file", "gallery_dir": "dir"},
}
_DESTS = {"--lfw": "lfw_dir", "model": "model_file"}  # arguments whose dest is not their spelling (infer's MODEL)


def command_path(args: argparse.Namespace) -> tuple[str, ...]:
    """The sub-command ``args`` were parsed for, e.g. ("db", "import")."""
    sub = getattr(args, "db_command", None) or getattr(args, "models_command", None)
    return (args.command, sub) if sub else (args.command,)


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, with a ``UsageError`` (exit 2), a path argument of the wrong kind (``PATH_ARGS``)."""
    for name, kind in PATH_ARGS.get(command_path(args), {}).items():
        dest = _DESTS.get(name) or name.lstrip("-").replace("-", "_")
        value = getattr(args, dest, None)
        if value is not None:
            _check_path(str(value), kind, name if name.startswith("--") else name.upper())


def _check_path(text: str, kind: str, name: str) -> None:
    from openface_py.errors import UsageError

    if "://" in text and kind in ("video", "dir|url"):
        return
    if kind == "video" and text.isdigit():
        return
    path = Path(text)
    if kind.startswith("out-"):
        parent = path.absolute().parent
        if not parent.is_dir():
            raise UsageError(f"{name} {text}: the folder {parent} does not exist (create it first)")
        if kind == "out-file" and path.is_dir():
            raise UsageError(f"{name} {text}: is a folder; give a file name")
        if kind == "out-dir" and path.exists() and not path.is_dir():
            raise UsageError(f"{name} {text}: is a file; give a folder")
        return
    if not path.exists():
        what = {"dir": "folder", "dir|url": "folder", "dir|file": "folder or file"}.get(kind, "file")
        raise UsageError(f"{name} {text}: no such {what}")
    if kind in ("dir", "dir|url") and not path.is_dir():
        raise UsageError(f"{name} {text}: is a file; a folder is expected here")
    if kind in ("file", "video") and path.is_dir():
        raise UsageError(f"{name} {text}: is a folder; a file is expected here")


def check_requirements(args: argparse.Namespace) -> None:
    """Refuse, with a ``UsageError`` (exit 2), what cannot work for reasons beyond a path's kind:
    an option whose optional package is not installed (as ``--engine ray`` without Ray: ``run
    --format parquet`` and ``run URL`` need pyarrow), ``represent`` on photos that were not aligned."""
    command = command_path(args)
    if command == ("run",):
        if args.format == "parquet":
            _require("pyarrow", "--format parquet")
        if "://" in str(args.input_dir):
            _require("pyarrow", f"reading photos from a URL ({args.input_dir})")
    elif command == ("represent",):
        _check_aligned(args.aligned_dir, args.model)


def _check_aligned(folder: Path, model: Optional[str], sample: int = 10) -> None:
    """A folder without ``align``'s record whose first photos are not the model's input size holds
    raw photos: say to align them (or to use ``run``) before 100 per-photo warnings."""
    from openface_py.errors import UsageError
    from openface_py.io import list_images
    from openface_py.jobs.batch import ALIGN_META
    from openface_py.nets.embed import alignment_for, resolve_model

    if (folder / ALIGN_META).is_file():
        return  # align's own record; represent checks it against the model
    size = alignment_for(resolve_model(model)).size
    shapes = []
    for rel in list_images(folder)[:sample]:
        try:
            from PIL import Image

            with Image.open(folder / rel) as im:
                shapes.append(im.size)
        except OSError:
            continue
    if shapes and all(s != (size, size) for s in shapes):
        w, h = shapes[0]
        raise UsageError(
            f"{folder}: not aligned faces (no {ALIGN_META}; its photos are {w}x{h}, the model needs "
            f"{size}x{size}): align them first (openface-py align {folder} ALIGNED_DIR), or detect, align "
            f"and embed in one step (openface-py run {folder} OUTPUT_DIR)"
        )


def _require(module: str, what: str) -> None:
    import importlib

    from openface_py.errors import UsageError

    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} needs {module}, which is not installed: pip install 'openface-py[ray]'") from None
