"""Tests of openface_py.recognize.dbcluster, recognize.facedb, recognize.cluster, jobs.dbimport, cli.db.

Clustering inside the face database on real photos: `db import --unlabeled` of 5 photos each of
4 sample people (data/lfw-sample) and a photo of two people, with MobileFaceNet; `db cluster`
checked against who is in each photo (the file name), the user's decisions (name, move, split,
reject, forget, different, merge) checked to survive reruns, and the schema migration of a
version-2 database written with version 2's own SQL.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, SAMPLE, cli, copy_db

from openface_py.recognize import facedb
from openface_py.recognize.cluster import ClusterSettings, cluster_faces
from openface_py.recognize.facedb import FaceDatabase, FaceRecord

MODEL = "mobilefacenet-reid-0095"
PEOPLE = ("Ariel_Sharon", "Colin_Powell", "Hugo_Chavez", "Tony_Blair")
PER_PERSON = 5
TWO = "longoria-cooper.jpg"


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A folder of photos of anyone: 5 photos of each of ``PEOPLE`` and one of two people."""
    out = tmp_path_factory.mktemp("library")
    for person in PEOPLE:
        for i in range(1, PER_PERSON + 1):
            shutil.copy2(SAMPLE / person / f"{person}_{i:04d}.jpg", out)
    shutil.copy2(EXAMPLES / TWO, out)
    return out


@pytest.fixture(scope="module")
def imported(library, tmp_path_factory) -> tuple[Path, dict]:
    """``db create --model mobilefacenet`` + ``db import --unlabeled``: (database, report). Copy it."""
    db = tmp_path_factory.mktemp("db") / "faces.db"
    assert cli("db", "create", str(db), "--model", MODEL).returncode == 0
    rc, out, err = cli("db", "import", str(db), str(library), "--unlabeled", "--json")
    assert rc == 0, err
    return db, json.loads(out)


@pytest.fixture()
def db(imported, tmp_path) -> Path:
    return copy_db(imported[0], tmp_path / "copy")


def run(*args: str) -> dict:
    rc, out, err = cli("db", *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def ok(*args: str) -> str:
    rc, out, err = cli("db", *args)
    assert rc == 0, err
    return out


def faces(db: Path, person: str | None = None) -> list[dict]:
    return run("faces", str(db), *([person] if person else []))["faces"]


def who(face: dict) -> str:
    """The person a face of the library shows: its file's person (the two-face photo: ``TWO``)."""
    name = Path(face["source"]).name
    return TWO if name == TWO else name.rsplit("_", 1)[0]


def main_faces(db: Path) -> dict[str, list[int]]:
    """Each sample person's faces: the largest face of each of their photos."""
    best: dict[str, dict] = {}
    for f in faces(db):
        if who(f) == TWO:
            continue
        area = (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])
        if f["source"] not in best or area > best[f["source"]][0]:
            best[f["source"]] = (area, f)
    out: dict[str, list[int]] = {}
    for _, f in best.values():
        out.setdefault(who(f), []).append(f["id"])
    return out


def person_of_faces(db: Path) -> dict[int, str | None]:
    return {f["id"]: f["person"] for f in faces(db)}


def assert_one_face_per_photo(db: Path) -> None:
    with sqlite3.connect(db) as con:
        clash = con.execute(
            "SELECT photo_id, person_id FROM faces WHERE person_id IS NOT NULL GROUP BY photo_id, person_id"
            " HAVING COUNT(*) > 1"
        ).fetchall()
    assert clash == []


def clusters_by_person(db: Path) -> dict[str, str]:
    """Each sample person's cluster (all their main faces in one, asserted)."""
    where = person_of_faces(db)
    out = {}
    for person, ids in main_faces(db).items():
        labels = {where[i] for i in ids}
        assert len(labels) == 1 and None not in labels, (person, labels)
        out[person] = labels.pop()
    return out


