"""Tests of openface_py.recognize.cluster, jobs.clusterjob, jobs.contactsheet, cli.cluster and the
scorer of benchmarks/bench_cluster.py.

`openface-py cluster` on the embeddings `openface-py run` made of the real sample photos (10 people
x 10 photos) with the default model, and of a two-face photo beside one person's photos."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, SAMPLE, cli

from openface_py.jobs.embeddings import load_embeddings
from openface_py.recognize.cluster import (
    DEFAULT_FACTOR,
    ClusterSettings,
    cluster_faces,
    default_threshold,
    knn_graph,
)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_cluster", ROOT / "benchmarks" / "bench_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


score = _bench().score


@pytest.fixture(scope="module")
def runs(tmp_path_factory, default_home):
    """Two `run` outputs with the default model: the sample photos (largest face each), and with
    --multi a folder of Eva Longoria and Bradley Cooper's two-face photo beside Tony Blair's 10
    photos; and that folder."""
    env = {"OPENFACE_PY_HOME": str(default_home)}
    root = tmp_path_factory.mktemp("cluster-runs")
    sample = root / "sample-run"
    rc, out, err = cli("run", str(SAMPLE), str(sample), "--workers", "2", env=env)
    assert rc == 0, err
    photos = root / "two-faces"
    shutil.copytree(SAMPLE / "Tony_Blair", photos / "Tony_Blair")
    (photos / "group").mkdir()
    shutil.copy(EXAMPLES / "longoria-cooper.jpg", photos / "group" / "longoria-cooper.jpg")
    multi = root / "multi-run"
    rc, out, err = cli("run", str(photos), str(multi), "--multi", "--workers", "2", env=env)
    assert rc == 0, err
    return sample, multi, photos


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


# --- the scorer (benchmarks/bench_cluster.py), checked by hand-counted examples ---


def test_scorer_by_hand():
    truth = ["a", "a", "a", "b", "b", "c"]
    found = [0, 0, 1, 1, 1, -1]  # -1: a cluster of its own
    s = score(truth, found)
    # pairs put together: (0,1) right, (2,3) (2,4) wrong, (3,4) right -> precision 2/4;
    # pairs of one person: (0,1) (0,2) (1,2) (3,4) -> recall 2/4
    assert s["pairwise_precision"] == 0.5 and s["pairwise_recall"] == 0.5 and s["pairwise_f"] == 0.5
    # BCubed precision per face: 1, 1, 1/3, 2/3, 2/3, 1 -> 14/18; recall: 2/3, 2/3, 1/3, 1, 1, 1 -> 14/18
    assert s["bcubed_precision"] == pytest.approx(14 / 18, abs=1e-4)
    assert s["bcubed_recall"] == pytest.approx(14 / 18, abs=1e-4)


def test_scorer_extremes():
    truth = np.repeat(np.arange(5), 4)
    perfect = score(truth, truth + 10)
    assert all(perfect[k] == 1.0 for k in perfect)
    alone = score(truth, np.full(len(truth), -1))  # every face unassigned: one cluster each
    assert alone["pairwise_precision"] == 1.0 and alone["pairwise_recall"] == 0.0 and alone["bcubed_precision"] == 1
    lumped = score(truth, np.zeros(len(truth), int))
    assert lumped["pairwise_recall"] == 1.0 and lumped["pairwise_precision"] == pytest.approx(30 / 190, abs=1e-4)
    assert lumped["nmi"] == 0.0


# --- the clustering on the sample's embeddings ---


def test_sample_people_are_their_own_clusters(runs):
    reps, labels, paths, meta = load_embeddings(runs[0])
    assert reps.shape == (100, 128) and meta["model"] == "nn4.small2.distilled-v2"
    found = cluster_faces(reps, paths, ClusterSettings(threshold=default_threshold(0.160)))
    s = score(labels, found.labels)
    assert s["pairwise_precision"] >= 0.95 and s["pairwise_f"] >= 0.85 and s["bcubed_f"] >= 0.85, s
    assert 8 <= found.n_clusters <= 14
    # deterministic: the same labels again, and with the faces in another order the same partition
    again = cluster_faces(reps, paths, ClusterSettings(threshold=default_threshold(0.160)))
    assert np.array_equal(found.labels, again.labels)
    order = np.random.default_rng(0).permutation(len(reps))
    shuffled = cluster_faces(reps[order], [paths[i] for i in order], found.settings).labels
    together = found.labels[order][:, None] == found.labels[order][None, :]
    assert np.array_equal(together, shuffled[:, None] == shuffled[None, :])
    # looser merges people, stricter splits them: the one setting moves the result both ways
    loose = cluster_faces(reps, paths, ClusterSettings(threshold=0.5))
    strict = cluster_faces(reps, paths, ClusterSettings(threshold=0.05))
    assert loose.n_clusters < found.n_clusters and score(labels, loose.labels)["pairwise_precision"] < 0.9
    assert strict.unassigned > found.unassigned + 20


def test_average_linkage_is_exact_on_the_whole_graph(runs):
    """With every face a neighbour of every other, the result is textbook average linkage (UPGMA
    on squared L2, scipy) cut at the threshold."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    reps = load_embeddings(runs[0])[0].astype(np.float64)
    tree = linkage(pdist(reps, "sqeuclidean"), "average")
    for t in (0.08, 0.12, 0.2):
        ref = fcluster(tree, t, "distance")
        got = cluster_faces(reps, None, ClusterSettings(threshold=t, min_size=1, k=len(reps) - 1)).labels
        pairs_ref = ref[:, None] == ref[None, :]
        assert np.array_equal(pairs_ref, got[:, None] == got[None, :]), t


