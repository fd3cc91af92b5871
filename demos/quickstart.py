"""Quick start (what `make demo` runs): align, represent, and name held-out photos.

1. Picks the default embedder (OpenFace's nn4.small2.v1 if its weights were downloaded, else
   the shipped nn4.small2.distilled-v2) and says which.
2. Aligns the sample photos in data/lfw-sample (10 people x 10 photos) for that model.
3. Embeds them (OpenFace-style reps.csv / labels.csv).
4. Holds out the 19 photos named ``*_0009``/``*_0010`` (Jacques_Chirac's sample has no
   ``_0010``), enrols the other 81 and, for each held-out photo, prints the nearest enrolled
   person and the squared L2 distance (OpenFace's measure).
5. Does the same for every face in a two-face photo (people not enrolled).
6. Trains a classifier (LinearSvm by default) on the enrolled photos, with an unknown-person
   threshold chosen from the training data, and prints OpenFace-style ``Predict NAME ...``
   lines for the held-out photos and the two-face photo (whose people should come out as
   ``unknown``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from openface_py.faces.detect import DetectorSpec
from openface_py.io import load_image
from openface_py.jobs.batch import align_folder
from openface_py.jobs.represent import represent_folder
from openface_py.nets.embed import best_installed_model, load_embedder
from openface_py.pipeline import FacePipeline
from openface_py.recognize.classify import format_prediction, train_model

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ("_0009", "_0010")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "lfw-sample")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "demo")
    ap.add_argument("--model", default=None, help="embedder (default: best installed)")
    ap.add_argument("--classifier", default="LinearSvm", help="classifier for step 4 (see `openface-py train --help`)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    model = args.model or best_installed_model()
    if model != "nn4.small2.v1" and args.model is None:
        print(
            "Note: OpenFace's released nn4.small2.v1 weights are not installed "
            "('openface-py models download nn4.small2.v1' fetches them)."
        )
        print(f"Using the default installed embedder instead: {model}\n")
    embedder = load_embedder(model)
    aligned = args.out / f"aligned-{model}"
    reps_dir = args.out / f"reps-{model}"

    print(f"[1/4] align {args.data} -> {aligned} ({embedder.alignment.identity})")
    report = align_folder(args.data, aligned, embedder.alignment, model=model, workers=2, progress=False)
    print(
        f"      {report.total} photos, {report.aligned} aligned now, {report.already_done} earlier, "
        f"{len(report.failures)} failed"
    )
    for f in report.failures:
        print(f"      FAILED {f.path}: {f.reason}")

    print(f"[2/4] represent -> {reps_dir}/reps.csv, labels.csv")
    res = represent_folder(aligned, reps_dir, embedder, progress=False)

    held = np.array([any(Path(p).stem.endswith(h) for h in HELD_OUT) for p in res.paths])
    labels = np.array(res.labels)
    enrolled_reps, enrolled_labels = res.reps[~held], labels[~held]
    print(f"[3/4] nearest enrolled person ({(~held).sum()} enrolled photos) for {held.sum()} held-out photos")
    correct = 0
    for rep, lab, path in zip(res.reps[held], labels[held], np.array(res.paths)[held]):
        d = ((enrolled_reps - rep) ** 2).sum(axis=1)
        i = int(np.argmin(d))
        ok = enrolled_labels[i] == lab
        correct += int(ok)
        print(f"      {Path(path).name:34s} -> {enrolled_labels[i]:24s} distance {d[i]:.3f} {'ok' if ok else 'WRONG'}")
    print(f"      {correct}/{held.sum()} held-out photos matched to the right person")

    photo = ROOT / "data" / "examples" / "longoria-cooper.jpg"
    pipe = FacePipeline(DetectorSpec("hog", upsample=1), embedder=embedder)
    faces = pipe.process(load_image(photo), multi=True)
    print(f"\n{photo.name}: {len(faces)} faces, left to right (these people are not enrolled)")
    for face in faces:
        d = ((enrolled_reps - face.embedding) ** 2).sum(axis=1)
        i = int(np.argmin(d))
        print(f"      face at x={face.box.center[0]:.0f}: nearest enrolled {enrolled_labels[i]} at distance {d[i]:.3f}")

    print(f"\n[4/4] train a {args.classifier} on the enrolled photos (with an unknown-person threshold)")
    model = train_model(
        enrolled_reps, list(enrolled_labels), args.classifier, embedder.name, embedder.identity,
        embedder.alignment.to_dict(),
    )  # fmt: skip
    model_path = model.save(args.out / f"{args.classifier}-{model_name_safe(model)}.skops")
    print(f"      saved {model_path}; cross-validated accuracy {model.cv_accuracy:.3f}")
    if model.open_set is not None:
        print(f"      {model.open_set.summary()}")
    for path, pred in zip(np.array(res.paths)[held], model.predict(res.reps[held])):
        print(f"      {Path(path).name:34s} {format_prediction(pred)}")
    print(f"      {photo.name}:")
    for face, pred in zip(faces, model.predict(np.stack([f.embedding for f in faces]))):
        print(f"      {format_prediction(pred, face.box.center[0])}")
    return 0


def model_name_safe(model) -> str:
    return model.embedder_name.replace("/", "_")


if __name__ == "__main__":
    raise SystemExit(main())
