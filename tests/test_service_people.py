"""Tests of openface_py.service.app, recognize.dbcluster.

The people API of `openface-py serve` (what the page's People view uses): a real server on
loopback over a real database of unlabeled sample photos of three people clustered with
MobileFaceNet (`clustered_db`); listing people and clusters, a face's thumbnail cropped from its
photo file, and the writes (name, merge, forget, reject) with and without the API key."""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
from conftest import CLUSTERED, SAMPLE, copy_db
from test_service import KEY, Server


@pytest.fixture(scope="module", autouse=True)
def home(empty_home):
    return empty_home


@pytest.fixture(scope="module")
def copied(clustered_db, tmp_path_factory) -> tuple[Path, Path]:
    """(database, photos): copies this module may change, the database's photos those copies."""
    db = copy_db(clustered_db[0], tmp_path_factory.mktemp("people-db"))
    photos = tmp_path_factory.mktemp("people-photos")
    for f in clustered_db[1].iterdir():
        shutil.copy2(f, photos / f.name)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE photos SET source = ? || substr(source, ?)",
            (photos.resolve().as_posix(), len(clustered_db[1].resolve().as_posix()) + 1),
        )
    conn.close()
    return db, photos


@pytest.fixture(scope="module")
def library(copied) -> Path:
    return copied[1]


@pytest.fixture(scope="module")
def server(copied):
    s = Server(copied[0])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def person_of(source: str) -> str:
    return Path(source).name.rsplit("_", 1)[0]


def clusters(c: httpx.Client) -> dict[str, list[dict]]:
    """label -> its faces, largest first as the API lists them."""
    listing = c.get("/v1/people", params={"clusters": "true"}).json()
    return {x["label"]: c.get(f"/v1/people/{x['label']}/faces").json()["faces"] for x in listing["clusters"]}


def detail(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"detail"}
    return r.json()["detail"]


