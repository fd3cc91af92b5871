"""The embedding files every job writes and every reader checks: OpenFace's ``reps.csv`` and
``labels.csv`` (``class_index,path``, 1-based, as its batch-represent), plus ``reps.npy``,
``labels.json`` and ``embeddings.json`` (the model's identity and alignment)."""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from openface_py import __version__
from openface_py.errors import OpenFacePyError
from openface_py.io import atomic_output, atomic_write_text, iter_chunks
from openface_py.nets.embedders import Embedder

EMBED_META = "embeddings.json"


def write_embeddings(
    out_dir: Path,
    reps: np.ndarray,
    labels: list[str],
    paths: list[str],
    embedder: Embedder,
    csv_paths: Optional[list[str]] = None,
) -> None:
    """Write reps/labels in OpenFace's CSV format and as .npy/.json, plus the identity metadata.

    ``csv_paths``: labels.csv's paths where they differ from ``paths``. OpenFace's classifier
    takes each label from its path's parent folder, which a chained URL's last part is not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classes: list[str] = []
    for lab in labels:
        if lab not in classes:
            classes.append(lab)
    index = {c: i + 1 for i, c in enumerate(classes)}
    # streamed to the (temporary) files in slices: no second copy of the whole output in memory
    with atomic_output(out_dir / "reps.csv") as fh:
        for rows in iter_chunks(range(len(reps)), 4096):
            np.savetxt(fh, reps[rows.start : rows.stop], delimiter=",", fmt="%.9g")
    with atomic_output(out_dir / "labels.csv") as fh:
        text = _io.TextIOWrapper(fh, "utf-8", newline="")
        writer = csv.writer(text, lineterminator="\n")
        for lab, p in zip(labels, paths if csv_paths is None else csv_paths):
            writer.writerow([index[lab], p])
        text.flush()
        text.detach()  # atomic_output syncs and closes the file itself
    with atomic_output(out_dir / "reps.npy") as fh:
        np.save(fh, np.asarray(reps, dtype=np.float32))
    atomic_write_text(
        out_dir / "labels.json",
        json.dumps({"classes": classes, "labels": labels, "paths": paths}, ensure_ascii=False, indent=1) + "\n",
    )
    meta = {
        "identity": embedder.identity,
        "model": embedder.name,
        "alignment": embedder.alignment.to_dict(),
        "count": int(reps.shape[0]),
        "dim": int(reps.shape[1]),
        "openface_py_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(out_dir / EMBED_META, json.dumps(meta, indent=2) + "\n")


def load_embeddings(reps_dir: os.PathLike | str) -> tuple[np.ndarray, list[str], list[str], dict]:
    """Read what ``represent_folder`` wrote: (reps, labels, paths, metadata).

    Every file is checked before it is used: a missing, truncated, damaged or foreign file raises
    ``OpenFacePyError`` naming it and saying what is wrong (never a bare KeyError/ValueError).
    """
    d = Path(reps_dir)
    meta_path = d / EMBED_META
    if not meta_path.is_file():
        raise OpenFacePyError(f"{d}: no {EMBED_META} (not an openface-py represent output folder)")
    meta = _read_json_object(meta_path)
    for key, kind in (("identity", str), ("model", str), ("alignment", dict)):
        if not isinstance(meta.get(key), kind):
            raise OpenFacePyError(f"{meta_path}: {key!r} is missing or not a {kind.__name__} (damaged file?)")
    reps = _read_reps(d / "reps.npy")
    lab_path = d / "labels.json"
    lab = _read_json_object(lab_path)
    for key in ("labels", "paths"):
        v = lab.get(key)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise OpenFacePyError(f"{lab_path}: {key!r} is missing or not a list of strings (damaged file?)")
    labels, paths = lab["labels"], lab["paths"]
    if reps.shape[0] != len(labels):
        raise OpenFacePyError(f"{d}: {reps.shape[0]} embeddings but {len(labels)} labels")
    if len(paths) != len(labels):
        raise OpenFacePyError(f"{lab_path}: {len(labels)} labels but {len(paths)} paths")
    for key, got in (("count", reps.shape[0]), ("dim", reps.shape[1])):
        if key in meta and meta[key] != got:
            raise OpenFacePyError(f"{meta_path}: {key} is {meta[key]!r} but reps.npy has {got} (mixed folders?)")
    return reps, labels, paths, meta


def _read_json_object(path: Path) -> dict:
    """A JSON file holding an object; any other content is an ``OpenFacePyError`` naming the file."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise OpenFacePyError(f"{path}: missing (incomplete represent output folder)") from None
    except OSError as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise OpenFacePyError(f"{path}: not UTF-8 text (byte {exc.start}): damaged file") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise OpenFacePyError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise OpenFacePyError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_reps(path: Path) -> np.ndarray:
    """reps.npy as a finite 2-D float array. The header is checked against the file's size before
    anything is allocated, so a damaged header cannot ask for terabytes."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with open(path, "rb") as fh:
            version = npy.read_magic(fh)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = readers[version](fh)
            data_bytes = os.fstat(fh.fileno()).st_size - fh.tell()
    except FileNotFoundError:
        raise OpenFacePyError(f"{path}: missing (incomplete represent output folder)") from None
    except OSError as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError...
        raise OpenFacePyError(f"{path}: not a valid .npy file ({type(exc).__name__}: {exc})") from None
    if dtype.kind != "f" or len(shape) != 2 or shape[1] < 1:
        raise OpenFacePyError(f"{path}: expected a 2-D float array of embeddings, found {dtype} {shape}")
    want = shape[0] * shape[1] * dtype.itemsize
    if want != data_bytes:
        raise OpenFacePyError(f"{path}: header says {shape} {dtype} ({want} bytes) but the file holds {data_bytes}")
    try:
        reps = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise OpenFacePyError(f"{path}: cannot read ({exc})") from None
    bad = int(np.count_nonzero(~np.isfinite(reps)))
    if bad:
        raise OpenFacePyError(f"{path}: {bad} values are NaN or infinite (damaged file)")
    return reps
