"""Clustering inside a face database: unnamed people, and the user's decisions kept across reruns.

Faces of unlabeled photos (``db import --unlabeled``: every face, nobody named) start without a
person. ``db cluster`` groups them with ``cluster.cluster_faces`` (average linkage, one photo's
faces never together) into *unnamed clusters*: people rows with ``named`` 0 and a label such as
``cluster:0007`` for a name (a ``:`` is never in a person's name, ``facedb.valid_name``). Naming
a cluster makes it a person like any other; merging moves faces and drops the empty person.

What the user decided is kept in the database and never undone by a rerun:

- a face *pinned* to a person (moved there, split off with others, or in a cluster the user
  merged or named);
- "this face is not X" (``face_rejections``): the face never goes back to X;
- "these two are different people" (``different_people``): never suggested for a merge;
- a face removed for good (``forgotten_faces``, by photo content and box): not added again when
  the photo is imported again.

A rerun keeps every named person and every cluster the user touched (a pin or a rejection) as a
fixed group (``groups`` of ``cluster_faces``: it can gain faces, never lose them), kept apart
from each other and from the faces that may not join them (``apart``), and re-clusters only the
other faces: unassigned ones and those of untouched clusters. So naming a few clusters helps
assign the rest: a free face joins a named person when their average distance is within the
clustering threshold. A new cluster takes the label of the old cluster whose faces it mostly
holds (labels do not churn); an old cluster no new one holds most of is dissolved.

New faces of ``db import --unlabeled`` join (``attach_faces``) the person or cluster nearest on
average when within the clustering threshold (never one holding a face of the same photo, never
one the face was rejected from); the others wait, unassigned, for the next ``db cluster``.

Search (``FaceDatabase.identify``) answers ``unknown`` for a face nearest an unnamed cluster, with
the cluster's label beside it. Every write is one transaction of ``FaceDatabase.write``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

import numpy as np

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.recognize.cluster import DEFAULT_MIN_SIZE, ClusterSettings, cluster_faces, default_threshold
from openface_py.recognize.facedb import (
    INSERT_FACE,
    FaceDatabase,
    FaceRecord,
    _guarded,
    _vectors,
    face_row,
    quote_name,
    valid_name,
)
from openface_py.recognize.vectorindex import VectorIndex

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "cluster:"
#: meta keys: the clustering settings the user chose (threshold, min_size; null: the default),
#: the number of the next cluster label (labels are never reused)
META_SETTINGS = "cluster_settings"
META_NEXT = "next_cluster"
#: a face of a re-imported photo is the forgotten one when their boxes overlap this much (IoU)
FORGOTTEN_IOU = 0.5
#: merge suggestions are checked among this many nearest people of each (by their mean face)
SUGGEST_NEIGHBOURS = 16


class NotFoundError(OpenFacePyError):
    """No person, cluster or face by that name or id."""


def cluster_label(number: int) -> str:
    """The name an unnamed cluster goes by: ``cluster:0007``."""
    return f"{CLUSTER_PREFIX}{number:04d}"


@dataclass(frozen=True)
class PersonRef:
    """A person or an unnamed cluster, as stored."""

    id: int
    name: str
    named: bool


@dataclass
class FaceInfo:
    """One face: its id (what ``db move``/``reject``/``forget`` take), where it is and who it is."""

    id: int
    person: Optional[str]
    named: bool
    source: Optional[str]
    box: list[int]
    pinned: bool

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "person": self.person,
            "named": self.named,
            "source": self.source,
            "box": self.box,
            "pinned": self.pinned,
        }


@dataclass
class DbClustering:
    """What ``db cluster`` did."""

    settings: ClusterSettings
    #: faces that were free to move (unassigned, or in a cluster the user never touched)
    free: int
    #: unnamed clusters afterwards: (label, faces), largest first
    clusters: list[tuple[str, int]]
    new: int = 0
    kept: int = 0
    dissolved: int = 0
    #: faces that joined a named person: name -> count
    joined: dict[str, int] = field(default_factory=dict)
    unassigned: int = 0
    seconds: float = 0.0
    #: groupings it took (more than 1: the database was written meanwhile, ``CLUSTER_ATTEMPTS``)
    attempts: int = 1

    def to_json(self) -> dict:
        return {
            "settings": self.settings.to_dict(),
            "free_faces": self.free,
            "clusters": [{"label": label, "faces": n} for label, n in self.clusters],
            "new": self.new,
            "kept": self.kept,
            "dissolved": self.dissolved,
            "joined": self.joined,
            "unassigned": self.unassigned,
            "seconds": round(self.seconds, 2),
            "attempts": self.attempts,
        }


@dataclass
class UnlabeledResult:
    """One unlabeled photo added: the ids of its new faces; ``duplicate``: the same content is
    already there; ``unchanged``: its file changed only in time (its faces and decisions kept);
    ``forgotten``: faces not added because the user removed them for good."""

    face_ids: list[int]
    duplicate: bool = False
    unchanged: bool = False
    forgotten: int = 0


@dataclass
class MergeSuggestion:
    """Two people or clusters that are probably one person: their average squared distance."""

    a: str
    b: str
    distance: float
    a_named: bool
    b_named: bool
    a_faces: int
    b_faces: int

    def to_json(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "distance": round(self.distance, 4),
            "a_named": self.a_named,
            "b_named": self.b_named,
            "a_faces": self.a_faces,
            "b_faces": self.b_faces,
        }


# ------------------------------------------------------------------ looking up
def find(db: FaceDatabase, ref: str) -> PersonRef:
    """The person (by name, as ``db remove`` finds names) or cluster (``cluster:0007``, or
    ``cluster:7``) ``ref`` means; ``NotFoundError`` when none."""
    text = str(ref).strip()
    m = re.fullmatch(rf"{re.escape(CLUSTER_PREFIX)}0*(\d+)", text)
    name = cluster_label(int(m.group(1))) if m else db.find_person(text)
    row = db.conn.execute("SELECT id, name, named FROM people WHERE name = ?", (name,)).fetchone() if name else None
    if row is None:
        raise NotFoundError(f"{db.path}: no person or cluster {quote_name(ref)}")
    return PersonRef(row[0], row[1], bool(row[2]))


def _faces_exist(db: FaceDatabase, face_ids: Iterable[int]) -> list[int]:
    ids = sorted({int(i) for i in face_ids})
    if not ids:
        raise UsageError("no face ids given")
    have = {r[0] for r in db.conn.execute(f"SELECT id FROM faces WHERE id IN ({','.join('?' * len(ids))})", ids)}
    missing = [i for i in ids if i not in have]
    if missing:
        raise NotFoundError(f"{db.path}: no face {', '.join(map(str, missing))} (`db faces` lists them)")
    return ids


def _labeled(db: FaceDatabase, face_ids: Sequence[int]) -> None:
    """Refuse faces of photos enrolled for a person (``db enroll``/``db import``): their person
    is the photo's; change it there (``db remove``, or move the photo)."""
    rows = db.conn.execute(
        f"SELECT f.id, p.name FROM faces f JOIN photos h ON h.id = f.photo_id JOIN people p ON p.id = h.person_id"
        f" WHERE f.id IN ({','.join('?' * len(face_ids))})",
        list(face_ids),
    ).fetchall()
    if rows:
        shown = ", ".join(f"{fid} ({quote_name(name)})" for fid, name in rows[:5])
        raise UsageError(f"faces of photos enrolled for a person cannot be moved: {shown}")


