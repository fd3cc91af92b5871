"""Tests of openface_py.jobs.rayengine.

`--engine ray` on a local Ray instance (2 CPUs, started and stopped here): the same rows and
embeddings as the local engine, bad photos reported alike, a `file://` URL as input, Parquet
output, resuming after the driver is killed, `lfw`/`db import` through the same pipeline, and
the message when Ray is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, SAMPLE, cli

from openface_py.jobs.engine import EmbedderSpec, Engine
from openface_py.jobs.stream import RUN_JOURNAL, run_folder
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED

ray = pytest.importorskip(
    "ray", reason="the Ray engine's tests need Ray: pip install 'openface-py[ray]' (make test does)"
)
pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the ray extra)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The 100 sample photos in their people's folders, a corrupt file, a photo without a face, a two-face photo."""
    root = tmp_path_factory.mktemp("ray-photos")
    shutil.copytree(SAMPLE, root, dirs_exist_ok=True)
    (root / "Tony_Blair" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "none").mkdir()
    import cv2

    cv2.imwrite(str(root / "none" / "grey.png"), np.full((120, 160, 3), 128, np.uint8))
    shutil.copy(EXAMPLES / "longoria-cooper.jpg", root / "none" / "two.jpg")
    return root


@pytest.fixture(scope="module")
def local(photos, onnx_embedder, tmp_path_factory):
    """The local engine's outputs for the photos: what every Ray run must give. In this process
    (workers=1): two spawned workers cost more to start than they save on 103 photos."""
    out = tmp_path_factory.mktemp("local")
    report = run_folder(photos, out, onnx_embedder, workers=1, progress=False)
    return out, report


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of 2 CPUs for this module's in-process runs (they join it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(d):
    reps = np.load(d / "reps.npy")
    return reps, json.loads((d / "labels.json").read_text()), json.loads((d / "faces.json").read_text())


def test_ray_equals_local_and_reports_bad_photos_alike(photos, local, ray_instance, tmp_path):
    ref_dir, ref_report = local
    spec = EmbedderSpec.of(NN4_SMALL2_DISTILLED, backend="onnx")
    report = run_folder(photos, tmp_path / "ray", spec, engine=Engine("ray"), batch_size=8, progress=False)
    assert report.total == ref_report.total == 103
    assert report.done_ok_total == ref_report.done_ok_total == 101
    assert {(f.path, f.reason) for f in report.failures} == {(f.path, f.reason) for f in ref_report.failures}
    assert {f.path for f in report.failures} == {"Tony_Blair/broken.jpg", "none/grey.png"}
    reps, labels, faces = _rows(tmp_path / "ray")
    ref_reps, ref_labels, ref_faces = _rows(ref_dir)
    assert labels == ref_labels and faces == ref_faces  # same photos, faces, boxes, in the same order
    assert reps.shape == ref_reps.shape == (101, 128)
    assert np.abs(reps - ref_reps).max() < 1e-5
    saved = json.loads((tmp_path / "ray" / "run-report.json").read_text())
    assert saved["failed"] == 2 and saved["aligned_total"] == 101


def test_url_input_and_parquet_output(photos, local, ray_instance, tmp_path):
    ref_dir, _ = local
    url = photos.resolve().as_uri()  # file:///...: read through pyarrow.fs, as s3:// would be
    spec = EmbedderSpec.of(NN4_SMALL2_DISTILLED, backend="onnx")
    report = run_folder(url, tmp_path / "pq", spec, engine=Engine("ray"), output_format="parquet", progress=False)
    assert report.done_ok_total == 101 and len(report.failures) == 2
    assert not (tmp_path / "pq" / "reps.csv").exists()
    table = pq.read_table(tmp_path / "pq" / "faces.parquet").to_pylist()
    ref_reps, ref_labels, ref_faces = _rows(ref_dir)
    assert len(table) == 101
    got = {(r["path"], r["face"]): r for r in table}
    for rep, path, face in zip(ref_reps, ref_labels["paths"], ref_faces):
        row = got[(url + "/" + face["path"], face["face"])]
        assert os.path.relpath(path, photos) == face["path"]
        assert row["box"] == face["box"] and row["label"] == face["path"].rsplit("/", 1)[0]
        assert row["identity"] == spec.identity
        assert np.abs(np.array(row["embedding"], np.float32) - rep).max() < 1e-5


