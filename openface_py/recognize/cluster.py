"""Faces into people without names: embeddings and the photo of each face -> cluster labels.

The method (chosen by measurement, BENCHMARKS.md "Clustering faces"): **average linkage on the
squared L2 distance, restricted to a k-nearest-neighbour graph**. Two groups are merged, closest
pair first, while the mean squared distance between their faces is at or below ``threshold``.
For any vectors that mean is exact from per-group sums, ``mean|a|^2 + mean|b|^2 - 2 mean(a).mean(b)``,
so the linkage is computed exactly in O(D) per pair with O(N*D) memory; the kNN graph (FAISS,
``vectorindex.VectorIndex``) only says which groups are candidates (those joined by an edge), so
memory grows with N*k, never N^2. Chinese Whispers (Biemann 2006, dlib's method) on the same graph
is kept as ``method="whispers"`` for comparison.

Constraints: two faces of one photo never share a cluster (a merge that would join them is never
made; with Chinese Whispers the faces farther from their cluster's mean are unassigned), and
clusters smaller than ``min_size`` are left unassigned (label -1). Average linkage also takes
groups of faces that start as one cluster (``groups``: the people a face database already has)
and tokens per face that keep faces apart like a shared photo does (``apart``: two such people,
a face the user said is not that person), as ``recognize.dbcluster`` needs. Labels are numbered from the
largest cluster down (ties: the cluster holding the earliest face). Deterministic: exact search
below ``vectorindex.APPROX_MIN`` faces, ties broken by index, Chinese Whispers seeded.

The one "stricter / looser" setting is ``threshold``; ``default_threshold`` derives it from the
model's same-person threshold (``nets.catalog``): ``DEFAULT_FACTOR`` times it.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

from openface_py.recognize.vectorindex import VectorIndex

log = logging.getLogger(__name__)

#: the default threshold is this fraction of the model's same-person (verification) threshold:
#: in a collection almost every pair of groups is two different people, so a merge must be
#: stricter than the verification threshold, which is set for pairs that are same or different
#: half of the time (BENCHMARKS.md "Clustering faces": how it was chosen and what it scores)
DEFAULT_FACTOR = 0.75
#: neighbours per face in the graph
DEFAULT_K = 32
#: smallest cluster kept; smaller ones are unassigned
DEFAULT_MIN_SIZE = 2
METHODS = ("average", "whispers")
#: Chinese Whispers: passes over the nodes at most
WHISPERS_ITERATIONS = 30


def default_threshold(same_person_threshold: float) -> float:
    """The clustering threshold for a model whose verification threshold is ``same_person_threshold``."""
    return round(DEFAULT_FACTOR * float(same_person_threshold), 4)


@dataclass(frozen=True)
class ClusterSettings:
    """How faces are grouped (recorded beside every result)."""

    #: mean squared L2 between two groups at or below which they are one person (lower = stricter)
    threshold: float
    min_size: int = DEFAULT_MIN_SIZE
    k: int = DEFAULT_K
    method: str = "average"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown clustering method {self.method!r}: one of {', '.join(METHODS)}")
        if not np.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"the clustering threshold must be a number >= 0, got {self.threshold}")
        if self.min_size < 1 or self.k < 1:
            raise ValueError(f"min_size and k must be >= 1 (got {self.min_size}, {self.k})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Clustering:
    """Per face its cluster (-1: unassigned); clusters numbered from the largest down."""

    labels: np.ndarray
    settings: ClusterSettings
    #: faces unassigned because a cluster held another face of their photo (Chinese Whispers)
    separated: int = 0
    #: merges refused because they would have joined two faces of one photo (average linkage)
    refused: int = 0
    sizes: list[int] = field(init=False)

    def __post_init__(self) -> None:
        n = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.sizes = np.bincount(self.labels[self.labels >= 0], minlength=n).astype(int).tolist()

    @property
    def n_clusters(self) -> int:
        return len(self.sizes)

    @property
    def unassigned(self) -> int:
        return int(np.count_nonzero(self.labels < 0))

    def members(self, cluster: int) -> np.ndarray:
        """Indices of the faces of ``cluster``, in input order."""
        return np.flatnonzero(self.labels == cluster)

    def groups(self) -> list[np.ndarray]:
        """``members`` of every cluster, cluster 0 first: one sort, not one scan per cluster."""
        order = np.argsort(self.labels, kind="stable")
        starts = np.searchsorted(self.labels[order], np.arange(self.n_clusters + 1))
        return [order[starts[c] : starts[c + 1]] for c in range(self.n_clusters)]


def cluster_faces(
    embeddings: np.ndarray,
    photos: Optional[Sequence],
    settings: ClusterSettings,
    groups: Optional[Sequence[int]] = None,
    apart: Optional[Sequence[Iterable]] = None,
) -> Clustering:
    """Group ``embeddings`` (N x D) into people; ``photos``: one photo id per face (faces with
    the same id are never put together; None: each face its own photo).

    Average linkage only: ``groups``, a group id per face (negative: none), makes the faces of
    each group one cluster from the start (they stay together); ``apart``, tokens per face (any
    hashable values), never puts together faces whose tokens meet (checked on merges, not
    inside a starting group)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values")
    n = len(x)
    photo_ids = _photo_ids(photos, n)
    if (groups is not None or apart is not None) and settings.method != "average":
        raise ValueError("starting groups and apart tokens need method 'average'")
    if groups is not None and len(groups) != n or apart is not None and len(apart) != n:
        raise ValueError(f"groups and apart need one entry per face ({n})")
    if n == 0:
        return Clustering(np.zeros(0, np.int64), settings)
    start = time.perf_counter()
    nbrs, dists = knn_graph(x, settings.k)
    graph_s = time.perf_counter() - start
    separated = refused = 0
    if settings.method == "average":
        roots, refused = _average_linkage(x, nbrs, dists, photo_ids, settings.threshold, groups, apart)
    else:
        roots = _chinese_whispers(nbrs, dists, settings.threshold, settings.seed)
        roots, separated = _one_face_per_photo(x, roots, photo_ids)
    labels = _numbered(roots, settings.min_size)
    result = Clustering(labels, settings, separated=separated, refused=refused)
    log.debug(
        "%d faces -> %d clusters, %d unassigned (%s); graph %.1f s, clustering %.1f s",
        n, result.n_clusters, result.unassigned, settings.to_dict(), graph_s, time.perf_counter() - start - graph_s,
    )  # fmt: skip
    return result