def test_knn_graph_holds_no_self_and_k_neighbours(runs):
    reps = load_embeddings(runs[0])[0]
    ids, d = knn_graph(reps, 5)
    assert ids.shape == d.shape == (100, 5)
    assert not (ids == np.arange(100)[:, None]).any()
    assert (np.diff(d, axis=1) >= -1e-6).all()
    assert np.allclose(d[:, 0], ((reps - reps[ids[:, 0]]) ** 2).sum(1), atol=1e-4)


def test_min_size_leaves_small_clusters_unassigned(runs):
    reps, _, paths, _ = load_embeddings(runs[0])
    t = default_threshold(0.160)
    every = cluster_faces(reps, paths, ClusterSettings(threshold=t, min_size=1))
    sizes = np.array(every.sizes)
    assert sizes.min() < 8 < sizes.max()  # (else the cut below would show nothing)
    cut = cluster_faces(reps, paths, ClusterSettings(threshold=t, min_size=8))
    assert cut.unassigned == int(sizes[sizes < 8].sum())
    assert cut.sizes == [s for s in every.sizes if s >= 8]
    assert (cut.labels[every.labels >= len(cut.sizes)] == -1).all()
    groups = cut.groups()
    assert [len(g) for g in groups] == cut.sizes
    assert all(np.array_equal(g, cut.members(c)) for c, g in enumerate(groups))


def test_whispers_is_seeded(runs):
    reps, labels, paths, _ = load_embeddings(runs[0])
    settings = ClusterSettings(threshold=0.4 * 0.160, method="whispers", seed=3)
    a, b = cluster_faces(reps, paths, settings), cluster_faces(reps, paths, settings)
    assert np.array_equal(a.labels, b.labels)
    assert score(labels, a.labels)["pairwise_precision"] >= 0.9


def test_settings_refused():
    with pytest.raises(ValueError, match="method"):
        ClusterSettings(threshold=0.1, method="kmeans")
    with pytest.raises(ValueError, match="threshold"):
        ClusterSettings(threshold=float("nan"))
    with pytest.raises(ValueError, match="photo ids"):
        cluster_faces(np.eye(3, dtype=np.float32), ["a"], ClusterSettings(threshold=0.1))
    with pytest.raises(ValueError, match="NaN"):
        cluster_faces(np.full((3, 2), np.nan, np.float32), None, ClusterSettings(threshold=0.1))
    assert default_threshold(1.0) == DEFAULT_FACTOR