def test_unlabeled_photos_cluster_into_their_people_and_reruns_change_nothing(imported, db):
    report = imported[1]
    assert (report["enrolled"], report["failed"], report["people"]) == (len(PEOPLE) * PER_PERSON + 1, 0, 0)
    assert report["faces_added"] == report["faces"] >= len(PEOPLE) * PER_PERSON + 2
    assert report["joined"] == 0  # no one to join yet
    res = run("cluster", str(db))
    assert res["new"] == len(PEOPLE) and [c["faces"] for c in res["clusters"]] == [PER_PERSON] * len(PEOPLE)
    by_person = clusters_by_person(db)
    assert len(set(by_person.values())) == len(PEOPLE)  # one cluster per person, one person per cluster
    where = person_of_faces(db)
    for f in faces(db):  # every clustered face is of its cluster's person (no stranger inside)
        if where[f["id"]] is not None:
            assert by_person.get(who(f)) == where[f["id"]], f
    assert_one_face_per_photo(db)
    listed = run("list", str(db))
    assert listed["people"] == [] and [c["faces"] for c in listed["clusters"]] == [PER_PERSON] * len(PEOPLE)
    assert listed["database"]["clusters"] == len(PEOPLE)
    again = run("cluster", str(db))
    assert (again["new"], again["kept"], again["dissolved"]) == (0, len(PEOPLE), 0)
    assert person_of_faces(db) == where  # same labels, same faces


def test_names_are_kept_new_photos_join_and_search_says_which_cluster(db, tmp_path):
    run("cluster", str(db))
    tony = clusters_by_person(db)["Tony_Blair"]
    assert "Tony Blair" in ok("name", str(db), tony, "Tony Blair")
    chavez = clusters_by_person(db)["Hugo_Chavez"]
    assert cli("db", "name", str(db), chavez, "cluster:1").returncode == 2  # a label is no name
    res = run("cluster", str(db))
    assert res["joined"] == {} and len(res["clusters"]) == len(PEOPLE) - 1
    assert clusters_by_person(db)["Tony_Blair"] == "Tony Blair"
    assert run("list", str(db))["people"][0] == {"name": "Tony Blair", "photos": PER_PERSON, "faces": PER_PERSON}
    # new photos: Tony's join him on import, a stranger's waits for the next `db cluster`
    new = tmp_path / "new"
    new.mkdir()
    for name in (
        "Tony_Blair/Tony_Blair_0006.jpg",
        "Tony_Blair/Tony_Blair_0007.jpg",
        "Vladimir_Putin/Vladimir_Putin_0001.jpg",
    ):
        shutil.copy2(SAMPLE / name, new)
    report = run("import", str(db), str(new), "--unlabeled")
    assert (report["enrolled"], report["faces_added"], report["joined"]) == (3, 3, 2)
    tony_faces = [f for f in faces(db, "Tony Blair")]
    assert sorted(Path(f["source"]).name for f in tony_faces)[-2:] == ["Tony_Blair_0006.jpg", "Tony_Blair_0007.jpg"]
    assert [f["source"] for f in run("faces", str(db), "--unassigned")["faces"] if "Putin" in f["source"]]
    # search: a named person by name; a clustered one is unknown, with its cluster
    probes = [SAMPLE / "Tony_Blair" / "Tony_Blair_0008.jpg", SAMPLE / "Hugo_Chavez" / "Hugo_Chavez_0006.jpg"]
    got = run("search", str(db), *map(str, probes))["results"]
    assert got[0]["faces"][0]["name"] == "Tony Blair" and "cluster" not in got[0]["faces"][0]
    assert (got[1]["faces"][0]["name"], got[1]["faces"][0]["cluster"]) == ("unknown", chavez)
    assert f"unknown ({chavez})" in ok("search", str(db), str(probes[1]))


