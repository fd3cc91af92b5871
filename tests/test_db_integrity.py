"""Tests of openface_py.recognize.facedb (damage, read-only and full databases).

The face database never trusts damage and answers clearly (issue 23, items 4, 6 and 7).

A database of real faces (photos 1-4 of each sample person, imported with the real model) is
damaged in the ways the issue found: bytes of its index flipped at random (every search must
still equal a brute-force search of the face rows, read from SQLite with plain ``sqlite3``), the
database file itself damaged, made read-only, or filled up; and names that look alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SAMPLE, cli

from openface_py.errors import DatabaseError, UsageError
from openface_py.recognize import facedb
from openface_py.recognize.facedb import FaceDatabase, FaceRecord, quote_name, valid_name

GALLERY_PHOTOS = ("_0001", "_0002", "_0003", "_0004")
PROBE = SAMPLE / "Colin_Powell" / "Colin_Powell_0009.jpg"


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A database of photos 1-4 of each sample person, imported by the command line (its index saved)."""
    gallery = tmp_path_factory.mktemp("gallery")
    for photo in sorted(SAMPLE.glob("*/*.jpg")):
        if photo.stem.endswith(GALLERY_PHOTOS):
            (gallery / photo.parent.name).mkdir(exist_ok=True)
            shutil.copy2(photo, gallery / photo.parent.name / photo.name)
    db = tmp_path_factory.mktemp("db") / "people.db"
    assert cli("db", "create", str(db))[0] == 0
    rc, out, _ = cli("db", "import", str(db), str(gallery), "--workers", "2", "--json")
    assert rc == 0 and json.loads(out)["faces"] == 40
    assert db.with_name("people.db.faiss").is_file()
    return db


@pytest.fixture()
def copy(built, tmp_path) -> Path:
    """A copy of the built database (and its index) to damage."""
    out = tmp_path / "people.db"
    shutil.copy2(built, out)
    shutil.copy2(built.with_name("people.db.faiss"), tmp_path / "people.db.faiss")
    return out


def rows(path: Path) -> tuple[np.ndarray, list[str]]:
    """The face rows (embedding, person name), read with plain sqlite3: what the index must agree with."""
    con = sqlite3.connect(path)
    try:
        got = con.execute(
            "SELECT f.embedding, p.name FROM faces f JOIN people p ON p.id = f.person_id ORDER BY f.id"
        ).fetchall()
    finally:
        con.close()
    return np.stack([np.frombuffer(e, "<f4") for e, _ in got]).astype(np.float64), [n for _, n in got]


