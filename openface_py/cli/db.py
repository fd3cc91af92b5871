"""`db create|enroll|import|list|remove|search|threshold`: the face database; `db cluster|faces|name|
merge|move|split|reject|forget|different|suggest-merges`: its unnamed people (``recognize.dbcluster``)."""

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
    a.add_argument(
        "--unlabeled",
        action="store_true",
        help="a folder of photos of anyone: add every face without a person; faces close enough to a person or"
        " cluster join it, the others wait for `db cluster`",
    )
    add_engine_args(a, "detection/alignment processes of the local engine (default: 1)")
    a.add_argument("--retry-failed", action="store_true", help="try again photos that failed in an earlier import")
    add_detector_args(a)
    a.add_argument("--json", action="store_true")

    a = action("list", "the people enrolled, with their photo and face counts, then the unnamed clusters")
    a.add_argument("--json", action="store_true")

    a = action(
        "remove", "remove a person with every face enrolled for them (faces of unlabeled photos go back to no one)"
    )
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
    _register_clusters(action)
    p.set_defaults(handler=cmd_db, db_parser=p)


def _register_clusters(action) -> None:
    """The actions about unnamed people: clustering, the user's decisions, merge suggestions."""
    a = action(
        "cluster",
        "group the faces no name or decision fixes into unnamed clusters; named people and clusters you changed"
        " are kept (and gain the faces close to them)",
    )
    a.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="mean squared L2 within which groups are one person (lower = stricter; default: 0.75 x the"
        " database's same-person threshold); remembered for later runs and imports",
    )
    a.add_argument("--min-size", type=int, default=None, help="smallest cluster kept (default: 2); remembered")
    a.add_argument("--json", action="store_true")

    a = action("suggest-merges", "pairs of people or clusters that are probably one person, closest first")
    a.add_argument("--threshold", type=float, default=None, help="mean squared L2 (default: the same-person threshold)")
    a.add_argument("--limit", type=int, default=20, help="pairs listed at most (default: 20)")
    a.add_argument("--json", action="store_true")

    a = action("faces", "the faces of a person or cluster (every face without one), with the ids other actions take")
    a.add_argument("person", nargs="?", default=None, help="a name or a cluster label (cluster:0007)")
    a.add_argument("--unassigned", action="store_true", help="only the faces of no one")
    a.add_argument("--json", action="store_true")

    a = action("name", "name a cluster (or rename a person); an existing name merges the two")
    a.add_argument("cluster", help="a cluster label (cluster:0007) or a name")
    a.add_argument("name")

    a = action("merge", "one person of two: B's faces into A (a named one keeps its name)")
    a.add_argument("a")
    a.add_argument("b")

    a = action("move", "move faces to a person or cluster (kept there by every later `db cluster`)")
    a.add_argument("face_ids", nargs="+", type=int, metavar="FACE_ID")
    a.add_argument("person", help="a name or a cluster label")

    a = action("split", "move faces into a new cluster of their own (kept together)")
    a.add_argument("face_ids", nargs="+", type=int, metavar="FACE_ID")

    a = action("reject", "these faces are not PERSON: they leave it and never go back")
    a.add_argument("face_ids", nargs="+", type=int, metavar="FACE_ID")
    a.add_argument("person", help="a name or a cluster label")

    a = action("forget", "remove faces for good (not added again when their photo is imported again)")
    a.add_argument("face_ids", nargs="+", type=int, metavar="FACE_ID")

    a = action("different", "remember that two people or clusters are different people (no merge suggested)")
    a.add_argument("a")
    a.add_argument("b")


#: the actions that write to the database
WRITING_ACTIONS = (
    "enroll",
    "import",
    "remove",
    "threshold",
    "cluster",
    "name",
    "merge",
    "move",
    "split",
    "reject",
    "forget",
    "different",
)


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
            "cluster": _cluster,
            "suggest-merges": _suggest,
            "faces": _faces,
            "name": _name,
            "merge": _merge,
            "move": _move,
            "split": _move,
            "reject": _reject,
            "forget": _forget,
            "different": _different,
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
        unlabeled=args.unlabeled,
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
        if args.unlabeled:
            print(
                f"{report.faces_added} new faces: {report.joined} joined a person or cluster, "
                f"{report.faces_added - report.joined} wait for `db cluster`"
            )
    usable = report.enrolled + report.already_done + report.duplicates
    return EXIT_OK if report.total == 0 or usable > 0 else EXIT_FAILED