def test_cluster_holds_no_lock_while_grouping_and_redoes_what_was_written_meanwhile(db, monkeypatch):
    """`db cluster` groups a snapshot with no lock held: another connection names a cluster and
    moves a face while it groups (with a 1 s busy timeout: a held lock would refuse them); the
    grouping is then redone on the new state (nothing written meanwhile is lost). The last
    attempt groups inside the write, and there a writer is held back."""
    from openface_py.errors import DatabaseError
    from openface_py.recognize import dbcluster

    run("cluster", str(db))
    by = clusters_by_person(db)
    stray = main_faces(db)["Colin_Powell"][0]
    calls: list[str] = []
    real = dbcluster.cluster_faces

    def grouping_while_another_writes(*args, **kwargs):
        other = FaceDatabase.open(db)
        other.conn.execute("PRAGMA busy_timeout=1000")
        try:
            if len(calls) == 0:
                dbcluster.name_person(other, by["Tony_Blair"], "Tony Blair")
                calls.append("named")
            elif len(calls) == 1:
                dbcluster.move_faces(other, [stray], by["Hugo_Chavez"])
                calls.append("moved")
            else:
                with pytest.raises(DatabaseError, match="locked"):
                    dbcluster.name_person(other, by["Ariel_Sharon"], "Ariel Sharon")
                calls.append("held back")
        finally:
            other.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(dbcluster, "cluster_faces", grouping_while_another_writes)
    with FaceDatabase.open(db) as mine:
        res = dbcluster.cluster_database(mine)
    assert calls == ["named", "moved", "held back"] and res.attempts == dbcluster.CLUSTER_ATTEMPTS
    where = person_of_faces(db)
    assert where[stray] == by["Hugo_Chavez"]  # the move made meanwhile stands (a pin)
    assert {where[i] for i in main_faces(db)["Tony_Blair"]} == {"Tony Blair"}
    assert "Ariel Sharon" not in set(where.values())
    assert_one_face_per_photo(db)
    monkeypatch.setattr(dbcluster, "cluster_faces", real)
    with FaceDatabase.open(db) as mine:  # undisturbed: one grouping, nothing changes
        again = dbcluster.cluster_database(mine)
    assert again.attempts == 1 and again.new == 0 and person_of_faces(db) == where


def test_naming_a_few_helps_assign_the_rest(db):
    # strict: Powell's photos in several pieces; name the largest; the default threshold then
    # adds the rest of his faces to him instead of making clusters of them
    run("cluster", str(db), "--threshold", "0.5", "--min-size", "1")
    where = person_of_faces(db)
    powell = main_faces(db)["Colin_Powell"]
    pieces = {where[i] for i in powell}
    assert len(pieces) > 1, "the strict threshold should split Powell's photos"
    largest = max(pieces, key=lambda c: sum(where[i] == c for i in powell))
    ok("name", str(db), largest, "Colin Powell")
    res = run("cluster", str(db), "--threshold", "1.083", "--min-size", "2")
    assert res["joined"].get("Colin Powell", 0) >= 1
    assert {person_of_faces(db)[i] for i in powell} == {"Colin Powell"}
    assert_one_face_per_photo(db)


def test_moves_splits_rejections_and_merges_survive_reruns(db):
    run("cluster", str(db))
    by = clusters_by_person(db)
    main = main_faces(db)
    # a face moved by hand stays where it was put, even where the clustering disagrees
    stray = main["Colin_Powell"][0]
    ok("move", str(db), str(stray), by["Hugo_Chavez"])
    run("cluster", str(db))
    assert person_of_faces(db)[stray] == by["Hugo_Chavez"]
    # "this face is not X": it leaves X and never comes back
    rejected = main["Ariel_Sharon"][0]
    assert "1 left it" in ok("reject", str(db), str(rejected), by["Ariel_Sharon"])
    assert person_of_faces(db)[rejected] is None
    run("cluster", str(db))
    assert person_of_faces(db)[rejected] != by["Ariel_Sharon"]
    # a split keeps its faces together and apart from the rest; merge suggestions find the pair
    part = main["Tony_Blair"][:2]
    split = ok("split", str(db), *map(str, part)).split()[-1]
    assert split.startswith("cluster:")
    run("cluster", str(db))
    where = person_of_faces(db)
    assert {where[i] for i in part} == {split}
    assert all(where[i] == by["Tony_Blair"] for i in main["Tony_Blair"][2:])
    pairs = run("suggest-merges", str(db))["pairs"]
    assert {pairs[0]["a"], pairs[0]["b"]} == {split, by["Tony_Blair"]}
    ok("different", str(db), split, by["Tony_Blair"])
    assert {split, by["Tony_Blair"]} not in [{p["a"], p["b"]} for p in run("suggest-merges", str(db))["pairs"]]
    # a merge makes one person of two, kept by reruns
    ok("merge", str(db), by["Tony_Blair"], split)
    run("cluster", str(db))
    assert {person_of_faces(db)[i] for i in main["Tony_Blair"]} == {by["Tony_Blair"]}
    assert split not in {p["label"] for p in run("list", str(db))["clusters"]}
    assert_one_face_per_photo(db)


