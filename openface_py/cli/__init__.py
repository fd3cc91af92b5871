"""The ``openface-py`` command line (also ``python -m openface_py``).

One module per command family, each holding its sub-commands' options beside their handlers
(``register`` adds the parsers, ``set_defaults(handler=...)`` ties each to its function):
``folders`` (align, represent, run), ``cluster``, ``photos`` (detect, embed), ``people`` (train, infer,
compare, identify), ``video``, ``lfw`` (lfw, lfw-classify), ``train`` (train-net), ``models``,
``db`` (the face database), ``serve`` (the HTTP service). A new command family is a new module
with a ``register`` function, added to ``FAMILIES``.

Exit codes: 0 success; 1 the work failed (nothing could be processed); 2 the arguments cannot
work (an unknown --model, a missing input, the wrong kind of path, an output in a missing
folder, an optional package not installed: ``common.check_paths``/``check_requirements`` run
before every handler); 3 a model is not installed (the message says how to get it).
Output piped into a program that stops reading (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional, Sequence

from openface_py import __version__
from openface_py.cli import cluster, db, folders, lfw, models, people, photos, serve, train, video
from openface_py.cli.common import (
    EXIT_FAILED,
    EXIT_NO_MODEL,
    EXIT_OK,
    EXIT_USAGE,
    check_paths,
    check_requirements,
    log,
    quiet_logs,
)
from openface_py.errors import ModelNotInstalledError, OpenFacePyError, UsageError

FAMILIES = (folders, cluster, video, photos, people, lfw, train, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openface-py",
        description="OpenFace-style face detection, alignment and embedding.",
        epilog="Exit codes: 0 ok, 1 job failed, 2 bad arguments, 3 model not installed.",
    )
    parser.add_argument("--version", action="version", version=f"openface-py {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings and errors only")
    # -v/-q are accepted after the sub-command too; SUPPRESS keeps a global flag from being reset
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars; warnings and errors only",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add_command(name: str, **kw) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[common], **kw)

    for family in FAMILIES:
        family.register(add_command)
    models.register(add_command, common)
    db.register(add_command, common)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit code. Ctrl-C gives 130 and one line, also while the parser
    loads. As the program (``argv`` None) the process then ends at once, and at most
    ``INTERRUPT_GRACE`` seconds after Ctrl-C even when the job is inside a long native call
    (journals and the database are safe against that: they survive a kill)."""
    interrupt = _Interrupt() if argv is None and threading.current_thread() is threading.main_thread() else None
    if interrupt is not None:
        signal.signal(signal.SIGINT, interrupt.handle)
    try:
        code = _main(argv)
    except KeyboardInterrupt:  # before a handler runs: building the parser imports torch
        log.error("%s", INTERRUPTED)
        code = 130
    except Exception:  # Ctrl-C inside an import that turns it into its own error (onnxruntime)
        if interrupt is None or interrupt.timer is None:
            raise
        log.error("%s", INTERRUPTED)
        code = 130
    if interrupt is not None and interrupt.timer is not None and code != 130:  # the error was Ctrl-C's
        log.error("%s", INTERRUPTED)
        code = 130
    if interrupt is not None and code == 130:
        # The job's own context managers have closed what it owns (workers, journal, database,
        # lock); the interpreter's exit hooks could still wait on a pool thread, and a torch
        # import cut by Ctrl-C makes Python end with SIGINT instead of 130: end here.
        interrupt.reported = True
        interrupt.end()
    return code


#: What Ctrl-C prints, and how long the process may take to end after it.
INTERRUPTED = "interrupted; rerun the same command to resume"
INTERRUPT_GRACE = 1.2


class _Interrupt:
    """The program's SIGINT handler: ``KeyboardInterrupt`` as usual, and a timer that ends the
    process ``INTERRUPT_GRACE`` seconds later if it has not ended by itself."""

    def __init__(self) -> None:
        self.timer: Optional[threading.Timer] = None
        self.reported = False

    def handle(self, signum, frame) -> None:
        if self.timer is None:
            self.timer = threading.Timer(INTERRUPT_GRACE, self.end)
            self.timer.daemon = True
            self.timer.start()
        raise KeyboardInterrupt

    def end(self) -> None:
        try:
            if not self.reported:
                sys.stderr.write(f"ERROR openface_py: {INTERRUPTED}\n")
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        _stop_children()
        _release_semaphores()
        os._exit(130)


def _stop_children(timeout: float = 0.3) -> None:
    """Stop this process's worker processes before their semaphores go: a worker still starting
    would otherwise fail to unpickle them and print a traceback after the interrupted line."""
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return
    children = process.active_children()
    for child in children:
        try:
            child.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))


def _release_semaphores() -> None:
    """Unlink the named semaphores this process's worker pools created, as a normal exit would:
    ``os._exit`` skips multiprocessing's finalizers, and its resource tracker then prints a
    "leaked semaphore objects" warning after the interrupted line."""
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is None:
        return
    from multiprocessing import util

    for finalizer in list(util._finalizer_registry.values()):
        if getattr(finalizer, "_callback", None) is synchronize.SemLock._cleanup:
            try:
                finalizer()
            except Exception:  # noqa: BLE001 - exiting anyway; the tracker cleans up what is left
                pass


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.WARNING if args.quiet else logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )
    quiet_logs(args.verbose)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        check_paths(args)
        check_requirements(args)
        return args.handler(args)
    except ModelNotInstalledError as exc:
        log.error("%s", exc)
        return EXIT_NO_MODEL
    except UsageError as exc:  # arguments that cannot work (checked where they are used)
        log.error("%s", exc)
        return EXIT_USAGE
    except (OpenFacePyError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.error("%s", INTERRUPTED)
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; point stdout at nothing so the
        # interpreter's final flush does not fail again on exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_NO_MODEL"]
