"""`models list|download|convert`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    log,
)
from openface_py.errors import ModelNotInstalledError, UsageError


def register(add_command, common) -> None:
    """Add `models` and its actions."""
    from openface_py.nets.embed import downloadable_models

    p = add_command("models", help="list, download or convert models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pl = msub.add_parser("list", parents=[common], help="show which models are installed and which is the default")
    pl.add_argument("--json", action="store_true")
    pd = msub.add_parser(
        "download", parents=[common], help="fetch a model's released weights into the cache (md5-checked)"
    )
    pd.add_argument("name", choices=downloadable_models())
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
    p.set_defaults(handler=cmd_models, models_parser=p)


def cmd_models(args: argparse.Namespace) -> int:
    from openface_py.nets.embed import best_installed_model, model_statuses

    if args.models_command is None:
        args.models_parser.print_help()
        return EXIT_USAGE
    if args.models_command == "download":
        return _download(args)
    if args.models_command == "convert":
        from openface_py.recognize.modelfile import convert_pickle

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
    from openface_py.nets.catalog import EMBEDDERS

    info = EMBEDDERS.get(args.name).weights.files[args.format]
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