def test_two_faces_of_one_photo_are_never_one_person(db):
    run("cluster", str(db))
    a, b = [f["id"] for f in faces(db) if who(f) == TWO]
    by = clusters_by_person(db)
    assert cli("db", "move", str(db), str(a), str(b), by["Hugo_Chavez"]).returncode == 2
    ok("move", str(db), str(a), by["Hugo_Chavez"])
    assert cli("db", "move", str(db), str(b), by["Hugo_Chavez"]).returncode == 2
    ok("move", str(db), str(b), by["Colin_Powell"])
    rc, _, err = cli("db", "merge", str(db), by["Hugo_Chavez"], by["Colin_Powell"])
    assert rc == 2 and "one photo" in err
    pairs = run("suggest-merges", str(db), "--threshold", "9", "--limit", "100")["pairs"]
    assert pairs and {by["Hugo_Chavez"], by["Colin_Powell"]} not in [{p["a"], p["b"]} for p in pairs]
    assert cli("db", "move", str(db), "999999", by["Hugo_Chavez"]).returncode == 1  # no such face
    assert cli("db", "merge", str(db), "cluster:9999", by["Hugo_Chavez"]).returncode == 1  # no such cluster
    assert_one_face_per_photo(db)


def test_a_forgotten_face_stays_forgotten_when_its_photo_comes_back(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = folder / TWO
    shutil.copy2(EXAMPLES / TWO, photo)
    db = tmp_path / "two.db"
    assert cli("db", "create", str(db), "--model", MODEL).returncode == 0
    run("import", str(db), str(folder), "--unlabeled")
    two = faces(db)
    assert len(two) == 2
    assert "1 face(s) removed" in ok("forget", str(db), str(two[0]["id"]))
    # the file touched: its faces (their ids, so the decisions about them) kept, nothing re-added
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    report = run("import", str(db), str(folder), "--unlabeled")
    assert (report["enrolled"], report["replaced"], report["faces_added"]) == (1, 0, 0)
    assert faces(db) == two[1:]
    # the file replaced by another photo, then put back: its faces found again but the forgotten one
    original = photo.read_bytes()
    photo.write_bytes((EXAMPLES / "carell.jpg").read_bytes())
    assert run("import", str(db), str(folder), "--unlabeled")["replaced"] == 1
    photo.write_bytes(original)
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 2 * 10**9))
    report = run("import", str(db), str(folder), "--unlabeled")
    assert (report["replaced"], report["faces_added"]) == (1, 1)
    back = faces(db)
    assert len(back) == 1 and facedb_iou(back[0]["box"], two[1]["box"]) > 0.9
    with FaceDatabase.open(db) as d:
        ids, _, _ = d.embeddings()
        assert np.array_equal(np.sort(d.sync_index().ids()), ids)  # the index follows every removal


def test_an_unlabeled_import_never_takes_a_persons_enrolled_photo(tmp_path):
    """A photo enrolled for a person by the labeled import, then touched, then met again by an
    unlabeled import of the folder above: the person keeps the photo and its face."""
    gallery = tmp_path / "gallery"
    (gallery / "Colin_Powell").mkdir(parents=True)
    photo = gallery / "Colin_Powell" / "Colin_Powell_0001.jpg"
    shutil.copy2(SAMPLE / "Colin_Powell" / photo.name, photo)
    db = tmp_path / "people.db"
    assert cli("db", "create", str(db), "--model", MODEL).returncode == 0
    run("import", str(db), str(gallery))
    enrolled = faces(db, "Colin_Powell")
    assert len(enrolled) == 1
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    run("import", str(db), str(gallery), "--unlabeled")
    assert faces(db, "Colin_Powell") == enrolled


def facedb_iou(a, b) -> float:
    from openface_py.recognize.dbcluster import _iou

    return _iou(a, b)


# --------------------------------------------------------------- without photos
def test_cluster_faces_starting_groups_and_apart_tokens():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    X = np.repeat(centres, 4, axis=0) + 0.2 * rng.normal(size=(12, 64))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    s = ClusterSettings(threshold=0.5, min_size=1)
    plain = cluster_faces(X, None, s)
    assert plain.n_clusters == 3
    none = cluster_faces(X, None, s, groups=[-1] * 12, apart=[()] * 12)
    assert np.array_equal(none.labels, plain.labels)
    # faces 0 and 4 start together (two people): they stay together, whatever the distances
    together = cluster_faces(X, None, s, groups=[0, -1, -1, -1, 0] + [-1] * 7)
    assert together.labels[0] == together.labels[4]
    # a token shared by faces 1 and 2 keeps them (and the groups they are in) apart
    apart = cluster_faces(X, None, s, apart=[(), ("x",), ("x",)] + [()] * 9)
    assert apart.labels[1] != apart.labels[2]
    with pytest.raises(ValueError, match="average"):
        cluster_faces(X, None, ClusterSettings(threshold=0.5, method="whispers"), groups=[-1] * 12)