def test_small_and_exact_inputs():
    """No faces, one face, exact duplicates (FAISS may not list a face first among its copies)."""
    loose = ClusterSettings(threshold=0.5, min_size=1)
    assert cluster_faces(np.zeros((0, 4), np.float32), None, loose).n_clusters == 0
    assert cluster_faces(np.ones((1, 4), np.float32) / 2, None, loose).labels.tolist() == [0]
    same = np.ones((2, 4), np.float32) / 2
    assert cluster_faces(same, None, loose).labels.tolist() == [0, 0]
    assert cluster_faces(same, ["p", "p"], loose).labels.tolist() == [0, 1]  # one photo: never together
    assert cluster_faces(same, ["p", "p"], ClusterSettings(threshold=0.5)).labels.tolist() == [-1, -1]
    four = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # 4 people x 3 identical faces
    for method in ("average", "whispers"):
        got = cluster_faces(four, None, ClusterSettings(threshold=0.5, method=method)).labels
        assert got.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], method


# --- two faces of one photo ---


def test_two_faces_of_one_photo_never_share_a_cluster(runs, tmp_path):
    multi = runs[1]
    faces = json.loads((multi / "faces.json").read_text())
    group = [i for i, r in enumerate(faces) if r["path"] == "group/longoria-cooper.jpg"]
    assert len(group) == 2 and len(faces) == 12
    # so loose that every face joins one cluster...
    rc, out, err = cli("cluster", str(multi), "-o", str(tmp_path / "c"), "--threshold", "4", "--json")
    assert rc == 0, err
    report = json.loads(out)
    _, rows = _read_csv(tmp_path / "c" / "clusters.csv")
    clusters = [r[2] for r in rows]
    # ...except that the two faces of the group photo are never together
    assert clusters[group[0]] != clusters[group[1]] or clusters[group[0]] == ""
    assert report["merges_refused_same_photo"] >= 1
    others = {c for i, c in enumerate(clusters) if i not in group}
    assert others == {"0"}
    # the same faces without their photo ids (each its own photo) all end in one cluster
    reps, _, _, _ = load_embeddings(multi)
    free = cluster_faces(reps, None, ClusterSettings(threshold=4.0))
    assert free.n_clusters == 1 and free.unassigned == 0
    # Chinese Whispers keeps the constraint by separating the face farther from its cluster
    reps, _, _, _ = load_embeddings(multi)
    photos = [r["path"] for r in faces]
    whispers = cluster_faces(reps, photos, ClusterSettings(threshold=4.0, method="whispers", min_size=1))
    assert whispers.labels[group[0]] != whispers.labels[group[1]] and whispers.separated == 1


# --- the command ---


