"""Tests of openface_py.recognize.modelfile (model files).

Classifier files cannot run code: skops format with a fixed list of types; pickles are refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
from conftest import EXAMPLES, cli
from skops.io import get_untrusted_types

from openface_py.recognize.classifiers import ClassifierError
from openface_py.recognize.classify import TrainedModel, train_model
from openface_py.recognize.modelfile import convert_pickle, load_model


def _model(name: str = "LinearSvm") -> TrainedModel:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 128))
    X = np.concatenate([c + 0.05 * rng.normal(size=(6, 128)) for c in centres])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = [f"p{i // 6}" for i in range(24)]
    return train_model(X, y, name, "dlib-resnet-v1", "dlib-resnet-v1|x", {}, open_set=False), X


def _with_checksum(path, data: bytes) -> None:
    path.write_bytes(data)
    (path.parent / (path.name + ".sha256")).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


class Payload:
    """Unpickling this runs a command (what a malicious model file would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["LinearSvm", "GMM", "KNN", "JointBayesian"])
def test_round_trip_is_not_a_pickle(tmp_path, name):
    model, X = _model(name)
    path = model.save(tmp_path / "m.skops")
    assert zipfile.is_zipfile(path) and not path.read_bytes().startswith(b"\x80")
    back = load_model(path)
    assert [p.name for p in back.predict(X)] == [p.name for p in model.predict(X)]
    assert back.embedder_identity == model.embedder_identity


def test_crafted_pickle_with_matching_checksum_is_refused_and_runs_nothing(tmp_path):
    import joblib

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    joblib.dump(Payload(str(marker)), buf)
    bad = tmp_path / "people.pkl"
    _with_checksum(bad, buf.getvalue())
    r = cli("infer", str(bad), str(EXAMPLES / "adams.jpg"), "-q")  # in this process: nothing may run here either
    assert r.returncode == 1 and "pickle model file" in r.stderr and "--trust-pickle" in r.stderr
    assert not marker.exists()


def test_crafted_skops_file_naming_a_callable_is_refused(tmp_path):
    model, _ = _model()
    good = model.save(tmp_path / "m.skops").read_bytes()
    src = zipfile.ZipFile(io.BytesIO(good))
    schema = json.loads(src.read("schema.json"))
    schema["__module__"], schema["__class__"] = "posix", "system"  # the top object becomes os.system
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for item in src.namelist():
            z.writestr(item, json.dumps(schema) if item == "schema.json" else src.read(item))
    bad = tmp_path / "bad.skops"
    _with_checksum(bad, out.getvalue())
    with pytest.raises(ClassifierError, match="posix.system"):
        load_model(bad)


def test_old_pickle_converts_once_with_trust(tmp_path):
    import joblib

    model, X = _model("KNN")
    buf = io.BytesIO()
    joblib.dump(model, buf)
    old = tmp_path / "old.pkl"
    _with_checksum(old, buf.getvalue())
    with pytest.raises(ClassifierError, match="convert it once"):
        load_model(old)
    cmd = ["models", "convert", str(old), "-o", str(tmp_path / "new.skops")]
    r = cli(*cmd)
    assert r.returncode == 2 and "--trust-pickle" in r.stderr  # never unpickled without the flag
    r = cli(*cmd, "--trust-pickle")
    assert r.returncode == 0, r.stderr
    new = load_model(tmp_path / "new.skops")
    assert [p.name for p in new.predict(X)] == [p.name for p in model.predict(X)]
    (tmp_path / "old.pkl.sha256").unlink()
    with pytest.raises(ClassifierError, match="unverified"):
        convert_pickle(old, tmp_path / "again.skops")


def test_a_model_file_written_by_0_2_still_loads_and_answers_as_it_did():
    """tests/data/model-0.2-LinearSvm.skops was written by openface-py 0.2 before the classifiers,
    the open-set code and the model files got modules of their own: it names its classes
    ``openface_py.recognize.classify.SvmClassifier`` and so on. It still loads (those names stay
    trusted and resolvable), and answers the 8 probes (photos 7-8 of the sample, two of people it
    never saw) as 0.2 answered them (model-0.2-answers.json, recorded with 0.2's code)."""
    from conftest import ROOT

    data = ROOT / "tests" / "data"
    path = data / "model-0.2-LinearSvm.skops"
    named = set(get_untrusted_types(file=path))
    assert {"openface_py.recognize.classify.SvmClassifier", "openface_py.recognize.classify.ScoreCalibrator"} <= named
    assert not any(".classifiers." in n or ".openset." in n for n in named)
    model = load_model(path)
    want = json.loads((data / "model-0.2-answers.json").read_text())
    got = model.predict(np.load(data / "model-0.2-probes.npy"))
    assert [p.name for p in got] == [w["name"] for w in want]
    assert [p.best for p in got] == [w["best"] for w in want]
    np.testing.assert_allclose([p.confidence for p in got], [w["confidence"] for w in want], atol=2e-6)
    np.testing.assert_allclose([p.score for p in got], [w["score"] for w in want], atol=2e-6)
    assert sum(p.name == "unknown" for p in got) == 2


def test_a_model_saved_now_names_the_classes_where_they_live(tmp_path):
    model, _ = _model("GMM")
    named = set(get_untrusted_types(file=model.save(tmp_path / "m.skops")))
    assert {"openface_py.recognize.classifiers.GmmClassifier", "openface_py.recognize.classify.TrainedModel"} <= named
    assert "openface_py.recognize.classify.GmmClassifier" not in named