def test_lists_clusters_largest_first_with_faces_and_thumbnails(client, library):
    from PIL import Image

    c = client
    assert c.get("/v1/people").json() == {"people": []}  # named people only, as before
    listing = c.get("/v1/people", params={"clusters": "true"}).json()
    assert listing["people"] == [] and listing["unassigned_faces"] == 0
    assert [x["faces"] for x in listing["clusters"]] == sorted(CLUSTERED.values(), reverse=True)
    for x in listing["clusters"]:
        faces = c.get(f"/v1/people/{x['label']}/faces").json()
        assert faces["named"] is False and faces["total"] == x["faces"] == len(faces["faces"])
        assert len({person_of(f["source"]) for f in faces["faces"]}) == 1  # one person per cluster
        assert all(Path(f["source"]).parent == library.resolve() and len(f["box"]) == 4 for f in faces["faces"])
    first = listing["clusters"][0]["label"]
    assert len(c.get(f"/v1/people/{first}/faces", params={"limit": 2}).json()["faces"]) == 2
    assert "limit" in detail(c.get(f"/v1/people/{first}/faces", params={"limit": 0}), 422)
    assert "no person or cluster" in detail(c.get("/v1/people/Nobody/faces"), 404)
    assert "no person or cluster" in detail(c.get("/v1/people/cluster:0099/faces"), 404)

    face = c.get(f"/v1/people/{first}/faces").json()["faces"][0]
    r = c.get(f"/v1/faces/{face['id']}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.format == "JPEG" and im.size == (96, 96)
    with Image.open(io.BytesIO(c.get(f"/v1/faces/{face['id']}/thumbnail", params={"size": 48}).content)) as im:
        assert im.size == (48, 48)
    assert "size" in detail(c.get(f"/v1/faces/{face['id']}/thumbnail", params={"size": 4000}), 422)
    assert "no face" in detail(c.get("/v1/faces/999999/thumbnail"), 404)
    assert "no face" in detail(c.get(f"/v1/faces/{2**70}/thumbnail"), 404)
    detail(c.get("/v1/faces/abc/thumbnail"), 422)

    # the photo file gone, or another file at its path: 404 with the reason, never another crop
    other = c.get(f"/v1/people/{listing['clusters'][1]['label']}/faces").json()["faces"]
    gone, changed = Path(other[0]["source"]), Path(other[1]["source"])
    saved = gone.read_bytes()
    gone.unlink()
    shutil.copy2(SAMPLE / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg", changed)
    try:
        assert "no longer there" in detail(c.get(f"/v1/faces/{other[0]['id']}/thumbnail"), 404)
        assert "changed since it was imported" in detail(c.get(f"/v1/faces/{other[1]['id']}/thumbnail"), 404)
    finally:
        gone.write_bytes(saved)
    assert c.get(f"/v1/faces/{other[0]['id']}/thumbnail").status_code == 200


def test_writes_need_the_key_and_change_what_search_answers(client):
    c = client
    auth = {"X-API-Key": KEY}
    by_size = list(clusters(c).items())
    (powell, powell_faces), (chavez, chavez_faces), (blair, blair_faces) = by_size
    assert [person_of(fs[0]["source"]) for _, fs in by_size] == list(CLUSTERED)

    # without the key (or with a wrong one) nothing changes
    for headers in ({}, {"X-API-Key": "wrong"}):
        for r in (
            c.post(f"/v1/people/{powell}/name", json={"name": "Colin Powell"}, headers=headers),
            c.post("/v1/people/merge", json={"a": chavez, "b": blair}, headers=headers),
            c.delete(f"/v1/faces/{blair_faces[0]['id']}", headers=headers),
            c.post(f"/v1/faces/{chavez_faces[0]['id']}/reject", json={}, headers=headers),
        ):
            assert "API key" in detail(r, 401)
    assert clusters(c) == dict(by_size)

    # bad bodies and references
    name = f"/v1/people/{powell}/name"
    assert detail(c.post(name, json={}, headers=auth), 422) == "missing name"
    assert "string" in detail(c.post(name, json={"name": 5}, headers=auth), 422)
    assert "JSON object" in detail(c.post(name, json=["Colin"], headers=auth), 422)
    assert "strangers" in detail(c.post(name, json={"name": "unknown"}, headers=auth), 422)
    assert "JSON" in detail(c.post(name, content=b"{nope", headers={**auth, "content-type": "application/json"}), 400)
    assert "application/json" in detail(c.post(name, data={"name": "x"}, headers=auth), 415)
    assert "over the limit" in detail(c.post(name, json={"name": "x" * 20000}, headers=auth), 413)
    assert "no person or cluster" in detail(c.post("/v1/people/Nobody/name", json={"name": "X"}, headers=auth), 404)
    assert "missing b" in detail(c.post("/v1/people/merge", json={"a": chavez}, headers=auth), 422)
    assert "same person" in detail(c.post("/v1/people/merge", json={"a": blair, "b": blair}, headers=auth), 422)
    assert "no person" in detail(c.post("/v1/people/merge", json={"a": blair, "b": "Nobody"}, headers=auth), 404)
    assert "no face" in detail(c.delete("/v1/faces/999999", headers=auth), 404)
    assert clusters(c) == dict(by_size)

    # name the largest cluster: a person, and search names their other photos
    r = c.post(name, json={"name": "  Colin Powell "}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"was": powell, "name": "Colin Powell"}
    assert c.get("/v1/people").json()["people"] == [{"name": "Colin Powell", "photos": 4, "faces": 4}]
    probe = (SAMPLE / "Colin_Powell" / "Colin_Powell_0009.jpg").read_bytes()
    assert [f["name"] for f in c.post("/v1/identify", files={"photo": probe}).json()["faces"]] == ["Colin Powell"]

    # forget a wrong face: gone for good, its thumbnail too
    wrong = blair_faces[0]["id"]
    assert c.delete(f"/v1/faces/{wrong}", headers=auth).json() == {"forgotten": 1}
    assert "no face" in detail(c.delete(f"/v1/faces/{wrong}", headers=auth), 404)
    assert "no face" in detail(c.get(f"/v1/faces/{wrong}/thumbnail"), 404)
    assert [f["id"] for f in clusters(c)[blair]] == [f["id"] for f in blair_faces[1:]]

    # reject a face from its cluster (the person it is not: its own by default): unassigned
    out = c.post(f"/v1/faces/{chavez_faces[0]['id']}/reject", json={}, headers=auth).json()
    assert out == {"person": chavez, "left": 1}
    assert c.get("/v1/people", params={"clusters": "true"}).json()["unassigned_faces"] == 1
    again = c.post(f"/v1/faces/{chavez_faces[0]['id']}/reject", json={}, headers=auth)
    assert "belongs to no one" in detail(again, 422)
    missing = c.post(f"/v1/faces/{chavez_faces[1]['id']}/reject", json={"person": "Nobody"}, headers=auth)
    assert "no person or cluster" in detail(missing, 404)

    # merge two: the named one keeps its name whichever comes first
    r = c.post("/v1/people/merge", json={"a": blair, "b": "Colin Powell"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "Colin Powell"}
    assert c.get("/v1/people").json()["people"] == [{"name": "Colin Powell", "photos": 5, "faces": 5}]
    assert list(clusters(c)) == [chavez]
    assert "no person or cluster" in detail(c.get(f"/v1/people/{blair}/faces"), 404)

    # a face of a photo uploaded to the API has no file to crop from
    photo = (SAMPLE / "Hugo_Chavez" / "Hugo_Chavez_0009.jpg").read_bytes()
    assert c.post("/v1/people/Hugo Chavez/faces", files={"photos": photo}, headers=auth).status_code == 201
    uploaded = c.get("/v1/people/Hugo Chavez/faces").json()["faces"]
    assert [f["source"] for f in uploaded] == [None]
    assert "uploaded" in detail(c.get(f"/v1/faces/{uploaded[0]['id']}/thumbnail"), 404)
