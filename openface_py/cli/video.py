"""`video`: recognition in a video file or camera stream."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    MODEL_HELP,
    add_detector_args,
    detector_spec,
    device_of,
)


def register(add_command) -> None:
    """Add this family's sub-commands (each parser beside its handler's module)."""
    p = add_command("video", help="recognise faces in a video file or camera stream (detect + track + name)")
    p.add_argument("source", help="video file, or a camera index such as 0")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--classifier", type=Path, help="a model file from `train`")
    who.add_argument("--gallery", type=Path, help="a gallery folder (one sub-folder of photos per person)")
    p.add_argument(
        "--model",
        default=None,
        help=MODEL_HELP() + " (with --classifier: the weights it was trained on, needed when they were given by path)",
    )
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
    # on the scaled frame (--scale): MTCNN's --min-face is in its pixels (40 at --scale 0.5 is 20 here)
    add_detector_args(p, choices=("hog", "mtcnn", "hog-mtcnn"), upsample=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_video)


def cmd_video(args: argparse.Namespace) -> int:
    from openface_py.recognize.video import make_recognizer, process_video

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
        detector=detector_spec(args),
        device=device_of(args),
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