def brute_force(X: np.ndarray, names: list[str], probes: np.ndarray) -> tuple[list[str], np.ndarray]:
    d = ((probes.astype(np.float64)[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    return [names[i] for i in d.argmin(1)], d.min(1)


def probes_for(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every enrolled face (the issue's case: a face of the database, found at distance 0) and as
    many near it, renormalised."""
    rng = np.random.default_rng(seed)
    near = X + 0.05 * rng.normal(size=X.shape)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    return np.vstack([X, near]).astype(np.float32)


def assert_brute_force(path: Path, probes: np.ndarray, expected: tuple[list[str], np.ndarray]) -> None:
    with FaceDatabase.open(path) as db:
        got = db.search(probes)
    assert [m[0].name for m in got] == expected[0]
    np.testing.assert_allclose([m[0].distance for m in got], expected[1], atol=1e-4)


# ---------------------------------------------------------------------------- item 4: the index
def test_any_damaged_byte_of_the_index_is_found_and_search_equals_brute_force(copy, caplog):
    X, names = rows(copy)
    probes = probes_for(X)
    expected = brute_force(X, names, probes)
    index = copy.with_name("people.db.faiss")
    saved = index.read_bytes()
    rng = np.random.default_rng(23)
    positions = rng.choice(len(saved), 150, replace=False)
    caplog.set_level(logging.INFO, logger="openface_py.recognize.facedb")
    for pos in positions:
        damaged = bytearray(saved)
        damaged[pos] ^= int(rng.integers(1, 256))
        index.write_bytes(bytes(damaged))
        caplog.clear()
        assert_brute_force(copy, probes, expected)
        assert "rebuilding" in caplog.text, f"a changed byte at {pos} of {len(saved)} went unnoticed"
        assert hashlib.sha256(index.read_bytes()).digest() != hashlib.sha256(damaged).digest(), "not replaced"
        if pos == positions[0]:  # which is used as it is by the next search
            caplog.clear()
            assert_brute_force(copy, probes, expected)
            assert "rebuild" not in caplog.text
    index.write_bytes(saved)  # and the undamaged file is used as it is, without a rebuild
    caplog.clear()
    assert_brute_force(copy, probes, expected)
    assert "rebuild" not in caplog.text


def test_an_index_of_the_first_format_is_rebuilt_once_and_replaced(copy):
    """The first format (magic OFPYFDX1, no checksum) cannot be trusted: rebuilt, and saved anew."""
    index = copy.with_name("people.db.faiss")
    new = index.read_bytes()
    assert new.startswith(facedb.INDEX_MAGIC)
    index.write_bytes(b"OFPYFDX1" + new[len(facedb.INDEX_MAGIC) + 32 :])  # the same content, as version 1 wrote it
    X, names = rows(copy)
    probes = probes_for(X, seed=2)
    assert_brute_force(copy, probes, brute_force(X, names, probes))
    assert index.read_bytes().startswith(facedb.INDEX_MAGIC)


def test_an_index_whose_ids_are_not_the_rows_is_rebuilt(copy, caplog):
    """An intact index file of the right generation, but the rows were renumbered behind its back
    (no generation change, same count): its ids are checked against the rows after loading."""
    con = sqlite3.connect(copy)
    con.execute("UPDATE faces SET id = id + 1000")
    con.commit()
    con.close()
    X, names = rows(copy)
    probes = probes_for(X, seed=1)
    assert_brute_force(copy, probes, brute_force(X, names, probes))
    assert "other face ids" in caplog.text
    caplog.clear()  # the rebuilt index replaced the file: used without a rebuild next time
    assert_brute_force(copy, probes, brute_force(X, names, probes))
    assert "rebuild" not in caplog.text


# ---------------------------------------------------------------------------- item 6: the database
def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(6)
    if how == "header then garbage":
        data[100:] = rng.integers(0, 256, len(data) - 100, dtype=np.uint8).tobytes()
    elif how == "truncated":
        del data[len(data) // 2 :]
    elif how == "corrupted page":  # the faces table's root page, overwritten with noise
        con = sqlite3.connect(path)
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'faces'").fetchone()[0]
        size = con.execute("PRAGMA page_size").fetchone()[0]
        con.close()
        data[(root - 1) * size : root * size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


DAMAGES = ("header then garbage", "truncated", "corrupted page")


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_database_is_one_line_and_exit_1_from_every_command(copy, how, caplog):
    damage(copy, how)
    for args in (
        ("db", "list", str(copy)),
        ("db", "search", str(copy), str(PROBE)),
        ("db", "enroll", str(copy), "Someone", str(PROBE)),
        ("identify", str(copy), str(PROBE)),
    ):
        caplog.clear()
        assert cli(*args)[0] == 1, args
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].startswith(f"{copy}: damaged"), (args, errors)
        assert "\n" not in errors[0] and "restore it from a backup" in errors[0]
    with pytest.raises(DatabaseError) as err:
        FaceDatabase.open(copy)
    assert err.value.kind == "corrupt" and err.value.path == str(copy)


@pytest.mark.parametrize("how", DAMAGES)
def test_damage_beyond_the_opening_check_is_still_a_database_error(copy, how, monkeypatch):
    """A database too large for ``quick_check`` on opening: the damage is reported where it is read."""
    monkeypatch.setattr(facedb, "QUICK_CHECK_MAX_BYTES", 0)
    damage(copy, how)
    with pytest.raises(DatabaseError) as err:
        with FaceDatabase.open(copy) as db:
            db.people()
            db.search(np.ones((1, 128), np.float32) / np.sqrt(128))
    assert err.value.kind == "corrupt" and str(err.value).startswith(f"{copy}: damaged")


def test_the_command_line_shows_no_traceback(copy):
    damage(copy, "header then garbage")
    run = subprocess.run(
        [sys.executable, "-m", "openface_py", "db", "list", str(copy)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR openface_py: {copy}: damaged or not a database ("), lines


def face(seed: int) -> FaceRecord:
    v = np.random.default_rng(seed).normal(size=128).astype(np.float32)
    return FaceRecord([0, 0, 9, 9], v / np.linalg.norm(v))


@contextlib.contextmanager
def immutable(path: Path):
    """``chattr +i``: no one may write the file, root included (tests run as root, who ignores
    permission bits; SQLite then opens it read-only itself, as it does for a user's chmod 444)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needs CAP_LINUX_IMMUTABLE and a file system with it)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_database_refuses_writes_with_its_reason_and_still_answers(copy, caplog):
    with immutable(copy):
        with FaceDatabase.open(copy) as db:  # (SQLite opens it read-only, as it can only read it)
            with pytest.raises(DatabaseError) as err:
                db.enroll("Someone", "sha-x", [face(1)], db.identity)
            assert err.value.kind == "readonly" and "the file is read-only" in str(err.value)
            assert db.writable() == "the file is read-only"
        for args in (
            ("db", "enroll", str(copy), "Someone", str(PROBE)),
            ("db", "remove", str(copy), "Colin_Powell"),
            ("db", "threshold", str(copy), "--learn"),
        ):
            caplog.clear()
            assert cli(*args)[0] == 1, args
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert errors == [f"{copy}: cannot be written: the file is read-only"], args
        rc, out, _ = cli("db", "list", str(copy), "--json")
        assert rc == 0 and len(json.loads(out)["people"]) == 10
    with FaceDatabase.open(copy, readonly=True) as db:  # SQLite's mode=ro: SQLITE_READONLY on any write
        assert db.writable() == "opened read-only"
        with pytest.raises(DatabaseError) as err:
            db.enroll("Someone", "sha-x", [face(1)], db.identity)
        assert err.value.kind == "readonly" and "attempt to write a readonly database" in str(err.value)
        assert len(db.search(face(1).embedding[None])[0]) == 1  # reading still works
    with FaceDatabase.open(copy) as db:
        assert db.writable() is None


def fill_until_full(db: FaceDatabase) -> tuple[DatabaseError, int]:
    """Enroll one face per photo until the database refuses; (the error, faces enrolled before it)."""
    enrolled = 0
    for k in range(5000):
        try:
            db.enroll(f"Filler {k % 50}", f"sha-fill-{k}", [face(100 + k)], db.identity)
        except DatabaseError as exc:
            return exc, enrolled
        enrolled += 1
    raise AssertionError("the database never filled up")


def assert_full_and_intact(db: FaceDatabase, err: DatabaseError, before: int, enrolled: int) -> None:
    assert err.kind == "full", err
    assert "database or disk is full" in str(err) and "rollback" not in str(err)
    assert db.info()["faces"] == before + enrolled  # the failed photo left nothing behind
    X, names = rows(db.path)
    probes = probes_for(X[:5])
    assert [m[0].name for m in db.search(probes)] == brute_force(X, names, probes)[0]


def test_a_full_database_reports_sqlites_cause_not_the_rollback(copy):
    """SQLite's page limit (``PRAGMA max_page_count``): the same SQLITE_FULL as a full disk."""
    with FaceDatabase.open(copy) as db:
        before = db.info()["faces"]
        pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
        db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        err, enrolled = fill_until_full(db)
        assert_full_and_intact(db, err, before, enrolled)
        assert db.writable() == f"the database has reached its page limit ({pages + 2} pages)"


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A real small file system (tmpfs); skipped where mounting is not allowed."""
    where.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_reports_sqlites_cause_not_the_rollback(copy, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        shutil.copy2(copy, disk / "people.db")
        with FaceDatabase.open(disk / "people.db") as db:
            before = db.info()["faces"]
            err, enrolled = fill_until_full(db)
            assert enrolled > 0
            assert_full_and_intact(db, err, before, enrolled)
            assert db.writable().startswith("the disk is full")
            db.close()


# ---------------------------------------------------------------------------- item 7: names
def test_one_normalisation_for_names():
    nfd = unicodedata.normalize("NFD", "José")
    assert nfd != "José" and valid_name(nfd) == "José"
    for same in ("Ada", "Ada ", " Ada\n", "Ａda", "\tＡｄａ "):  # whitespace stripped, full width folded
        assert valid_name(same) == "Ada"
    for fine in ("Zoë Ångström-O'Neil", "George_W_Bush", "Анна Каренина", "山田 たろう", "김민준", "Ναταλία", "Nguyễn"):
        assert valid_name(fine) == unicodedata.normalize("NFC", fine)
    refusals = {
        "\u0410da": "mixes the CYRILLIC, LATIN scripts",  # Cyrillic А, then Latin da
        "Ad\u03b1": "mixes the GREEK, LATIN scripts",
        "Ada\nLovelace": "U+000A",
        "Ada\u200bLovelace": "U+200B (ZERO WIDTH SPACE)",
        "Ada\u202eecalevoL": "U+202E",
        "Ada\x00": "U+0000",
        "a/b": "U+002F",
        "../etc": "must start with a letter or digit",
        "": "empty",
        "  ": "empty",
        "UNKNOWN": "strangers",
        "x" * 129: "129 characters",
    }
    for bad, why in refusals.items():
        with pytest.raises(UsageError, match=re.escape(why)):
            valid_name(bad)


def test_a_long_bad_name_is_quoted_by_a_short_prefix(copy, caplog):
    huge = "A" * 100_000
    with pytest.raises(UsageError) as err:
        valid_name(huge)
    assert len(str(err.value)) < 200 and str(err.value).startswith(f"invalid person name {quote_name(huge)}")
    assert quote_name(huge) == repr("A" * 40) + "…"
    for args in (("db", "remove", str(copy), huge), ("db", "enroll", str(copy), huge, str(PROBE))):
        caplog.clear()
        assert cli(*args)[0] == 2
        assert caplog.text and max(len(r.getMessage()) for r in caplog.records) < 200


def test_enrolment_lookup_and_removal_agree_on_names(copy, caplog):
    with FaceDatabase.open(copy) as db:
        ident = db.identity
        db.enroll("José", "sha-1", [face(1)], ident)
        assert db.remove_person(unicodedata.normalize("NFD", "José")) == 1
        db.enroll("Ada", "sha-2", [face(2)], ident)
        db.enroll("Ａda", "sha-3", [face(3)], ident)  # the same person, not one who looks the same
        db.enroll("Ada\n", "sha-4", [face(4)], ident)
        assert [p.faces for p in db.people() if p.name.casefold().endswith("da")] == [3]
        assert db.find_person("Ａda ") == "Ada"
        assert db.remove_person("Ada\n") == 3 and db.find_person("Ada") is None
        with pytest.raises(UsageError, match="mixes"):
            db.enroll("\u0410da", "sha-5", [face(5)], ident)
        # a name stored before these rules (here, written directly) can still be found and removed
        db.conn.execute("INSERT INTO people(name, created) VALUES ('\u0410da', 0)")
        assert db.find_person("\u0410da") == "\u0410da"
        assert db.remove_person("\u0410da") == 0
        with pytest.raises(UsageError, match="mixes"):  # gone: the name is judged by the present rules again
            db.find_person("\u0410da ")
    assert cli("db", "enroll", str(copy), " Ａda\t", str(PROBE))[0] == 0
    rc, out, _ = cli("db", "remove", str(copy), "Ada\n")
    assert (rc, out) == (0, "removed Ada (1 faces)\n")
    caplog.clear()
    assert cli("db", "remove", str(copy), "Ada")[0] == 1
    assert "no person named 'Ada'" in caplog.text


def test_a_database_held_by_another_writer_is_locked_not_a_traceback(copy):
    holder = sqlite3.connect(copy, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than our busy timeout
    try:
        with FaceDatabase.open(copy) as db:
            db.conn.execute("PRAGMA busy_timeout = 50")
            with pytest.raises(DatabaseError) as err:
                db.enroll("Someone", "sha-x", [face(1)], db.identity)
            assert err.value.kind == "locked" and "database is locked" in str(err.value)
            assert len(db.search(face(1).embedding[None])[0]) == 1  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with FaceDatabase.open(copy) as db:
        assert db.enroll("Someone", "sha-x", [face(1)], db.identity).added_faces == 1