def test_cluster_command_files(runs, tmp_path):
    out = tmp_path / "people"
    rc, stdout, err = cli("cluster", str(runs[0]), "-o", str(out))
    assert rc == 0, err
    assert "100 faces of 100 photos" in stdout and "clusters" in stdout
    header, rows = _read_csv(out / "clusters.csv")
    assert header == ["path", "face", "cluster"]
    _, labels, paths, _ = load_embeddings(runs[0])
    faces = json.loads((runs[0] / "faces.json").read_text())
    assert [r[0] for r in rows] == paths and [int(r[1]) for r in rows] == [f["face"] for f in faces]
    doc = json.loads((out / "clusters.json").read_text())
    assert doc["settings"]["threshold"] == default_threshold(0.160) and doc["faces"] == 100
    # clusters numbered from the largest down; each member listed once, as in the CSV
    sizes = [m["size"] for m in doc["members"]]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) == doc["clusters"]
    from_csv = {(r[0], int(r[1])): r[2] for r in rows}
    for m in doc["members"]:
        assert all(from_csv[(f["path"], f["face"])] == str(m["cluster"]) for f in m["faces"])
    assert sum(sizes) + doc["unassigned"] == 100 == len(rows)
    assert sum(r[2] == "" for r in rows) == doc["unassigned"]
    # the sample's people come out as clusters: each big cluster is mostly one person
    by_cluster = {}
    for (path, _), label in zip(((r[0], r[1]) for r in rows), labels):
        by_cluster.setdefault(from_csv[(path, 0)], []).append(label)
    for c, people in by_cluster.items():
        if c != "" and len(people) >= 5:
            assert max(people.count(p) for p in set(people)) >= 0.9 * len(people), (c, people)
    # a contact sheet per cluster, as many thumbnails as members
    import cv2

    from openface_py.jobs.contactsheet import COLUMNS, GAP, THUMB

    sheets = sorted((out / "sheets").glob("cluster-*.png"))
    assert len(sheets) == doc["clusters"] == doc["sheets"]
    first = cv2.imread(str(out / doc["members"][0]["sheet"]))
    rows_needed = -(-sizes[0] // COLUMNS)
    assert first.shape == (rows_needed * (THUMB + GAP) + GAP, min(COLUMNS, sizes[0]) * (THUMB + GAP) + GAP, 3)
    assert first[GAP : GAP + THUMB, GAP : GAP + THUMB].std() > 20  # a photo, not the grey of a missing one
    # a rerun, stricter, into the same folder: the stale sheets go
    rc, stdout, err = cli("cluster", str(runs[0]), "-o", str(out), "--threshold", "0.02", "--min-size", "3", "--json")
    assert rc == 0, err
    again = json.loads(stdout)
    assert again["clusters"] < doc["clusters"]
    assert len(list((out / "sheets").glob("cluster-*.png"))) == again["clusters"]


def test_unreadable_photos_are_reported_and_skipped(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns(".openface-py.lock"))
    lab = json.loads((run / "labels.json").read_text())
    gone = lab["paths"][0]
    lab["paths"][0] = str(tmp_path / "moved-away.jpg")
    (run / "labels.json").write_text(json.dumps(lab))
    rc, out, err = cli("cluster", str(run), "-o", str(tmp_path / "out"), "--json", "--links")
    assert rc == 0, err
    report = json.loads(out)
    assert [u["path"] for u in report["unreadable"]] == [str(tmp_path / "moved-away.jpg")]
    assert gone != report["unreadable"][0]["path"] and report["sheets"] == report["clusters"]
    # no link to a photo that is not there; every other photo linked once
    assert report["unlinked"] == [str(tmp_path / "moved-away.jpg")] and report["links"] == 99


def test_cluster_command_errors(runs, tmp_path):
    rc, out, err = cli("cluster", str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert rc == 2 and "no such folder" in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    rc, out, err = cli("cluster", str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert rc == 1 and "no photos below it" in err
    assert not (tmp_path / "o").exists()
    rc, out, err = cli("cluster", str(runs[0]), "-o", str(tmp_path / "o"), "--detector", "hog", "--workers", "1")
    assert rc == 2 and "--detector, --workers: options of a folder of photos" in err
    rc, out, err = cli("cluster", str(runs[0]), "-o", str(tmp_path / "nowhere" / "o"))
    assert rc == 2 and "does not exist" in err
    rc, out, err = cli("cluster", str(runs[0]), "-o", str(SAMPLE))
    assert rc == 1 and "not an openface-py cluster output folder" in err
    rc, out, err = cli("cluster", str(runs[0]), "-o", str(tmp_path / "o"), "--min-size", "0")
    assert rc == 2
    # embeddings of one model, a run.json of another: refused, not mixed
    run = tmp_path / "mixed"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns(".openface-py.lock"))
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "identity": "dlib-resnet-v1|dlib-chip/150"}))
    rc, out, err = cli("cluster", str(run), "-o", str(tmp_path / "o"))
    assert rc == 1 and "two models" in err
    # faces.json of another run: refused
    shutil.copy(runs[1] / "faces.json", run / "faces.json")
    (run / "run.json").write_text(json.dumps(meta))
    rc, out, err = cli("cluster", str(run), "-o", str(tmp_path / "o"))
    assert rc == 1 and "rows in faces.json" in err
    rc, out, err = cli("cluster", "--help")
    assert rc == 0 and "--threshold" in out and "stricter" in out and "nn4.small2.distilled-v2 0.12" in out