@_guarded
def list_faces(db: FaceDatabase, ref: Optional[str] = None, unassigned: bool = False) -> list[FaceInfo]:
    """The faces of one person or cluster (``ref``), the unassigned ones, or (neither) every face."""
    where, params = "", []
    if ref is not None:
        where, params = "WHERE f.person_id = ?", [find(db, ref).id]
    elif unassigned:
        where = "WHERE f.person_id IS NULL"
    rows = db.conn.execute(
        "SELECT f.id, p.name, p.named, h.source, f.box, g.face_id IS NOT NULL FROM faces f"
        " JOIN photos h ON h.id = f.photo_id LEFT JOIN people p ON p.id = f.person_id"
        f" LEFT JOIN face_pins g ON g.face_id = f.id AND g.person_id = f.person_id {where} ORDER BY f.id",
        params,
    ).fetchall()
    return [FaceInfo(i, name, bool(named), src, json.loads(box), bool(pin)) for i, name, named, src, box, pin in rows]


@dataclass(frozen=True)
class FacePhoto:
    """Where a face was found: its photo's path when imported from a file (None: enrolled from
    bytes), the SHA-256 of the photo's content as imported, the face's box in it, and its
    person or cluster now (None: unassigned)."""

    face_id: int
    source: Optional[str]
    sha256: str
    box: tuple[int, ...]
    person: Optional[str]


@_guarded
def face_photo(db: FaceDatabase, face_id: int) -> FacePhoto:
    """The photo a face comes from (``NotFoundError`` when there is no such face)."""
    row = db.conn.execute(
        "SELECT h.source, h.sha256, f.box, p.name FROM faces f JOIN photos h ON h.id = f.photo_id"
        " LEFT JOIN people p ON p.id = f.person_id WHERE f.id = ?",
        (int(face_id),),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"{db.path}: no face {int(face_id)}")
    return FacePhoto(int(face_id), row[0], row[1], tuple(int(v) for v in json.loads(row[2])), row[3])


