"""1:N nearest-neighbour search over enrolled embeddings with FAISS (squared L2, like every
threshold in this project).

Two kinds, chosen by size (``choose_kind``):

- ``flat``: exact search (``IndexIDMap2`` over ``IndexFlatL2``); the default below
  ``APPROX_MIN`` vectors, where it is already fast (BENCHMARKS.md, "1:N search").
- ``ivf``: an inverted file (``IndexIVFFlat``; Jégou et al., TPAMI 2011) with about 4·sqrt(N)
  lists, k-means trained on the vectors themselves, ``nprobe`` lists visited per probe. Unlike
  HNSW it supports removal by id, which a database needs. Its recall against exact search is
  measured in ``benchmarks/bench_search.py``; ``NPROBE`` is set from that measurement.

Ids are the database's face ids (int64); removing an id that is not there is a no-op. The
serialised form (``to_bytes``/``from_bytes``) is FAISS's own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: at and above this many vectors an approximate (IVF) index is built (measured: BENCHMARKS.md)
APPROX_MIN = 200_000
#: lists visited per probe by the IVF index (measured: recall@1 >= 0.99 of exact at 1M faces)
NPROBE = 24
#: an IVF index is rebuilt (lists re-trained) once it holds this many times what it was trained on
REBUILD_GROWTH = 4.0


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the face database needs faiss: pip install faiss-cpu") from exc
    return faiss


def choose_kind(n: int) -> str:
    """``flat`` (exact) below ``APPROX_MIN`` vectors, ``ivf`` from there on."""
    return "ivf" if n >= APPROX_MIN else "flat"


def ivf_lists(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: about 4·sqrt(n), a power of two, at least 64."""
    return max(64, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))


@dataclass
class SearchResult:
    """For each probe (row): the k nearest ids (-1 where fewer exist) and squared L2 distances."""

    ids: np.ndarray
    distances: np.ndarray


class VectorIndex:
    """A FAISS index of (id, vector) rows under squared L2."""

    def __init__(self, index, kind: str, dim: int, trained_on: int = 0) -> None:
        self.index = index
        self.kind = kind
        self.dim = dim
        self.trained_on = trained_on

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, kind: str = "auto", seed: int = 0) -> VectorIndex:
        """An index holding ``vectors`` under ``ids``; ``kind`` auto = ``choose_kind(len(ids))``."""
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        kind = choose_kind(len(ids)) if kind == "auto" else kind
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
            trained_on = 0
        elif kind == "ivf":
            nlist = ivf_lists(len(ids))
            if len(ids) < 39 * nlist:
                raise ValueError(f"an IVF index of {nlist} lists needs at least {39 * nlist} vectors")
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
            rng = np.random.default_rng(seed)
            sample = vectors[rng.choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)]
            index.cp.seed = seed
            index.train(sample)
            index.nprobe = NPROBE
            index.set_direct_map_type(faiss.DirectMap.Hashtable)
            trained_on = len(ids)
        else:
            raise ValueError(f"unknown index kind {kind!r} (flat, ivf)")
        out = cls(index, kind, dim, trained_on)
        out.add(ids, vectors)
        log.debug("built a %s index of %d vectors", kind, len(ids))
        return out

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
                np.ascontiguousarray(ids, dtype=np.int64),
            )

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids (absent ones are ignored); returns how many were removed."""
        if not len(ids):
            return 0
        faiss = _faiss()
        ids = np.unique(np.ascontiguousarray(ids, dtype=np.int64))
        if self.kind == "ivf":  # the IVF's id hashtable removes by array only
            return int(self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, probes: np.ndarray, k: int) -> SearchResult:
        """The ``k`` nearest rows of each probe (exact for ``flat``, IVF's approximation otherwise)."""
        probes = np.ascontiguousarray(np.atleast_2d(probes), dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            n = len(probes)
            return SearchResult(np.full((n, max(k, 0)), -1, np.int64), np.full((n, max(k, 0)), np.inf, np.float32))
        d, i = self.index.search(probes, int(k))
        d = np.where(i < 0, np.inf, np.maximum(d, 0.0)).astype(np.float32)
        return SearchResult(i, d)

    def needs_rebuild(self) -> bool:
        """True when the index is of the wrong kind for its size, or an IVF has outgrown its lists."""
        if choose_kind(self.ntotal) != self.kind:
            return self.kind == "flat" or self.ntotal < APPROX_MIN // 2  # hysteresis: no flapping
        return self.kind == "ivf" and self.ntotal > REBUILD_GROWTH * max(self.trained_on, 1)

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, kind: str, dim: int, trained_on: int = 0) -> VectorIndex:
        faiss = _faiss()
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.d != dim:
            raise ValueError(f"index of {index.d}-D vectors, expected {dim}")
        if kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = NPROBE
        return cls(index, kind, dim, trained_on)
