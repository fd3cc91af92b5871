"""Real-time face recognition from a webcam (or a video file), with boxes, names and fps.

    python demos/webcam.py --gallery people/            # camera 0, one sub-folder of photos per person
    python demos/webcam.py --classifier model.skops --source clip.mp4 --output annotated.mp4

Uses the same code as `openface-py video`: detection on a half-size frame every few frames,
a tracker in between (template matching, or dlib's correlation tracker), recognition when a
face appears and every 15 frames.
With a GUI-enabled OpenCV a window shows the annotated stream (q quits); with the headless
build installed by default, it prints what it sees once a second and can write --output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openface_py.recognize.video import make_recognizer, process_video  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="0", help="camera index or video file (default: camera 0)")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--gallery", type=Path)
    who.add_argument("--classifier", type=Path)
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--tracker", choices=("template", "correlation"), default="template")
    args = ap.parse_args()

    rec = make_recognizer(args.classifier, args.gallery, scale=args.scale, tracker=args.tracker, progress=True)
    state = {"window": True, "last": 0.0}

    def show(bgr, res, fps) -> None:
        import cv2

        if state["window"]:
            try:
                cv2.imshow("openface-py", bgr)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    raise KeyboardInterrupt
                return
            except cv2.error:  # headless OpenCV: no window support
                state["window"] = False
        if time.monotonic() - state["last"] >= 1.0:
            state["last"] = time.monotonic()
            names = ", ".join(f"{f.name} #{f.track}" for f in res.faces) or "no face"
            print(f"frame {res.index}: {names} ({fps:.1f} fps)")

    try:
        summary = process_video(args.source, rec, output=args.output, on_frame=show)
    except KeyboardInterrupt:
        return 0
    print(f"{summary['frames']} frames, {summary['fps']} fps (recognition alone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