# ------------------------------------------------------------------ settings
def cluster_settings(
    db: FaceDatabase, threshold: Optional[float] = None, min_size: Optional[int] = None
) -> ClusterSettings:
    """The clustering settings: those given, else the ones the user gave ``db cluster`` before,
    else the default (``cluster.default_threshold`` of the database's same-person threshold)."""
    stored = _stored_settings(db)
    t = threshold if threshold is not None else stored.get("threshold")
    if t is None:
        if db.threshold is None:
            raise UsageError(f"{db.path} has no same-person threshold yet: give a clustering --threshold")
        t = default_threshold(db.threshold)
    m = min_size if min_size is not None else stored.get("min_size") or DEFAULT_MIN_SIZE
    try:
        return ClusterSettings(threshold=float(t), min_size=int(m))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _stored_settings(db: FaceDatabase) -> dict:
    row = db.conn.execute("SELECT value FROM meta WHERE key = ?", (META_SETTINGS,)).fetchone()
    return json.loads(row[0]) if row else {}


def _new_label(db: FaceDatabase) -> str:
    """The next cluster label (inside a write transaction); labels are never reused."""
    row = db.conn.execute("SELECT value FROM meta WHERE key = ?", (META_NEXT,)).fetchone()
    number = int(row[0]) if row else 1
    while db.conn.execute("SELECT 1 FROM people WHERE name = ?", (cluster_label(number),)).fetchone():
        number += 1
    db.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (META_NEXT, str(number + 1)))
    return cluster_label(number)


def _new_cluster(db: FaceDatabase) -> PersonRef:
    """A new, empty unnamed cluster (inside a write transaction)."""
    label = _new_label(db)
    pid = db.conn.execute("INSERT INTO people(name, created, named) VALUES (?, ?, 0)", (label, time.time())).lastrowid
    return PersonRef(pid, label, False)


def _drop_empty_clusters(db: FaceDatabase) -> int:
    return db.conn.execute(
        "DELETE FROM people WHERE NOT named AND NOT EXISTS (SELECT 1 FROM faces WHERE person_id = people.id)"
    ).rowcount


# ------------------------------------------------------------------ clustering
#: ``db cluster`` groups a snapshot of the database with no lock held and then writes the result
#: in one short transaction, if nothing was written meanwhile (the generation tells); otherwise it
#: starts again. The last attempt groups inside the write transaction, so a database written to
#: without pause (a busy service) still gets clustered, holding the writers back for that run only.
CLUSTER_ATTEMPTS = 3


@dataclass
class _Snapshot:
    """The faces and decisions ``cluster_database`` groups, as of generation ``gen``."""

    gen: int
    rows: list
    named: dict
    person: list
    photo: np.ndarray
    X: np.ndarray
    fixed: np.ndarray
    groups: np.ndarray
    apart: list


def _read_snapshot(db: FaceDatabase) -> _Snapshot:
    """What the clustering needs (inside a transaction, so the queries see one state)."""
    rows = db.conn.execute("SELECT id, photo_id, person_id, embedding FROM faces ORDER BY id").fetchall()
    named = {pid: bool(n) for pid, n in db.conn.execute("SELECT id, named FROM people")}
    decided = {
        r[0] for r in db.conn.execute("SELECT person_id FROM face_pins UNION SELECT person_id FROM face_rejections")
    }
    index_of = {r[0]: k for k, r in enumerate(rows)}
    person = [r[2] for r in rows]
    fixed = np.array([p is not None and (named.get(p, False) or p in decided) for p in person], bool)
    apart: list[set] = [{"fixed"} if f else set() for f in fixed]  # two fixed groups never merge
    rejected_from = set()
    for face_id, pid in db.conn.execute("SELECT face_id, person_id FROM face_rejections"):
        if face_id in index_of:
            apart[index_of[face_id]].add(("not", pid))
            rejected_from.add(pid)
    for k in np.flatnonzero(fixed).tolist():
        if person[k] in rejected_from:
            apart[k].add(("not", person[k]))
    return _Snapshot(
        gen=db.generation,
        rows=rows,
        named=named,
        person=person,
        photo=np.array([r[1] for r in rows], np.int64),
        X=_vectors((r[3] for r in rows), db.dim),
        fixed=fixed,
        groups=np.array([p if f else -1 for p, f in zip(person, fixed)], np.int64),
        apart=apart,
    )


