"""One pipeline definition for the folder jobs (``run``, ``db import``, ``lfw``), two engines.

A job gives a *face stage*: a class built once per worker from picklable arguments, which turns
one item (a photo's name) into a ``PhotoFaces``: the aligned faces of the photo and what to keep
with them (boxes, a hash), or the reason there are none. ``embed_photos`` runs that stage over
the items, embeds every face, and yields one ``EmbeddedPhoto`` per item, in any order:

* ``local``: the stage in a pool of worker processes (``jobs.parallel``, a bounded window),
  embedding in this process in batches (the fastest backend, loaded once);
* ``ray``: the same stage in a Ray Data actor pool (detection + alignment on CPUs), embedding in
  a second actor pool (one actor per GPU, CPU actors otherwise), streamed back with bounded
  in-flight data (``jobs.rayengine``).

The job writes its outputs (journal, part files, database rows) in this process alone, so
resuming works the same with either engine.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from openface_py.faces.align import AlignmentSpec
from openface_py.jobs.parallel import mapped

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class PhotoFaces:
    """One photo after detection and alignment: its aligned faces (RGB uint8) and JSON-able ``info``,
    or ``reason`` (non-empty) saying why it has none to embed."""

    item: Any
    reason: str = ""
    faces: list = field(default_factory=list)
    info: Any = None


@dataclass
class EmbeddedPhoto:
    """A ``PhotoFaces`` after embedding: ``reps`` holds one row per face (none when ``reason`` is set).

    ``retry``: the engine lost the photo (not the photo's fault as far as is known): jobs report
    it but do not record it as failed, so that a rerun tries it again."""

    item: Any
    reason: str
    info: Any
    reps: np.ndarray
    retry: bool = False


@dataclass(frozen=True)
class EmbedderSpec:
    """How a worker builds the embedder (``nets.embed.load_embedder``'s arguments), and what the
    job needs to know of it without loading it (``name``, ``identity``, ``alignment``, ``dim``).

    Workers that build it check that they got the identity the job recorded, so machines with
    different weights can never mix their embeddings into one output."""

    model: str
    name: str
    identity: str
    alignment: AlignmentSpec
    backend: str = "auto"
    threads: Optional[int] = None
    device: str = "cpu"
    dim: int = 128

    @property
    def batch_size(self) -> int:
        """Faces per embedding batch on the spec's device (``device.default_batch``)."""
        from openface_py.device import default_batch

        return default_batch(self.device)

    @classmethod
    def of(cls, model: Optional[str] = None, backend: str = "auto", threads: Optional[int] = None) -> EmbedderSpec:
        """The spec of a model by name or weights path, without building the network (a named model
        loads nothing; a ``.pt`` path's metadata is read, ``embed.describe_model``)."""
        from openface_py.nets.embed import describe_model, embedding_dim

        model, name, alignment = describe_model(model)
        return cls(model, name, f"{name}|{alignment.identity}", alignment, backend, threads, dim=embedding_dim(model))

    def load(self):
        """Build the embedder (in a worker) and check it is the one the job recorded."""
        from openface_py.errors import OpenFacePyError
        from openface_py.nets.embed import load_embedder

        embedder = load_embedder(self.model, threads=self.threads, backend=self.backend, device=self.device)
        if embedder.identity != self.identity:
            raise OpenFacePyError(
                f"this worker's {self.model} gives {embedder.identity}, not {self.identity} as the job's driver "
                "found: the machines hold different weights"
            )
        return embedder


@dataclass(frozen=True)
class Engine:
    """Which engine runs a job, and its settings.

    ``workers``: local worker processes (0: one per core). ``address``: the Ray cluster to join
    (``auto``: the one ``ray start`` runs on this machine; None: start a private local instance
    of ``num_cpus`` CPUs, all cores by default). ``embed_actors``: size of Ray's embedding pool
    (None: one per GPU on a GPU cluster, else one per ``CPUS_PER_EMBED_ACTOR`` CPUs)."""

    name: str = "local"
    workers: int = 0
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    embed_actors: Optional[int] = None

    def __post_init__(self) -> None:
        from openface_py.errors import UsageError

        if self.name not in ENGINES:
            raise UsageError(f"unknown engine {self.name!r}: one of {', '.join(ENGINES)}")
        if self.name == "local" and self.address:
            raise UsageError("--ray-address goes with --engine ray")


@contextmanager
def embed_photos(
    stage: Callable,
    stage_args: tuple,
    items: list,
    embedder,
    engine: Engine,
    batch_size: Optional[int] = None,
    max_pending: Optional[int] = None,
    progress: bool = False,
    crash_marker: Optional[os.PathLike] = None,
) -> Iterator[Iterator[EmbeddedPhoto]]:
    """Run ``stage(*stage_args)`` over ``items`` and embed every face (see the module's docstring).

    ``embedder``: a loaded ``Embedder`` or an ``EmbedderSpec`` (the local engine loads a spec
    here; the Ray engine needs a spec, which its actors load). An item whose worker dies twice
    (local) or that Ray loses twice comes back with a reason (Ray's with ``retry`` set) and the
    job goes on; only an engine that cannot run at all (no actor starts) raises.
    ``crash_marker``: where a local single-process run names the photo it is on, so that a
    photo that crashes the process is reported on the rerun (``parallel.mapped``).
    ``batch_size``: faces per embedding batch (None: the embedder's, by its device).
    """
    batch_size = batch_size or embedder.batch_size
    if engine.name == "ray":
        from openface_py.jobs.rayengine import ray_embed_photos

        if not isinstance(embedder, EmbedderSpec):
            raise TypeError("the Ray engine builds its embedders in actors: pass an EmbedderSpec")
        with ray_embed_photos(stage, stage_args, items, embedder, engine, batch_size, progress) as results:
            yield results
        return
    if isinstance(embedder, EmbedderSpec):
        embedder = embedder.load()
    workers = int(engine.workers) or os.cpu_count() or 1
    with mapped(
        stage,
        stage_args,
        items,
        workers,
        ordered=False,
        max_pending=max_pending,
        on_crash=lambda item, why: PhotoFaces(item, why),
        crash_marker=crash_marker,
    ) as results:
        yield _embedded_locally(results, embedder, batch_size)


def _embedded_locally(results: Iterator[PhotoFaces], embedder, batch_size: int) -> Iterator[EmbeddedPhoto]:
    """Embed the stage's faces here, ``batch_size`` faces at a time; photos without faces pass at once."""
    pending: list[PhotoFaces] = []
    count = 0

    def flush() -> Iterator[EmbeddedPhoto]:
        faces = [f for p in pending for f in p.faces]
        reps = embedder.embed(faces, batch_size=batch_size) if faces else np.zeros((0, embedder.dim), np.float32)
        at = 0
        for p in pending:
            yield EmbeddedPhoto(p.item, "", p.info, reps[at : at + len(p.faces)])
            at += len(p.faces)
        pending.clear()

    for photo in results:
        if photo.reason:
            yield EmbeddedPhoto(photo.item, photo.reason, photo.info, np.zeros((0, embedder.dim), np.float32))
            continue
        pending.append(photo)
        count += len(photo.faces)
        if count >= batch_size:
            yield from flush()
            count = 0
    yield from flush()
