"""1:N nearest-neighbour search over enrolled embeddings with FAISS (squared L2, like every
threshold in this project).

Kinds, chosen by size (``choose_kind``; the sizes and settings come from
``benchmarks/bench_search.py``, BENCHMARKS.md "1:N search"):

- ``flat``: exact search (``IndexIDMap2`` over ``IndexFlatL2``), below ``APPROX_MIN`` vectors,
  where it takes well under a few milliseconds per probe.
- ``hnsw``: a hierarchical navigable small-world graph (Malkov & Yashunin, TPAMI 2018;
  ``IndexHNSWFlat``, M 32, efConstruction 200, efSearch 128) from ``APPROX_MIN`` on. A graph
  cannot delete nodes, so removed ids are skipped by every search (a FAISS id selector) and the
  graph is rebuilt once a fifth of it is removed.
- ``ivf``: an inverted file (``IndexIVFFlat``; Jégou et al., TPAMI 2011), about 4·sqrt(N) lists,
  k-means trained on the vectors; supports true removal. Selectable, not chosen automatically:
  on face embeddings it needed far more lists visited than HNSW for the same recall (measured).

Ids are the database's face ids (int64); removing an id that is not there is a no-op. The
serialised form (``to_bytes``/``from_bytes``) is FAISS's own, plus the removed ids (hnsw).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

#: at and above this many vectors an approximate (HNSW) index is built (measured: BENCHMARKS.md)
APPROX_MIN = 50_000
#: lists visited per probe by an IVF index
NPROBE = 64
#: an IVF index is rebuilt (lists re-trained) once it holds this many times what it was trained on
REBUILD_GROWTH = 4.0
#: HNSW graph (Malkov & Yashunin, TPAMI 2018): links per node, candidate list while building and searching
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
#: an HNSW index is rebuilt once this fraction of its rows has been removed
HNSW_MAX_DELETED = 0.2


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the face database needs faiss: pip install faiss-cpu") from exc
    return faiss


def choose_kind(n: int) -> str:
    """``flat`` (exact) below ``APPROX_MIN`` vectors, ``hnsw`` from there on."""
    return "hnsw" if n >= APPROX_MIN else "flat"


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

    def __init__(self, index, kind: str, dim: int, trained_on: int = 0, deleted: Optional[np.ndarray] = None) -> None:
        self.index = index
        self.kind = kind
        self.dim = dim
        self.trained_on = trained_on
        #: hnsw only: ids removed from the graph's answers (HNSW cannot delete; searches skip them)
        self.deleted = np.zeros(0, np.int64) if deleted is None else np.asarray(deleted, np.int64)
        self._skip = None

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
        elif kind == "hnsw":
            graph = faiss.IndexHNSWFlat(dim, HNSW_M)
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            graph.hnsw.efSearch = HNSW_EF_SEARCH
            index = faiss.IndexIDMap2(graph)
            trained_on = len(ids)
        else:
            raise ValueError(f"unknown index kind {kind!r} (flat, ivf, hnsw)")
        out = cls(index, kind, dim, trained_on)
        out.add(ids, vectors)
        log.debug("built a %s index of %d vectors", kind, len(ids))
        return out

    @property
    def ntotal(self) -> int:
        """Rows the index answers with (removed ones excluded)."""
        return int(self.index.ntotal) - len(self.deleted)

    def ids(self) -> np.ndarray:
        """The ids the index answers with, sorted (each once: compare ``ntotal`` for duplicates)."""
        faiss = _faiss()
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            lists = ivf.invlists
            parts = [
                faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                for i in range(ivf.nlist)
                if lists.list_size(i)
            ]
            ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        else:
            ids = faiss.vector_to_array(self.index.id_map)
        return np.setdiff1d(ids.astype(np.int64), self.deleted)

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
        if self.kind == "hnsw":  # marked, and skipped by every search; rebuilt when they pile up
            present = np.setdiff1d(ids[np.isin(ids, faiss.vector_to_array(self.index.id_map))], self.deleted)
            self.deleted = np.union1d(self.deleted, present)
            self._skip = None
            return len(present)
        if self.kind == "ivf":  # the IVF's id hashtable removes by array only
            return int(self.index.remove_ids(faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))))
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, probes: np.ndarray, k: int) -> SearchResult:
        """The ``k`` nearest rows of each probe (exact for ``flat``; IVF's or HNSW's approximation)."""
        probes = np.ascontiguousarray(np.atleast_2d(probes), dtype=np.float32)
        if self.ntotal == 0 or k <= 0:
            n = len(probes)
            return SearchResult(np.full((n, max(k, 0)), -1, np.int64), np.full((n, max(k, 0)), np.inf, np.float32))
        if self.kind == "hnsw":
            faiss = _faiss()
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(HNSW_EF_SEARCH, int(k))
            if len(self.deleted):
                if self._skip is None:  # (the inner selector is kept alive beside the one that uses it)
                    inner = faiss.IDSelectorBatch(self.deleted)
                    self._skip = (inner, faiss.IDSelectorNot(inner))
                params.sel = self._skip[1]
            d, i = self.index.search(probes, int(k), params=params)
        else:
            d, i = self.index.search(probes, int(k))
        d = np.where(i < 0, np.inf, np.maximum(d, 0.0)).astype(np.float32)
        return SearchResult(i, d)

    def needs_rebuild(self) -> bool:
        """True when the index is of the wrong kind for its size, or an IVF has outgrown its lists."""
        if choose_kind(self.ntotal) != self.kind:
            return self.kind == "flat" or self.ntotal < APPROX_MIN // 2  # hysteresis: no flapping
        if self.kind == "hnsw":
            return len(self.deleted) > HNSW_MAX_DELETED * max(int(self.index.ntotal), 1)
        return self.kind == "ivf" and self.ntotal > REBUILD_GROWTH * max(self.trained_on, 1)

    def to_bytes(self) -> bytes:
        return _faiss().serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(
        cls, data: bytes, kind: str, dim: int, trained_on: int = 0, deleted: Optional[np.ndarray] = None
    ) -> VectorIndex:
        faiss = _faiss()
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        if index.d != dim:
            raise ValueError(f"index of {index.d}-D vectors, expected {dim}")
        if kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = NPROBE
        return cls(index, kind, dim, trained_on, deleted)
