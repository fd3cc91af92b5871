"""The Ray engine of ``jobs.engine.embed_photos``: the same face stage and embedder on a Ray cluster.

Ray Data (streaming execution, bounded in-flight blocks) runs two actor pools:

1. the job's face stage (read the photo, detect, align), built once per actor, one actor per
   CPU;
2. the embedder, loaded once per actor: one actor per GPU when the cluster has GPUs, else CPU
   actors, one per ``CPUS_PER_EMBED_ACTOR`` CPUs (``plan``: from the measured cost of the two
   stages, BENCHMARKS.md "Folder jobs on Ray").

Photos travel as their names, in blocks of up to ``MAX_PHOTOS_PER_BLOCK``; aligned faces and
embeddings travel between the stages as raw bytes, one row per photo. Results stream back to
the driver, which writes the outputs (as with the local engine). A batch that Ray loses (its
actor died twice, or it raised past the stage's own error handling) does not end the job: its
photos are tried again one per block and one task at a time per actor (a crash fails every
task queued on its actor, innocent ones too), and the one that fails again comes back with ``LOST``
(the local engine's rule for a photo that kills its worker twice).

Without ``--ray-address`` a private local Ray instance is started for the job and stopped after
it; with an address (``auto``: the cluster ``ray start`` runs on this machine) the job joins
that cluster. Inside a process that already called ``ray.init`` that session is used.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.jobs.engine import EmbeddedPhoto, EmbedderSpec, Engine, PhotoFaces
from openface_py.jobs.source import INSTALL_HINT

log = logging.getLogger(__name__)

#: CPUs per CPU embedding actor: per LFW photo the face stage (decode + hog-mtcnn + landmarks +
#: warp) costs 1.7-2x what NN4-small2 costs on one thread, so embedding is a third of the CPU time
#: or a little more (BENCHMARKS.md, "Folder jobs on Ray").
CPUS_PER_EMBED_ACTOR = 3
#: Most photos per Ray Data block. The driver's CPU cost is mostly per block (1.6-2.1 ms per photo
#: with blocks of 16, 0.94 ms with 64, on 1,948 LFW photos); a block of 64 aligned faces is 1.7 MB.
MAX_PHOTOS_PER_BLOCK = 64
#: The reason given for a photo whose batch Ray lost.
LOST = (
    "the Ray actor processing it died (a crash in native code, or out of memory) or raised, twice, "
    "the second time with this photo alone"
)


def require_ray():
    """The ``ray`` module with Ray Data, or a ``UsageError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part we need: 'ray[data]')
        import ray.exceptions  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from None
    return ray


@contextmanager
def ray_session(engine: Engine) -> Iterator[object]:
    """Connect to (or start) the Ray instance ``engine`` names; a private one is stopped at the end."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if engine.address:
        _check_reachable(engine.address)
    try:
        if engine.address:
            ray.init(address=engine.address, **quiet)
        else:
            ray.init(num_cpus=engine.num_cpus, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"join the Ray cluster at {engine.address}" if engine.address else "start a local Ray instance"
        raise OpenFacePyError(f"cannot {where}: {exc}") from None
    log.info("Ray %s: %s", ray.__version__, ray.cluster_resources())
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once on a HOST:PORT nothing listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OpenFacePyError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with `ray start --head` "
            "or give its address (`auto` for the one on this machine)"
        ) from None


class _FaceActor:
    """Ray Data callable class: the job's face stage, built once per actor."""

    def __init__(self, stage: Callable, stage_args: tuple) -> None:
        self.fn = stage(*stage_args)

    def __call__(self, batch: dict) -> dict:
        out: dict = {"key": [], "reason": [], "n": [], "faces": [], "info": []}
        for key in batch["key"]:
            item = json.loads(key)
            try:
                photo = self.fn(item)
            except Exception as exc:  # the stage reports bad photos itself; anything else is this photo's too
                photo = PhotoFaces(item, f"{type(exc).__name__}: {exc}")
            out["key"].append(key)
            out["reason"].append(photo.reason)
            out["n"].append(len(photo.faces))
            out["faces"].append(b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in photo.faces))
            out["info"].append(json.dumps(photo.info))
        return {k: np.array(v, dtype=np.int64 if k == "n" else object) for k, v in out.items()}


