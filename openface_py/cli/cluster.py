"""`cluster`: the faces of a `run` output folder grouped into people (clusters.csv, clusters.json, contact sheets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openface_py.cli.common import EXIT_FAILED, EXIT_OK


def register(add_command) -> None:
    """Add the ``cluster`` command."""
    from openface_py.nets.catalog import SAME_PERSON_THRESHOLDS
    from openface_py.recognize.cluster import DEFAULT_FACTOR, DEFAULT_K, DEFAULT_MIN_SIZE, default_threshold

    defaults = ", ".join(f"{m} {default_threshold(t)}" for m, t in SAME_PERSON_THRESHOLDS.items() if t is not None)

    p = add_command(
        "cluster",
        help="group the faces of a `run` output folder into people: clusters.csv, clusters.json, contact sheets",
        description="Group the faces found by `openface-py run` into people without names: average linkage "
        "on a nearest-neighbour graph; two faces of one photo are never put together.",
    )
    p.add_argument(
        "run_dir", type=Path, help="an `openface-py run` output folder (its reps.npy and faces.json, or faces.parquet)"
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
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    import sys

    from openface_py.errors import UsageError
    from openface_py.jobs.clusterjob import CLUSTERS_CSV, cluster_run

    if args.min_size < 1 or args.k < 1 or args.min_face < 0:
        raise UsageError("--min-size and --k must be at least 1, --min-face at least 0")
    if args.threshold is not None and not args.threshold >= 0:
        raise UsageError(f"--threshold must be a number >= 0, got {args.threshold}")
    report = cluster_run(
        args.run_dir,
        args.output,
        threshold=args.threshold,
        min_size=args.min_size,
        k=args.k,
        min_face=args.min_face,
        sheets=not args.no_sheets,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for f in report.unreadable:
            print(f"UNREADABLE {f.path}: {f.reason} (left grey on its sheet)", file=sys.stderr)
        c = report.clustering
        print(
            f"{report.faces} faces of {report.photos} photos: {c.n_clusters} clusters "
            f"(largest {c.sizes[0] if c.sizes else 0}), {c.unassigned} unassigned; threshold "
            f"{c.settings.threshold} ({report.model}) -> {args.output / CLUSTERS_CSV}"
        )
    return EXIT_OK if report.faces else EXIT_FAILED
