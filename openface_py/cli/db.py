"""`db create|enroll|import|list|remove|search|threshold`: the face database."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MODEL_HELP,
    add_detector_args,
    add_engine_args,
    detector_spec,
    device_of,
    engine_choice,
    log,
    pipeline_for,
)


def register(add_command, common) -> None:
    """Add `db` and its actions."""
    p = add_command("db", help="a face database: enroll people, search photos 1:N (SQLite + FAISS)")
    sub = p.add_subparsers(dest="db_command", metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, parents=[common], help=help, description=help)
        a.add_argument("db", type=Path, help="the database file")
        return a

    a = action("create", "create an empty database for one model")
    a.add_argument("--model", default=None, help=MODEL_HELP() + " (default: best installed)")
    t = a.add_mutually_exclusive_group()
    t.add_argument("--threshold", type=float, default=None, help="fixed same-person threshold (squared L2)")
    t.add_argument(
        "--learn-threshold", action="store_true", help="learn the threshold from the enrolled people's faces"
    )
    a.add_argument("--json", action="store_true")

    a = action("enroll", "enroll photos of one person (the largest face of each)")
    a.add_argument("name")
    a.add_argument("photos", nargs="+", type=Path)
    add_detector_args(a)
    a.add_argument("--json", action="store_true")

    a = action("import", "enroll a gallery folder (one sub-folder per person); only new or changed photos")
    a.add_argument("gallery_dir", type=Path)
    add_engine_args(a, "detection/alignment processes of the local engine (default: 1)")
    a.add_argument("--retry-failed", action="store_true", help="try again photos that failed in an earlier import")
    add_detector_args(a)
    a.add_argument("--json", action="store_true")

    a = action("list", "the people enrolled, with their photo and face counts")
    a.add_argument("--json", action="store_true")

    a = action("remove", "remove a person with every face enrolled for them")
    a.add_argument("name")

    a = action("search", "name every face in photos (or unknown), with distance and confidence")
    a.add_argument("photos", nargs="+", type=Path)
    a.add_argument("--top-k", type=int, default=1, help="nearest people listed per face (default: 1)")
    a.add_argument("--threshold", type=float, default=None, help="override the database's same-person threshold")
    add_detector_args(a)
    a.add_argument("--json", action="store_true")

    a = action("threshold", "show (no option) or choose how the database decides same person: model, fixed or learned")
    t = a.add_mutually_exclusive_group()
    t.add_argument("--model-threshold", action="store_true", help="the model's own same-person threshold")
    t.add_argument("--value", type=float, default=None, help="a fixed threshold (squared L2)")
    t.add_argument("--learn", action="store_true", help="learn it from pairs of the enrolled faces")
    p.set_defaults(handler=cmd_db, db_parser=p)


#: the actions that write to the database
WRITING_ACTIONS = ("enroll", "import", "remove", "threshold")


def cmd_db(args: argparse.Namespace) -> int:
    """Run one ``db`` action. A damaged, read-only or full database ends it with one line and
    exit code 1 (``DatabaseError``); a refused name with exit code 2."""
    from openface_py.recognize.facedb import FaceDatabase

    if args.db_command is None:
        args.db_parser.print_help()
        return EXIT_USAGE
    if args.db_command == "create":
        return _create(args)
    with FaceDatabase.open(args.db) as db:
        if args.db_command in WRITING_ACTIONS:
            db.require_writable()  # a read-only or full database fails here, before any model is loaded
        return {
            "enroll": _enroll,
            "import": _import,
            "list": _list,
            "remove": _remove,
            "search": _search,
            "threshold": _threshold,
        }[args.db_command](db, args)


def _create(args: argparse.Namespace) -> int:
    from openface_py.nets.embed import best_installed_model, load_embedder
    from openface_py.recognize.facedb import FaceDatabase

    model = args.model or best_installed_model()
    emb = load_embedder(model, device="cpu")  # loaded for its identity, threshold and dim: it embeds nothing here
    with FaceDatabase.for_embedder(args.db, emb, args.threshold, args.learn_threshold, model) as db:
        info = db.info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        shown = f"threshold {_shown(info['threshold'])}, {info['threshold_source']}"
        print(f"created {args.db} for {info['identity']} ({shown})")
    return EXIT_OK


def _enroll(db, args: argparse.Namespace) -> int:
    from openface_py.errors import ImageLoadError
    from openface_py.recognize.facedb import NoFaceError, enroll_photo, valid_name

    name = valid_name(args.name)
    pipe = pipeline_for(db.model, args)
    out = []
    for path in args.photos:
        item = {"path": str(path)}
        try:
            res = enroll_photo(db, pipe, name, path.read_bytes(), source=path.resolve().as_posix())
            item["status"] = "duplicate" if res.duplicate else "enrolled"
        except (ImageLoadError, NoFaceError) as exc:
            item["error"] = getattr(exc, "reason", str(exc))
        except OSError as exc:
            item["error"] = f"cannot read: {exc.strerror or exc}"
        out.append(item)
    db.sync_index()
    db.save_index()
    if args.json:
        print(json.dumps({"name": name, "photos": out, "database": db.info()}, indent=2))
    else:
        for item in out:
            if "error" in item:
                print(f"FAILED {item['path']}: {item['error']}", file=sys.stderr)
            else:
                print(f"{item['path']}: {item['status']} as {name}")
    return EXIT_OK if any("error" not in i for i in out) else EXIT_FAILED


def _import(db, args: argparse.Namespace) -> int:
    from openface_py.jobs.dbimport import import_folder

    report = import_folder(
        db,
        args.gallery_dir,
        detector=detector_spec(args),
        retry_failed=args.retry_failed,
        progress=not args.quiet,
        engine=engine_choice(args, workers_default=1),
        device=device_of(args),
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for f in report.failures:
            print(f"FAILED {f.path}: {f.reason}", file=sys.stderr)
        print(
            f"{report.total} photos: {report.enrolled} enrolled now ({report.replaced} changed), "
            f"{report.already_done} done earlier, {report.duplicates} duplicates, {len(report.failures)} failed; "
            f"database: {report.people} people, {report.faces} faces"
        )
    usable = report.enrolled + report.already_done + report.duplicates
    return EXIT_OK if report.total == 0 or usable > 0 else EXIT_FAILED


def _list(db, args: argparse.Namespace) -> int:
    people = db.people()
    if args.json:
        rows = [{"name": p.name, "photos": p.photos, "faces": p.faces} for p in people]
        print(json.dumps({"database": db.info(), "people": rows}, indent=2))
    else:
        info = db.info()
        print(f"{args.db}: {info['people']} people, {info['faces']} faces ({info['identity']})")
        print(f"threshold {_shown(info['threshold'])} ({info['threshold_source']})")
        for p in people:
            print(f"{p.name}\t{p.photos} photo(s)\t{p.faces} face(s)")
    return EXIT_OK


def _remove(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.facedb import quote_name

    name = db.find_person(args.name)  # the same normalisation as enrolment
    if name is None:
        log.error("%s: no person named %s", args.db, quote_name(args.name))
        return EXIT_FAILED
    n = db.remove_person(name)
    db.sync_index()
    db.save_index()
    print(f"removed {name} ({n} faces)")
    return EXIT_OK


def _search(db, args: argparse.Namespace) -> int:
    from openface_py.errors import UsageError

    if args.top_k < 1:
        raise UsageError("--top-k must be 1 or more")
    return search_photos(db, args, args.photos, args.top_k)


def search_photos(db, args: argparse.Namespace, photos: list[Path], top_k: int) -> int:
    """Name every face of ``photos`` from the database and print the answers (``db search``, ``identify DB``)."""
    import numpy as np

    from openface_py.cli.common import per_image, print_results
    from openface_py.errors import UsageError

    pipe = pipeline_for(db.model, args)
    if pipe.embedder.identity != db.identity:
        raise UsageError(f"{db.model} now gives {pipe.embedder.identity}; the database holds {db.identity}")
    threshold = args.threshold if args.threshold is not None else db.threshold

    def run(rgb):
        faces = pipe.process(rgb, multi=True)
        answers = db.identify(np.stack([f.embedding for f in faces]), top_k, threshold) if faces else []
        return {"faces": [{"box": f.box.as_list(), **a.to_json()} for f, a in zip(faces, answers)]}

    def face_lines(r):
        for face in r["faces"]:
            x = (face["box"][0] + face["box"][2]) / 2.0
            if face["distance"] is None:
                yield f"  x={x:.0f}: {face['name']} (the database is empty)"
                continue
            conf = "" if face["confidence"] is None else f", confidence {face['confidence']:.3f}"
            yield f"  x={x:.0f}: {face['name']} (nearest {face['nearest']}, distance {face['distance']:.3f}{conf})"
            if top_k > 1:
                yield "    top: " + ", ".join(f"{c['name']} {c['distance']:.3f}" for c in face["candidates"])

    results, failed = per_image(photos, run)
    if args.json:
        print(json.dumps({"threshold": threshold, "model": db.identity, "results": results}, indent=2))
    else:
        print_results(results, False, face_lines)
    return EXIT_FAILED if failed == len(photos) else EXIT_OK


def _threshold(db, args: argparse.Namespace) -> int:
    if args.model_threshold or args.value is not None or args.learn:
        db.set_threshold(args.value, learn=args.learn)
    info = db.info()
    print(f"threshold {_shown(info['threshold'])} ({info['threshold_source']})")
    return EXIT_OK


def _shown(threshold) -> str:
    """A threshold as people read it: 4 significant digits (0.1516, not 0.15162836375987598)."""
    return "none" if threshold is None else f"{threshold:.4g}"
