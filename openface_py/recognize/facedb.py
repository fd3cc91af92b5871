"""A face database: enrolled people in one SQLite file, searched 1:N through a FAISS index beside it.

The database (SQLite in WAL mode; every change one transaction) holds people, the photos they
were enrolled from (by content SHA-256, with the source path, size and modification time that
make ``db import`` incremental), their faces (box, landmarks, embedding, the embedder identity,
time) and metadata. A database is created for one model: faces of any other embedder identity
are refused, so embeddings never mix.

The FAISS index (``DB.faiss``, ``vectorindex.VectorIndex``) is a cache of the faces table and is
never trusted blindly. Every write transaction raises the database's *generation*; each face
row records the generation that added it and a trigger records each deleted face id with the
generation that removed it. The index file carries the generation and the database's UUID it
reflects. On opening, an index from another database, for another identity, unreadable, or
from a *later* generation (a restored database) is rebuilt; one from an earlier generation is
brought up to date from the rows added and removed since; and an index whose row count then
differs from the faces table is rebuilt. So a process killed after committing but before
saving the index loses nothing: the next open catches up. The file carries the SHA-256 of its
content (checked before FAISS reads a byte of it) and, once caught up, a loaded index's ids must
be the faces table's: any damage to it is found, logged and the index rebuilt from the rows.

Every SQLite error (a damaged, read-only, full or locked file) leaves this module as an
``errors.DatabaseError`` naming the file, with its ``kind``; ``writable`` says beforehand why
writes would fail. Person names have one form, ``valid_name``, wherever they come in.

Since schema version 3 a photo may have no person (``db import --unlabeled``: every face of it)
and a face may have none (unassigned); people may be unnamed clusters (``named`` 0, a label such
as ``cluster:0007`` for a name); and the user's decisions about faces have tables of their own.
What uses them is ``recognize.dbcluster``. A removed person's faces of unlabeled photos go back to
unassigned (``ON DELETE SET NULL``); the faces of photos enrolled for them go with the photos.

Decisions: the nearest enrolled face names the person when its squared-L2 distance is within
the database's threshold (the model's same-person threshold, or one learned from pairs of the
enrolled people's faces, as ``train`` learns one); else ``unknown``. Confidence is P(same
person | distance), Platt-scaled on the same pairs (None until the database holds at least one
same-person and one different-person pair).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sqlite3
import struct
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence
from urllib.parse import quote

import numpy as np

from openface_py.errors import DatabaseError, OpenFacePyError, UsageError
from openface_py.io import atomic_output
from openface_py.metrics import best_split_threshold
from openface_py.recognize.classify import UNKNOWN
from openface_py.recognize.vectorindex import VectorIndex
from openface_py.recognize.verify import DistanceCalibration, is_same

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
#: index file: magic, SHA-256 of everything after it, header length, JSON header, FAISS bytes
INDEX_MAGIC = b"OFPYFDX2"
#: index files of the first format (no checksum): rebuilt once
OLD_INDEX_MAGICS = (b"OFPYFDX1",)
#: ``PRAGMA quick_check`` runs on opening a database file up to this size (larger ones are
#: checked where they are read: every SQLite error becomes a ``DatabaseError``)
QUICK_CHECK_MAX_BYTES = 64 * 2**20
#: ``writable`` reports a disk with less free space than this as full
MIN_FREE_BYTES = 2**20
#: learning a threshold needs this many same-person pairs among the enrolled faces
MIN_SAME_PAIRS = 10
#: pairs sampled (each kind) when learning the threshold and the calibration
MAX_PAIRS = 20_000
#: decisions (threshold, calibration) are refreshed on every change below this many faces
REFRESH_ALWAYS_BELOW = 2_000
DECISION_PEOPLE = 1000
DECISION_PER_PERSON = 10
NAME_MAX = 128
#: characters allowed in a name besides letters, marks and digits
NAME_PUNCTUATION = frozenset(" .'-_")
#: error messages quote at most this many characters of a refused name
NAME_QUOTE_MAX = 40
#: scripts a name may mix (after UTS #39's "highly restrictive" level); any single script is fine
NAME_SCRIPT_MIXES = (
    frozenset({"LATIN", "HAN", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "HAN", "BOPOMOFO"}),
    frozenset({"LATIN", "HAN", "HANGUL"}),
)

_PHOTOS_TABLE = """CREATE TABLE {name}(
    id INTEGER PRIMARY KEY,
    person_id INTEGER REFERENCES people(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    source TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    added REAL NOT NULL,
    UNIQUE(person_id, sha256)
)"""
_FACES_TABLE = """CREATE TABLE {name}(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    person_id INTEGER REFERENCES people(id) ON DELETE SET NULL,
    box TEXT NOT NULL,
    landmarks TEXT,
    embedding BLOB NOT NULL,
    identity TEXT NOT NULL,
    added REAL NOT NULL,
    gen INTEGER NOT NULL
)"""
#: what version 3 added: indexes of the rebuilt photos and faces tables, the trigger, the
#: tables of the user's decisions about faces (``recognize.dbcluster``)
_V3_STATEMENTS = [
    "CREATE INDEX photos_source ON photos(source)",
    "CREATE UNIQUE INDEX photos_unlabeled ON photos(sha256) WHERE person_id IS NULL",
    "CREATE INDEX faces_person ON faces(person_id)",
    "CREATE INDEX faces_gen ON faces(gen)",
    "CREATE INDEX faces_photo ON faces(photo_id)",
    """CREATE TRIGGER face_removed AFTER DELETE ON faces BEGIN
    INSERT OR REPLACE INTO removed_faces VALUES
        (old.id, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'));
END""",
    """CREATE TABLE face_pins(
    face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    added REAL NOT NULL
)""",
    "CREATE INDEX face_pins_person ON face_pins(person_id)",
    """CREATE TABLE face_rejections(
    face_id INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    added REAL NOT NULL,
    PRIMARY KEY(face_id, person_id)
)""",
    "CREATE INDEX face_rejections_person ON face_rejections(person_id)",
    """CREATE TABLE different_people(
    a INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    b INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    added REAL NOT NULL,
    PRIMARY KEY(a, b)
)""",
    "CREATE TABLE forgotten_faces(sha256 TEXT NOT NULL, box TEXT NOT NULL, added REAL NOT NULL,"
    " PRIMARY KEY(sha256, box))",
]

# Version 3: a photo without a person (``db import --unlabeled``: every face, people unknown),
# faces without a person (unassigned; a removed person's faces of such photos go back to
# unassigned), people who are unnamed clusters (``named`` 0, a label for a name), the user's
# decisions (faces pinned to a person, "this face is not X", "these two are different people",
# faces removed for good).
_SCHEMA = f"""
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{{}}',
    named INTEGER NOT NULL DEFAULT 1
);
{_PHOTOS_TABLE.format(name="photos")};
{_FACES_TABLE.format(name="faces")};
CREATE TABLE removed_faces(face_id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX removed_gen ON removed_faces(gen);
CREATE TABLE generations(gen INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE import_failures(
    source TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    reason TEXT NOT NULL,
    gen INTEGER NOT NULL
);
{";".join(_V3_STATEMENTS)};
"""

#: schema migrations: MIGRATIONS[v] takes a database from version v to v + 1 (inside one transaction)
MIGRATIONS: dict[int, list[str]] = {
    # 1 -> 2: a token per generation (an index from another history of a restored database is rebuilt);
    # the current generation gets one, so an index saved before the upgrade is rebuilt once
    1: [
        "CREATE TABLE generations(gen INTEGER PRIMARY KEY, token TEXT NOT NULL)",
        "INSERT INTO generations SELECT CAST(value AS INTEGER), lower(hex(randomblob(16))) FROM meta"
        " WHERE key = 'generation'",
    ],
    # 2 -> 3: photos and faces may have no person (SQLite cannot drop NOT NULL: both tables are
    # rebuilt with their ids, the faces' AUTOINCREMENT counter kept, indexes and trigger made
    # again; foreign keys are off during migrations), unnamed clusters, the decision tables
    2: [
        "ALTER TABLE people ADD COLUMN named INTEGER NOT NULL DEFAULT 1",
        "CREATE TEMP TABLE face_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'faces'",
        _PHOTOS_TABLE.format(name="photos_v3"),
        "INSERT INTO photos_v3 SELECT id, person_id, sha256, source, size, mtime_ns, added FROM photos",
        _FACES_TABLE.format(name="faces_v3"),
        "INSERT INTO faces_v3 SELECT id, photo_id, person_id, box, landmarks, embedding, identity, added, gen"
        " FROM faces",
        "DROP TABLE faces",
        "DROP TABLE photos",
        "ALTER TABLE photos_v3 RENAME TO photos",
        "ALTER TABLE faces_v3 RENAME TO faces",
        "DELETE FROM sqlite_sequence WHERE name IN ('faces', 'faces_v3')",
        "INSERT INTO sqlite_sequence(name, seq) SELECT 'faces', max(coalesce((SELECT MAX(seq) FROM face_seq), 0),"
        " coalesce((SELECT MAX(id) FROM faces), 0))",
        "DROP TABLE face_seq",
        *_V3_STATEMENTS,
    ],
}


class FaceDatabaseError(OpenFacePyError):
    """A database that cannot be used: missing, foreign, newer, or for another model."""


@dataclass
class _Transaction:
    """A write transaction in progress: its generation (0 where none is counted, as in a
    migration); ``cancel`` rolls it back without an error."""

    gen: int = 0
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(frozen=True)
class FaceRecord:
    """One face to enroll: its box and landmarks in the photo, and its embedding."""

    box: Sequence[int]
    embedding: np.ndarray
    landmarks: Optional[np.ndarray] = None


@dataclass
class EnrollResult:
    name: str
    added_faces: int
    duplicate: bool


@dataclass
class PersonInfo:
    """A person (``named``) or an unnamed cluster (its label for a name, ``recognize.dbcluster``)."""

    name: str
    photos: int
    faces: int
    created: float
    named: bool = True


@dataclass
class Match:
    name: str
    distance: float
    face_id: int


@dataclass
class Answer:
    """The decision for one probe face: the name (or ``unknown``), the nearest person and the top-k people.

    A face nearest an unnamed cluster (``recognize.dbcluster``) within the threshold is
    ``unknown`` with that cluster's label in ``cluster``: seen before, not yet named."""

    name: str
    nearest: Optional[str]
    distance: Optional[float]
    confidence: Optional[float]
    candidates: list[Match] = field(default_factory=list)
    cluster: Optional[str] = None

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "nearest": self.nearest,
            "distance": None if self.distance is None else round(self.distance, 4),
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "candidates": [{"name": m.name, "distance": round(m.distance, 4)} for m in self.candidates],
        }
        if self.cluster is not None:
            out["cluster"] = self.cluster
        return out


def quote_name(name: object) -> str:
    """``name`` quoted for a message: at most ``NAME_QUOTE_MAX`` characters, then an ellipsis."""
    text = str(name)
    return repr(text[:NAME_QUOTE_MAX]) + "…" if len(text) > NAME_QUOTE_MAX else repr(text)


def valid_name(name: str) -> str:
    """The one form of a person's name, used to enroll, look up and remove people.

    NFKC (full-width and other compatibility forms folded: "Ａda" is "Ada"), surrounding
    whitespace (newlines included) stripped. Refused (``UsageError``, quoting at most a short
    prefix): empty, over ``NAME_MAX`` characters, ``unknown``, a first character that is not a
    letter or digit, a character other than letters, marks, digits, space and ``_ . ' -``
    (control and invisible ones included), and letters of scripts that do not go together
    (Latin with Cyrillic: "Аda" with a Cyrillic А looks like "Ada")."""
    norm = unicodedata.normalize("NFKC", str(name)).strip()
    problem = _name_problem(norm)
    if problem:
        raise UsageError(f"invalid person name {quote_name(name)}: {problem}")
    return norm


def _name_problem(name: str) -> Optional[str]:
    """Why a normalised name is refused, or None."""
    if not name:
        return "empty"
    if len(name) > NAME_MAX:
        return f"{len(name)} characters (at most {NAME_MAX})"
    if name.casefold() == UNKNOWN:
        return f"{UNKNOWN!r} is the answer for strangers"
    if unicodedata.category(name[0])[0] not in "LN":
        return "must start with a letter or digit"
    for ch in name:
        if unicodedata.category(ch)[0] not in "LMN" and ch not in NAME_PUNCTUATION:
            what = unicodedata.name(ch, "a control or unassigned character")
            return f"U+{ord(ch):04X} ({what}) is not allowed: letters, digits, spaces and _ . ' - only"
    scripts = {_script(ch) for ch in name if unicodedata.category(ch) in ("Lu", "Ll", "Lt", "Lo")}
    if len(scripts) > 1 and not any(scripts <= mix for mix in NAME_SCRIPT_MIXES):
        return f"mixes the {', '.join(sorted(scripts))} scripts (letters that look alike are refused)"
    return None


def _script(ch: str) -> str:
    """A letter's script, from its Unicode name ("CYRILLIC CAPITAL LETTER A" -> CYRILLIC)."""
    word = unicodedata.name(ch, "UNNAMED").split(" ")[0]
    return "HAN" if word == "CJK" else word


def database_error(exc: sqlite3.Error, path: os.PathLike | str, why: Optional[str] = None) -> DatabaseError:
    """An SQLite error as a ``DatabaseError`` naming the file, its kind and SQLite's own message.

    ``why``: what makes the database unwritable, added to a read-only error."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    message = str(exc) or type(exc).__name__
    if code == sqlite3.SQLITE_READONLY or (code == sqlite3.SQLITE_CANTOPEN and why):
        return DatabaseError(str(path), "readonly", f"cannot be written ({message}{': ' + why if why else ''})")
    if code == sqlite3.SQLITE_FULL:
        return DatabaseError(str(path), "full", f"cannot be written ({message})")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseError(str(path), "locked", f"{message}: another process held it too long; try again")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR):  # not the content: the file or the disk
        return DatabaseError(str(path), "corrupt", f"cannot be read ({message})")
    return DatabaseError(str(path), "corrupt", f"damaged or not a database ({message}); restore it from a backup")


def _guarded(method):
    """Decorates a ``FaceDatabase`` method: SQLite errors leave it as ``DatabaseError``s."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
                raise
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            why = self.writable() if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN) else None
            raise database_error(exc, self.path, why) from exc

    return wrapper


INSERT_FACE = (
    "INSERT INTO faces(photo_id, person_id, box, landmarks, embedding, identity, added, gen) VALUES (?,?,?,?,?,?,?,?)"
)


def face_row(photo_id: int, person_id: Optional[int], face: FaceRecord, identity: str, added: float, gen: int) -> tuple:
    """``INSERT_FACE``'s values for one face (``person_id`` None: a face of nobody yet)."""
    landmarks = None if face.landmarks is None else json.dumps(np.round(np.asarray(face.landmarks), 2).tolist())
    box = json.dumps([int(v) for v in face.box])
    return (photo_id, person_id, box, landmarks, _blob(face.embedding), identity, added, gen)


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def _vectors(blobs: Iterable[bytes], dim: int) -> np.ndarray:
    data = b"".join(blobs)
    return (
        np.frombuffer(data, dtype="<f4").reshape(-1, dim).astype(np.float32) if data else np.zeros((0, dim), np.float32)
    )


def is_database(path: os.PathLike | str) -> bool:
    """True for a file starting with SQLite's header (how ``identify`` tells a database from a folder)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return p.is_file() and fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _unwritable_reason(path: Path) -> Optional[str]:
    """Why the file system will not let SQLite write ``path`` (and its -wal/-shm files), or None."""
    path = Path(path)
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists() and not os.access(side, os.W_OK):
            return f"{side.name} is read-only"
    folder = path.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return "its folder is read-only (SQLite writes its -wal and -shm files beside it)"
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return None
    free = (st.f_bfree if getattr(os, "geteuid", lambda: -1)() == 0 else st.f_bavail) * st.f_frsize
    if free < MIN_FREE_BYTES:
        return f"the disk is full ({free} bytes free)"
    return None


class FaceDatabase:
    """Enrolled people and their faces, for one embedder identity; 1:N search with FAISS.

    One ``FaceDatabase`` per thread (SQLite connections are not shared); several processes may
    open the same file: writes are serialised by SQLite, and each reader's index catches up with
    what others committed (``sync_index``) before it searches.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool = False) -> None:
        self.path = path
        self.conn = conn
        self.readonly = readonly
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        missing = {"uuid", "model", "identity", "dim"} - set(meta)
        if missing:
            raise FaceDatabaseError(f"{path}: not an openface-py face database (no {', '.join(sorted(missing))})")
        self.uuid = meta["uuid"]
        self.model = meta["model"]
        self.identity = meta["identity"]
        self.dim = int(meta["dim"])
        self._index: Optional[VectorIndex] = None
        self._index_gen = -1
        self._index_token: Optional[str] = None
        self._verified = False
        #: the index file on disk was refused: the rebuilt index replaces it
        self._replace_file = False
        self._names: dict[int, str] = {}
        #: the labels of unnamed clusters among ``_names``
        self._unnamed: set[str] = set()

    # ---------------------------------------------------------------- opening
    @staticmethod
    def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
        if readonly:  # SQLite refuses every write on this connection (SQLITE_READONLY), even for root
            target, uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro", True
        else:
            target, uri = str(path), False
        conn = sqlite3.connect(target, timeout=60.0, isolation_level=None, check_same_thread=False, uri=uri)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def create(
        cls,
        path: os.PathLike | str,
        model: str,
        identity: str,
        threshold: Optional[float],
        dim: int = 128,
        learn_threshold: bool = False,
    ) -> FaceDatabase:
        """A new, empty database for one embedder (``model`` as given to ``--model``, ``identity`` its identity)."""
        p = Path(path)
        if p.exists():
            raise FaceDatabaseError(f"{p}: already exists (open it, or remove it first)")
        if threshold is None and not learn_threshold:
            raise FaceDatabaseError(f"{model} has no calibrated same-person threshold: give one, or learn it")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".openface-py-tmp.{p.name}.{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        try:
            conn = cls._connect(tmp)
            try:
                conn.executescript(_SCHEMA)  # a temporary file: renamed into place only when complete
                meta = {
                    "schema_version": str(SCHEMA_VERSION),
                    "uuid": uuid.uuid4().hex,
                    "model": model,
                    "identity": identity,
                    "dim": str(dim),
                    "generation": "0",
                    "model_threshold": json.dumps(threshold),
                    "threshold_mode": "learn" if learn_threshold else "model",
                    "threshold": json.dumps(threshold),
                    "threshold_source": "model" if threshold is not None else "none yet",
                    "calibration": "null",
                    "decisions_faces": "0",
                    "created": repr(time.time()),
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                conn.execute("INSERT INTO generations VALUES (0, ?)", (uuid.uuid4().hex,))
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)
            raise database_error(exc, p, _unwritable_reason(p)) from exc
        Path(f"{tmp}-wal").unlink(missing_ok=True)
        Path(f"{tmp}-shm").unlink(missing_ok=True)
        os.link(tmp, p)  # fails if someone created ``path`` meanwhile: never overwrite a database
        os.unlink(tmp)
        return cls.open(p)

    @classmethod
    def for_embedder(
        cls,
        path: os.PathLike | str,
        embedder,
        threshold: Optional[float] = None,
        learn_threshold: bool = False,
        model: Optional[str] = None,
    ) -> FaceDatabase:
        """A new, empty database for a loaded ``embedder`` (``db create``): its calibrated threshold
        unless ``threshold`` fixes one or ``learn_threshold`` learns it from the enrolled faces.
        ``model``: how to load the embedder again (default its name; ``db create`` keeps the
        ``--model`` given, which may be a path)."""
        t = embedder.same_person_threshold if threshold is None else float(threshold)
        db = cls.create(path, model or embedder.name, embedder.identity, t, embedder.dim, learn_threshold)
        if threshold is not None:
            try:
                db.set_threshold(threshold)  # recorded as fixed, not as the model's
            except BaseException:
                db.close()
                raise
        return db

    @classmethod
    def open(cls, path: os.PathLike | str, readonly: bool = False) -> FaceDatabase:
        """Open an existing database (migrating an older schema; refusing a newer one or a foreign file).

        A damaged file raises ``DatabaseError`` (kind ``corrupt``): files up to
        ``QUICK_CHECK_MAX_BYTES`` are checked whole (``PRAGMA quick_check``), larger ones where
        they are read. ``readonly``: the connection refuses every write (``writable`` says so)."""
        p = Path(path)
        if not p.is_file():
            raise FaceDatabaseError(f"{p}: no such database (create it with `openface-py db create`)")
        if not is_database(p):
            raise FaceDatabaseError(f"{p}: not an openface-py face database (not an SQLite file)")
        conn = None
        try:
            conn = cls._connect(p, readonly)
            if p.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
                if problems != ["ok"]:
                    lines = [x for r in problems for x in r.splitlines() if x and not x.startswith("***")]
                    found = "; ".join(lines[:2])
                    raise DatabaseError(str(p), "corrupt", f"damaged ({found}); restore it from a backup")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError as exc:  # no meta table: another program's database
                raise FaceDatabaseError(f"{p}: not an openface-py face database ({exc})") from None
            if row is None:
                raise FaceDatabaseError(f"{p}: not an openface-py face database (no schema version)")
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise FaceDatabaseError(
                    f"{p}: schema version {version} is newer than this openface-py understands ({SCHEMA_VERSION});"
                    " upgrade"
                )
            if version < SCHEMA_VERSION:
                _migrate(conn, version, p)
            return cls(p, conn, readonly)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.Error):
                why = "opened read-only" if readonly else _unwritable_reason(p)
                raise database_error(exc, p, why) from exc
            raise

    def writable(self) -> Optional[str]:
        """None when writes can succeed, else why not, in a few words (read-only file or folder,
        read-only connection, full disk, page limit reached). Never raises; touches no lock."""
        if self.readonly:
            return "opened read-only"
        why = _unwritable_reason(self.path)
        if why:
            return why
        try:
            pages, limit, free = (
                self.conn.execute(f"PRAGMA {pragma}").fetchone()[0]
                for pragma in ("page_count", "max_page_count", "freelist_count")
            )
        except sqlite3.Error as exc:
            return f"unreadable ({exc})"
        if pages >= limit and free == 0:
            return f"the database has reached its page limit ({limit} pages)"
        return None

    def require_writable(self) -> None:
        """Raise ``DatabaseError`` (kind ``readonly`` or ``full``) unless ``writable``."""
        why = self.writable()
        if why:
            kind = "full" if ("full" in why or "page limit" in why) else "readonly"
            raise DatabaseError(str(self.path), kind, f"cannot be written: {why}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> FaceDatabase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- reading
    @_guarded
    def meta(self, key: str) -> str:
        return self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    @property
    @_guarded
    def generation(self) -> int:
        return int(self.meta("generation"))

    @property
    @_guarded
    def threshold(self) -> Optional[float]:
        return json.loads(self.meta("threshold"))

    @property
    @_guarded
    def calibration(self) -> Optional[DistanceCalibration]:
        """P(same person | distance), fitted on the enrolled pairs; None until there are pairs of both kinds."""
        return DistanceCalibration.from_json(json.loads(self.meta("calibration")))

    @_guarded
    def info(self) -> dict:
        """What the database holds and how it decides (for ``db list --json`` and ``/health``)."""
        people, clusters, photos, faces, unassigned = self.conn.execute(
            "SELECT (SELECT COUNT(*) FROM people WHERE named), (SELECT COUNT(*) FROM people WHERE NOT named),"
            " (SELECT COUNT(*) FROM photos), (SELECT COUNT(*) FROM faces),"
            " (SELECT COUNT(*) FROM faces WHERE person_id IS NULL)"
        ).fetchone()
        return {
            "path": str(self.path),
            "model": self.model,
            "identity": self.identity,
            "schema_version": SCHEMA_VERSION,
            "people": people,
            "clusters": clusters,
            "photos": photos,
            "faces": faces,
            "unassigned": unassigned,
            "threshold": self.threshold,
            "threshold_source": self.meta("threshold_source"),
            "calibrated": json.loads(self.meta("calibration")) is not None,
            "generation": self.generation,
            "index": None if self._index is None else self._index.kind,
        }

    @_guarded
    def people(self) -> list[PersonInfo]:
        """The named people by name, then the unnamed clusters, largest first. ``photos``: the
        photos enrolled for a person plus the unlabeled photos their faces come from."""
        rows = self.conn.execute(
            "SELECT p.name, p.created, p.named, (SELECT COUNT(DISTINCT photo_id) FROM faces WHERE person_id = p.id)"
            " + (SELECT COUNT(*) FROM photos h WHERE h.person_id = p.id"
            " AND NOT EXISTS (SELECT 1 FROM faces f WHERE f.photo_id = h.id AND f.person_id = p.id)),"
            " (SELECT COUNT(*) FROM faces WHERE person_id = p.id) AS n FROM people p"
            " ORDER BY p.named DESC, CASE WHEN p.named THEN 0 ELSE -n END, p.name"
        ).fetchall()
        return [PersonInfo(name, photos, faces, created, bool(named)) for name, created, named, photos, faces in rows]

    @_guarded
    def known_sources(self) -> dict[str, tuple[int, int, Optional[str]]]:
        """source -> (size, mtime_ns, failure reason or None) of every imported (or failed) photo."""
        out = {
            s: (size, mt, None)
            for s, size, mt in self.conn.execute("SELECT source, size, mtime_ns FROM photos WHERE source IS NOT NULL")
        }
        for s, size, mt, reason in self.conn.execute("SELECT source, size, mtime_ns, reason FROM import_failures"):
            out.setdefault(s, (size, mt, reason))
        return out

    @_guarded
    def embeddings(self) -> tuple[np.ndarray, np.ndarray, list[Optional[str]]]:
        """(face ids, N x dim embeddings, person names) of every face (a cluster's label for its
        name, None for an unassigned face)."""
        rows = self.conn.execute(
            "SELECT f.id, f.embedding, p.name FROM faces f LEFT JOIN people p ON p.id = f.person_id ORDER BY f.id"
        ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, _vectors((r[1] for r in rows), self.dim), [r[2] for r in rows]

    # ---------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _write(self) -> Iterator[_Transaction]:
        """One write transaction, committed when the block ends (rolled back if it raises or
        calls ``cancel``); yields its (new) generation.

        Each generation gets a random token (rolled back with the transaction), so an index saved
        at generation G is caught up only if this database's history at G is the one it saw: a
        database restored from a backup and written again reaches the same generation numbers
        with other contents (and reused face ids), and its index is then rebuilt.

        When SQLite fails (a full disk, a read-only file), that error is what leaves here: the
        rollback runs only if a transaction is still open (SQLite ends some itself), and an error
        of the rollback never hides the cause."""
        with _transaction(self.conn) as tx:
            self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            tx.gen = self.generation
            self.conn.execute("INSERT OR REPLACE INTO generations VALUES (?, ?)", (tx.gen, uuid.uuid4().hex))
            yield tx

    def write(self) -> contextlib.AbstractContextManager[_Transaction]:
        """``_write`` for the modules of this layer that change the database (``recognize.dbcluster``)."""
        return self._write()

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """``_snapshot`` for the modules of this layer that read the database in several queries."""
        return self._snapshot()

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction: the queries in the block see one state of the database."""
        with _transaction(self.conn, "DEFERRED"):
            yield

    def _token(self, gen: int) -> Optional[str]:
        row = self.conn.execute("SELECT token FROM generations WHERE gen = ?", (gen,)).fetchone()
        return None if row is None else row[0]

    def _check_identity(self, identity: str) -> None:
        if identity != self.identity:
            raise FaceDatabaseError(
                f"{self.path} holds {self.identity} embeddings; refusing {identity} (one database per model)"
            )

    def _check_faces(self, faces: Sequence[FaceRecord], identity: str) -> None:
        """Faces this database can hold: its model's identity, finite embeddings of its dimension."""
        self._check_identity(identity)
        for f in faces:
            if np.asarray(f.embedding).shape != (self.dim,) or not np.all(np.isfinite(f.embedding)):
                raise ValueError(f"embedding of shape {np.asarray(f.embedding).shape}: expected ({self.dim},), finite")

    @_guarded
    def enroll(
        self,
        name: str,
        sha256: str,
        faces: Sequence[FaceRecord],
        identity: str,
        source: Optional[str] = None,
        size: Optional[int] = None,
        mtime_ns: Optional[int] = None,
        replace_source: bool = False,
    ) -> EnrollResult:
        """Add one photo's faces to a person (created if new), in one transaction.

        The same photo (by content) enrolled again for the same person adds nothing
        (``duplicate``). ``replace_source`` first removes what an earlier version of the same
        source file enrolled (``db import`` of a changed photo).
        """
        name = valid_name(name)
        self._check_faces(faces, identity)
        now = time.time()
        with self._write() as tx:
            if replace_source and source is not None:
                self.conn.execute("DELETE FROM photos WHERE source = ?", (source,))
                self.conn.execute("DELETE FROM import_failures WHERE source = ?", (source,))
            self.conn.execute("INSERT OR IGNORE INTO people(name, created) VALUES (?, ?)", (name, now))
            person_id = self.conn.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()[0]
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO photos(person_id, sha256, source, size, mtime_ns, added) VALUES (?,?,?,?,?,?)",
                (person_id, sha256, source, size, mtime_ns, now),
            )
            if cur.rowcount == 0:
                return EnrollResult(name, 0, True)
            photo_id = cur.lastrowid
            self.conn.executemany(INSERT_FACE, [face_row(photo_id, person_id, f, identity, now, tx.gen) for f in faces])
            self._refresh_decisions()
        return EnrollResult(name, len(faces), False)

    @_guarded
    def record_failure(
        self, source: str, size: Optional[int], mtime_ns: Optional[int], reason: str, replace: bool = False
    ) -> None:
        """Remember that an imported photo failed (an unchanged file is not tried again); ``replace``
        also removes what an earlier version of the file enrolled (it changed, and now fails)."""
        with self._write() as tx:
            if replace:
                self.conn.execute("DELETE FROM photos WHERE source = ?", (source,))
                self._refresh_decisions()
            self.conn.execute(
                "INSERT OR REPLACE INTO import_failures VALUES (?,?,?,?,?)", (source, size, mtime_ns, reason, tx.gen)
            )

    @_guarded
    def forget_failures(self) -> int:
        """Drop the failure records so that ``db import`` tries those photos again."""
        with self._write():
            return self.conn.execute("DELETE FROM import_failures").rowcount

    @_guarded
    def find_person(self, name: str) -> Optional[str]:
        """The enrolled name that ``name`` refers to, or None: the name as stored (NFC, stripped:
        a name enrolled before the present rules), else its ``valid_name`` form. Raises
        ``UsageError`` for a name ``valid_name`` refuses that matches no one."""
        legacy = unicodedata.normalize("NFC", str(name)).strip()
        if self.conn.execute("SELECT 1 FROM people WHERE name = ?", (legacy,)).fetchone():
            return legacy
        norm = valid_name(name)
        return norm if self.conn.execute("SELECT 1 FROM people WHERE name = ?", (norm,)).fetchone() else None

    @_guarded
    def remove_person(self, name: str) -> int:
        """Remove a person with their photos and faces; returns the faces removed (0: no such
        person). ``name`` is found as ``find_person`` finds it (the normalisation of enrolment)."""
        stored = self.find_person(name)
        if stored is None:
            return 0
        with self._write() as tx:
            n = self.conn.execute(
                "SELECT COUNT(*) FROM faces WHERE person_id = (SELECT id FROM people WHERE name = ?)", (stored,)
            ).fetchone()[0]
            if not self.conn.execute("DELETE FROM people WHERE name = ?", (stored,)).rowcount:
                tx.cancel()  # removed by another process meanwhile
                return 0
            self._refresh_decisions()
        log.info("removed %s (%d faces) at generation %d", quote_name(stored), n, tx.gen)
        return n

    @_guarded
    def set_threshold(self, value: Optional[float], learn: bool = False) -> None:
        """Use a fixed threshold (``value``), the model's (``value`` None), or learn it from the enrolled faces."""
        with self._write():
            if learn:
                mode = "learn"
            elif value is None:
                mode = "model"
            else:
                mode = "fixed"
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('fixed_threshold', ?)", (json.dumps(float(value)),)
                )
            self.conn.execute("UPDATE meta SET value = ? WHERE key = 'threshold_mode'", (mode,))
            self._refresh_decisions(force=True)

    def _decision_sample(self) -> tuple[np.ndarray, list[str]]:
        """Faces to learn the threshold and calibration from, bounded and the same for the same
        contents (a fixed hash order, not random()): up to ``DECISION_PEOPLE`` people with two or
        more faces (``DECISION_PER_PERSON`` faces each) plus as many faces of anyone, each face once."""
        shuffle = "(({col} * 2654435761) % 4294967296)"  # Knuth's multiplicative hash: a fixed shuffle
        # only faces the user named: enrolled for a person, or put in a named person by the user
        # (faces a clustering or an import assigned were chosen by the threshold itself)
        named = (
            "JOIN people p ON p.id = f.person_id AND p.named WHERE (EXISTS (SELECT 1 FROM photos h"
            " WHERE h.id = f.photo_id AND h.person_id IS NOT NULL) OR EXISTS (SELECT 1 FROM face_pins g"
            " WHERE g.face_id = f.id AND g.person_id = f.person_id))"
        )
        multi = [
            r[0]
            for r in self.conn.execute(
                f"SELECT f.person_id FROM faces f {named} GROUP BY f.person_id HAVING COUNT(*) >= 2"
                f" ORDER BY {shuffle.format(col='f.person_id')} LIMIT ?",
                (DECISION_PEOPLE,),
            )
        ]
        rows: dict[int, tuple[bytes, str]] = {}
        for pid in multi:
            for fid, emb, name in self.conn.execute(
                f"SELECT f.id, f.embedding, p.name FROM faces f {named} AND f.person_id = ? ORDER BY f.id LIMIT ?",
                (pid, DECISION_PER_PERSON),
            ):
                rows[fid] = (emb, name)
        for fid, emb, name in self.conn.execute(
            f"SELECT f.id, f.embedding, p.name FROM faces f {named} ORDER BY {shuffle.format(col='f.id')} LIMIT ?",
            (max(len(rows), 200),),
        ):
            rows.setdefault(fid, (emb, name))
        picked = [rows[k] for k in sorted(rows)]
        return _vectors((r[0] for r in picked), self.dim), [r[1] for r in picked]

    def _refresh_decisions(self, force: bool = False) -> None:
        """Recompute the threshold (when learned) and the distance calibration, inside the caller's
        transaction: on every change of a small database, and after each 5% growth of a large one
        (the figures come from a bounded sample, so they barely move with one more face)."""
        count = self.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        last = int(self.meta("decisions_faces"))
        if not force and count > REFRESH_ALWAYS_BELOW and abs(count - last) < 0.05 * max(last, 1):
            return
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'decisions_faces'", (str(count),))
        X, names = self._decision_sample()
        learned = learn_distance_threshold(X, names)
        mode = self.meta("threshold_mode")
        model_threshold = json.loads(self.meta("model_threshold"))
        if mode == "learn" and learned is not None:
            threshold, source = learned[0], f"learned from {learned[1]} same-person pairs of the enrolled faces"
        elif mode == "fixed":
            threshold, source = json.loads(self.meta("fixed_threshold")), "fixed"
        elif model_threshold is not None:
            threshold = model_threshold
            source = "model" if mode == "model" else "model (too few enrolled pairs to learn one yet)"
        else:
            threshold, source = None, "none yet: enroll at least two photos of several people"
        calibration = calibrate_distances(X, names)
        for key, value in (
            ("threshold", json.dumps(threshold)),
            ("threshold_source", source),
            ("calibration", json.dumps(None if calibration is None else calibration.to_json())),
        ):
            self.conn.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))

    # ---------------------------------------------------------------- the index
    @property
    def index_path(self) -> Path:
        return self.path.with_name(self.path.name + ".faiss")

    def _load_index(self) -> Optional[tuple[VectorIndex, int, str]]:
        """The saved index, its generation and token; None (logged) when missing or not to be trusted.

        Nothing of a file whose SHA-256 does not match reaches FAISS: any changed byte is found."""
        p = self.index_path
        if not p.is_file():
            return None
        try:
            with open(p, "rb") as fh:
                magic = fh.read(len(INDEX_MAGIC))
                if magic in OLD_INDEX_MAGICS:
                    log.info("index %s is of an older format: rebuilding it", p)
                    self._replace_file = True
                    return None
                if magic != INDEX_MAGIC:
                    raise ValueError("not an openface-py index file")
                digest = fh.read(32)
                body = fh.read()
            if hashlib.sha256(body).digest() != digest:
                raise ValueError("damaged: its SHA-256 does not match its content")
            (n,) = struct.unpack("<Q", body[:8])
            header = json.loads(body[8 : 8 + n])
            data = body[8 + n :]
            if header["uuid"] != self.uuid or header["identity"] != self.identity:
                raise ValueError("the index belongs to another database")
            if header.get("token") != self._token(int(header["generation"])):
                raise ValueError("the index saw another history of this database (restored from a backup?)")
            deleted = np.array(header.get("deleted", []), dtype=np.int64)
            index = VectorIndex.from_bytes(data, header["kind"], self.dim, header.get("trained_on", 0), deleted)
            if index.ntotal != header.get("ntotal"):
                raise ValueError(f"it holds {index.ntotal} faces, its header says {header.get('ntotal')}")
            return index, int(header["generation"]), header["token"]
        except sqlite3.Error:
            raise
        except Exception as exc:  # a cache: rebuild it
            log.warning("index %s not used (%s: %s): rebuilding it", p, type(exc).__name__, exc)
            self._replace_file = True
            return None

    def save_index(self) -> bool:
        """Write the index (atomically) with the generation it reflects and its SHA-256; False
        (logged) when the file cannot be written: the index is a cache, rebuilt when needed."""
        if self._index is None:
            return False
        header = json.dumps(
            {
                "uuid": self.uuid,
                "identity": self.identity,
                "generation": self._index_gen,
                "token": self._index_token,
                "kind": self._index.kind,
                "trained_on": self._index.trained_on,
                "ntotal": self._index.ntotal,
                "deleted": self._index.deleted.tolist(),
            }
        ).encode()
        body = struct.pack("<Q", len(header)) + header + self._index.to_bytes()
        try:
            with atomic_output(self.index_path) as fh:
                fh.write(INDEX_MAGIC + hashlib.sha256(body).digest() + body)
        except OSError as exc:
            log.warning("index %s not saved (%s): it is rebuilt when next needed", self.index_path, exc)
            return False
        return True

    @_guarded
    def rebuild_index(self, kind: str = "auto") -> VectorIndex:
        with self._snapshot():  # one snapshot: the rows and the generation they are at
            gen = self.generation
            token = self._token(gen)
            ids, X, _ = self.embeddings()
        self._index = VectorIndex.build(ids, X, self.dim, kind=kind)
        self._index_gen, self._index_token = gen, token
        self._verified = True  # built from the rows of this very generation
        log.info("index rebuilt: %s, %d faces, generation %d", self._index.kind, len(ids), gen)
        return self._index

    @_guarded
    def sync_index(self) -> VectorIndex:
        """The index, brought up to date with the database (loaded, caught up or rebuilt as needed).

        A loaded index is used only if its checksum matches, and once caught up its ids must be
        exactly the face rows' ids; otherwise it is rebuilt from the rows (with a warning), and
        the rebuilt one replaces the refused file (when the file can be written)."""
        index = self._sync_index()
        if self._replace_file and self._verified:
            self._replace_file = not self.save_index()
        return index

    def _sync_index(self) -> VectorIndex:
        loaded_now = False
        if self._index is None:
            loaded = self._load_index()
            if loaded is not None:
                self._index, self._index_gen, self._index_token = loaded
                self._verified = False
                loaded_now = True
        if self._verified and self.generation == self._index_gen:
            return self._index  # nothing committed since the index was last checked: one query
        if (
            self._index is None
            or self._index_gen > self.generation
            or self._token(self._index_gen) != self._index_token
        ):
            return self.rebuild_index()
        with self._snapshot():
            gen = self.generation
            if gen != self._index_gen:
                removed = np.array(
                    [
                        r[0]
                        for r in self.conn.execute(
                            "SELECT face_id FROM removed_faces WHERE gen > ?", (self._index_gen,)
                        )
                    ],
                    dtype=np.int64,
                )
                added = self.conn.execute(
                    "SELECT id, embedding FROM faces WHERE gen > ? ORDER BY id", (self._index_gen,)
                ).fetchall()
                self._index.remove(removed)
                self._index.add(np.array([r[0] for r in added], np.int64), _vectors((r[1] for r in added), self.dim))
                self._index_gen, self._index_token = gen, self._token(gen)
            count = self.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            rows = (
                np.array([r[0] for r in self.conn.execute("SELECT id FROM faces ORDER BY id")], np.int64)
                if loaded_now and self._index.ntotal == count
                else None
            )
        if self._index.ntotal != count:
            log.warning("index holds %d faces, database %d: rebuilding", self._index.ntotal, count)
            self._replace_file = loaded_now
            return self.rebuild_index()
        if rows is not None and not np.array_equal(self._index.ids(), rows):
            log.warning("index %s holds other face ids than the database: rebuilding", self.index_path)
            self._replace_file = True
            return self.rebuild_index()
        if self._index.needs_rebuild():
            return self.rebuild_index()
        self._verified = True
        return self._index

    # ---------------------------------------------------------------- searching
    def _person_names(self, face_ids: np.ndarray) -> dict[int, str]:
        missing = [int(i) for i in set(face_ids.ravel().tolist()) if i >= 0 and int(i) not in self._names]
        for chunk in range(0, len(missing), 500):
            part = missing[chunk : chunk + 500]
            rows = self.conn.execute(
                f"SELECT f.id, p.name, p.named FROM faces f JOIN people p ON p.id = f.person_id"
                f" WHERE f.id IN ({','.join('?' * len(part))})",
                part,
            ).fetchall()
            self._names.update((fid, name) for fid, name, _ in rows)
            self._unnamed.update(name for _, name, named in rows if not named)
        return self._names

    @_guarded
    def search(self, probes: np.ndarray, top_k: int = 1) -> list[list[Match]]:
        """For each probe: the ``top_k`` nearest *people* (each at the distance of their nearest face)."""
        index = self.sync_index()
        self._names.clear()  # names may have changed (a person removed and a name reused, a cluster named)
        self._unnamed.clear()
        probes = np.atleast_2d(np.asarray(probes, dtype=np.float32))
        out: list[list[Match]] = [[] for _ in probes]
        todo = np.arange(len(probes))
        k_faces = max(8 * top_k, 32)
        while len(todo):  # more faces until each probe has top_k people (a person may own many near faces)
            k = min(index.ntotal, k_faces)
            found = index.search(probes[todo], k)
            names = self._person_names(found.ids)
            again = []
            for row, ids, dists in zip(todo, found.ids, found.distances):
                best: dict[str, Match] = {}
                for i, d in zip(ids, dists):
                    name = names.get(int(i))
                    if i >= 0 and name is not None and name not in best:
                        best[name] = Match(name, float(d), int(i))
                out[row] = sorted(best.values(), key=lambda m: m.distance)[:top_k]
                if len(out[row]) < top_k and k < index.ntotal:
                    again.append(row)
            todo = np.array(again, dtype=np.int64)
            k_faces *= 4
        return out

    @_guarded
    def identify(self, probes: np.ndarray, top_k: int = 1, threshold: Optional[float] = None) -> list[Answer]:
        """Name each probe face (or ``unknown``) with the database's threshold unless one is given."""
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise FaceDatabaseError(f"{self.path} has no same-person threshold yet: give one (--threshold)")
        cal = self.calibration
        answers = []
        for matches in self.search(probes, top_k=max(1, top_k)):
            if not matches:
                answers.append(Answer(UNKNOWN, None, None, None, []))
                continue
            m = matches[0]
            same = is_same(m.distance, threshold)
            conf = None
            if cal is not None:
                p_same = cal.p_same(m.distance)
                conf = float(p_same if same else 1.0 - p_same)
            cluster = m.name if same and m.name in self._unnamed else None
            name = m.name if same and cluster is None else UNKNOWN
            answers.append(Answer(name, m.name, m.distance, conf, matches[:top_k], cluster))
        return answers


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[_Transaction]:
    """One transaction: committed when the block ends, rolled back when it raises (``_rollback``)
    or calls ``cancel``. ``IMMEDIATE`` (writes) takes the write lock at once, so two writers queue
    instead of one failing at its first write; ``DEFERRED`` (reads) sees one state of the file."""
    try:
        conn.execute(f"BEGIN {mode}")
        tx = _Transaction()
        yield tx
        conn.execute("ROLLBACK" if tx.cancelled else "COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after an error, if SQLite has not ended the transaction itself (a full disk
    can); a failing rollback is logged, never raised: the caller's error is the one that matters."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.debug("rollback failed after an error: %s", exc)


