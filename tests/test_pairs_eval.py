"""Tests of openface_py.eval.pairs.

`pairs-eval`: the pair-list format (errors with their line), folds, the protocol recomputed
independently on the real sample photos, and the policy for photos with no face."""

from __future__ import annotations

import itertools
import json

import cv2
import numpy as np
import pytest
from conftest import EXAMPLES, SAMPLE, cli

from openface_py.eval.pairs import PairListError, parse_pair_list


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("a.jpg,b.jpg,1\nc.jpg,d.jpg\n", 2, "expected 3 or 4 fields"),
        ("path_a,path_b,same\na.jpg,b.jpg,1\nc.jpg,d.jpg,maybe\n", 3, "'same' must be 1 or 0"),
        ("a.jpg,b.jpg,1,1\nc.jpg,d.jpg,0\n", 2, "fold column must be on every row"),
        ("a.jpg,b.jpg,1,1\nc.jpg,d.jpg,0,x\n", 2, "fold must be a number"),
        ("a.jpg,/etc/passwd,1\nc.jpg,d.jpg,0\n", 1, "not a path relative"),
        ("a.jpg,b.jpg,1\n\nc.jpg,../d.jpg,0\n", 3, "not a path relative"),
        ('a.jpg,b.jpg,1\n"c.jpg,d.jpg,0\n', 2, "expected 3 or 4 fields"),
    ],
)
def test_malformed_lists_name_the_line(tmp_path, body, line, message):
    with pytest.raises(PairListError, match=f":{line}: .*{message}"):
        parse_pair_list(_write(tmp_path / "p.csv", body))


def test_not_utf8_and_too_few_folds_are_refused(tmp_path):
    p = tmp_path / "p.csv"
    p.write_bytes(b"a.jpg,b.jpg,1\nc\xff.jpg,d.jpg,0\n")
    with pytest.raises(PairListError, match=":2: not UTF-8"):
        parse_pair_list(p)
    with pytest.raises(PairListError, match="at least two folds"):
        parse_pair_list(_write(p, "a.jpg,b.jpg,1,1\nc.jpg,d.jpg,0,1\n"))
    with pytest.raises(PairListError, match="need same and different pairs"):
        parse_pair_list(_write(p, "a.jpg,b.jpg,1,1\nc.jpg,d.jpg,1,2\ne.jpg,f.jpg,0,2\n"))


def test_folds_given_or_cut_in_file_order(tmp_path):
    rows = "".join(f"p{i}/a.jpg,p{i}/b.jpg,{i % 2}\n" for i in range(20))
    pairs = parse_pair_list(_write(tmp_path / "p.csv", "path_a,path_b,same\n" + rows), folds=10)
    assert [p.fold for p in pairs] == [i // 2 for i in range(20)]
    assert [p.line for p in pairs] == list(range(2, 22)) and pairs[1].same and not pairs[0].same
    given = parse_pair_list(
        _write(tmp_path / "q.csv", "a.jpg,b.jpg,yes,3\nc.jpg,d.jpg,No,1\nc.jpg,e.jpg,1,1\nf.jpg,g.jpg,0,3\n")
    )
    assert [(p.fold, p.same) for p in given] == [(2, True), (0, False), (0, True), (2, False)]


def _sample_pairs():
    """Same-person pairs (photos 1-2, 3-4, 5-6) and different-person pairs, 3 folds of disjoint people."""
    files = {d.name: sorted(f"{d.name}/{f.name}" for f in d.iterdir()) for d in SAMPLE.iterdir() if d.is_dir()}
    people = sorted(files)
    rows = []
    for fold, group in enumerate([people[0:3], people[3:6], people[6:9]], 1):
        for person in group:
            rows += [(files[person][i], files[person][i + 1], 1, fold) for i in (0, 2, 4)]
        for k, (p, q) in enumerate(itertools.permutations(group, 2)):
            rows.append((files[p][6 + k % 4], files[q][k % 4], 0, fold))
    return rows


def _embed(paths, root, detector="hog"):
    from openface_py.io import load_image
    from openface_py.pipeline import FacePipeline

    pipe = FacePipeline.create(None, detector=detector)
    out = {}
    for p in paths:
        faces = pipe.process(load_image(root / p), multi=False)
        out[p] = faces[0].embedding if faces else None
    return out


def _independent_fold_check(rows, reps, summary):
    """Each fold's threshold must be a best split of the other folds' scores (by brute force over
    every candidate), and the fold's accuracy that threshold's accuracy on it."""
    score = np.array(
        [
            -np.inf if reps[a] is None or reps[b] is None else -float(((reps[a] - reps[b]) ** 2).sum())
            for a, b, _, _ in rows
        ]
    )
    same = np.array([s == 1 for _, _, s, _ in rows])
    fold = np.array([f for _, _, _, f in rows])
    for entry in summary["folds"]:
        f, t = entry["fold"], -entry["threshold"]  # the report shows a distance; the score is its negative
        train, test = fold != f, fold == f
        finite = np.sort(np.unique(score[train & np.isfinite(score)]))
        cands = np.concatenate([[finite[0] - 1], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1]])
        best = max(((score[train] > c) == same[train]).mean() for c in cands)
        assert ((score[train] > t) == same[train]).mean() == pytest.approx(best)
        assert entry["accuracy"] == pytest.approx(((score[test] > t) == same[test]).mean())


