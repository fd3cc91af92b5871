"""Parity of the project's MobileFaceNet (reid-0095) with Intel's OpenVINO runtime on the IR.

Three steps, the second in a scratch environment outside the project (``openvino`` is not a
dependency)::

    # 1. aligned 128x128 crops of every face in data/lfw-sample and data/examples (HOG + dlib68,
    #    and MTCNN's 5 points), with the project's embeddings of them
    PYTHONPATH=$PWD .venv/bin/python benchmarks/reid0095_parity.py crops build/reid-parity
    # 2. the OpenVINO runtime on the same crops (BGR 0-255, as Intel's model takes them)
    python3 -m venv /tmp/ov && /tmp/ov/bin/pip install openvino numpy pillow
    /tmp/ov/bin/python benchmarks/reid0095_parity.py openvino build/reid-parity \\
        --ir /work/shared/models/intel-open-model-zoo/face-reidentification-retail-0095-FP16.xml
    # 3. cosine between the two per face; --keep N copies N crops and their OpenVINO outputs
    #    into tests/data/reid0095/ (the reference tests/test_mobilefacenet.py checks)
    PYTHONPATH=$PWD .venv/bin/python benchmarks/reid0095_parity.py compare build/reid-parity --keep 6

Step 2 imports only numpy, PIL and openvino, and asks OpenVINO for float32 arithmetic (its CPU
plugin defaults to bfloat16 where the processor has it, which alone moves the cosine to ~0.997).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_crops(out: Path) -> None:
    from PIL import Image

    from openface_py.faces.align import align_detection, make_aligner
    from openface_py.faces.detect import DetectorSpec
    from openface_py.io import list_images, load_image
    from openface_py.nets.catalog import MOBILEFACENET_REID
    from openface_py.nets.embed import load_embedder

    emb = load_embedder(MOBILEFACENET_REID)
    aligner = make_aligner(emb.alignment)
    detectors = {"dlib68": DetectorSpec("hog").make(), "mtcnn5": DetectorSpec("mtcnn", align_from="mtcnn5").make()}
    (out / "crops").mkdir(parents=True, exist_ok=True)
    rows = []
    photos = [ROOT / "data" / sub / p for sub in ("lfw-sample", "examples") for p in list_images(ROOT / "data" / sub)]
    for path in photos:
        rgb = load_image(path)
        rel = Path(path).relative_to(ROOT / "data")
        for det in detectors.values():
            for i, d in enumerate(det.detect(rgb)):
                face = align_detection(aligner, rgb, d)
                name = f"{rel.with_suffix('').as_posix().replace('/', '__')}__{i}__{face.aligned_from}.png"
                Image.fromarray(face.image).save(out / "crops" / name)
                rows.append({"crop": name, "photo": rel.as_posix(), "face": i, "aligned_from": face.aligned_from})
    ours = emb.embed([np.asarray(Image.open(out / "crops" / r["crop"]).convert("RGB")) for r in rows])
    np.save(out / "ours.npy", ours)
    (out / "crops.json").write_text(json.dumps(rows, indent=1))
    print(f"{len(rows)} crops from {len(photos)} photos -> {out}")


def run_openvino(out: Path, ir: Path) -> None:
    import openvino as ov
    from PIL import Image

    rows = json.loads((out / "crops.json").read_text())
    # f32 arithmetic: on CPUs with bfloat16 units OpenVINO otherwise runs in bfloat16 (cosine ~0.997)
    compiled = ov.Core().compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    vecs = []
    for r in rows:
        rgb = np.asarray(Image.open(out / "crops" / r["crop"]).convert("RGB"), dtype=np.float32)
        bgr = rgb[:, :, ::-1].transpose(2, 0, 1)[None]  # 1x3x128x128, BGR, 0-255
        vecs.append(np.asarray(compiled([np.ascontiguousarray(bgr)])[0]).reshape(-1))
    np.save(out / "openvino.npy", np.stack(vecs).astype(np.float32))
    print(f"OpenVINO {ov.__version__}: {len(vecs)} crops -> {out / 'openvino.npy'}")


def compare(out: Path, keep: int) -> None:
    rows = json.loads((out / "crops.json").read_text())
    ours = np.load(out / "ours.npy")
    ref = np.load(out / "openvino.npy")
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (ours * ref_unit).sum(axis=1)
    for src in ("dlib68", "mtcnn5"):
        sel = np.array([r["aligned_from"] == src for r in rows])
        if sel.any():
            print(f"{src}: {sel.sum()} faces, cosine min {cos[sel].min():.7f} mean {cos[sel].mean():.7f}")
    print(f"all: {len(rows)} faces, cosine min {cos.min():.7f}")
    if keep:
        dest = ROOT / "tests" / "data" / "reid0095"
        dest.mkdir(parents=True, exist_ok=True)
        picks = np.linspace(0, len(rows) - 1, keep).round().astype(int)
        kept = []
        for i in picks:
            shutil.copy(out / "crops" / rows[i]["crop"], dest / rows[i]["crop"])
            kept.append({**rows[i], "openvino": [round(float(v), 6) for v in ref[i]]})
        (dest / "openvino-outputs.json").write_text(json.dumps(kept, indent=1) + "\n")
        print(f"kept {len(kept)} crops and their OpenVINO outputs in {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("crops", "openvino", "compare"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--ir", type=Path)
    ap.add_argument("--keep", type=int, default=0)
    args = ap.parse_args()
    if args.step == "crops":
        make_crops(args.out)
    elif args.step == "openvino":
        run_openvino(args.out, args.ir)
    else:
        compare(args.out, args.keep)


if __name__ == "__main__":
    main()
