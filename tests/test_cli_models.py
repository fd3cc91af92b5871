"""Tests of openface_py.cli.models, cli.photos, nets.embed (the model registry), store.

CLI conventions, model registry, and the md5-checked download path (local file and HTTP server)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, ROOT, SAMPLE, cli, cli_process

from openface_py import cli as cli_mod
from openface_py import store
from openface_py.errors import ModelNotInstalledError, UsageError, WeightsError
from openface_py.nets.catalog import NN4_SMALL2_V1
from openface_py.nets.embed import best_installed_model, load_embedder, model_statuses
from openface_py.nets.nn4 import NN4Small2
from openface_py.pipeline import FacePipeline


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OPENFACE_PY_HOME", str(home))
    monkeypatch.setattr(store, "project_models_dir", lambda: tmp_path / "no-models")
    return home


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(handler.func):  # type: ignore[misc, name-defined]
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _commands(parser, path=()):
    """Every command path of the parser (("db",), ("db", "import"), ...), found by walking it."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


def test_help_for_every_command(capsys):
    commands = [(), *_commands(cli_mod.build_parser())]
    assert {("align",), ("run",), ("db", "import"), ("models", "download"), ("serve",)} <= set(commands)
    for args in commands:  # in this process: one interpreter start per command would cost 1.7 s each
        with pytest.raises(SystemExit) as exit_:
            cli_mod.main([*args, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith("usage: openface-py"), args
    assert cli_mod.main([]) == 2
    with pytest.raises(SystemExit) as exit_:
        cli_mod.main(["align"])  # its arguments missing
    assert exit_.value.code == 2
    assert "openface-py 0." in cli_process("--version").stdout  # `python -m openface_py` itself


def test_detect_json_two_faces_and_a_bad_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    r = cli("detect", str(EXAMPLES / "longoria-cooper.jpg"), str(bad), "--json", "--landmarks")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert len(out[0]["faces"]) == 2 and len(out[0]["faces"][0]["landmarks"]) == 68
    assert out[0]["faces"][0]["box"][0] < out[0]["faces"][1]["box"][0]
    assert out[1]["error"] == "empty file (0 bytes)"
    assert cli("detect", str(bad)).returncode == 1


def test_embed_cli_with_dlib_matches_the_library():
    r = cli("embed", str(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg"), "--model", "dlib-resnet-v1", "--json", "-q")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)[0]
    assert out["model"].startswith("dlib-resnet-v1|")
    vec = np.array(out["faces"][0]["embedding"])
    from openface_py.io import load_image

    lib = FacePipeline.create("dlib-resnet-v1").process(load_image(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg"))
    assert np.abs(vec - lib[0].embedding).max() < 1e-5


def test_pipeline_multi_face_photo():
    from openface_py.io import load_image

    pipe = FacePipeline.create("dlib-resnet-v1")
    faces = pipe.process(load_image(EXAMPLES / "longoria-cooper.jpg"), multi=True)
    assert len(faces) == 2 and faces[0].box.left < faces[1].box.left
    assert all(f.embedding.shape == (128,) for f in faces)
    # two different people
    assert np.sum((faces[0].embedding - faces[1].embedding) ** 2) > 0.36
    assert len(pipe.process(load_image(EXAMPLES / "longoria-cooper.jpg"), multi=False)) == 1


def test_missing_nn4_weights_is_a_clear_error(empty_home):
    with pytest.raises(ModelNotInstalledError, match="openface-py models download nn4.small2.v1"):
        load_embedder(NN4_SMALL2_V1)
    assert best_installed_model() == "dlib-resnet-v1"
    photo = str(SAMPLE / "Tony_Blair" / "Tony_Blair_0002.jpg")
    r = cli("embed", photo, "--model", NN4_SMALL2_V1, env={"OPENFACE_PY_HOME": str(empty_home)})
    if not (store.project_models_dir() / "nn4.small2.v1.pt").is_file():
        assert r.returncode == 3 and "models download nn4.small2.v1" in r.stderr
        # with no --model the shipped distilled weights are used instead (a program of its own: this
        # process hides them, project_models_dir above)
        r = cli_process("embed", photo, "--json", env={"OPENFACE_PY_HOME": str(empty_home)})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["model"].startswith("nn4.small2.distilled-v2|")
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        load_embedder("nope")
    r = cli("embed", photo, "--model", "nope", env={"OPENFACE_PY_HOME": str(empty_home)})
    assert r.returncode == 2 and "unknown model 'nope'" in r.stderr  # a usage error, not "not installed"


def test_output_piped_into_head_ends_quietly():
    """`openface-py detect --landmarks --json ... | head -1`: the reader goes away mid-output."""
    import subprocess
    import sys

    photos = [str(p) for p in sorted(SAMPLE.glob("*/*.jpg"))[:60]]
    proc = subprocess.Popen([sys.executable, "-m", "openface_py", "-q", "detect", "--landmarks", "--json", *photos],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0 and first.strip() == b"["
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_download_verifies_md5_and_is_atomic(tmp_path, http_server):
    root, url = http_server
    payload = b"weights" * 1000
    (root / "w.bin").write_bytes(payload)
    good = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "cache" / "w.bin"
    store.download(url + "w.bin", dest, md5=good, progress=False)
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(store.DownloadError, match="checksum mismatch"):
        store.download(url + "w.bin", dest, md5="0" * 32, progress=False)
    assert list(dest.parent.iterdir()) == []  # nothing half-written or unverified left
    with pytest.raises(store.DownloadError, match="cannot download"):
        store.download(url + "missing.bin", dest, progress=False)
    assert list(dest.parent.iterdir()) == []
    # file:// URLs go through the same path
    store.download((root / "w.bin").as_uri(), dest, md5=good, progress=False)
    assert dest.read_bytes() == payload


def test_models_download_end_to_end(tmp_path, http_server, empty_home, monkeypatch, capsys):
    """download -> list -> use, with a served state dict standing in for OpenFace's file."""
    root, url = http_server
    torch.manual_seed(3)
    torch.save(NN4Small2().state_dict(), root / "nn4.small2.v1.pt")
    real_md5 = store.NN4_SMALL2_V1_FILES["pt"].md5
    # First against the real published md5: the served stand-in must be refused.
    assert cli_mod.main(["-q", "models", "download", "nn4.small2.v1", "--url", url]) == 1
    assert not (empty_home / "nn4.small2.v1.pt").exists()
    assert real_md5 == "8de23b5e35e49df171175d28847c67c4"
    # Then with the stand-in's md5 registered: it installs, lists as installed, and loads.
    fake = store.DownloadableFile("nn4.small2.v1.pt", store.md5sum(root / "nn4.small2.v1.pt"), "test")
    monkeypatch.setitem(store.NN4_SMALL2_V1_FILES, "pt", fake)
    assert cli_mod.main(["-q", "models", "download", "nn4.small2.v1", "--url", url]) == 0
    assert (empty_home / "nn4.small2.v1.pt").is_file()
    capsys.readouterr()
    assert cli_mod.main(["models", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed[NN4_SMALL2_V1]["installed"] and listed[NN4_SMALL2_V1]["default"]
    emb = load_embedder(NN4_SMALL2_V1)
    assert emb.identity == "nn4.small2.v1|openface-affine/96/outerEyesAndNose"
    # a damaged installed file is refused by its md5
    with open(empty_home / "nn4.small2.v1.pt", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(WeightsError, match="does not match OpenFace's published"):
        load_embedder(NN4_SMALL2_V1)


def test_install_from_file_checks_md5(tmp_path, empty_home):
    f = tmp_path / "nn4.small2.v1.pt"
    f.write_bytes(b"not the release")
    assert cli_mod.main(["-q", "models", "download", "nn4.small2.v1", "--from-file", str(f)]) == 1
    assert not (empty_home / "nn4.small2.v1.pt").exists()


def test_model_statuses_and_dlib_files():
    names = {s.name: s for s in model_statuses()}
    assert names["dlib-resnet-v1"].installed and Path(names["dlib-resnet-v1"].path).is_file()
    for fn in (store.DLIB_LANDMARKS_68, store.DLIB_LANDMARKS_5, store.DLIB_MMOD_DETECTOR, store.DLIB_RESNET):
        assert store.dlib_model_path(fn).stat().st_size > 1000
    with pytest.raises(ModelNotInstalledError, match="pip install face_recognition_models"):
        store.dlib_model_path("no_such_model.dat")