class _EmbedActor:
    """Ray Data callable class: the embedder, loaded once per actor (on its GPU if it has one)."""

    def __init__(self, spec: EmbedderSpec, batch_size: int) -> None:
        self.embedder = spec.load()
        self.size = spec.alignment.size
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        counts = [int(n) for n in batch["n"]]
        faces = [
            face
            for n, raw in zip(counts, batch["faces"])
            if n
            for face in np.frombuffer(raw, np.uint8).reshape(n, self.size, self.size, 3)
        ]
        reps = self.embedder.embed(faces, batch_size=self.batch_size)
        rows, at = [], 0
        for n in counts:
            rows.append(reps[at : at + n].astype(np.float32).tobytes())
            at += n
        return {
            "key": batch["key"],
            "reason": batch["reason"],
            "info": batch["info"],
            "reps": np.array(rows, dtype=object),
        }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# a traceback's exception line: an unindented (dotted) class name, then ": message" or nothing
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*)([A-Z]\w*)(?:: (.*))?$")


def root_cause(exc: BaseException) -> str:
    """The exception that started a Ray error, as ``Type: message``.

    Ray's errors carry the remote traceback as text, with terminal colours (an actor whose
    constructor raised: its start-up, a missing model, other weights on that node); the last
    exception line after a stack frame, not one of Ray's own wrappers (``ray.*``), is the
    cause. Without one, the message's first line."""
    lines = [_ANSI.sub("", line).rstrip() for line in str(exc).splitlines()]
    framed = False
    cause = ""
    for line in lines:
        if line.startswith("  File "):
            framed = True
            continue
        found = _EXCEPTION_LINE.match(line) if framed else None
        if found and not found.group(1).startswith("ray."):
            message = found.group(3)
            cause = f"{found.group(2)}: {message}" if message else found.group(2)
            framed = False
    if cause:
        return cause
    first = next((line.strip() for line in lines if line.strip()), "")
    return first or type(exc).__name__


def plan(resources: dict, engine: Engine) -> dict:
    """Actor pools for a cluster with ``resources`` (``ray.cluster_resources()``).

    With GPUs: one embedding actor per GPU (and one CPU each to feed it), a face-stage actor on
    every other CPU. On CPUs alone: a face-stage actor per CPU, as the local engine has a worker
    per core, and one embedding actor per ``CPUS_PER_EMBED_ACTOR`` CPUs; their CPU reservations
    split the cluster's CPUs in the measured proportion of the two stages' costs (embedding a
    third), so both pools fit at once and the CPUs are as busy as the local engine keeps them.
    """
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    if gpus:
        n = engine.embed_actors or gpus
        face = max(1, cpus - n)
        return {"face": {"size": face, "num_cpus": 1}, "embed": {"size": n, "num_gpus": 1, "num_cpus": 1}}
    n = engine.embed_actors or max(1, round(cpus / CPUS_PER_EMBED_ACTOR))
    share = 1 / CPUS_PER_EMBED_ACTOR

    def down(x: float) -> float:  # Ray counts resources in 1/10000ths: never ask for more than there is
        return math.floor(x * 10000) / 10000

    return {
        "face": {"size": cpus, "num_cpus": down(1 - share)},
        "embed": {"size": n, "num_gpus": 0, "num_cpus": down(cpus * share / n)},
    }


@contextmanager
def ray_embed_photos(
    stage: Callable,
    stage_args: tuple,
    items: list,
    spec: EmbedderSpec,
    engine: Engine,
    batch_size: int,
    progress: bool,
) -> Iterator[Iterator[EmbeddedPhoto]]:
    """``embed_photos`` on Ray (see the module's docstring)."""
    with ray_session(engine) as ray:
        yield _stream(ray, stage, stage_args, items, spec, engine, batch_size, progress)