def _migrate(conn: sqlite3.Connection, version: int, path: Path) -> None:
    """Bring a database from ``version`` to ``SCHEMA_VERSION``, one step per transaction.

    Foreign keys are off meanwhile (a step may rebuild a table: dropping the old one must not
    cascade) and checked before each step commits."""
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        while version < SCHEMA_VERSION:
            step = MIGRATIONS.get(version)
            if step is None:
                raise FaceDatabaseError(f"{path}: no migration from schema version {version}")
            with _transaction(conn):
                # another process may have migrated since this one read the version: read it again
                now = int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
                if now != version:
                    version = now
                    continue
                before = conn.execute("PRAGMA foreign_key_check").fetchall()
                for statement in step:
                    conn.execute(statement)
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if len(broken) > len(before):
                    raise FaceDatabaseError(f"{path}: migration to version {version + 1} broke references {broken[:3]}")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
            log.info("%s: migrated schema %d -> %d", path, version, version + 1)
            version += 1
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _pair_distances(X: np.ndarray, names: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances of same-person pairs (every pair within each person, at most
    ``MAX_PAIRS`` sampled) and of as many sampled different-person pairs."""
    rng = np.random.default_rng(seed)
    n = len(names)
    if n < 2:
        return np.zeros(0), np.zeros(0)
    y = np.unique(np.asarray(names), return_inverse=True)[1]
    order = np.argsort(y, kind="stable")
    bounds = np.flatnonzero(np.diff(y[order])) + 1
    si, sj = [], []
    for group in np.split(order, bounds):
        if len(group) >= 2:
            a, b = np.triu_indices(len(group), 1)
            si.append(group[a])
            sj.append(group[b])
    si = np.concatenate(si) if si else np.zeros(0, np.int64)
    sj = np.concatenate(sj) if sj else np.zeros(0, np.int64)
    if len(si) > MAX_PAIRS:
        pick = rng.choice(len(si), MAX_PAIRS, replace=False)
        si, sj = si[pick], sj[pick]
    di, dj = rng.integers(0, n, 4 * MAX_PAIRS), rng.integers(0, n, 4 * MAX_PAIRS)
    keep = y[di] != y[dj]
    di, dj = di[keep][:MAX_PAIRS], dj[keep][:MAX_PAIRS]

    def dist(i, j):
        return ((X[i].astype(np.float64) - X[j].astype(np.float64)) ** 2).sum(1)

    return dist(si, sj), dist(di, dj)


def learn_distance_threshold(X: np.ndarray, names: Sequence[str]) -> Optional[tuple[float, int]]:
    """(threshold, same pairs used): the squared-L2 distance best separating same-person from
    different-person pairs of the enrolled faces (balanced: each kind weighs half); None below
    ``MIN_SAME_PAIRS`` same-person pairs."""
    same, diff = _pair_distances(X, names)
    if len(same) < MIN_SAME_PAIRS or len(diff) == 0:
        return None
    rng = np.random.default_rng(1)
    m = min(len(same), len(diff))
    t, _ = best_split_threshold(-rng.choice(same, m, replace=False), -rng.choice(diff, m, replace=False))
    return float(-t), int(len(same))


def calibrate_distances(X: np.ndarray, names: Sequence[str]) -> Optional[DistanceCalibration]:
    """Platt scaling of P(same person | squared distance) on the enrolled pairs (balanced); None
    without at least one pair of each kind."""
    same, diff = _pair_distances(X, names)
    if len(same) == 0 or len(diff) == 0:
        return None
    from openface_py.recognize.openset import ScoreCalibrator

    m = min(len(same), len(diff))
    rng = np.random.default_rng(2)
    s = np.concatenate([-rng.choice(same, m, replace=False), -rng.choice(diff, m, replace=False)])
    right = np.concatenate([np.ones(m, bool), np.zeros(m, bool)])
    cal = ScoreCalibrator.fit(s, right)
    return DistanceCalibration(cal.a, cal.b)


def photo_faces(pipeline, rgb: np.ndarray, multi: bool = False) -> list[FaceRecord]:
    """The faces to enroll from one photo of one person: the largest (``multi``: every face)."""
    return [
        FaceRecord(f.box.as_list(), np.asarray(f.embedding, np.float32), f.landmarks)
        for f in pipeline.process(rgb, multi=multi)
    ]


def enroll_photo(db: FaceDatabase, pipeline, name: str, data: bytes, source: Optional[str] = None) -> EnrollResult:
    """Detect, align and embed the largest face of a photo (its bytes) and enroll it as ``name``.

    Raises ``ImageLoadError`` for a photo that cannot be read and ``NoFaceError`` for one
    without a face: nothing is written then."""
    import hashlib

    from openface_py.io import load_image

    name = valid_name(name)
    rgb = load_image(data)
    faces = photo_faces(pipeline, rgb)
    if not faces:
        raise NoFaceError("no face found")
    return db.enroll(name, hashlib.sha256(data).hexdigest(), faces, pipeline.embedder.identity, source=source)


class NoFaceError(OpenFacePyError):
    """A photo to enroll shows no face."""
