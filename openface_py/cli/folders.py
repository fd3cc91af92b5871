"""`align`, `represent`, `run`: folder jobs (resumable, parallel)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from openface_py.cli.common import (
    EXIT_OK,
    MODEL_HELP,
    add_detector_args,
    add_device_arg,
    add_engine_args,
    backend_choices,
    detector_spec,
    device_of,
    embedder_for,
    engine_choice,
    folder_report,
)
from openface_py.errors import UsageError


def register(add_command) -> None:
    """Add this family's sub-commands (each parser beside its handler's module)."""
    p = add_command("align", help="detect and align the faces of a folder of photos (resumable)")
    p.add_argument("input_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help="align for this model's input (" + MODEL_HELP() + ")")
    p.add_argument("--size", type=int, default=None, help="output size for OpenFace alignment (default 96)")
    p.add_argument(
        "--landmarks",
        choices=("outerEyesAndNose", "innerEyesAndBottomLip"),
        default=None,
        help="landmark triple for OpenFace alignment (default outerEyesAndNose)",
    )
    add_detector_args(p)
    p.add_argument("--skip-multi", action="store_true", help="skip photos with more than one face")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--retry-failed", action="store_true", help="retry photos that failed in an earlier run")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")
    p.set_defaults(handler=cmd_align)

    p = add_command("represent", help="embed a folder of aligned faces; writes reps.csv, labels.csv, reps.npy")
    p.add_argument("aligned_dir", type=Path)
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP())
    p.add_argument("--batch-size", type=int, default=None, help="faces per batch (default: 32 on a CPU, 512 on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backend", choices=backend_choices(), default="auto", help="embedding backend (default: auto)")
    add_device_arg(p)
    p.set_defaults(handler=cmd_represent)

    p = add_command("run", help="detect, align and embed a folder of photos in one pass (parallel, resumable)")
    p.add_argument("input_dir", help="a folder, or a URL a cluster can read (s3://..., gs://..., file:///...)")
    p.add_argument("output_dir", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP())
    add_detector_args(p, default="hog-mtcnn")
    p.add_argument("--multi", action="store_true", help="every face of a photo (default: the largest)")
    p.add_argument("--skip-multi", action="store_true", help="skip photos with more than one face")
    add_engine_args(p, "detection/alignment processes of the local engine (default: one per core)")
    p.add_argument(
        "--format",
        choices=("openface", "parquet"),
        default="openface",
        help="openface: reps.csv, labels.csv, reps.npy, faces.json (default); parquet: faces.parquet, one row per "
        "face (path, label, box, score, embedding, identity), for outputs too large for CSV",
    )
    p.add_argument("--batch-size", type=int, default=None, help="faces per batch (default: 32 on a CPU, 512 on a GPU)")
    p.add_argument("--backend", choices=backend_choices(), default="auto", help="embedding backend (default: auto)")
    p.add_argument("--save-aligned", action="store_true", help="also write the aligned faces (OUTPUT_DIR/aligned)")
    p.add_argument("--retry-failed", action="store_true", help="retry photos that failed in an earlier run")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")
    p.set_defaults(handler=cmd_run)


def cmd_align(args: argparse.Namespace) -> int:
    from openface_py.faces.align import OPENFACE_METHOD, openface_spec
    from openface_py.faces.stage import pick_of
    from openface_py.jobs.batch import align_folder
    from openface_py.nets.embed import alignment_for, resolve_model

    args.model = resolve_model(args.model)  # a typo exits 2 here, as in every other command
    spec = alignment_for(args.model)
    if spec.method != OPENFACE_METHOD:
        if args.size is not None or args.landmarks is not None:
            raise UsageError(f"--size/--landmarks apply to OpenFace alignment; {args.model} needs {spec.identity}")
    else:
        spec = openface_spec(args.size or 96, args.landmarks or "outerEyesAndNose")
    report = align_folder(
        args.input_dir,
        args.output_dir,
        spec,
        detector_spec(args),
        pick_of(skip_multi=args.skip_multi),
        workers=args.workers,
        model=args.model,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
    )
    return folder_report(report, args.json, "aligned", args.output_dir / "align-report.json")


def cmd_represent(args: argparse.Namespace) -> int:
    from openface_py.jobs.represent import represent_folder
    from openface_py.nets.embed import load_embedder

    embedder = load_embedder(args.model, threads=args.threads, backend=args.backend, device=device_of(args))
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
    from openface_py.faces.stage import pick_of
    from openface_py.jobs.stream import RUN_REPORT, run_folder

    engine = engine_choice(args, workers_default=0)
    embedder = embedder_for(args.model, engine, args.backend, device_of(args))
    report = run_folder(
        args.input_dir,
        args.output_dir,
        embedder,
        detector=detector_spec(args),
        pick=pick_of(args.multi, args.skip_multi),
        batch_size=args.batch_size,
        save_aligned=args.save_aligned,
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        engine=engine,
        output_format=args.format,
    )
    return folder_report(report, args.json, "embedded", args.output_dir / RUN_REPORT, f"{embedder.identity}; ")