def _stream(ray, stage, stage_args, items, spec, engine, batch_size, progress) -> Iterator[EmbeddedPhoto]:
    if not items:
        return
    from ray.data import DataContext

    layout = plan(ray.cluster_resources(), engine)
    face, emb = layout["face"], layout["embed"]
    if emb["num_gpus"]:
        if spec.backend == "onnx":
            raise UsageError("--backend onnx runs on CPUs, and this cluster embeds on its GPUs: use auto or eager")
        spec = replace(spec, device="cuda")
    elif spec.threads is None:
        spec = replace(spec, threads=max(1, round(emb["num_cpus"])))
    log.info("Ray plan: %s", layout)
    keys = {json.dumps(item): item for item in items}
    # large blocks, but at least 4 per face actor so that every actor has work on small jobs
    per_block = max(1, min(MAX_PHOTOS_PER_BLOCK, math.ceil(len(keys) / (4 * face["size"]))))
    # this job's Ray Data settings, put back afterwards (the process may run other Ray Data work)
    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.max_errored_blocks
    ctx.enable_progress_bars = bool(progress)
    ctx.max_errored_blocks = -1  # a lost block is reported per photo, never fatal to the job
    try:
        yield from _pass(ray, list(keys), keys, per_block, batch_size, stage, stage_args, spec, layout)
        if keys:  # the photos of lost blocks again, one per block and one task at a time per actor in
            # both stages, so that a crash takes no other photo's task with it: only a culprit is lost
            log.warning("%d photos were in blocks Ray lost; retrying them one at a time", len(keys))
            yield from _pass(ray, list(keys), keys, 1, 1, stage, stage_args, spec, layout, alone=True)
    finally:
        ctx.enable_progress_bars, ctx.max_errored_blocks = saved
    for item in keys.values():
        log.warning("%s: %s", item, LOST)
        yield EmbeddedPhoto(item, LOST, None, np.zeros((0, spec.dim), np.float32), retry=True)


def _pass(
    ray, todo, keys, per_block, batch_size, stage, stage_args, spec, layout, alone=False
) -> Iterator[EmbeddedPhoto]:
    """One Ray Data pass over the keys ``todo``; each photo that comes back leaves ``keys``.

    A task whose actor dies is retried once on a restarted actor; a block that fails again is
    dropped (``max_errored_blocks``), and its photos stay in ``keys``. What Ray cannot do at all
    (an actor that cannot start: a model missing on a node, no such device) ends the job with
    ``OpenFacePyError``; what was written before stays, and a rerun goes on from there. With
    ``alone``, each actor runs one task at a time: Ray pipelines several per actor otherwise, and
    a crash fails them all (measured: an innocent photo lost beside the culprit under load)."""
    from ray.data import ActorPoolStrategy

    face, emb = layout["face"], layout["embed"]
    retries = {"max_restarts": -1, "max_task_retries": 1}  # the pool lives on; a killer block does not loop
    ds = ray.data.from_items([{"key": k} for k in todo], override_num_blocks=math.ceil(len(todo) / per_block))
    ds = ds.map_batches(
        _FaceActor,
        fn_constructor_args=(stage, stage_args),
        batch_size=per_block,
        batch_format="numpy",
        compute=ActorPoolStrategy(
            min_size=1,
            max_size=face["size"],
            initial_size=face["size"],
            max_tasks_in_flight_per_actor=1 if alone else None,
        ),
        num_cpus=face["num_cpus"],
        **retries,
    )
    ds = ds.map_batches(
        _EmbedActor,
        fn_constructor_args=(spec, batch_size),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=emb["size"], max_tasks_in_flight_per_actor=1 if alone else None),
        num_cpus=emb["num_cpus"],
        num_gpus=emb["num_gpus"],
        **retries,
    )
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except ray.exceptions.RayError as exc:
            raise OpenFacePyError(f"Ray could not run the job ({type(exc).__name__}): {root_cause(exc)}") from exc
        for key, reason, info, reps in zip(batch["key"], batch["reason"], batch["info"], batch["reps"]):
            item = keys.pop(key, None)
            if item is None:  # a batch Ray ran twice: the photo came back already
                continue
            vectors = np.frombuffer(reps, np.float32).reshape(-1, spec.dim).copy()
            yield EmbeddedPhoto(item, str(reason), json.loads(info), vectors)
