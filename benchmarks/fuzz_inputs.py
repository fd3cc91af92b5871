"""The long run of tests/test_fuzz.py: the same properties and strategies, N examples per surface.

Usage: python benchmarks/fuzz_inputs.py [--examples 2000] [--surfaces image-random ...] [--seed 0]

Each surface's check runs under Hypothesis for ``--examples`` generated inputs (no shrinking,
no example database; ``--seed`` makes a run reproducible). A check that fails does not stop
the run: every failing input is counted, and the first of each kind (exception type and first
line) is printed with its input. Printed: the machine, then per surface the cases tried, the
failures and the time. The gallery surface embeds real photos (~10-30 ms a face), so it runs a
tenth of ``--examples`` (at least 20).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz as tf  # noqa: E402  (the checks and strategies of tests/test_fuzz.py)
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def surfaces(pipeline_box: list) -> dict:
    """name -> (strategy, check(example)); the gallery pipeline is built on first use."""

    def gallery(entries):
        if not pipeline_box:
            pipeline_box.append(tf.make_gallery_pipeline())
        tf.check_gallery(entries, pipeline_box[0])

    def image(a):
        tf.check_image_bytes(*a)

    caps = tf.max_pixels_values()
    return {
        "image-random": (st.tuples(tf.random_image_bytes(), caps), image),
        "image-mutated": (st.tuples(tf.mutated_images(), caps), image),
        "image-header-size": (st.tuples(tf.header_edited_images(), caps), image),
        "pairs-arbitrary": (tf.any_pairs_files(), tf.check_pairs),
        "pairs-one-line": (tf.mutated_pairs_lines(), lambda a: tf.check_pairs(a[0], changed_line=a[1])),
        "represent-folder": (tf.mutated_represent_folders(), tf.check_represent_folder),
        "model-file": (tf.mutated_model_files(), tf.check_model_file),
        "gallery": (tf.gallery_entries(), gallery),
    }


def run_surface(name: str, strategy, check, examples: int, run_seed: int) -> tuple[int, int, dict, float]:
    tried, failed, kinds = 0, 0, {}

    @seed(run_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(example):
        nonlocal tried, failed
        tried += 1
        t = time.perf_counter()
        try:
            check(example)
        except Exception as exc:
            failed += 1
            kind = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if kind not in kinds:
                kinds[kind] = (repr(example)[:400], traceback.format_exc(limit=-4))
        if time.perf_counter() - t > 5:
            kinds.setdefault(f"slow example ({time.perf_counter() - t:.1f} s)", (repr(example)[:400], ""))

    start = time.perf_counter()
    run()
    return tried, failed, kinds, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="generated inputs per surface")
    ap.add_argument("--surfaces", nargs="+", default=None, help="some of: " + ", ".join(surfaces([])))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import hypothesis
    import numpy
    import PIL

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, Pillow {PIL.__version__}, NumPy {numpy.__version__}, "
          f"Hypothesis {hypothesis.__version__}")  # fmt: skip
    print(f"examples per surface: {args.examples} (gallery: {max(20, args.examples // 10)}), seed {args.seed}")
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # the gallery logs every bad entry; the check inspects them
    os.environ["OPENFACE_PY_HOME"] = tempfile.mkdtemp(prefix="openface-py-fuzz-home-")
    table = surfaces([])
    names = args.surfaces or list(table)
    total_failed = 0
    print(f"{'surface':18s} {'cases':>7s} {'failures':>8s} {'time s':>8s} {'ms/case':>8s}")
    for name in names:
        strategy, check = table[name]
        n = max(20, args.examples // 10) if name == "gallery" else args.examples
        if name == "model-file":
            tf.warm_model_loading()  # train + load the seed models once, outside the timing
        tried, failed, kinds, secs = run_surface(name, strategy, check, n, args.seed)
        total_failed += failed
        print(f"{name:18s} {tried:7d} {failed:8d} {secs:8.1f} {1000 * secs / max(tried, 1):8.2f}", flush=True)
        for kind, (example, tb) in kinds.items():
            print(f"    {kind}\n      input: {example}\n{tb}")
    print(f"total failures: {total_failed}")
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