def test_min_face_leaves_small_faces_out(runs, tmp_path):
    boxes = [r["box"] for r in json.loads((runs[0] / "faces.json").read_text())]
    sides = [max(b[2] - b[0], b[3] - b[1]) + 1 for b in boxes]
    floor = sorted(sides)[30]
    small = [side < floor for side in sides]
    assert 10 < sum(small) <= 30
    rc, out, err = cli("cluster", str(runs[0]), "-o", str(tmp_path / "o"), "--min-face", str(floor), "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["too_small"] == sum(small) and report["unassigned"] >= sum(small)
    _, rows = _read_csv(tmp_path / "o" / "clusters.csv")
    assert all(r[2] == "" for r, s in zip(rows, small) if s)


def test_parquet_run_clusters_as_the_openface_files(runs, default_home, tmp_path):
    """`run --format parquet` of the same photos: the same clusters; rows of two models refused."""
    pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the ray extra)")
    import pyarrow as pa

    sample, multi, photos = runs
    run = tmp_path / "pq-run"
    env = {"OPENFACE_PY_HOME": str(default_home)}
    rc, out, err = cli("run", str(photos), str(run), "--multi", "--format", "parquet", "--workers", "2", env=env)
    assert rc == 0, err
    for folder, name in ((multi, "from-files"), (run, "from-parquet")):
        rc, out, err = cli("cluster", str(folder), "-o", str(tmp_path / name), "--threshold", "0.2")
        assert rc == 0, err
    _, files = _read_csv(tmp_path / "from-files" / "clusters.csv")
    _, parquet = _read_csv(tmp_path / "from-parquet" / "clusters.csv")

    def groups(rows):  # the partition, whatever the clusters' numbers (ties are numbered by row order)
        out = {}
        for path, face, cluster in rows:
            out.setdefault(cluster or f"alone {path} {face}", set()).add((path, face))
        return sorted(sorted(g) for g in out.values())

    assert len(files) == len(parquet) == 12 and groups(files) == groups(parquet)
    assert len(groups(files)) >= 2  # (two people and a group photo: not one cluster)
    table = pq.read_table(run / "faces.parquet")
    ids = table.column("identity").to_pylist()
    ids[0] = "dlib-resnet-v1|dlib-chip/150"
    mixed = table.set_column(table.schema.get_field_index("identity"), "identity", pa.array(ids))
    pq.write_table(mixed, run / "faces.parquet")
    rc, out, err = cli("cluster", str(run), "-o", str(tmp_path / "mixed"))
    assert rc == 1 and "more than one model" in err


# --- a folder of photos, and the folders of links ---


def _partition(rows):
    """clusters.csv's rows as {cluster folder name: photos}, as ``--links`` lays them out."""
    out = {}
    for path, _, cluster in rows:
        out.setdefault(f"cluster-{int(cluster):04d}" if cluster else "unassigned", set()).add(path)
    return out


def _links(people):
    """people/'s folders as {folder name: the photos their links point at}; every entry a link."""
    out = {}
    for folder in sorted(people.iterdir()):
        entries = list(folder.iterdir())
        assert all(e.is_symlink() for e in entries), entries
        out[folder.name] = {str(e.resolve()) for e in entries}
        assert len(out[folder.name]) == len(entries)  # each photo once
    return out


def test_photo_folder_clusters_as_run_then_cluster(runs, default_home, tmp_path):
    """`cluster PHOTOS` runs every face of each photo into OUT/run and gives the clusters that
    `run --multi` then `cluster RUN_DIR` give; --links lays them out as folders of links."""
    _, multi, photos = runs
    env = {"OPENFACE_PY_HOME": str(default_home)}
    out = tmp_path / "out"
    rc, stdout, err = cli("cluster", str(photos), "-o", str(out), "--workers", "2", "--links", "--json", env=env)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["run"]["total"] == 11 and report["run"]["aligned"] == 11 and report["faces"] == 12
    assert json.loads((out / "run" / "run.json").read_text())["multi"] is True  # every face, as --multi
    rc, _, err = cli("cluster", str(multi), "-o", str(tmp_path / "ref"))
    assert rc == 0, err
    assert (out / "clusters.csv").read_text() == (tmp_path / "ref" / "clusters.csv").read_text()
    reps, _, _, _ = load_embeddings(out / "run")
    assert np.allclose(reps, load_embeddings(multi)[0], atol=1e-5)
    # the links: one folder per cluster and one of the unassigned, each photo of their faces once
    _, rows = _read_csv(out / "clusters.csv")
    expected = {k: {str(Path(p).resolve()) for p in v} for k, v in _partition(rows).items()}
    assert _links(out / "people") == expected and report["links"] == sum(len(v) for v in expected.values())
    assert "unassigned" in expected and len(expected) >= 2  # (the group photo's faces are unassigned)


