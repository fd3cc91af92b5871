"""Tests of openface_py.nets.mobilefacenet.

MobileFaceNet reid-0095 (Intel's face-reidentification-retail-0095 in our PyTorch): parity with
OpenVINO's outputs recorded in tests/data/reid0095, the converter, the pinned weights, Intel's
5-point alignment, the registry entry and an LFW-subset accuracy floor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LFW, ROOT, SAMPLE, SHARED, cli, needs_lfw

from openface_py import store
from openface_py.errors import WeightsError
from openface_py.faces.align import (
    INTEL5_TEMPLATE,
    Intel5Aligner,
    align_detection,
    five_from_68,
    intel5_spec,
    similarity_transform,
)
from openface_py.nets.catalog import MOBILEFACENET_REID, SAME_PERSON_THRESHOLDS
from openface_py.nets.embed import alignment_for, describe_model, embedding_dim, load_embedder, model_statuses

REF = ROOT / "tests" / "data" / "reid0095"
SHIPPED = store.project_models_dir() / store.MOBILEFACENET_REID0095.filename
IR = SHARED / "models" / "intel-open-model-zoo"
needs_ir = pytest.mark.skipif(
    not (IR / "face-reidentification-retail-0095-FP16.bin").is_file(),
    reason=f"needs Intel's IR files at {IR} (../shared, present in CI)",
)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(MOBILEFACENET_REID, backend="eager")


def _load_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_embeddings_equal_openvino_on_recorded_faces(embedder):
    """Cosine >= 0.9999 with the OpenVINO runtime's outputs on the IR (float32), recorded once
    outside the project (tests/data/reid0095/README.md); crops aligned from dlib68 and mtcnn5."""
    rows = json.loads((REF / "openvino-outputs.json").read_text())
    assert len(rows) >= 6 and {r["aligned_from"] for r in rows} == {"dlib68", "mtcnn5"}
    ours = embedder.embed([_load_png(REF / r["crop"]) for r in rows])
    ref = np.array([r["openvino"] for r in rows], dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert ours.shape == (len(rows), 256) and ours.dtype == np.float32
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = (ours * ref).sum(axis=1)
    assert cos.min() >= 0.9999, cos
    # and the faces are told apart: no two different photos near-identical
    sims = ours @ ours.T
    assert sims[~np.eye(len(rows), dtype=bool)].max() < 0.9


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_onnx_and_openvino_backends_match_openvino_on_the_ir(tmp_path, monkeypatch, backend):
    """The ONNX Runtime and OpenVINO backends (both on our network exported once per weights into
    $OPENFACE_PY_HOME/onnx) give the embeddings OpenVINO gave on Intel's own IR; ``auto`` checks
    them against eager at start-up."""
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra (pip install 'openface-py[openvino]')")
    monkeypatch.setenv("OPENFACE_PY_HOME", str(tmp_path))
    rows = json.loads((REF / "openvino-outputs.json").read_text())
    emb = load_embedder(MOBILEFACENET_REID, backend=backend)
    assert emb.backend == backend and list((tmp_path / "onnx").glob("mobilefacenet-*.onnx"))
    ours = emb.embed([_load_png(REF / r["crop"]) for r in rows])
    ref = np.array([r["openvino"] for r in rows], dtype=np.float64)
    assert ((ours * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)).min() >= 0.9999


def test_shipped_file_matches_its_pinned_sha256():
    assert SHIPPED.is_file(), f"{SHIPPED} is missing from the checkout"
    assert store.sha256sum(SHIPPED) == store.MOBILEFACENET_REID0095.sha256
    assert (ROOT / "models" / "REID0095_CARD.md").is_file()


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "models"
    bad.mkdir()
    data = bytearray(SHIPPED.read_bytes())
    data[-100] ^= 0xFF
    (bad / SHIPPED.name).write_bytes(bytes(data))
    monkeypatch.setattr(store, "project_models_dir", lambda: bad)
    with pytest.raises(WeightsError, match="does not match the pinned"):
        load_embedder(MOBILEFACENET_REID)


@needs_ir
def test_converter_reproduces_the_shipped_file_byte_for_byte(tmp_path):
    out = tmp_path / store.MOBILEFACENET_REID0095.filename
    r = subprocess.run(
        [sys.executable, str(ROOT / "models" / "convert_reid0095.py"), str(IR), "-o", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "1,106,808 parameters" in r.stdout
    assert store.sha256sum(out) == store.MOBILEFACENET_REID0095.sha256


def test_registry_threshold_and_identity(embedder):
    assert embedder.name == MOBILEFACENET_REID and embedder.dim == 256 == embedding_dim(MOBILEFACENET_REID)
    assert embedder.same_person_threshold == SAME_PERSON_THRESHOLDS[MOBILEFACENET_REID]
    assert 0.5 < embedder.same_person_threshold < 2.0  # squared L2 on unit vectors = 2 - 2 cos
    assert embedder.alignment == intel5_spec() == alignment_for(MOBILEFACENET_REID)
    assert embedder.identity == "mobilefacenet-reid-0095|intel5-similarity/128/5points"
    assert describe_model(MOBILEFACENET_REID) == (MOBILEFACENET_REID, MOBILEFACENET_REID, intel5_spec())
    (st,) = [s for s in model_statuses() if s.name == MOBILEFACENET_REID]
    assert st.installed and st.path == str(SHIPPED)
    with pytest.raises(ValueError, match=r"\(128, 128, 3\)"):
        embedder.embed([np.zeros((96, 96, 3), np.uint8)])


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    a, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m = similarity_transform(src, src @ rot.T + t)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], t)


@pytest.mark.parametrize("align_from, used", [("mtcnn5", "mtcnn5"), ("dlib68", "dlib68"), ("auto", "mtcnn5")])
def test_alignment_puts_the_points_on_intels_template(sample_rgb, align_from, used):
    """MTCNN's 5 points (or the 5 taken from dlib's 68) land near Intel's template at 128x128;
    ``auto`` (the default) takes MTCNN's points for this alignment, and dlib's 68 for OpenFace's."""
    from openface_py.faces.align import OpenFaceAligner
    from openface_py.faces.detect import MTCNN_ALIGN_DEFAULT, DetectorSpec

    det = DetectorSpec("mtcnn", align_from=align_from).make().detect(sample_rgb)[0]
    aligner = Intel5Aligner()
    face = align_detection(aligner, sample_rgb, det)
    assert face.aligned_from == used and face.image.shape == (128, 128, 3)
    if align_from == "auto":
        assert (
            MTCNN_ALIGN_DEFAULT == "auto"
            and align_detection(OpenFaceAligner(), sample_rgb, det).aligned_from == "dlib68"
        )
        # jobs record the concrete choice; dlib's detectors have none to make
        spec = DetectorSpec("mtcnn")
        assert (spec.resolved(True).align_from, spec.resolved(False).align_from) == ("mtcnn5", "dlib68")
        assert DetectorSpec("hog").resolved(True) == DetectorSpec("hog")
    pts = face.landmarks if used == "mtcnn5" else five_from_68(face.landmarks)
    m = similarity_transform(pts, np.array(INTEL5_TEMPLATE) * 128)
    moved = pts @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - np.array(INTEL5_TEMPLATE) * 128).max() < 6.0  # px, a frontal face