def _list(db, args: argparse.Namespace) -> int:
    people = db.people()
    if args.json:
        rows = [{"name": p.name, "photos": p.photos, "faces": p.faces} for p in people if p.named]
        clusters = [{"label": p.name, "photos": p.photos, "faces": p.faces} for p in people if not p.named]
        print(json.dumps({"database": db.info(), "people": rows, "clusters": clusters}, indent=2))
    else:
        info = db.info()
        print(f"{args.db}: {info['people']} people, {info['faces']} faces ({info['identity']})")
        print(f"threshold {_shown(info['threshold'])} ({info['threshold_source']})")
        for p in people:
            print(f"{p.name}\t{p.photos} photo(s)\t{p.faces} face(s)")
        if info["clusters"] or info["unassigned"]:
            print(f"{info['clusters']} unnamed cluster(s) above; {info['unassigned']} face(s) of no one")
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
            name = f"{face['name']} ({face['cluster']})" if face.get("cluster") else face["name"]
            yield f"  x={x:.0f}: {name} (nearest {face['nearest']}, distance {face['distance']:.3f}{conf})"
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


def _cluster(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import cluster_database

    res = cluster_database(db, threshold=args.threshold, min_size=args.min_size)
    db.sync_index()
    db.save_index()
    if args.json:
        print(json.dumps(res.to_json(), indent=2))
        return EXIT_OK
    joined = sum(res.joined.values())
    print(
        f"{res.free} faces clustered (threshold {_shown(res.settings.threshold)}, min size {res.settings.min_size}): "
        f"{len(res.clusters)} unnamed clusters ({res.new} new, {res.kept} kept, {res.dissolved} dissolved), "
        f"{joined} faces joined named people, {res.unassigned} faces of no one"
    )
    for name, n in sorted(res.joined.items()):
        print(f"  {name}: +{n} face(s)")
    for label, n in res.clusters:
        print(f"{label}\t{n} face(s)")
    return EXIT_OK


def _suggest(db, args: argparse.Namespace) -> int:
    from openface_py.errors import UsageError
    from openface_py.recognize.dbcluster import suggest_merges

    if args.limit < 1:
        raise UsageError("--limit must be 1 or more")
    pairs = suggest_merges(db, threshold=args.threshold, limit=args.limit)
    if args.json:
        print(json.dumps({"pairs": [p.to_json() for p in pairs]}, indent=2))
    else:
        for p in pairs:
            print(f"{p.a} ({p.a_faces} faces) + {p.b} ({p.b_faces} faces)\tdistance {p.distance:.4f}")
        if not pairs:
            print("no pair close enough")
    return EXIT_OK


def _faces(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import list_faces

    faces = list_faces(db, args.person, unassigned=args.unassigned)
    if args.json:
        print(json.dumps({"faces": [f.to_json() for f in faces]}, indent=2))
    else:
        for f in faces:
            pin = ", pinned" if f.pinned else ""
            print(f"{f.id}\t{f.person or '-'}\t{f.source or '-'}\tbox {f.box}{pin}")
    return EXIT_OK


def _name(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import name_person

    name = name_person(db, args.cluster, args.name)
    print(f"{args.cluster} is now {name}")
    return EXIT_OK


def _merge(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import merge_people

    kept = merge_people(db, args.a, args.b)
    print(f"merged {args.a} and {args.b} into {kept}")
    return EXIT_OK


def _move(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import move_faces

    target = move_faces(db, args.face_ids, getattr(args, "person", None))
    print(f"{len(args.face_ids)} face(s) moved to {target}")
    return EXIT_OK


def _reject(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import reject_faces

    n = reject_faces(db, args.face_ids, args.person)
    print(f"{len(args.face_ids)} face(s) are not {args.person} ({n} left it)")
    return EXIT_OK


def _forget(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import forget_faces

    n = forget_faces(db, args.face_ids)
    db.sync_index()
    db.save_index()
    print(f"{n} face(s) removed for good")
    return EXIT_OK


def _different(db, args: argparse.Namespace) -> int:
    from openface_py.recognize.dbcluster import mark_different

    mark_different(db, args.a, args.b)
    print(f"{args.a} and {args.b} are different people")
    return EXIT_OK
