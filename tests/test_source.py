"""Tests of openface_py.jobs.source.

Photo folders given as URLs that only fsspec opens: a zip archive read in place.

`run` reads each photo from the archive in its worker, names it by a URL fsspec opens again,
and gives what the unpacked folder gives; a URL nothing can open is a clear error.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from conftest import SAMPLE

from openface_py import cli
from openface_py.errors import OpenFacePyError
from openface_py.jobs.source import PhotoSource
from openface_py.jobs.stream import PARQUET, run_folder
from openface_py.nets.catalog import NN4_SMALL2_DISTILLED
from openface_py.nets.embed import load_embedder

pq = pytest.importorskip("pyarrow.parquet", reason="needs pyarrow (the ray extra)")
fsspec = pytest.importorskip("fsspec", reason="needs fsspec (the ray extra)")

PEOPLE = ("Hugo_Chavez", "Colin_Powell")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two people's sample photos and a corrupt one, unpacked and as a zip archive of the same tree."""
    root = tmp_path_factory.mktemp("source")
    folder = root / "photos"
    for person in PEOPLE:
        shutil.copytree(SAMPLE / person, folder / person)
    (folder / "Hugo_Chavez" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with zipfile.ZipFile(root / "photos.zip", "w") as z:
        for path in sorted(folder.rglob("*.jpg")):
            z.write(path, path.relative_to(folder).as_posix())
    return folder, root / "photos.zip"


def test_a_zip_archive_is_read_in_place_and_named_by_urls_fsspec_opens(archive, tmp_path):
    folder, zipped = archive
    url = f"zip://::{zipped.as_uri()}"  # no pyarrow filesystem for zip: fsspec's, wrapped
    source = PhotoSource.open(url)
    names = source.list()
    assert names == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    for rel in names[:3]:
        with fsspec.open(source.where(rel), "rb") as fh:  # the name in the outputs opens again
            assert fh.read() == (folder / rel).read_bytes()
    inner = PhotoSource.open(f"zip://Colin_Powell/::{zipped.as_uri()}")  # a folder inside the archive
    assert inner.where("Colin_Powell_0001.jpg") == f"zip://Colin_Powell/Colin_Powell_0001.jpg::{zipped.as_uri()}"

    embedder = load_embedder(NN4_SMALL2_DISTILLED, backend="onnx")
    ref = run_folder(folder, tmp_path / "ref", embedder, workers=2, progress=False, output_format="parquet")
    got = run_folder(url, tmp_path / "zip", embedder, workers=2, progress=False)  # OpenFace's files
    assert got.done_ok_total == ref.done_ok_total == 20
    assert [(f.path, f.reason) for f in got.failures] == [(f.path, f.reason) for f in ref.failures]
    assert [f.path for f in got.failures] == ["Hugo_Chavez/broken.jpg"]
    ref_rows = {(r["path"], r["face"]): r for r in pq.read_table(tmp_path / "ref" / PARQUET).to_pylist()}
    reps = np.load(tmp_path / "zip" / "reps.npy")
    faces = json.loads((tmp_path / "zip" / "faces.json").read_text())
    labels = json.loads((tmp_path / "zip" / "labels.json").read_text())
    assert len(ref_rows) == len(faces) == len(reps) == 20
    for face, rep, label, path in zip(faces, reps, labels["labels"], labels["paths"]):
        row = ref_rows[(str(folder / face["path"]), face["face"])]
        assert row["box"] == face["box"] and row["label"] == label
        assert path == source.where(face["path"])  # a URL that opens (checked above)
        assert np.abs(np.array(row["embedding"]) - rep).max() < 1e-6
    with open(tmp_path / "zip" / "labels.csv", newline="") as fh:  # OpenFace's classifier: label = parent folder
        csv_rows = list(csv.reader(fh))
    assert [os.path.basename(os.path.dirname(p)) for _, p in csv_rows] == labels["labels"]
    assert csv_rows[0][1] == f"{url}/Colin_Powell/Colin_Powell_0001.jpg"


def test_a_url_nothing_can_open_is_a_clear_error(archive, tmp_path, caplog):
    _, zipped = archive
    with pytest.raises(OpenFacePyError, match="neither pyarrow nor fsspec can open it"):
        PhotoSource.open(f"tar://::{zipped.as_uri()}")  # a zip is no tar: fsspec's driver raises its own error
    with pytest.raises(OpenFacePyError, match="input folder not found"):
        PhotoSource.open(f"zip://nobody/::{zipped.as_uri()}")
    missing = f"zip://::{(tmp_path / 'none.zip').as_uri()}"
    code = cli.main(["-q", "run", missing, str(tmp_path / "out"), "--model", NN4_SMALL2_DISTILLED, "--json"])
    assert code == cli.EXIT_FAILED
    assert f"{missing}: neither pyarrow nor fsspec can open it" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing written for a job that could not start