def test_photo_folder_rerun_resumes(runs, default_home, tmp_path):
    """What a killed first attempt left in OUT/run is resumed, and so is a finished one to which
    photos were added: only the new photo is embedded."""
    _, multi, photos = runs
    env = {"OPENFACE_PY_HOME": str(default_home)}
    mine, out = tmp_path / "photos", tmp_path / "out"
    shutil.copytree(photos, mine)  # (copy2: the same sizes and times, so the run's journal vouches for them)
    shutil.copytree(multi, out / "run", ignore=shutil.ignore_patterns(".openface-py.lock"))
    rc, stdout, err = cli("cluster", str(mine), "-o", str(out), "--workers", "1", "--json", env=env)
    assert rc == 0, err
    report = json.loads(stdout)
    assert (report["run"]["aligned"], report["run"]["already_done"], report["faces"]) == (0, 11, 12)
    _, rows = _read_csv(out / "clusters.csv")
    assert all(r[0].startswith(str(mine)) for r in rows)  # the photos as they are now
    (mine / "Colin_Powell").mkdir()
    shutil.copy(SAMPLE / "Colin_Powell" / "Colin_Powell_0001.jpg", mine / "Colin_Powell")
    rc, stdout, err = cli("cluster", str(mine), "-o", str(out), "--workers", "1", "--json", env=env)
    assert rc == 0, err
    report = json.loads(stdout)
    assert (report["run"]["aligned"], report["run"]["already_done"], report["faces"]) == (1, 11, 13)
    assert len(_read_csv(out / "clusters.csv")[1]) == 13
    # a rerun with other detector settings is refused, not mixed into the run
    rc, stdout, err = cli("cluster", str(mine), "-o", str(out), "--detector", "hog", env=env)
    assert rc == 1 and "other settings" in err
    # photos that are all unreadable: each reported, and nothing to cluster
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a photo")
    rc, stdout, err = cli("cluster", str(bad), "-o", str(tmp_path / "bad-out"), "--workers", "1", env=env)
    assert rc == 1 and "FAILED a.jpg" in err and "no faces to cluster" in err
    assert "no person label" not in err  # (a flat folder of photos is what cluster expects)


def test_links_are_replaced_on_a_rerun(runs, tmp_path):
    multi = runs[1]
    out = tmp_path / "out"
    rc, stdout, err = cli("cluster", str(multi), "-o", str(out), "--links", "--threshold", "4", "--min-size", "1")
    assert rc == 0, err
    _, rows = _read_csv(out / "clusters.csv")
    assert _links(out / "people") == _partition(rows) and len(_partition(rows)) == 2  # everyone, the other face
    # a killed run's temporary links folder is removed; a stricter rerun swaps in its own folders
    leftover = out / ".openface-py-tmp.people.999" / "cluster-0000"
    leftover.mkdir(parents=True)
    (leftover / "x.jpg").symlink_to(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg")
    rc, stdout, err = cli("cluster", str(multi), "-o", str(out), "--links", "--json")
    assert rc == 0, err
    _, rows = _read_csv(out / "clusters.csv")
    assert _links(out / "people") == _partition(rows) and json.loads(stdout)["clusters"] == 2
    assert not leftover.parent.exists() and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [
        ".openface-py.lock"
    ]
    # a file of the user's in people/: refused, nothing removed
    (out / "people" / "notes.txt").write_text("mine")
    rc, stdout, err = cli("cluster", str(multi), "-o", str(out), "--links")
    assert rc == 1 and "did not make" in err and (out / "people" / "notes.txt").read_text() == "mine"
    rc, stdout, err = cli("cluster", str(multi), "-o", str(out))  # no --links: people/ is not ours, kept
    assert rc == 0 and (out / "people" / "notes.txt").is_file()
    (out / "people" / "notes.txt").unlink()
    rc, stdout, err = cli("cluster", str(multi), "-o", str(out))  # no --links: our earlier links go
    assert rc == 0 and not (out / "people").exists()


def test_link_names_are_unique_in_a_folder():
    from openface_py.jobs.clusterjob import _link_name

    used: set[str] = set()
    names = [_link_name(n, used) for n in ("a.jpg", "b.jpg", "a.jpg", "A.JPG", "a.jpg")]
    assert names == ["a.jpg", "b.jpg", "a~1.jpg", "A~2.JPG", "a~3.jpg"]
