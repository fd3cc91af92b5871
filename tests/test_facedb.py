"""Tests of openface_py.recognize.facedb, recognize.vectorindex, cli.db.

The face database (`db ...`, `identify DB`): SQLite + FAISS on the real sample photos and model.

Answers are checked against an independent computation (a numpy brute-force nearest neighbour
over the embeddings the database holds, and the gallery-folder `identify`), the index against
every way it can go stale, and imports against a kill -9.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, HELD_OUT, ROOT, SAMPLE, cli, copy_db

from openface_py.errors import UsageError
from openface_py.recognize import facedb, vectorindex
from openface_py.recognize.facedb import FaceDatabase, FaceDatabaseError, FaceRecord, valid_name
from openface_py.recognize.vectorindex import VectorIndex

PROBES = sorted(p for p in SAMPLE.glob("*/*.jpg") if p.stem.endswith(HELD_OUT))
ENROLLED = len(list(SAMPLE.glob("*/*.jpg"))) - len(PROBES)  # 81: one person has no photo _0010
IDENTITY = "nn4.small2.distilled-v2|openface-affine/96/outerEyesAndNose"


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def gallery(sample_gallery) -> Path:
    """Photos 1-8 of each sample person (9 and 10 are the probes)."""
    return sample_gallery


@pytest.fixture(scope="module")
def built(sample_db, tmp_path_factory) -> Path:
    """The gallery imported by ``db import --workers 2 --json`` (a copy of the session's database)."""
    db, report = sample_db
    assert (report["enrolled"], report["failed"], report["people"], report["faces"]) == (ENROLLED, 0, 10, ENROLLED)
    return copy_db(db, tmp_path_factory.mktemp("db"))


def brute_force(db: FaceDatabase, probe: np.ndarray) -> tuple[str, float]:
    _, X, names = db.embeddings()
    d = ((X.astype(np.float64) - probe.astype(np.float64)) ** 2).sum(1)
    return names[int(d.argmin())], float(d.min())


def test_search_names_held_out_photos_like_brute_force_and_the_gallery_folder(built, gallery):
    rc, out, _ = cli("db", "search", str(built), *map(str, PROBES), "--json", "--top-k", "3")
    assert rc == 0
    res = json.loads(out)
    assert res["model"] == IDENTITY and res["threshold"] == pytest.approx(0.16)
    rc, out, _ = cli("identify", str(gallery), *map(str, PROBES), "--json")
    folder = {r["path"]: r["faces"] for r in json.loads(out)["results"]}
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create("nn4.small2.distilled-v2")
    right = 0
    with FaceDatabase.open(built) as db:
        for r in res["results"]:
            assert len(r["faces"]) >= 1
            face = max(r["faces"], key=lambda f: f["box"][2] - f["box"][0])
            from openface_py.io import load_image

            rep = pipe.process(load_image(r["path"]), multi=False)[0].embedding
            name, dist = brute_force(db, rep)
            assert face["nearest"] == name and face["distance"] == pytest.approx(dist, abs=1e-3)
            assert [c["distance"] for c in face["candidates"]] == sorted(c["distance"] for c in face["candidates"])
            assert len({c["name"] for c in face["candidates"]}) == 3  # top-k people, not faces
            assert 0.0 <= face["confidence"] <= 1.0
            g = max(folder[r["path"]], key=lambda f: f["box"][2] - f["box"][0])
            assert (g["name"], g["nearest"]) == (face["name"], face["nearest"])
            assert g["distance"] == pytest.approx(face["distance"], abs=1e-3)
            right += face["name"] == Path(r["path"]).parent.name
    assert right >= len(PROBES) - 4, (
        f"{right} of {len(PROBES)} held-out photos named"
    )  # LFW accuracy 0.9465: a few misses at most


def test_identify_reads_a_database_and_strangers_are_unknown(built):
    rc, out, _ = cli("identify", str(built), str(EXAMPLES / "longoria-cooper.jpg"), "--json")
    assert rc == 0
    faces = json.loads(out)["results"][0]["faces"]
    assert len(faces) == 2 and {f["name"] for f in faces} == {"unknown"}


def test_import_is_incremental_reports_failures_and_replaces_changed_photos(gallery, tmp_path):
    g = tmp_path / "g"
    shutil.copytree(gallery, g)
    (g / "Tony_Blair" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy2(EXAMPLES / "longoria-cooper.jpg", g / "Tony_Blair" / "group.jpg")  # two faces: the largest
    db = tmp_path / "g.db"
    assert cli("db", "create", str(db))[0] == 0
    rc, out, _ = cli("db", "import", str(db), str(g), "--json")
    rep = json.loads(out)
    assert (
        rc == 0
        and rep["enrolled"] == ENROLLED + 1
        and [f["path"] for f in rep["failures"]] == ["Tony_Blair/broken.jpg"]
    )
    rc, out, _ = cli("db", "import", str(db), str(g), "--json")
    rep = json.loads(out)
    assert (rep["enrolled"], rep["already_done"], rep["failed"]) == (0, ENROLLED + 2, 1)
    assert "earlier run" in rep["failures"][0]["reason"]
    # a changed photo replaces its earlier faces; a copy of an enrolled photo is a duplicate
    victim = g / "Tony_Blair" / "group.jpg"
    shutil.copy2(SAMPLE / "Tony_Blair" / "Tony_Blair_0009.jpg", victim)
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))
    shutil.copy2(g / "Colin_Powell" / "Colin_Powell_0001.jpg", g / "Colin_Powell" / "copy.jpg")
    rc, out, _ = cli("db", "import", str(db), str(g), "--json")
    rep = json.loads(out)
    assert (rep["enrolled"], rep["replaced"], rep["duplicates"], rep["faces"]) == (1, 1, 1, ENROLLED + 1)
    with FaceDatabase.open(db) as d:
        n_photos = d.conn.execute("SELECT COUNT(*) FROM photos WHERE source LIKE '%group.jpg'").fetchone()[0]
        assert n_photos == 1
        probe = d.conn.execute("SELECT embedding FROM faces ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert brute_force(d, np.frombuffer(probe, "<f4"))[0] == "Tony_Blair"
    # a photo changed into one without a face takes its earlier face with it
    victim.write_bytes((EXAMPLES / "LICENSE").read_bytes())
    rep = json.loads(cli("db", "import", str(db), str(g), "--json")[1])
    assert rep["faces"] == ENROLLED and "Tony_Blair/group.jpg" in [f["path"] for f in rep["failures"]]
    # the duplicate's original changes: the duplicate is imported in its place
    original = g / "Colin_Powell" / "Colin_Powell_0001.jpg"
    shutil.copy2(SAMPLE / "Colin_Powell" / "Colin_Powell_0009.jpg", original)
    os.utime(original, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    rep = json.loads(cli("db", "import", str(db), str(g), "--json")[1])
    assert (rep["enrolled"], rep["replaced"], rep["faces"]) == (2, 1, ENROLLED + 1)


def test_enroll_list_remove_and_names(built, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy2(built, db)
    photo = EXAMPLES / "adams.jpg"
    rc, out, _ = cli("db", "enroll", str(db), "Amy Adams", str(photo), str(EXAMPLES / "LICENSE"), "--json")
    res = json.loads(out)
    assert rc == 0 and [p.get("status", p.get("error")) for p in res["photos"]][0] == "enrolled"
    assert "error" in res["photos"][1]
    assert json.loads(cli("db", "enroll", str(db), "Amy Adams", str(photo), "--json")[1])["photos"][0]["status"] == (
        "duplicate"
    )
    rc, out, _ = cli("db", "search", str(db), str(photo), "--json")
    assert json.loads(out)["results"][0]["faces"][0]["name"] == "Amy Adams"
    rows = json.loads(cli("db", "list", str(db), "--json")[1])["people"]
    assert {"name": "Amy Adams", "photos": 1, "faces": 1} in rows and len(rows) == 11
    assert cli("db", "remove", str(db), "Amy Adams")[0] == 0
    assert cli("db", "remove", str(db), "Amy Adams")[0] == 1
    rc, out, _ = cli("db", "search", str(db), str(photo), "--json")
    assert json.loads(out)["results"][0]["faces"][0]["name"] == "unknown"
    for bad in ("", "../etc", ".hidden", "a/b", "unknown", "x" * 200, "nul\x00"):
        with pytest.raises(UsageError):
            valid_name(bad)
    assert valid_name("Zoë Ångström-O'Neil") == "Zoë Ångström-O'Neil"
    assert cli("db", "enroll", str(db), "../evil", str(photo))[0] == 2


def synthetic(n_people: int, per: int, seed: int = 0, spread: float = 0.35) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, 128))
    X = np.repeat(centres, per, axis=0) / np.sqrt(128) + spread / np.sqrt(128) * rng.normal(size=(n_people * per, 128))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), [f"p{i}" for i in range(n_people) for _ in range(per)]