def _ray_run(photos, out, *extra) -> list:
    return [sys.executable, "-m", "openface_py", "-q", "run", str(photos), str(out), "--engine", "ray",
            "--batch-size", "4", "--model", NN4_SMALL2_DISTILLED, "--backend", "onnx", *extra]  # fmt: skip


def test_resumes_after_the_driver_is_killed_without_redoing_photos(photos, local, ray_instance, tmp_path):
    """A CLI driver on a running Ray instance (--ray-address), killed part-way (SIGKILL, the driver
    alone), then resumed by a CLI driver with a private instance of its own."""
    out = tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        _ray_run(photos, out, "--ray-address", address), cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    journal = out / RUN_JOURNAL
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert 12 <= len(before) < 103, "kill the run part-way"
    r = subprocess.run(_ray_run(photos, out, "--json"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["already_done"] == len({e["src"] for e in before})
    assert report["aligned"] == 101 - sum(e["status"] == "ok" for e in before)  # only the rest was embedded
    assert report["aligned_total"] == 101 and report["failed"] == 2 and report["total"] == 103
    after = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
    assert len(after) == 103 and len({e["src"] for e in after}) == 103  # nothing done twice
    reps, labels, faces = _rows(out)
    ref_reps, ref_labels, ref_faces = _rows(local[0])
    assert labels == ref_labels and faces == ref_faces
    assert np.abs(reps - ref_reps).max() < 1e-5


def test_lfw_and_db_import_share_the_pipeline(photos, ray_instance, onnx_embedder, tmp_path):
    """pairs-eval's photo embedding and db import on Ray give what the local engine gives."""
    from openface_py.eval.lfw import embed_lfw_images
    from openface_py.faces.detect import DetectorSpec
    from openface_py.jobs.dbimport import import_folder
    from openface_py.recognize.facedb import FaceDatabase

    names = sorted(p.relative_to(SAMPLE).as_posix() for p in SAMPLE.glob("Colin_Powell/*.jpg"))
    embedder = onnx_embedder
    spec = EmbedderSpec.of(NN4_SMALL2_DISTILLED, backend="onnx")
    det = DetectorSpec("hog")
    here = embed_lfw_images(SAMPLE, names, embedder, tmp_path / "a.npz", workers=2, detector=det, progress=False)
    there = embed_lfw_images(
        SAMPLE, names, spec, tmp_path / "b.npz", detector=det, engine=Engine("ray"), progress=False
    )
    assert here.names == there.names and here.fallbacks == there.fallbacks
    assert np.abs(here.reps - there.reps).max() < 1e-5 and np.abs(here.reps_flip - there.reps_flip).max() < 1e-5

    gallery = tmp_path / "gallery"
    for person in ("Colin_Powell", "Hugo_Chavez"):
        shutil.copytree(photos / person, gallery / person)
    (gallery / "Hugo_Chavez" / "broken.jpg").write_bytes(b"not a photo")
    dbs = {}
    for engine in ("local", "ray"):
        db = FaceDatabase.create(tmp_path / f"{engine}.db", NN4_SMALL2_DISTILLED, spec.identity, 0.16)
        rep = import_folder(db, gallery, engine=Engine(engine, workers=2), progress=False)
        assert rep.enrolled == 20 and [f.path for f in rep.failures] == ["Hugo_Chavez/broken.jpg"]
        dbs[engine] = db, rep.failures[0].reason
    assert dbs["local"][1] == dbs["ray"][1]  # the same reason from either engine
    dbs = {e: db for e, (db, _) in dbs.items()}
    rows = {
        e: db.conn.execute(
            "SELECT p.source, f.box, f.embedding FROM faces f JOIN photos p ON p.id = f.photo_id ORDER BY p.source"
        ).fetchall()
        for e, db in dbs.items()
    }
    assert len(rows["local"]) == 20 and [r[:2] for r in rows["local"]] == [r[:2] for r in rows["ray"]]
    for (_, _, a), (_, _, b) in zip(rows["local"], rows["ray"]):
        assert np.abs(np.frombuffer(a, np.float32) - np.frombuffer(b, np.float32)).max() < 1e-5
    for db in dbs.values():
        db.close()


class _KillsItsActor:
    """run's face stage, except that one photo kills the process it runs in (a crash in native code)."""

    def __init__(self, job) -> None:
        from openface_py.jobs.stream import _FaceWorker

        self.inner = _FaceWorker(job)

    def __call__(self, rel: str):
        if rel.endswith("Colin_Powell_0003.jpg"):
            time.sleep(1)  # after some work, as a real crash comes: meanwhile more tasks queue on this actor
            os._exit(1)
        return self.inner(rel)


def test_a_photo_that_kills_its_actor_is_reported_and_left_for_a_rerun(ray_instance, tmp_path, monkeypatch):
    """One photo crashes the process it runs in (as native code can): every other photo is
    embedded, also those of its first block; it is reported, and not journaled (a rerun tries it again)."""
    from ray import cloudpickle

    from openface_py.jobs import rayengine, stream
    from openface_py.jobs.rayengine import LOST

    photos = tmp_path / "photos"
    for person in ("Colin_Powell", "Hugo_Chavez"):
        shutil.copytree(SAMPLE / person, photos / person)
    spec = EmbedderSpec.of(NN4_SMALL2_DISTILLED, backend="onnx")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    plan = rayengine.plan
    with monkeypatch.context() as m:
        m.setattr(stream, "_FaceWorker", _KillsItsActor)
        # the layout Ray gets on one CPU: a single face actor, so tasks queue behind the crashing one
        m.setattr(rayengine, "plan", lambda resources, engine: plan({**resources, "CPU": 1}, engine))
        # HOG alone (it finds every face here): a face actor starts 2 s sooner without MTCNN (torch),
        # and this test starts six of them
        report = run_folder(photos, tmp_path / "out", spec, detector="hog", engine=Engine("ray"), progress=False)
    assert [(f.path, f.reason) for f in report.failures] == [("Colin_Powell/Colin_Powell_0003.jpg", LOST)]
    assert report.done_ok_total == 19
    journal = [json.loads(x) for x in (tmp_path / "out" / RUN_JOURNAL).read_text().splitlines()]
    # not journaled: the next run does it again (a photo the journal does not name is to do)
    assert len(journal) == 19 and all(e["status"] == "ok" for e in journal)
    assert "Colin_Powell/Colin_Powell_0003.jpg" not in {e["src"] for e in journal}


def test_an_actor_that_cannot_start_ends_the_job_with_a_message(ray_instance, tmp_path):
    """A node whose weights differ from the driver's (the identity its actor loads is not the job's):
    the job stops with an OpenFacePyError that says so, not a Ray traceback, and embeds nothing."""
    from dataclasses import replace

    from openface_py.errors import OpenFacePyError

    photos = tmp_path / "photos"
    shutil.copytree(SAMPLE / "Hugo_Chavez", photos / "Hugo_Chavez")
    spec = EmbedderSpec.of(NN4_SMALL2_DISTILLED, backend="onnx")
    other = replace(spec, identity=spec.identity.replace("|", "-other-node|", 1))
    with pytest.raises(OpenFacePyError, match="Ray could not run the job") as err:
        # HOG alone: face actors that start without torch leave the CPUs to the embedding actor that fails
        run_folder(photos, tmp_path / "out", other, detector="hog", engine=Engine("ray"), progress=False)
    message = str(err.value)  # the cause from the actor's traceback, in one line
    assert "(ActorDiedError): OpenFacePyError: this worker's nn4.small2.distilled-v2 gives " in message
    assert message.endswith("the machines hold different weights")
    assert "\n" not in message and "\x1b" not in message
    journal = tmp_path / "out" / RUN_JOURNAL
    assert not journal.exists() or not journal.read_text().strip()


def test_the_cause_is_read_from_a_remote_traceback():
    """Ray's errors carry the remote traceback as text: the cause is its last exception line after
    a stack frame, not one of Ray's wrappers, whatever the exception class is called."""
    from openface_py.jobs.rayengine import root_cause

    chained = (
        'Task failed\nTraceback (most recent call last):\n  File "a.py", line 3, in load\n    raise e\n'
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        'Traceback (most recent call last):\n  File "b.py", line 9, in __call__\n'
        "ray.data.exceptions.UserCodeException: UDF failed to process a data block."
    )
    assert root_cause(RuntimeError(chained)) == "InvalidProtobuf: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"
    coloured = 'error in \x1b[36mray::X.__init__()\x1b[39m\n  File "m.py", line 2, in f\nMemoryError'
    assert root_cause(RuntimeError(coloured)) == "MemoryError"
    assert root_cause(RuntimeError("No: traceback here\nsecond line")) == "No: traceback here"


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed (in this process only)
    r = cli("run", str(SAMPLE), str(tmp_path / "out"), "--engine", "ray")
    assert r.returncode == 2, r.stderr
    assert "pip install 'openface-py[ray]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
