"""`detect`, `embed`: faces and embeddings of single photos."""

from __future__ import annotations

import argparse
from pathlib import Path

from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    MODEL_HELP,
    add_detector_args,
    detector_spec,
    device_of,
    per_image,
    print_results,
)


def register(add_command) -> None:
    """Add this family's sub-commands (each parser beside its handler's module)."""
    p = add_command("detect", help="find faces in photos")
    p.add_argument("images", nargs="+", type=Path)
    add_detector_args(p)
    p.add_argument("--landmarks", action="store_true", help="also report the 68 dlib landmarks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_detect)

    p = add_command("embed", help="detect, align and embed the faces of photos")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", default=None, help=MODEL_HELP())
    p.add_argument("--multi", action="store_true", help="every face, left to right (default: the largest)")
    add_detector_args(p)
    p.add_argument("--json", action="store_true")

    p.set_defaults(handler=cmd_embed)


def cmd_detect(args: argparse.Namespace) -> int:
    from openface_py.faces.align import OpenFaceAligner, dlib_box_for

    detector = detector_spec(args).make()
    aligner = OpenFaceAligner() if args.landmarks else None

    def run(rgb):
        faces = []
        for d in detector.detect(rgb):
            item = d.to_json()
            if aligner is not None:
                # in the box dlib's landmark model expects (MTCNN's is mapped, as for alignment)
                box = dlib_box_for(d.raw_box or d.box) if d.found_by == "mtcnn" else d.box
                item["landmarks"] = aligner.find_landmarks(rgb, box).astype(int).tolist()
            faces.append(item)
        return {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "faces": faces}

    def lines(r):
        for f in r["faces"]:
            yield f"  face box={f['box']} score={f['score']}"
            if "landmarks" in f:
                yield "    landmarks: " + " ".join(f"{x},{y}" for x, y in f["landmarks"])

    results, failed = per_image(args.images, run)
    print_results(results, args.json, lines)
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create(args.model, detector=detector_spec(args), device=device_of(args))

    def run(rgb):
        photo = pipe.run(rgb, multi=args.multi)
        faces = [f.to_json() for f in photo.faces]
        return {"model": pipe.embedder.identity, "faces_found": photo.found, "faces": faces}

    results, failed = per_image(args.images, run)

    def lines(r):
        return [f"  box={f['box']} " + " ".join(f"{v:.4f}" for v in f["embedding"]) for f in r["faces"]]

    print_results(results, args.json, lines)
    return EXIT_FAILED if failed == len(args.images) else EXIT_OK