def fill(path: Path, X: np.ndarray, names: list[str], identity: str = "m|a") -> FaceDatabase:
    db = FaceDatabase.create(path, "m", identity, 0.5)
    for k, (x, name) in enumerate(zip(X, names)):
        db.enroll(name, f"sha-{k}", [FaceRecord([0, 0, 9, 9], x)], identity)
    return db


def assert_exact(db: FaceDatabase, probes: np.ndarray) -> None:
    for p, matches in zip(probes, db.search(probes)):
        name, d = brute_force(db, p)
        assert (matches[0].name, matches[0].distance) == (name, pytest.approx(d, abs=1e-4))


def restore_after_a_write(path: Path, vector: np.ndarray) -> None:
    """Back the database up, enroll "newer" and save the index, then put the backup back."""
    backup = path.with_name("backup.db")
    shutil.copy2(path, backup)
    with FaceDatabase.open(path) as db:
        db.enroll("newer", "sha-newer", [FaceRecord([0, 0, 9, 9], vector)], "m|a")
        db.sync_index()
        db.save_index()
    shutil.copy2(backup, path)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_is_never_stale(tmp_path, monkeypatch, kind):
    if kind == "hnsw":  # the graph index with its skipped (removed) ids, on a small database
        monkeypatch.setattr(vectorindex, "APPROX_MIN", 1)
    X, names = synthetic(30, 4)
    probes = synthetic(30, 1, seed=1)[0]
    db = fill(tmp_path / "a.db", X, names)
    assert_exact(db, probes)
    assert db.sync_index().kind == kind
    db.save_index()
    idx = db.index_path
    # another process (connection) writes; this one's index catches up before searching
    other = FaceDatabase.open(db.path)
    other.enroll("late", "sha-late", [FaceRecord([0, 0, 9, 9], probes[0])], "m|a")
    assert db.search(probes[:1])[0][0].name == "late"
    other.remove_person("p3")
    assert_exact(db, probes)
    assert all(m.name != "p3" for ms in db.search(probes, top_k=30) for m in ms)
    other.close()
    db.close()
    # the saved index is from before both writes: loading it catches up (p3 never comes back)
    with FaceDatabase.open(tmp_path / "a.db") as db:
        assert db._load_index()[1] < db.generation
        assert_exact(db, probes)
        assert all(m.name != "p3" for ms in db.search(probes, top_k=30) for m in ms)
        db.save_index()
    # missing, damaged, foreign and from-the-future index files are rebuilt
    saved = idx.read_bytes()
    for damage in ("missing", "truncated", "garbage", "foreign", "future", "other-history"):
        if damage == "missing":
            idx.unlink()
        elif damage == "truncated":
            idx.write_bytes(saved[: len(saved) // 2])
        elif damage == "garbage":
            idx.write_bytes(b"\0" * 100)
        elif damage == "foreign":
            with fill(tmp_path / f"{damage}.db", *synthetic(5, 2, seed=3)) as f:
                f.sync_index()
                f.save_index()
                shutil.copy2(f.index_path, idx)
        elif damage == "future":  # the database restored from an older backup than its index
            restore_after_a_write(tmp_path / "a.db", probes[1])
        elif damage == "other-history":  # restored, then written again up to the index's generation
            restore_after_a_write(tmp_path / "a.db", probes[1])
            with FaceDatabase.open(tmp_path / "a.db") as db:  # same generation, same reused face id
                db.enroll("other", "sha-other", [FaceRecord([0, 0, 9, 9], probes[2])], "m|a")
            with FaceDatabase.open(tmp_path / "a.db") as db:
                assert db.search(probes[2:3])[0][0].name == "other"
                assert db.search(probes[1:2])[0][0].name != "newer"
        with FaceDatabase.open(tmp_path / "a.db") as db:
            assert_exact(db, probes)
            assert all(m.name != "newer" for ms in db.search(probes, top_k=30) for m in ms)
            db.save_index()
        idx.write_bytes(saved) if damage != "future" else None


def test_hnsw_index_recall_removal_and_round_trip(monkeypatch):
    X, _ = synthetic(2000, 5, seed=7)
    ids = np.arange(len(X), dtype=np.int64) * 5 + 3
    flat = VectorIndex.build(ids, X, 128, kind="flat")
    graph = VectorIndex.build(ids, X, 128, kind="hnsw")
    probes = X[::50] + 0.02 * np.random.default_rng(8).normal(size=X[::50].shape).astype(np.float32)
    exact = flat.search(probes, 1).ids[:, 0]
    assert (graph.search(probes, 1).ids[:, 0] == exact).mean() >= 0.95
    assert graph.remove(exact) == len(set(exact.tolist())) and graph.remove(exact) == 0 and graph.remove([1]) == 0
    assert graph.ntotal == len(X) - len(set(exact.tolist()))
    assert not np.isin(graph.search(probes, 20).ids, exact).any()  # removed rows are never answered
    again = VectorIndex.from_bytes(graph.to_bytes(), "hnsw", 128, graph.trained_on, graph.deleted)
    np.testing.assert_array_equal(again.search(probes, 5).ids, graph.search(probes, 5).ids)
    assert graph.needs_rebuild()  # 10,000 rows: below APPROX_MIN an exact index is built instead
    monkeypatch.setattr(vectorindex, "APPROX_MIN", 1000)
    assert not graph.needs_rebuild()
    graph.remove(ids[: len(ids) // 4])
    assert graph.needs_rebuild()  # a quarter removed: rebuilt rather than searched around


def test_ivf_index_recall_removal_and_round_trip():
    X, _ = synthetic(2000, 10, seed=4)
    ids = np.arange(len(X), dtype=np.int64) * 3 + 7
    flat = VectorIndex.build(ids, X, 128, kind="flat")
    ivf = VectorIndex.build(ids, X, 128, kind="ivf")
    assert ivf.kind == "ivf" and ivf.ntotal == flat.ntotal == len(X)
    probes = X[::67] + 0.02 * np.random.default_rng(5).normal(size=X[::67].shape).astype(np.float32)
    exact, approx = flat.search(probes, 1), ivf.search(probes, 1)
    assert (exact.ids[:, 0] == approx.ids[:, 0]).mean() >= 0.95
    assert ivf.remove(ids[:100]) == 100 and flat.remove(ids[:100]) == 100 and ivf.remove(ids[:100]) == 0
    assert not np.isin(ivf.search(X[:100], 5).ids, ids[:100]).any()
    again = VectorIndex.from_bytes(ivf.to_bytes(), "ivf", 128, ivf.trained_on)
    np.testing.assert_array_equal(again.search(probes, 3).ids, ivf.search(probes, 3).ids)


def test_top_k_people_when_one_person_owns_the_nearest_faces(tmp_path):
    X, names = synthetic(6, 2, seed=11)
    rng = np.random.default_rng(12)
    crowd = X[0] + 0.001 * rng.normal(size=(60, 128)).astype(np.float32)
    crowd /= np.linalg.norm(crowd, axis=1, keepdims=True)
    with fill(tmp_path / "k.db", np.vstack([X, crowd]), names + ["p0"] * 60) as db:
        got = db.search(X[:1], top_k=4)[0]
        assert [m.name for m in got][0] == "p0" and len({m.name for m in got}) == 4


def test_refusals(tmp_path):
    db = fill(tmp_path / "r.db", *synthetic(3, 2))
    with pytest.raises(FaceDatabaseError, match="refusing"):
        db.enroll("x", "s", [FaceRecord([0, 0, 1, 1], np.ones(128, np.float32) / np.sqrt(128))], "other|identity")
    with pytest.raises(ValueError):
        db.enroll("x", "s", [FaceRecord([0, 0, 1, 1], np.full(128, np.nan, np.float32))], "m|a")
    db.close()
    with pytest.raises(FaceDatabaseError, match="already exists"):
        FaceDatabase.create(tmp_path / "r.db", "m", "m|a", 0.5)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FaceDatabaseError, match="not an openface-py"):
        FaceDatabase.open(tmp_path / "notes.txt")
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(FaceDatabaseError, match="not an openface-py"):
        FaceDatabase.open(tmp_path / "other.sqlite")
    con = sqlite3.connect(tmp_path / "r.db")
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(FaceDatabaseError, match="newer"):
        FaceDatabase.open(tmp_path / "r.db")
    assert cli("db", "list", str(tmp_path / "missing.db"))[0] == 2  # a missing input: exit 2


def test_schema_migration_runs_each_step_in_order(tmp_path, monkeypatch):
    with fill(tmp_path / "m.db", *synthetic(3, 2)):
        pass
    v = facedb.SCHEMA_VERSION
    monkeypatch.setattr(facedb, "SCHEMA_VERSION", v + 2)
    monkeypatch.setitem(facedb.MIGRATIONS, v, ["ALTER TABLE people ADD COLUMN note TEXT"])
    monkeypatch.setitem(facedb.MIGRATIONS, v + 1, ["UPDATE people SET note = 'v3: ' || name"])
    with FaceDatabase.open(tmp_path / "m.db") as db:
        assert db.meta("schema_version") == str(v + 2)
        assert db.conn.execute("SELECT note FROM people WHERE name = 'p0'").fetchone()[0] == "v3: p0"
        assert len(db.search(synthetic(3, 1)[0])) == 3
    monkeypatch.setattr(facedb, "SCHEMA_VERSION", v + 3)
    with pytest.raises(FaceDatabaseError, match=f"no migration from schema version {v + 2}"):
        FaceDatabase.open(tmp_path / "m.db")


def test_a_version_1_database_is_migrated_and_its_old_index_rebuilt(tmp_path, monkeypatch):
    # made from today's schema, so version 2's step to 3 has nothing to do (test_dbcluster has it)
    monkeypatch.setitem(facedb.MIGRATIONS, 2, [])
    X, names = synthetic(5, 2)
    probes = synthetic(5, 1, seed=1)[0]
    with fill(tmp_path / "old.db", X, names) as db:
        db.sync_index()
        db.save_index()
    con = sqlite3.connect(tmp_path / "old.db")  # what version 1 wrote: no generation tokens
    con.execute("DROP TABLE generations")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with FaceDatabase.open(tmp_path / "old.db") as db:
        assert db.meta("schema_version") == str(facedb.SCHEMA_VERSION)
        assert db._load_index() is None  # the version-1 index has no token for this history: rebuilt
        assert_exact(db, probes)
        db.enroll("late", "sha-late", [FaceRecord([0, 0, 9, 9], probes[0])], "m|a")
        assert db.search(probes[:1])[0][0].name == "late"


def test_learned_threshold_is_the_best_split_of_enrolled_pairs(tmp_path):
    X, names = synthetic(40, 5, seed=6, spread=1.2)
    db = fill(tmp_path / "t.db", X, names)
    assert db.meta("threshold_source") == "model" and db.threshold == 0.5
    db.set_threshold(None, learn=True)
    assert db.meta("threshold_source").startswith("learned from 400 same-person pairs")
    y = np.array(names)
    i, j = np.triu_indices(len(X), 1)
    d = ((X[i].astype(np.float64) - X[j]) ** 2).sum(1)
    same = y[i] == y[j]

    def balanced(t: float) -> float:
        return 0.5 * (d[same] <= t).mean() + 0.5 * (d[~same] > t).mean()

    best = max(balanced(t) for t in np.unique(d))
    assert balanced(db.threshold) >= best - 0.01
    db.set_threshold(0.3)
    assert (db.threshold, db.meta("threshold_source")) == (0.3, "fixed")
    db.close()


def _enroller(path: str, start: int, n: int) -> None:
    X, _ = synthetic(400, 1, seed=9)
    with FaceDatabase.open(path) as db:
        for k in range(start, start + n):
            db.enroll(f"p{k}", f"sha-{k}", [FaceRecord([0, 0, 9, 9], X[k])], "m|a")
            db.enroll(f"p{k}", f"sha-{k}", [FaceRecord([0, 0, 9, 9], X[k])], "m|a")  # a retry: no duplicate


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "c.db"
    FaceDatabase.create(path, "m", "m|a", 0.5).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_enroller, args=(str(path), 100 * w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with FaceDatabase.open(path) as db:
        assert db.info()["faces"] == 400 and db.info()["people"] == 400
        assert_exact(db, synthetic(400, 1, seed=9)[0][::10])


def test_import_resumes_after_kill_9(gallery, tmp_path):
    db = tmp_path / "k.db"
    assert cli("db", "create", str(db))[0] == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "openface_py", "-q", "db", "import", str(db), str(gallery)], env=env)
    deadline = time.time() + 240
    count = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(sqlite3.OperationalError):
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            count = con.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
            con.close()
        if count >= 20:
            break
    assert proc.poll() is None, "the import finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with FaceDatabase.open(db) as d:
        done = d.info()["faces"]
    assert 20 <= done < ENROLLED
    rc, out, _ = cli("db", "import", str(db), str(gallery), "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["already_done"] == done and rep["enrolled"] == ENROLLED - done and rep["faces"] == ENROLLED
    with FaceDatabase.open(db) as d:
        assert d.conn.execute("SELECT COUNT(DISTINCT sha256) FROM photos").fetchone()[0] == ENROLLED
        assert_exact(d, d.embeddings()[1][::7])