def _group(snap: _Snapshot, settings: ClusterSettings) -> list[np.ndarray]:
    """The snapshot's faces grouped (the expensive part: no database access)."""
    if not snap.rows:
        return []
    return cluster_faces(snap.X, snap.photo, replace(settings, min_size=1), snap.groups, snap.apart).groups()


@_guarded
def cluster_database(
    db: FaceDatabase, threshold: Optional[float] = None, min_size: Optional[int] = None
) -> DbClustering:
    """``db cluster``: group the faces not fixed by a name or a decision (see the module's
    docstring) and write the result in one transaction; the grouping itself holds no lock
    (``CLUSTER_ATTEMPTS``), so imports, enrolments and searches go on meanwhile.
    ``threshold``/``min_size`` given are remembered for later runs and for ``attach_faces``."""
    started = time.monotonic()
    settings = cluster_settings(db, threshold, min_size)
    for attempt in range(1, CLUSTER_ATTEMPTS + 1):
        locked = attempt == CLUSTER_ATTEMPTS
        if not locked:
            with db.snapshot():
                snap = _read_snapshot(db)
            grouped = _group(snap, settings)
        with db.write() as tx:
            if locked:
                snap = _read_snapshot(db)
                grouped = _group(snap, settings)
            elif tx.gen != snap.gen + 1:
                log.info(
                    "db cluster: the database was written while grouping (generation %d -> %d); grouping again%s",
                    snap.gen, tx.gen - 1, " with writers held back" if attempt + 1 == CLUSTER_ATTEMPTS else "",
                )  # fmt: skip
                tx.cancel()
                continue
            result = _write_clustering(db, snap, grouped, settings, threshold, min_size)
        break
    result.attempts = attempt
    result.seconds = time.monotonic() - started
    log.info(
        "db cluster: %d free faces -> %d clusters (%d new, %d kept, %d dissolved), %d joined named people,"
        " %d unassigned",
        result.free, len(result.clusters), result.new, result.kept, result.dissolved,
        sum(result.joined.values()), result.unassigned,
    )  # fmt: skip
    return result


def _write_clustering(
    db: FaceDatabase,
    snap: _Snapshot,
    grouped: list[np.ndarray],
    settings: ClusterSettings,
    threshold: Optional[float],
    min_size: Optional[int],
) -> DbClustering:
    """Write a grouping of ``snap`` (inside the write transaction, the database still at ``snap``)."""
    stored = _stored_settings(db)
    if threshold is not None:
        stored["threshold"] = float(threshold)
    if min_size is not None:
        stored["min_size"] = int(min_size)
    db.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (META_SETTINGS, json.dumps(stored)))
    result = DbClustering(settings, free=int(len(snap.rows) - snap.fixed.sum()), clusters=[])
    if snap.rows:
        target = _targets(db, grouped, snap.fixed, snap.person, snap.named, settings.min_size, result)
        changed = [(t, snap.rows[k][0]) for k, t in enumerate(target) if t != snap.person[k]]
        db.conn.executemany("UPDATE faces SET person_id = ? WHERE id = ?", changed)
    result.dissolved = _drop_empty_clusters(db)
    db._refresh_decisions()
    result.clusters = [
        (name, count)
        for name, count in db.conn.execute(
            "SELECT p.name, COUNT(f.id) AS c FROM people p JOIN faces f ON f.person_id = p.id WHERE NOT p.named"
            " GROUP BY p.id ORDER BY c DESC, p.name"
        )
    ]
    result.unassigned = db.conn.execute("SELECT COUNT(*) FROM faces WHERE person_id IS NULL").fetchone()[0]
    return result


def _targets(
    db: FaceDatabase,
    groups: list[np.ndarray],
    fixed: np.ndarray,
    person: list[Optional[int]],
    named: dict[int, bool],
    min_size: int,
    result: DbClustering,
) -> list[Optional[int]]:
    """The person each face belongs to after a clustering: a group holding a fixed group's faces
    is that person; another group of at least ``min_size`` faces is an unnamed cluster (the old
    cluster it holds most of whose faces, else a new one); smaller ones are unassigned."""
    target: list[Optional[int]] = [None] * len(person)
    free_groups = []
    for members in groups:
        anchors = {person[k] for k in members.tolist() if fixed[k]}
        if len(anchors) > 1:  # cannot happen: fixed groups are kept apart
            raise AssertionError(f"one cluster holds two fixed people {sorted(anchors)}")
        if anchors:
            pid = anchors.pop()
            for k in members.tolist():
                target[k] = pid
                if person[k] != pid and named.get(pid):
                    result.joined[pid] = result.joined.get(pid, 0) + 1
        elif len(members) >= min_size:
            free_groups.append(members)
    # labels follow their faces: an old untouched cluster goes to the new group holding most of its faces
    old_size = Counter(person[k] for k in range(len(person)) if not fixed[k] and person[k] is not None)
    pairs = []
    for g, members in enumerate(free_groups):
        overlap = Counter(person[k] for k in members.tolist() if person[k] is not None)
        pairs += [(-c, g, pid) for pid, c in overlap.items() if 2 * c > old_size[pid]]
    pairs.sort()
    label_of: dict[int, int] = {}
    taken = set()
    for _, g, pid in pairs:
        if g not in label_of and pid not in taken:
            label_of[g] = pid
            taken.add(pid)
    for g, members in enumerate(free_groups):
        if g in label_of:
            result.kept += 1
            pid = label_of[g]
        else:
            result.new += 1
            pid = _new_cluster(db).id
        for k in members.tolist():
            target[k] = pid
    names = dict(db.conn.execute("SELECT id, name FROM people WHERE named"))
    result.joined = {names[pid]: c for pid, c in result.joined.items()}
    return target