def test_compare_cli_tells_sample_people_apart():
    photos = [SAMPLE / "Colin_Powell" / f"Colin_Powell_000{i}.jpg" for i in (1, 2)]
    photos.append(SAMPLE / "Tony_Blair" / "Tony_Blair_0001.jpg")
    r = cli("compare", "--model", MOBILEFACENET_REID, *map(str, photos))
    assert r.returncode == 0, r.stderr
    verdicts = [line.strip() for line in r.stdout.splitlines() if "person" in line or "people" in line]
    assert verdicts[0].startswith("+ same person") and all(v.startswith("+ different") for v in verdicts[1:])


@needs_lfw
def test_lfw_subset_accuracy_floor(embedder):
    """The first 10 same and 10 different pairs of folds 1 and 6 of pairs.txt, aligned from dlib's
    68 landmarks in LFW's central box (deep funnelling centres the face; no detector, to keep the
    test fast), judged by the model's own threshold: at least 95% right (full LFW: BENCHMARKS.md)."""
    from openface_py.eval.protocol import image_name, parse_pairs
    from openface_py.faces.stage import CENTRAL_BOX
    from openface_py.io import load_image

    pairs, _, per = parse_pairs(LFW / "pairs.txt")
    chosen = [p for f in (0, 5) for p in pairs[2 * f * per :][:10] + pairs[(2 * f + 1) * per :][:10]]
    aligner, box = Intel5Aligner(), CENTRAL_BOX

    def rep(name: str, num: int) -> np.ndarray:
        return embedder.embed([aligner.align(load_image(LFW / "deepfunneled" / image_name(name, num)), box).image])[0]

    dist = np.array([np.sum((rep(p.name1, p.num1) - rep(p.name2, p.num2)) ** 2) for p in chosen])
    same = np.array([p.same for p in chosen])
    assert same.sum() == 20 and (~same).sum() == 20
    assert ((dist < embedder.same_person_threshold) == same).mean() >= 0.95
    assert dist[same].max() < dist[~same].min() + 0.3  # nearly separable, not just right on average


