"""Tests of openface_py.device, cli.common (--device), pipeline, nets.embedders, faces.mtcnn, jobs.stream.

Where the networks run is one value from the command line to every network of a command: every
command that detects or embeds takes ``--device``; a GPU asked for where torch sees none is a usage
error (exit 2) with the reason, before any work; the device changes where, not what (detector keys,
run folders and embeddings do not depend on it); faces handed over as one uint8 array are
embedded as the list path embeds them. These run on the CPU (CI has no GPU); on a machine with one,
the CUDA checks of ``benchmarks/bench_gpu.py`` measure the rest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE, cli

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer where torch sees no GPU")

#: every command that detects or embeds (issue 28's list, and the commands added since)
DEVICE_COMMANDS = (
    ("align",),
    ("represent",),
    ("run",),
    ("detect",),
    ("embed",),
    ("lfw",),
    ("pairs-eval",),
    ("lfw-classify",),
    ("db", "import"),
    ("db", "enroll"),
    ("db", "search"),
    ("identify",),
    ("compare",),
    ("infer",),
    ("serve",),
    ("video",),
    ("cluster",),
    ("train-net",),
)


@pytest.mark.parametrize("command", DEVICE_COMMANDS, ids=" ".join)
def test_every_detecting_or_embedding_command_takes_a_device(command):
    res = cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert "--device DEVICE" in res.stdout and "cuda:N" in res.stdout


def test_an_unknown_device_is_a_usage_error(tmp_path):
    res = cli("embed", str(SAMPLE), "--device", "gpu")
    assert res.returncode == 2 and "unknown device 'gpu'" in res.stderr


@NO_GPU
@pytest.mark.parametrize(
    "args",
    [
        ("embed", "{photo}"),
        ("detect", "{photo}", "--detector", "mtcnn"),
        ("run", "{sample}", "{out}/run"),
        ("represent", "{aligned}", "{out}/reps"),
        ("compare", "{photo}", "{photo}"),
        ("train-net", "{aligned}", "--out", "{out}/net"),
    ],
    ids=lambda a: a[0],
)
def test_a_gpu_asked_for_where_there_is_none_exits_2_with_the_reason(args, tmp_path, aligned_openface):
    photo = next(iter(sorted(SAMPLE.rglob("*.jpg"))))
    argv = [a.format(photo=photo, sample=SAMPLE, out=tmp_path, aligned=aligned_openface) for a in args]
    res = cli(*argv, "--device", "cuda")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "sees no CUDA GPU" in res.stderr and "--device cpu" in res.stderr
    assert not (tmp_path / "run" / "run.json").exists()  # refused before any work


def test_the_device_changes_where_not_what():
    from dataclasses import replace

    from openface_py.faces.detect import DetectorSpec

    spec = DetectorSpec("hog-mtcnn", min_face=30)
    elsewhere = replace(spec, device="cuda:1")
    assert elsewhere == spec and elsewhere.key == spec.key and elsewhere.to_dict() == spec.to_dict()
    assert "cuda" not in elsewhere.key


def test_pipeline_puts_detector_and_embedder_on_one_device():
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create("nn4.small2.distilled-v2", detector="mtcnn", device="cpu")
    assert pipe.embedder.device == "cpu" and pipe.stage.spec.detector.device == "cpu"
    assert pipe.embedder.batch_size == 32


def test_faces_as_one_uint8_array_are_embedded_as_a_list(default_embedder, aligned_openface):
    """The array path (batched by slicing, bytes converted where the network runs) gives the list
    path's embeddings exactly, at any batch size; wrong shapes or types are refused with the reason."""
    from openface_py.io import load_image

    faces = np.stack([load_image(p) for p in sorted(aligned_openface.rglob("*.png"))[:11]])
    listed = default_embedder.embed(list(faces))
    assert np.array_equal(default_embedder.embed(faces), listed)
    assert np.array_equal(default_embedder.embed(faces, batch_size=4), listed)
    assert np.array_equal(default_embedder.embed(faces[3]), listed[3:4])
    with pytest.raises(ValueError, match=r"shape \(N, 96, 96, 3\)"):
        default_embedder.embed(faces.astype(np.float32))


def test_run_records_where_it_ran_and_resumes_on_another_device(tmp_path):
    """run.json says where the run ran; a rerun on another device (here: a folder that says it ran
    on a GPU) is not refused as other settings, does no work again, and records the new device."""
    src = tmp_path / "photos"
    person = next(p for p in sorted(SAMPLE.iterdir()) if p.is_dir())
    shutil.copytree(person, src / person.name)
    out = tmp_path / "out"
    first = cli("run", str(src), str(out), "--device", "cpu", "--workers", "1", "--json")
    assert first.returncode == 0, first.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["device"] == "cpu"
    (out / "run.json").write_text(json.dumps({**meta, "device": "cuda:0"}))
    again = cli("run", str(src), str(out), "--device", "auto", "--workers", "1", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["aligned"] == 0 and report["already_done"] == report["total"] == json.loads(first.stdout)["total"]
    assert json.loads((out / "run.json").read_text())["device"] == "cpu"


def test_bench_gpu_runs_in_its_reduced_mode(tmp_path):
    """benchmarks/bench_gpu.py (the GPU figures of issue 28) on this machine, reduced: every
    measurement runs, and the device path agrees with the CPU's eager reference."""
    import subprocess
    import sys

    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--reduced", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert [f["model"] for f in fig["embedding"]] == ["nn4.small2.distilled-v2", "mobilefacenet-reid-0095"]
    for f in fig["embedding"]:
        assert f["vs_cpu_eager"]["max_abs_diff"] < 1e-4 and f["vs_cpu_eager"]["min_cosine"] > 0.9999
        assert 0.99 < f["autocast_min_cosine"]["bfloat16"] <= 1.0 + 1e-6
        assert [r["batch"] for r in f["batches"]] == [8, 16]
        assert all(r["embedder"] > 0 and r["raw_float32"] > 0 for r in f["batches"])
    m = fig["mtcnn"]
    assert m["faces"] >= m["photos"] and m["same_face_counts_as_cpu"] and m["max_box_diff_px"] <= 0.5
    assert fig["run"]["photos"] == 4 and fig["run"]["photos_per_s"] > 0
    assert len(fig["train_net"]["seconds_per_epoch"]) == 1 and fig["train_net"]["device"] == fig["machine"]["device"]
    assert "peak RSS" in done.stdout and fig["peak_rss_mb"] > 0