V2_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}');
CREATE TABLE photos(id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL, source TEXT, size INTEGER, mtime_ns INTEGER, added REAL NOT NULL, UNIQUE(person_id, sha256));
CREATE INDEX photos_source ON photos(source);
CREATE TABLE faces(id INTEGER PRIMARY KEY AUTOINCREMENT,
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    box TEXT NOT NULL, landmarks TEXT, embedding BLOB NOT NULL, identity TEXT NOT NULL, added REAL NOT NULL,
    gen INTEGER NOT NULL);
CREATE INDEX faces_person ON faces(person_id);
CREATE INDEX faces_gen ON faces(gen);
CREATE TABLE removed_faces(face_id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE INDEX removed_gen ON removed_faces(gen);
CREATE TRIGGER face_removed AFTER DELETE ON faces BEGIN
    INSERT OR REPLACE INTO removed_faces VALUES
        (old.id, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'));
END;
CREATE TABLE generations(gen INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE import_failures(source TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, reason TEXT NOT NULL,
    gen INTEGER NOT NULL);
"""


def test_a_version_2_database_upgrades_with_every_row_and_its_face_counter(tmp_path):
    """Version 2's schema and rows (as its ``enroll`` and ``remove`` wrote them), opened now."""
    with FaceDatabase.create(tmp_path / "new.db", "m", "m|a", 0.5) as fresh:
        meta = dict(fresh.conn.execute("SELECT key, value FROM meta"))
    meta["schema_version"] = "2"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 128)).astype(np.float32)
    path = tmp_path / "v2.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA foreign_keys=ON")
    con.executescript(V2_SCHEMA)
    con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    con.executemany("INSERT INTO people(name, created) VALUES (?, 1.0)", [("Ada",), ("Bo",), ("Cy",)])
    for k in range(6):
        con.execute(
            "INSERT INTO photos(person_id, sha256, source, size, mtime_ns, added) VALUES (?,?,?,?,?,1.0)",
            (k % 3 + 1, f"sha{k}", f"/g/{k}.jpg", 10 + k, 100 + k),
        )
        con.execute(
            "INSERT INTO faces(photo_id, person_id, box, landmarks, embedding, identity, added, gen)"
            " VALUES (?,?,?,NULL,?,'m|a',1.0,1)",
            (k + 1, k % 3 + 1, json.dumps([0, 0, 9, 9]), X[k].tobytes()),
        )
    con.execute("INSERT INTO import_failures VALUES ('/g/bad.jpg', 1, 2, 'no face found', 1)")
    con.execute("INSERT INTO generations VALUES (1, 'tok')")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'generation'")
    con.execute("DELETE FROM people WHERE name = 'Cy'")  # faces 3 and 6 go: the counter stays at 6
    con.commit()
    tables = ("people", "photos", "faces", "removed_faces", "import_failures", "generations")
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
    con.close()
    assert len(before["faces"]) == 4 and len(before["removed_faces"]) == 2

    with FaceDatabase.open(path) as db:
        assert db.meta("schema_version") == str(facedb.SCHEMA_VERSION) == "3"
        after = {t: db.conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in tables}
        assert after["people"] == [row + (1,) for row in before["people"]]  # named
        for t in tables[1:]:
            assert after[t] == before[t], t
        assert db.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        names = {r[0] for r in db.conn.execute("SELECT name FROM sqlite_master")}
        assert {"face_removed", "faces_person", "faces_gen", "photos_source", "face_pins", "forgotten_faces"} <= names
        assert [p.name for p in db.people()] == ["Ada", "Bo"]
        assert db.search(X[:1])[0][0].name == "Ada"
        db.enroll("Dee", "sha-new", [FaceRecord([0, 0, 9, 9], X[2])], "m|a")
        assert db.conn.execute("SELECT MAX(id) FROM faces").fetchone()[0] == 7  # never a removed face's id
        db.remove_person("Ada")  # the trigger is back: the index follows removals
        assert db.conn.execute("SELECT COUNT(*) FROM removed_faces").fetchone()[0] == 4
        assert sorted(db.sync_index().ids().tolist()) == [2, 5, 7]