def test_a_job_knows_the_embedding_length_without_loading_the_model():
    """The Ray engine reshapes embeddings by ``EmbedderSpec.dim``: 128 there garbled 256-D vectors."""
    from openface_py.jobs.engine import EmbedderSpec
    from openface_py.nets.embed import load_embedder

    assert EmbedderSpec.of("mobilefacenet-reid-0095").dim == load_embedder("mobilefacenet-reid-0095").dim == 256
    assert EmbedderSpec.of("nn4.small2.distilled-v2").dim == 128


def test_identify_names_the_sample_people_and_no_stranger():
    """``identify`` against the 10-person sample gallery (100 faces) with the model's open-set
    threshold (its pair threshold tightened for 100 faces by its measured impostor curve): the
    OpenFace example strangers (Clapton, Lennon, Carell, Adams) are all unknown, and unseen photos of
    two gallery people (from LFW, which the gallery lacks) are named. With the 1:1 threshold 1.444
    two of the strangers were named (lennon-2, carell: BENCHMARKS.md)."""
    from conftest import EXAMPLES

    from openface_py.nets.embed import impostor_far
    from openface_py.recognize.verify import identification_threshold

    strangers = [EXAMPLES / f"{n}.jpg" for n in ("clapton-1", "clapton-2", "lennon-1", "lennon-2", "carell", "adams")]
    unseen = [("Tony_Blair", 11), ("Tony_Blair", 12), ("Colin_Powell", 11), ("Colin_Powell", 12)]
    known = [LFW / "deepfunneled" / n / f"{n}_{k:04d}.jpg" for n, k in unseen] if LFW.is_dir() else []
    r = cli("identify", "--model", MOBILEFACENET_REID, "--json", str(SAMPLE), *map(str, strangers + known))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = identification_threshold(SAME_PERSON_THRESHOLDS[MOBILEFACENET_REID], impostor_far(MOBILEFACENET_REID), 100)
    assert out["threshold"] == pytest.approx(want) and out["threshold"] < SAME_PERSON_THRESHOLDS[MOBILEFACENET_REID]
    faces = {Path(res["path"]).name: res["faces"] for res in out["results"]}
    for photo in strangers:
        assert [f["name"] for f in faces[photo.name]] == ["unknown"], (photo.name, faces[photo.name])
    for photo in known:
        assert [f["name"] for f in faces[photo.name]] == [photo.parent.name], faces[photo.name]


def test_the_model_in_run_train_infer_db_and_video(tmp_path):
    """mobilefacenet-reid-0095 through the commands that keep embeddings: ``run`` (256-D rows and its
    identity), ``train`` + ``infer`` (a classifier on them names a person), ``db create/import/search``
    (a 256-D database finds the right person), and ``video --gallery`` on a clip made of a sample
    photo. Eight photos each of three of the sample's people keep it short; the photos probed are not enrolled."""
    import shutil

    import cv2

    people = tmp_path / "people"
    for name in ("Colin_Powell", "Tony_Blair", "Vladimir_Putin"):
        (people / name).mkdir(parents=True)
        for photo in sorted((SAMPLE / name).glob("*.jpg"))[:8]:
            shutil.copy(photo, people / name / photo.name)
    blair = sorted((SAMPLE / "Tony_Blair").glob("*.jpg"))[8:]  # not enrolled
    identity = f"{MOBILEFACENET_REID}|intel5-similarity/128/5points"
    reps = tmp_path / "reps"
    r = cli("-q", "run", str(people), str(reps), "--model", MOBILEFACENET_REID, "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((reps / "embeddings.json").read_text())["identity"] == identity
    assert np.load(reps / "reps.npy").shape == (24, 256)

    r = cli("-q", "train", str(reps), "-o", str(tmp_path / "people.skops"), "--no-plot")
    assert r.returncode == 0, r.stderr
    r = cli("infer", str(tmp_path / "people.skops"), str(blair[0]), "--model", MOBILEFACENET_REID, "--json")
    assert r.returncode == 0, r.stderr
    assert "Tony_Blair" in r.stdout

    db = tmp_path / "people.db"
    for args in (("db", "create", str(db), "--model", MOBILEFACENET_REID), ("db", "import", str(db), str(people))):
        r = cli("-q", *args)
        assert r.returncode == 0, r.stderr
    r = cli("db", "search", str(db), str(blair[1]), "--json")
    assert r.returncode == 0, r.stderr
    assert "Tony_Blair" in r.stdout and "Colin_Powell" not in r.stdout

    clip = tmp_path / "clip.mp4"
    frame = cv2.resize(cv2.imread(str(blair[0])), (500, 500))
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (500, 500))
    for _ in range(6):
        writer.write(frame)
    writer.release()
    results = tmp_path / "frames.jsonl"
    r = cli(
        "-q", "video", str(clip), "--gallery", str(people), "--model", MOBILEFACENET_REID, "--results", str(results)
    )
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(frames) == 6 and all("Tony_Blair" in json.dumps(f) for f in frames), frames[:1]