def knn_graph(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each face's ``k`` nearest other faces (N x k indices, -1 where fewer) and their squared L2
    distances, from the project's FAISS index (exact below ``APPROX_MIN`` faces, HNSW above)."""
    n = len(x)
    index = VectorIndex.build(np.arange(n, dtype=np.int64), x, x.shape[1])
    found = index.search(x, min(k + 1, n))
    ids, d = found.ids, found.distances
    self_hit = ids == np.arange(n)[:, None]
    # drop the face itself (or, when it is missing among exact duplicates, the farthest hit)
    drop = np.where(self_hit.any(1), self_hit.argmax(1), ids.shape[1] - 1)
    keep = np.ones(ids.shape, bool)
    keep[np.arange(n), drop] = False
    ids = ids[keep].reshape(n, -1)[:, :k]
    d = d[keep].reshape(n, -1)[:, :k]
    return ids, np.where(ids < 0, np.inf, d).astype(np.float32)


def _photo_ids(photos: Optional[Sequence], n: int) -> np.ndarray:
    if photos is None:
        return np.arange(n, dtype=np.int64)
    if len(photos) != n:
        raise ValueError(f"{len(photos)} photo ids for {n} embeddings")
    _, inverse = np.unique(np.asarray([str(p) for p in photos], dtype=object), return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


def _edges(nbrs: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's undirected edges once each (i < j), with their distances, sorted by (i, j)."""
    n, k = nbrs.shape
    i = np.repeat(np.arange(n), k)
    j = nbrs.reshape(-1)
    ok = j >= 0
    a, b, d = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok]), dists.reshape(-1)[ok]
    _, first = np.unique(a.astype(np.int64) * n + b, return_index=True)
    return a[first], b[first], d[first]


def _average_linkage(
    x: np.ndarray,
    nbrs: np.ndarray,
    dists: np.ndarray,
    photo: np.ndarray,
    threshold: float,
    groups: Optional[Sequence[int]] = None,
    apart: Optional[Sequence[Iterable]] = None,
) -> tuple[np.ndarray, int]:
    """Average linkage over the graph's candidate pairs: (each face's group root, merges refused).

    ``groups`` and ``apart``: see ``cluster_faces``."""
    n = len(x)
    sums = x.astype(np.float64)
    sqn = np.einsum("ij,ij->i", sums, sums)
    size = np.ones(n, np.int64)
    version = np.zeros(n, np.int64)
    parent = np.arange(n)
    a, b, d = _edges(nbrs, dists)
    adjacent: list[set[int]] = [set() for _ in range(n)]
    for i, j in zip(a.tolist(), b.tolist()):
        adjacent[i].add(j)
        adjacent[j].add(i)
    # photos with more than one face: the only ones a merge can conflict on
    counts = np.bincount(photo)
    shared: dict[int, set] = {i: {int(photo[i])} for i in np.flatnonzero(counts[photo] > 1).tolist()}
    for i, tokens in enumerate(apart or ()):
        if tokens:
            shared.setdefault(i, set()).update(("apart", t) for t in tokens)
    if groups is None:
        heap = [(float(dd), i, j, 0, 0) for i, j, dd in zip(a.tolist(), b.tolist(), d.tolist()) if dd <= threshold]
    else:
        heap = _start_groups(np.asarray(groups), parent, sums, sqn, size, shared, adjacent, threshold)
    heapq.heapify(heap)
    refused = 0
    while heap:
        dd, i, j, vi, vj = heapq.heappop(heap)
        if version[i] != vi or version[j] != vj or parent[i] != i or parent[j] != j:
            continue  # a stale entry: one of the two has changed since
        pi, pj = shared.get(i), shared.get(j)
        if pi and pj and not pi.isdisjoint(pj):
            refused += 1  # never: and no superset of these two groups can be merged either
            adjacent[i].discard(j)
            adjacent[j].discard(i)
            continue
        if size[j] > size[i]:
            i, j, pi, pj = j, i, pj, pi
        parent[j] = i
        sums[i] += sums[j]
        sqn[i] += sqn[j]
        size[i] += size[j]
        version[i] += 1
        if pj:
            shared[i] = (pi or set()) | pj
            shared.pop(j, None)
        for c in adjacent[j]:
            adjacent[c].discard(j)
            if c != i:
                adjacent[c].add(i)
        adjacent[i] |= adjacent[j]
        adjacent[i].discard(i)
        adjacent[i].discard(j)
        adjacent[j] = set()
        if adjacent[i]:
            others = np.fromiter(adjacent[i], np.int64, len(adjacent[i]))
            # mean |a - b|^2 over a in i, b in c = mean|a|^2 + mean|b|^2 - 2 mean(a).mean(b)
            cross = (sums[others] @ sums[i]) / (size[i] * size[others])
            mean = sqn[i] / size[i] + sqn[others] / size[others] - 2.0 * cross
            for c, m in zip(others.tolist(), mean.tolist()):
                if m <= threshold:
                    lo, hi = (i, c) if i < c else (c, i)
                    heapq.heappush(heap, (m, lo, hi, int(version[lo]), int(version[hi])))
    return _roots(parent), refused


def _start_groups(
    groups: np.ndarray,
    parent: np.ndarray,
    sums: np.ndarray,
    sqn: np.ndarray,
    size: np.ndarray,
    shared: dict[int, set],
    adjacent: list[set[int]],
    threshold: float,
) -> list[tuple]:
    """Join each starting group into one node (its first face; in place) and return the heap of
    candidate merges between the nodes left, at their exact average distances."""
    started = np.flatnonzero(groups >= 0)
    order = started[np.argsort(groups[started], kind="stable")]  # by group, faces in index order
    cuts = np.flatnonzero(np.diff(groups[order])) + 1
    for block in np.split(order, cuts) if len(order) else []:
        members = block.tolist()
        root = members[0]
        for j in members[1:]:
            parent[j] = root
            sums[root] += sums[j]
            sqn[root] += sqn[j]
            size[root] += size[j]
            if j in shared:
                shared.setdefault(root, set()).update(shared.pop(j))
            for c in adjacent[j]:
                adjacent[c].discard(j)
                adjacent[c].add(root)
            adjacent[root] |= adjacent[j]
            adjacent[j] = set()
        adjacent[root] -= set(members)
    heap = []
    for i in np.flatnonzero(parent == np.arange(len(parent))).tolist():
        for c in adjacent[i]:
            if i < c:
                cross = float(sums[i] @ sums[c]) / (size[i] * size[c])
                m = sqn[i] / size[i] + sqn[c] / size[c] - 2.0 * cross
                if m <= threshold:
                    heap.append((float(m), i, c, 0, 0))
    return heap


def _roots(parent: np.ndarray) -> np.ndarray:
    """Each node's root in a union-find forest (pointer jumping until every node points at its root)."""
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _chinese_whispers(nbrs: np.ndarray, dists: np.ndarray, threshold: float, seed: int) -> np.ndarray:
    """Chinese Whispers on the graph's edges at or below ``threshold`` (weight 1 each, as dlib):
    each face in a seeded random order takes the label most of its neighbours carry."""
    n = len(nbrs)
    a, b, d = _edges(nbrs, dists)
    ok = d <= threshold
    src = np.concatenate([a[ok], b[ok]])
    dst = np.concatenate([b[ok], a[ok]])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    start = np.searchsorted(src, np.arange(n + 1))
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    for _ in range(WHISPERS_ITERATIONS):
        changed = 0
        for v in rng.permutation(n).tolist():
            nb = dst[start[v] : start[v + 1]]
            if not len(nb):
                continue
            values, votes = np.unique(labels[nb], return_counts=True)
            best = int(values[np.argmax(votes)])  # ties: the smallest label
            if best != labels[v]:
                labels[v] = best
                changed += 1
        if not changed:
            break
    return labels


def _one_face_per_photo(x: np.ndarray, groups: np.ndarray, photo: np.ndarray) -> tuple[np.ndarray, int]:
    """Where a group holds several faces of one photo, keep the one nearest the group's mean and
    make the others groups of their own; returns (groups, faces separated)."""
    groups = groups.copy()
    order = np.lexsort((photo, groups))
    g, p = groups[order], photo[order]
    dup = np.flatnonzero((g[1:] == g[:-1]) & (p[1:] == p[:-1]))
    if not len(dup):
        return groups, 0
    separated = 0
    for grp in np.unique(g[dup + 1]).tolist():
        idx = np.flatnonzero(groups == grp)
        centre = x[idx].mean(0)
        near = np.argsort(((x[idx] - centre) ** 2).sum(1), kind="stable")
        seen: set[int] = set()
        for face in idx[near].tolist():
            if int(photo[face]) in seen:
                groups[face] = len(groups) + face  # a group of its own
                separated += 1
            seen.add(int(photo[face]))
    return groups, separated


def _numbered(groups: np.ndarray, min_size: int) -> np.ndarray:
    """Group ids -> labels 0.. from the largest group down (ties: earliest face), -1 below ``min_size``."""
    uniq, first, inverse, counts = np.unique(groups, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), np.int64)
    rank[order] = np.arange(len(uniq))
    labels = rank[inverse.reshape(-1)]
    labels[counts[inverse.reshape(-1)] < min_size] = -1
    return labels