# ------------------------------------------------------------------ new faces
@_guarded
def add_unlabeled_photo(
    db: FaceDatabase,
    sha256: str,
    faces: Sequence[FaceRecord],
    identity: str,
    source: Optional[str] = None,
    size: Optional[int] = None,
    mtime_ns: Optional[int] = None,
    replace_source: bool = False,
) -> UnlabeledResult:
    """Add every face of one unlabeled photo, with no person, in one transaction (faces the user
    removed for good are left out). ``replace_source``: the file was imported before; unchanged
    content keeps its faces (and the decisions about them), changed content replaces them."""
    db._check_faces(faces, identity)
    now = time.time()
    with db.write() as tx:
        if replace_source and source is not None:
            same = db.conn.execute(
                "SELECT id FROM photos WHERE source = ? AND sha256 = ? AND person_id IS NULL", (source, sha256)
            ).fetchone()
            db.conn.execute("DELETE FROM import_failures WHERE source = ?", (source,))
            if same:
                db.conn.execute("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, same[0]))
                return UnlabeledResult([], unchanged=True)
            # only the file's unlabeled rows: a photo enrolled for a person from the same file stays theirs
            db.conn.execute("DELETE FROM photos WHERE source = ? AND person_id IS NULL", (source,))
        if db.conn.execute("SELECT 1 FROM photos WHERE sha256 = ? AND person_id IS NULL", (sha256,)).fetchone():
            tx.cancel()
            return UnlabeledResult([], duplicate=True)
        photo_id = db.conn.execute(
            "INSERT INTO photos(person_id, sha256, source, size, mtime_ns, added) VALUES (NULL,?,?,?,?,?)",
            (sha256, source, size, mtime_ns, now),
        ).lastrowid
        gone = [
            json.loads(r[0]) for r in db.conn.execute("SELECT box FROM forgotten_faces WHERE sha256 = ?", (sha256,))
        ]
        # the same photo enrolled for a person: its enrolled faces are there already (not added twice)
        gone += [
            json.loads(r[0])
            for r in db.conn.execute(
                "SELECT f.box FROM faces f JOIN photos h ON h.id = f.photo_id"
                " WHERE h.sha256 = ? AND h.person_id IS NOT NULL",
                (sha256,),
            )
        ]
        kept = [f for f in faces if not any(_iou(f.box, box) >= FORGOTTEN_IOU for box in gone)]
        ids = [db.conn.execute(INSERT_FACE, face_row(photo_id, None, f, identity, now, tx.gen)).lastrowid for f in kept]
    return UnlabeledResult(ids, forgotten=len(faces) - len(kept))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@_guarded
def attach_faces(db: FaceDatabase, face_ids: Sequence[int], settings: Optional[ClusterSettings] = None) -> int:
    """Join each of ``face_ids`` still unassigned to the person or cluster nearest on average
    (mean squared distance to its faces) when within the clustering threshold, never to one
    holding a face of the same photo or one the face was rejected from (one transaction);
    returns how many joined. The others wait for ``db cluster``."""
    if not len(face_ids):
        return 0
    if settings is None:
        try:
            settings = cluster_settings(db)
        except UsageError as exc:  # no threshold yet: the faces wait for ``db cluster --threshold``
            log.info("new faces not joined to anyone: %s", exc)
            return 0
    joined = 0
    with db.write() as tx:
        wanted = sorted({int(i) for i in face_ids})
        new = [
            r
            for start in range(0, len(wanted), 500)
            for r in db.conn.execute(
                "SELECT id, photo_id, embedding FROM faces WHERE person_id IS NULL AND id IN"
                f" ({','.join('?' * len(wanted[start : start + 500]))})",
                wanted[start : start + 500],
            )
        ]
        assigned = db.conn.execute(
            "SELECT person_id, photo_id, embedding FROM faces WHERE person_id IS NOT NULL ORDER BY person_id"
        ).fetchall()
        if not new or not assigned:
            tx.cancel()
            return 0
        people, inverse = np.unique(np.array([r[0] for r in assigned], np.int64), return_inverse=True)
        Y = _vectors((r[2] for r in assigned), db.dim).astype(np.float64)
        sums = np.zeros((len(people), db.dim))
        np.add.at(sums, inverse, Y)
        counts = np.bincount(inverse, minlength=len(people)).astype(np.float64)
        mean_sq = np.bincount(inverse, weights=(Y * Y).sum(1), minlength=len(people)) / counts
        photos_of: dict[int, set[int]] = {}
        for pid, ph, _ in assigned:
            photos_of.setdefault(pid, set()).add(ph)
        rejected = set(db.conn.execute("SELECT face_id, person_id FROM face_rejections").fetchall())
        X = _vectors((r[2] for r in new), db.dim).astype(np.float64)
        # mean |x - y|^2 over a person's faces y = |x|^2 + mean|y|^2 - 2 x . mean(y)
        D = (X * X).sum(1)[:, None] + mean_sq[None, :] - 2.0 * X @ (sums / counts[:, None]).T
        cand = np.argwhere(D <= settings.threshold)
        order = np.argsort(D[cand[:, 0], cand[:, 1]], kind="stable")
        updates = []
        done = set()
        for fi, pj in cand[order].tolist():
            face_id, photo_id = new[fi][0], new[fi][1]
            pid = int(people[pj])
            if face_id in done or photo_id in photos_of[pid] or (face_id, pid) in rejected:
                continue
            done.add(face_id)
            photos_of[pid].add(photo_id)
            updates.append((pid, face_id))
        db.conn.executemany("UPDATE faces SET person_id = ? WHERE id = ?", updates)
        joined = len(updates)
        if not joined:
            tx.cancel()
    return joined


# ------------------------------------------------------------------ the user's decisions
@_guarded
def name_person(db: FaceDatabase, ref: str, name: str) -> str:
    """Name a cluster (or rename a person): it becomes a person like any other, its faces
    pinned to it. A name someone already has merges the two. Returns the name."""
    name = valid_name(name)
    with db.write():
        who = find(db, ref)
        other = db.conn.execute("SELECT id, name, named FROM people WHERE name = ?", (name,)).fetchone()
        if other and other[0] != who.id:
            _merge(db, PersonRef(other[0], other[1], bool(other[2])), who)
            return other[1]
        _pin_all(db, who.id)
        db.conn.execute("UPDATE people SET name = ?, named = 1 WHERE id = ?", (name, who.id))
        db._refresh_decisions()
    return name


@_guarded
def merge_people(db: FaceDatabase, a: str, b: str) -> str:
    """One person of two (``b``'s faces into ``a``; a named one keeps its name over a cluster),
    in one transaction; refused when they share a photo. Returns the name kept."""
    with db.write():
        pa, pb = find(db, a), find(db, b)
        if pa.id == pb.id:
            raise UsageError(f"{quote_name(a)} and {quote_name(b)} are the same person")
        if pb.named and not pa.named:
            pa, pb = pb, pa
        _merge(db, pa, pb)
    return pa.name


def _merge(db: FaceDatabase, into: PersonRef, other: PersonRef) -> None:
    shared = db.conn.execute(
        "SELECT f.photo_id FROM faces f JOIN faces g ON g.photo_id = f.photo_id"
        " WHERE f.person_id = ? AND g.person_id = ? LIMIT 1",
        (into.id, other.id),
    ).fetchone()
    if shared:
        raise UsageError(f"{into.name} and {other.name} both have a face of one photo: two different people")
    _pin_all(db, other.id)
    _pin_all(db, into.id)
    # "this face is not B" about a face of A (or the other way round) contradicts "A and B are one
    # person": the merge is the later decision, so those rejections go (the faces stay where they are)
    dropped = db.conn.execute(
        "DELETE FROM face_rejections WHERE (person_id = ? AND face_id IN (SELECT id FROM faces WHERE person_id = ?))"
        " OR (person_id = ? AND face_id IN (SELECT id FROM faces WHERE person_id = ?))",
        (other.id, into.id, into.id, other.id),
    ).rowcount
    if dropped:
        log.info("merging %s into %s: %d earlier rejections between them no longer hold", quote_name(other.name),
                 quote_name(into.name), dropped)  # fmt: skip
    db.conn.execute("UPDATE face_pins SET person_id = ? WHERE person_id = ?", (into.id, other.id))
    db.conn.execute("UPDATE faces SET person_id = ? WHERE person_id = ?", (into.id, other.id))
    db.conn.execute("UPDATE OR IGNORE photos SET person_id = ? WHERE person_id = ?", (into.id, other.id))
    db.conn.execute("UPDATE OR IGNORE face_rejections SET person_id = ? WHERE person_id = ?", (into.id, other.id))
    db.conn.execute("DELETE FROM different_people WHERE a IN (?, ?) AND b IN (?, ?)", (into.id, other.id) * 2)
    for a, b in db.conn.execute("SELECT a, b FROM different_people WHERE ? IN (a, b)", (other.id,)).fetchall():
        c = b if a == other.id else a
        pair = (min(c, into.id), max(c, into.id), time.time())
        db.conn.execute("INSERT OR IGNORE INTO different_people VALUES (?, ?, ?)", pair)
    # a photo enrolled for both stays with ``other``'s row and goes with it (cascade), its face with
    # it: ``into`` keeps the same photo and face of its own
    db.conn.execute("DELETE FROM people WHERE id = ?", (other.id,))
    db._refresh_decisions()
    log.info("merged %s into %s", quote_name(other.name), quote_name(into.name))


def _pin_all(db: FaceDatabase, person_id: int) -> None:
    """Pin every face of unlabeled photos a person holds to it (the user decided about them all)."""
    db.conn.execute(
        "INSERT OR REPLACE INTO face_pins SELECT f.id, f.person_id, ? FROM faces f JOIN photos h ON h.id = f.photo_id"
        " WHERE f.person_id = ? AND h.person_id IS NULL",
        (time.time(), person_id),
    )


@_guarded
def move_faces(db: FaceDatabase, face_ids: Iterable[int], ref: Optional[str]) -> str:
    """Move faces to a person or cluster (``ref``), or (``ref`` None) to a new cluster of their
    own (a split); they are pinned there, and a "not this person" about them is dropped. The
    faces left in the people they came from are pinned too (else a rerun could join them to the
    moved ones again: a split would not last).
    Refused: faces of enrolled photos, two faces of one photo in one person. Returns the target."""
    with db.write():
        ids = _faces_exist(db, face_ids)
        _labeled(db, ids)
        target = _new_cluster(db) if ref is None else find(db, ref)
        marks = ",".join("?" * len(ids))
        clash = db.conn.execute(
            f"SELECT photo_id FROM faces WHERE id IN ({marks}) GROUP BY photo_id HAVING COUNT(*) > 1"
            f" UNION SELECT f.photo_id FROM faces f JOIN faces g ON g.photo_id = f.photo_id"
            f" WHERE f.id IN ({marks}) AND g.person_id = ? AND g.id NOT IN ({marks})",
            [*ids, *ids, target.id, *ids],
        ).fetchone()
        if clash:
            raise UsageError(f"{target.name} would hold two faces of one photo (photo {clash[0]})")
        sources = {
            r[0]
            for r in db.conn.execute(
                f"SELECT DISTINCT person_id FROM faces WHERE id IN ({marks}) AND person_id IS NOT NULL", ids
            )
        } - {target.id}
        now = time.time()
        db.conn.executemany("UPDATE faces SET person_id = ? WHERE id = ?", [(target.id, i) for i in ids])
        for pid in sources:  # the faces left behind were looked at too: they stay (a rerun would re-join them)
            _pin_all(db, pid)
        db.conn.executemany("INSERT OR REPLACE INTO face_pins VALUES (?, ?, ?)", [(i, target.id, now) for i in ids])
        db.conn.executemany(
            "DELETE FROM face_rejections WHERE face_id = ? AND person_id = ?", [(i, target.id) for i in ids]
        )
        _drop_empty_clusters(db)
        db._refresh_decisions()
    return target.name


@_guarded
def reject_faces(db: FaceDatabase, face_ids: Iterable[int], ref: str) -> int:
    """ "These faces are not ``ref``": remembered, and those ``ref`` holds become unassigned (a
    rerun may put them anywhere but there). Returns how many left ``ref``."""
    with db.write():
        ids = _faces_exist(db, face_ids)
        _labeled(db, ids)
        who = find(db, ref)
        now = time.time()
        db.conn.executemany("INSERT OR REPLACE INTO face_rejections VALUES (?, ?, ?)", [(i, who.id, now) for i in ids])
        db.conn.executemany("DELETE FROM face_pins WHERE face_id = ? AND person_id = ?", [(i, who.id) for i in ids])
        moved = sum(
            db.conn.execute("UPDATE faces SET person_id = NULL WHERE id = ? AND person_id = ?", (i, who.id)).rowcount
            for i in ids
        )
        _drop_empty_clusters(db)
        db._refresh_decisions()
    return moved


@_guarded
def forget_faces(db: FaceDatabase, face_ids: Iterable[int]) -> int:
    """Remove faces for good (a false detection, a stranger): deleted, and remembered by photo
    content and box so that importing the photo again does not add them back."""
    with db.write():
        ids = _faces_exist(db, face_ids)
        _labeled(db, ids)  # an enrolled photo's face goes with its photo (``db remove``), not alone
        now = time.time()
        db.conn.execute(
            f"INSERT OR IGNORE INTO forgotten_faces SELECT h.sha256, f.box, ? FROM faces f JOIN photos h"
            f" ON h.id = f.photo_id WHERE f.id IN ({','.join('?' * len(ids))})",
            [now, *ids],
        )
        n = db.conn.execute(f"DELETE FROM faces WHERE id IN ({','.join('?' * len(ids))})", ids).rowcount
        _drop_empty_clusters(db)
        db._refresh_decisions()
    return n


@_guarded
def mark_different(db: FaceDatabase, a: str, b: str) -> None:
    """Remember that two people or clusters are different people (never suggested for a merge)."""
    with db.write():
        pa, pb = find(db, a), find(db, b)
        if pa.id == pb.id:
            raise UsageError(f"{quote_name(a)} and {quote_name(b)} are the same person")
        db.conn.execute(
            "INSERT OR IGNORE INTO different_people VALUES (?, ?, ?)",
            (min(pa.id, pb.id), max(pa.id, pb.id), time.time()),
        )


# ------------------------------------------------------------------ merge suggestions
@_guarded
def suggest_merges(db: FaceDatabase, threshold: Optional[float] = None, limit: int = 20) -> list[MergeSuggestion]:
    """Pairs of people or clusters whose average squared distance is at or below ``threshold``
    (default: the database's same-person threshold, looser than clustering's), closest first:
    those the user did not say are different and that share no photo."""
    if threshold is None:
        threshold = db.threshold
        if threshold is None:
            raise UsageError(f"{db.path} has no same-person threshold yet: give a --threshold")
    with db._snapshot():
        rows = db.conn.execute(
            "SELECT person_id, photo_id, embedding FROM faces WHERE person_id IS NOT NULL ORDER BY person_id"
        ).fetchall()
        info = {pid: (name, bool(named)) for pid, name, named in db.conn.execute("SELECT id, name, named FROM people")}
        different = set(db.conn.execute("SELECT a, b FROM different_people").fetchall())
    if not rows:
        return []
    people, inverse = np.unique(np.array([r[0] for r in rows], np.int64), return_inverse=True)
    Y = _vectors((r[2] for r in rows), db.dim).astype(np.float64)
    sums = np.zeros((len(people), db.dim))
    np.add.at(sums, inverse, Y)
    counts = np.bincount(inverse, minlength=len(people)).astype(np.float64)
    mean_sq = np.bincount(inverse, weights=(Y * Y).sum(1), minlength=len(people)) / counts
    means = sums / counts[:, None]
    photos: list[set[int]] = [set() for _ in people]
    for k, r in zip(inverse.tolist(), rows):
        photos[k].add(r[1])
    k = min(len(people), SUGGEST_NEIGHBOURS + 1)
    found = VectorIndex.build(np.arange(len(people), dtype=np.int64), means.astype(np.float32), db.dim).search(
        means.astype(np.float32), k
    )
    out: dict[tuple[int, int], float] = {}
    seen: set[tuple[int, int]] = set()
    for i, nbrs in enumerate(found.ids):
        for j in nbrs.tolist():
            a, b = min(i, j), max(i, j)
            if j < 0 or j == i or (a, b) in seen:
                continue
            seen.add((a, b))
            pa, pb = int(people[a]), int(people[b])
            if (min(pa, pb), max(pa, pb)) in different or not photos[a].isdisjoint(photos[b]):
                continue
            d = mean_sq[a] + mean_sq[b] - 2.0 * float(means[a] @ means[b])
            if d <= threshold:
                out[(a, b)] = d
    ranked = sorted(out.items(), key=lambda kv: (kv[1], kv[0]))[: max(0, int(limit))]
    return [
        MergeSuggestion(
            info[int(people[a])][0],
            info[int(people[b])][0],
            float(d),
            info[int(people[a])][1],
            info[int(people[b])][1],
            int(counts[a]),
            int(counts[b]),
        )  # fmt: skip
        for (a, b), d in ranked
    ]