def test_pairs_eval_on_the_sample_photos_and_the_miss_policy(tmp_path):
    root = tmp_path / "photos"
    rows = _sample_pairs()
    for a, b, _, _ in rows:
        for p in (a, b):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes((SAMPLE / p).read_bytes())
    # a photo with no face: the plain background above Amy Adams's head
    bg = cv2.imread(str(EXAMPLES / "adams.jpg"))[0:150, 0:200]
    cv2.imwrite(str(root / "background.jpg"), bg)
    rows.append(("background.jpg", rows[0][0], 1, 1))  # a same pair that cannot be verified
    csv_path = _write(
        tmp_path / "pairs.csv", "path_a,path_b,same,fold\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    cmd = ["pairs-eval", str(csv_path), str(root)]

    out = cli(*cmd, "-o", str(tmp_path / "fail"))
    assert out.returncode == 0, out.stderr
    assert "Faces not found (pairs decided 'different'): 1 of " in out.stdout
    acc_line = next(line for line in out.stdout.splitlines() if line.startswith("Accuracy: "))
    summary = json.loads((tmp_path / "fail" / "summary-sqeuclidean.json").read_text())
    assert summary["faces_not_found"] == 1 and summary["not_found_images"] == ["background.jpg"]
    assert (
        summary["pairs"] == len(rows)
        and acc_line == f"Accuracy: {summary['accuracy_mean']:.4f} +- {summary['accuracy_std']:.4f}"
    )
    for name in ("roc-sqeuclidean.csv", "roc-sqeuclidean.png", "accuracies-sqeuclidean.txt"):
        assert (tmp_path / "fail" / name).stat().st_size > 0
    reps = _embed(sorted({p for r in rows for p in r[:2]}), root)
    assert reps["background.jpg"] is None
    _independent_fold_check(rows, reps, summary)

    whole = cli(*cmd, "-o", str(tmp_path / "whole"), "--on-miss", "whole-image", "--json")
    assert whole.returncode == 0, whole.stderr
    res = json.loads(whole.stdout)["results"][0]
    assert res["faces_not_found"] == 1 and res["on_miss"] == "whole-image" and res["pairs"] == len(rows)

    fine = "".join(",".join(map(str, r)) + "\n" for r in rows[:-1])
    missing = _write(tmp_path / "missing.csv", f"{rows[0][0]},nobody/x.jpg,0,1\n" + fine)
    bad = cli(*cmd[:-2], str(missing), str(root), "-o", str(tmp_path / "m"))
    assert bad.returncode != 0 and "line 1: nobody/x.jpg" in bad.stderr and "Traceback" not in bad.stderr


def test_the_central_pick_embeds_the_subject_of_a_centred_photo(tmp_path):
    """A photo centred on Tony Blair with a larger Colin Powell in its corner (made from two sample
    photos): with ``--pick central`` it is embedded as Blair (near another Blair photo), with the
    default ``largest`` as Powell; each pick has its own cache and says so in the report."""
    from openface_py.io import load_npz

    blair = sorted((SAMPLE / "Tony_Blair").glob("*.jpg"))
    powell = sorted((SAMPLE / "Colin_Powell").glob("*.jpg"))
    root = tmp_path / "photos"
    (root / "p").mkdir(parents=True)
    canvas = np.full((250, 250, 3), 90, np.uint8)
    canvas[87:163, 87:163] = cv2.resize(
        cv2.imread(str(blair[0]))[60:190, 60:190], (76, 76), interpolation=cv2.INTER_AREA
    )
    canvas[0:110, 0:110] = cv2.resize(
        cv2.imread(str(powell[0]))[50:200, 50:200], (110, 110), interpolation=cv2.INTER_AREA
    )
    cv2.imwrite(str(root / "p" / "composite.png"), canvas)
    for f in blair[1:5] + powell[1:4]:
        (root / "p" / f.name).write_bytes(f.read_bytes())
    b, p = [f"p/{f.name}" for f in blair[1:5]], [f"p/{f.name}" for f in powell[1:4]]
    rows = [("p/composite.png", b[0], 1, 1), (b[1], p[0], 0, 1), (b[2], b[3], 1, 2), (p[1], p[2], 0, 2)]
    csv_path = _write(tmp_path / "pairs.csv", "".join(",".join(map(str, r)) + "\n" for r in rows))
    dist = {}
    for pick in ("largest", "central"):
        out = tmp_path / pick
        r = cli("pairs-eval", str(csv_path), str(root), "-o", str(out), "--pick", pick, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["results"][0]["pick"] == pick
        (cache,) = out.glob("embeddings-*.npz")
        saved = load_npz(cache, json_keys=("meta",))
        idx = {n: i for i, n in enumerate(saved["meta"]["names"])}
        reps = saved["reps"]
        dist[pick] = float(((reps[idx["p/composite.png"]] - reps[idx[b[0]]]) ** 2).sum())
        far = float(((reps[idx["p/composite.png"]] - reps[idx[p[0]]]) ** 2).sum())
        assert (dist[pick] < far) == (pick == "central"), (pick, dist[pick], far)
    assert dist["central"] < dist["largest"]
    # a folder job keeps its pick in run.json as multi/skip-multi: central is refused there
    from openface_py.errors import OpenFacePyError
    from openface_py.jobs.stream import run_folder

    with pytest.raises(OpenFacePyError, match="central"):
        run_folder(root, tmp_path / "run", None, pick="central")
