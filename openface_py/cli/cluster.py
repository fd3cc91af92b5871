"""`cluster`: the faces of a `run` output folder, or of a folder of photos, grouped into people
(clusters.csv, clusters.json, contact sheets, a folder of links per cluster)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openface_py.cli.common import EXIT_FAILED, EXIT_OK, MODEL_HELP, add_detector_args, folder_report

#: the default detector of a folder of photos, as `run`'s
DETECTOR = "hog-mtcnn"


def register(add_command) -> None:
    """Add the ``cluster`` command."""
    from openface_py.nets.catalog import SAME_PERSON_THRESHOLDS
    from openface_py.recognize.cluster import DEFAULT_FACTOR, DEFAULT_K, DEFAULT_MIN_SIZE, default_threshold

    defaults = ", ".join(f"{m} {default_threshold(t)}" for m, t in SAME_PERSON_THRESHOLDS.items() if t is not None)

    p = add_command(
        "cluster",
        help="group the faces of a folder of photos or a `run` output folder into people: clusters.csv, "
        "clusters.json, contact sheets",
        description="Group faces into people without names: average linkage on a nearest-neighbour graph; two "
        "faces of one photo are never put together. A folder of photos is first run as `openface-py run "
        "--multi` into OUTPUT/run (resumed by a rerun).",
    )
    p.add_argument(
        "run_dir",
        type=Path,
        help="a folder of photos, or an `openface-py run` output folder (its reps.npy and faces.json, or "
        "faces.parquet)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (new, empty, or an earlier one)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="stricter / looser: the mean squared L2 distance between two groups' faces at or below which "
        f"they are one person; lower = stricter (more, purer clusters). Default: {DEFAULT_FACTOR} x the "
        f"model's same-person threshold ({defaults})",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=DEFAULT_MIN_SIZE,
        help=f"smallest cluster; faces in smaller ones stay unassigned (default: {DEFAULT_MIN_SIZE})",
    )
    p.add_argument("--min-face", type=int, default=0, help="leave out faces whose box is smaller than this, px")
    p.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours per face in the graph (default: {DEFAULT_K})")
    p.add_argument("--no-sheets", action="store_true", help="no contact sheets")
    p.add_argument(
        "--links",
        action="store_true",
        help="also OUTPUT/people/cluster-NNNN/ (and people/unassigned/): links to each cluster's photos",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    photos = p.add_argument_group("a folder of photos (as `run`'s options)")
    photos.add_argument("--model", default=None, help=MODEL_HELP())
    add_detector_args(photos, default=DETECTOR, min_face_option="--detect-min-face")
    photos.add_argument(
        "--workers", type=int, default=None, help="detection/alignment processes (default: one per core)"
    )
    probe = argparse.ArgumentParser()
    add_detector_args(probe, default=DETECTOR, min_face_option="--detect-min-face")
    p.set_defaults(handler=cmd_cluster, photo_defaults={**vars(probe.parse_args([])), "model": None, "workers": None})


def cmd_cluster(args: argparse.Namespace) -> int:
    import sys

    from openface_py.cli.common import detector_spec
    from openface_py.errors import UsageError
    from openface_py.jobs.clusterjob import CLUSTERS_CSV, RUN_SUBDIR, PhotoRun, cluster_run, is_run_output
    from openface_py.jobs.stream import RUN_REPORT

    if args.min_size < 1 or args.k < 1 or args.min_face < 0:
        raise UsageError("--min-size and --k must be at least 1, --min-face at least 0")
    if args.threshold is not None and not args.threshold >= 0:
        raise UsageError(f"--threshold must be a number >= 0, got {args.threshold}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be 0 (one per core) or more, got {args.workers}")
    options = dict(
        threshold=args.threshold,
        min_size=args.min_size,
        k=args.k,
        min_face=args.min_face,
        sheets=not args.no_sheets,
        links=args.links,
    )
    photos = None
    if is_run_output(args.run_dir):
        given = [k for k, v in args.photo_defaults.items() if getattr(args, k) != v]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UsageError(f"{flags}: options of a folder of photos; {args.run_dir} is a run output folder")
    else:
        from openface_py.nets.embed import load_embedder

        detector = detector_spec(args)
        embedder = load_embedder(args.model, device=detector.device)
        photos = PhotoRun(embedder, detector, workers=args.workers or 0, progress=not args.quiet)
    report = cluster_run(args.run_dir, args.output, **options, photos=photos)
    run = report.run
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        if run is not None:
            run_dir = args.output / RUN_SUBDIR
            folder_report(run, False, "embedded", run_dir / RUN_REPORT, f"{report.identity} -> {run_dir}; ")
        for f in report.unreadable:
            print(f"UNREADABLE {f.path}: {f.reason} (left grey on its sheet)", file=sys.stderr)
        for path in report.unlinked:
            print(f"NOT LINKED {path}: not found on this machine", file=sys.stderr)
        c = report.clustering
        links = f", links in {args.output / 'people'}" if args.links else ""
        print(
            f"{report.faces} faces of {report.photos} photos: {c.n_clusters} clusters "
            f"(largest {c.sizes[0] if c.sizes else 0}), {c.unassigned} unassigned; threshold "
            f"{c.settings.threshold} ({report.model}) -> {args.output / CLUSTERS_CSV}{links}"
        )
    if not report.faces:
        print(f"{args.run_dir}: no faces to cluster", file=sys.stderr)
    return EXIT_OK if report.faces else EXIT_FAILED
