"""`serve`: the HTTP service and web page over a face database."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from openface_py.cli.common import EXIT_FAILED, EXIT_OK, add_detector_args, detector_spec, device_of, log


def register(add_command) -> None:
    p = add_command("serve", help="HTTP API (/v1, OpenAPI at /docs) and web page (/) over a face database")
    p.add_argument("--db", type=Path, required=True, help="the database (openface-py db create)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port, 0-65535 (0: any free one)")
    p.add_argument(
        "--api-key",
        default=None,
        help="key that enroll/delete need (default: $OPENFACE_PY_API_KEY; without one, writes are refused)",
    )
    p.add_argument("--protect-all", action="store_true", help="every endpoint but / and /v1/health needs the key")
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own models (default: 1)")
    p.add_argument(
        "--inference-threads",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="inference worker processes per server process, each with its own models (default: the cores, at most 4)",
    )
    p.add_argument("--max-queue", type=int, default=32, help="requests running or waiting per process; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default: 20 MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest photo in pixels (default: 40 M)")
    p.add_argument("--index-save-s", type=float, default=30.0, help="seconds between saves of a changed index")
    p.add_argument(
        "--inference-timeout-s",
        type=float,
        default=60.0,
        help="a photo that takes longer is refused (422) and its worker replaced (default: 60)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=10.0,
        help="a request body that sends nothing for this long is cut off with 408 (default: 10)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=20.0,
        help="a request's headers must arrive within this many seconds, else 408 and the connection closes "
        "(default: 20)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a Host name the server answers to, besides loopback names and --host (repeat; '*': any). "
        "Other names are refused: a web page cannot reach the server by re-pointing its own name (DNS rebinding)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (https://app.example) whose pages may call the API from a browser (repeat); "
        "other cross-origin browser requests are refused",
    )
    p.add_argument(
        "--embed-batching",
        choices=("auto", "on", "off"),
        default="auto",
        help="on: the inference workers detect and align, and one embedder in the server process embeds "
        "the faces of concurrent requests in shared batches; off: each worker embeds its own "
        "(default auto: on when --device is a GPU)",
    )
    add_detector_args(p)
    p.set_defaults(handler=cmd_serve)


def port_number(text: str) -> int:
    """``--port``'s type: a TCP port number (argparse answers anything else with exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535)")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from openface_py.recognize.facedb import FaceDatabase
    from openface_py.service.app import API_KEY_ENV, ServiceSettings, create_app
    from openface_py.service.guard import default_allowed_hosts
    from openface_py.service.protocol import HeaderDeadlineProtocol

    FaceDatabase.open(args.db).close()  # a missing or foreign database fails here, with its reason
    allowed_hosts = default_allowed_hosts(args.host) + list(args.allowed_host or [])
    settings = ServiceSettings(
        db=str(args.db.resolve()),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        protect_all=args.protect_all,
        detector=detector_spec(args),
        device=device_of(args),
        embed_batching={"auto": None, "on": True, "off": False}[args.embed_batching],
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        inference_threads=args.inference_threads,
        inference_timeout_s=args.inference_timeout_s,
        max_queue=args.max_queue,
        index_save_s=args.index_save_s,
        body_timeout_s=args.body_timeout_s,
        header_timeout_s=args.header_timeout_s,
        allowed_hosts=allowed_hosts,
        cors_origins=list(args.cors_origin),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: reachable from other machines%s", args.host,
                    "" if settings.api_key else " (no API key: writes are refused, reads are open)")  # fmt: skip
        if not args.allowed_host:
            log.warning("only requests for %s are answered: give the names clients use with --allowed-host",
                        ", ".join(allowed_hosts))  # fmt: skip
    if not settings.api_key:
        log.warning("no API key (--api-key or $%s): enroll and delete are refused", API_KEY_ENV)
    level = "warning" if args.quiet else "info"
    # uvicorn's HTTP/1.1 with a deadline for request headers (service.protocol: slow-header clients)
    if args.workers > 1:
        env = {k: v for k, v in json.loads(settings.to_json()).items() if k != "api_key"}
        os.environ["OPENFACE_PY_SERVE"] = json.dumps(env)  # the processes' settings, the deadline included
        if settings.api_key:
            os.environ[API_KEY_ENV] = settings.api_key
        uvicorn.run("openface_py.service.app:app_from_env", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=level, http=HeaderDeadlineProtocol)  # fmt: skip
    else:
        config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level=level,
                                http=HeaderDeadlineProtocol)  # fmt: skip
        config.header_timeout_s = settings.header_timeout_s
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # the port taken, or the models failed to load (uvicorn logged why)
            return EXIT_FAILED
    return EXIT_OK
