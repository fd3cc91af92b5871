"""LFW verification benchmark: the standard view-2 protocol on any embedder.

Each image named in pairs.txt is embedded once (cached in the output folder, keyed by the
embedder identity). Pairs are scored by minus the squared L2 distance, by cosine similarity,
or by a Joint Bayesian model fitted, for each fold, on the images of the 9 other folds (LFW's
folds share no person). For each fold the threshold is chosen on the 9 other folds' pairs and
the accuracy measured on the held-out fold; AUC, EER and VAL@FAR are read off the ROC of all
pairs (for JB, each pair scored by the model that did not see its fold, centred on that
fold's threshold).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from openface_py.errors import OpenFacePyError, UsageError
from openface_py.eval.lfw import LfwEmbeddings, embed_lfw_images, embedding_cache_path
from openface_py.eval.protocol import Pair, parse_pairs
from openface_py.faces.align import detector_for
from openface_py.faces.detect import DetectorSpec
from openface_py.io import atomic_write_bytes, atomic_write_text
from openface_py.jobs.engine import Engine
from openface_py.metrics import FoldResult, auc, best_split_threshold, eer, roc_curve, val_at_far
from openface_py.recognize.jointbayes import JointBayesian

log = logging.getLogger(__name__)

METRICS = ("sqeuclidean", "cosine", "jb")


@dataclass
class LfwResult:
    metric: str
    flip: bool
    folds: list[FoldResult]
    auc: float
    eer: float
    val_at_far: float
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_pairs: int

    @property
    def mean(self) -> float:
        return float(np.mean([f.accuracy for f in self.folds]))

    @property
    def std(self) -> float:
        return float(np.std([f.accuracy for f in self.folds]))

    @property
    def threshold_meaning(self) -> str:
        return {"sqeuclidean": "same if squared L2 <", "cosine": "same if cosine >", "jb": "same if JB score >"}[
            self.metric
        ]

    def shown(self, t: float) -> float:
        """A fold threshold as users read it (a distance for sqeuclidean, whose score is its negative)."""
        return -t if self.metric == "sqeuclidean" else t

    @property
    def tag(self) -> str:
        return self.metric + ("-flip" if self.flip else "")

    def lines(self) -> list[str]:
        """The lines scripts parse: ``Accuracy: 0.9292 +- 0.0134`` and ``AUC: 0.973``, then more."""
        return [
            f"Accuracy: {self.mean:.4f} +- {self.std:.4f}",
            f"AUC: {self.auc:.3f}",
            f"EER: {self.eer:.4f}",
            f"VAL@FAR=1e-3: {self.val_at_far:.4f}",
        ]


def select_pairs(
    pairs: list[Pair], folds: Optional[Sequence[int]] = None, per_fold: Optional[int] = None
) -> list[Pair]:
    """A subset for quick runs: only ``folds`` (1-based), and the first ``per_fold``/2 same and
    different pairs of each."""
    out = []
    for f in sorted({p.fold for p in pairs}):
        if folds and f + 1 not in folds:
            continue
        fold_pairs = [p for p in pairs if p.fold == f]
        if per_fold:
            same = [p for p in fold_pairs if p.same][: per_fold // 2]
            diff = [p for p in fold_pairs if not p.same][: per_fold - per_fold // 2]
            fold_pairs = same + diff
        out.extend(fold_pairs)
    if len({p.fold for p in out}) < 2:
        raise OpenFacePyError("the LFW protocol needs at least two folds (thresholds come from the other folds)")
    return out


def score_pairs(emb: LfwEmbeddings, pairs: Sequence, metric: str, flip: bool) -> dict[int, np.ndarray]:
    """Pair scores (higher = same) as seen by each fold's model: fold -> scores of all pairs.

    ``pairs`` have ``fold``, ``same``, ``path_a``, ``path_b`` (LFW's ``Pair`` or a pair list's
    ``PairRow``). A pair with a photo where no face was embedded (``emb.missed``) gets a score
    below every other: it is decided "different", as a system that found no face would."""
    a = emb.lookup([p.path_a for p in pairs], flip).astype(np.float64)
    b = emb.lookup([p.path_b for p in pairs], flip).astype(np.float64)
    missing = np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1)
    folds = sorted({p.fold for p in pairs})
    if metric == "sqeuclidean":
        s = -((a - b) ** 2).sum(axis=1)
        out = {f: s for f in folds}
    elif metric == "cosine":
        s = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out = {f: s for f in folds}
    elif metric == "jb":
        out = {}
        for f in folds:
            train = [p for p in pairs if p.fold != f]  # never the test fold's people
            people = people_of(train)
            names = sorted(set(people) - set(emb.missed))
            labels = [people[n] for n in names]
            if sum(labels.count(x) > 1 for x in set(labels)) < 2:
                raise OpenFacePyError(
                    f"fold {f + 1}: Joint Bayesian needs at least two people with two photos in the other folds "
                    f"({len(emb.missed)} photos have no face); use another metric"
                )
            jb = JointBayesian().fit(emb.lookup(names, flip), np.array([people[n] for n in names]))
            out[f] = jb.score(np.nan_to_num(a), np.nan_to_num(b))
    else:
        raise UsageError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if missing.any():
        shared = len({id(v) for v in out.values()}) == 1
        floor = {f: (np.min(s[~missing]) if (~missing).any() else 0.0) - 1.0 for f, s in out.items()}
        fixed = {f: np.where(missing, floor[f], s) for f, s in out.items()}
        out = {f: fixed[folds[0]] for f in folds} if shared else fixed
    return out


def people_of(pairs: Sequence) -> dict[str, str]:
    """Photo -> a label of its person, for Joint Bayesian: the names where the pairs carry them
    (LFW), else the groups the same-person pairs join (a photo in no such pair is its own)."""
    if pairs and hasattr(pairs[0], "people"):
        return {path: who for p in pairs for path, who in zip((p.path_a, p.path_b), p.people)}
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = root(p.path_a), root(p.path_b)
        if p.same and ra != rb:
            parent[ra] = rb
    return {x: root(x) for x in list(parent)}


def evaluate(pairs: Sequence, scores: dict[int, np.ndarray], metric: str, flip: bool) -> LfwResult:
    same = np.array([p.same for p in pairs])
    fold = np.array([p.fold for p in pairs])
    # One scoring for all folds (distances): the ROC is that of the raw scores of all pairs.
    # One model per fold (JB): each fold's scores are centred on that fold's threshold, which
    # puts models of different scales on one axis with the decision boundary at 0.
    shared = len({id(v) for v in scores.values()}) == 1
    results, pooled = [], np.zeros(len(pairs))
    for f, s in scores.items():
        train, test = fold != f, fold == f
        t, _ = best_split_threshold(s[train & same], s[train & ~same])
        results.append(FoldResult(f, t, float(((s[test] > t) == same[test]).mean()), int(test.sum())))
        pooled[test] = s[test] if shared else s[test] - t
    fpr, tpr, thr = roc_curve(pooled, same)
    return LfwResult(
        metric, flip, results, auc(fpr, tpr), eer(fpr, tpr), val_at_far(fpr, tpr, 1e-3), fpr, tpr, thr, len(pairs)
    )


def write_reports(out_dir: Path, res: LfwResult, model: str, extra: dict) -> None:
    """accuracies-<tag>.txt (as OpenFace's accuracies.txt), roc-<tag>.csv, roc-<tag>.png, summary-<tag>.json."""
    rows = [f"# threshold: {res.threshold_meaning} t", "fold threshold accuracy"]
    rows += [f"{f.fold + 1} {res.shown(f.threshold):.6g} {f.accuracy:.4f}" for f in res.folds]
    rows.append(f"avg {res.mean:.4f} +- {res.std:.4f}")
    atomic_write_text(out_dir / f"accuracies-{res.tag}.txt", "\n".join(rows) + "\n")
    csv_rows = ["far,tar,threshold"] + [f"{a:.6f},{b:.6f},{c:.6g}" for a, b, c in zip(res.fpr, res.tpr, res.thresholds)]
    atomic_write_text(out_dir / f"roc-{res.tag}.csv", "\n".join(csv_rows) + "\n")
    summary = {
        "model": model,
        "metric": res.metric,
        "flip": res.flip,
        "pairs": res.n_pairs,
        "accuracy_mean": round(res.mean, 4),
        "accuracy_std": round(res.std, 4),
        "auc": round(res.auc, 4),
        "eer": round(res.eer, 4),
        "val_at_far_1e-3": round(res.val_at_far, 4),
        "threshold_meaning": res.threshold_meaning,
        "folds": [{"fold": f.fold + 1, "threshold": res.shown(f.threshold), "accuracy": f.accuracy} for f in res.folds],
        **extra,
    }
    atomic_write_text(out_dir / f"summary-{res.tag}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_bytes(out_dir / f"roc-{res.tag}.png", roc_png(res, model))


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=110)


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def roc_png(res: LfwResult, model: str) -> bytes:
    fig, ax = _figure((5, 4.5))
    # log-scale false accept rate: the low-FAR end is where face verifiers differ
    lo = 1.0 / max(2, int(round(1.0 / max(res.fpr[res.fpr > 0].min(initial=1.0), 1e-6))))
    ax.plot(np.maximum(res.fpr, lo), res.tpr, lw=1.5, label=f"{model} ({res.tag}): AUC {res.auc:.3f}")
    grid = np.logspace(np.log10(lo), 0, 50)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{res.n_pairs} pairs: accuracy {res.mean:.4f} +- {res.std:.4f}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def run_lfw(
    lfw_dir: os.PathLike | str,
    out_dir: os.PathLike | str,
    embedder,
    metric: str = "sqeuclidean",
    images: str = "deepfunneled",
    folds: Optional[Sequence[int]] = None,
    per_fold: Optional[int] = None,
    workers: int = 1,
    progress: bool = True,
    detector: DetectorSpec = DetectorSpec(),
    engine: Optional[Engine] = None,
    pick: str = "largest",
) -> tuple[LfwResult, LfwResult, LfwEmbeddings]:
    """Embed, score and evaluate; returns (result without flip, result with flip, embeddings).

    Faces are found by ``detector`` (default: HOG at upsample 1, as OpenFace) and one chosen per
    photo by ``pick`` (``largest``, as OpenFace; ``central``, ``faces.stage.central_face``); a
    photo where none is found is aligned in LFW's central box (``faces.stage.CENTRAL_BOX``)."""
    root, out = Path(lfw_dir), Path(out_dir)
    detector = detector_for(detector, embedder.alignment)  # caches and reports name what ran
    if not (root / "pairs.txt").is_file():
        raise OpenFacePyError(f"{root}: no pairs.txt (expected LFW's view-2 pairs file)")
    if not (root / images).is_dir():
        raise OpenFacePyError(f"{root / images}: image folder not found (see --images)")
    pairs, _, _ = parse_pairs(root / "pairs.txt")
    pairs = select_pairs(pairs, folds, per_fold)
    names = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    out.mkdir(parents=True, exist_ok=True)
    emb = embed_lfw_images(
        root / images,
        names,
        embedder,
        embedding_cache_path(out, embedder.identity, root / images, detector, pick=pick),
        workers,
        progress=progress,
        detector=detector,
        engine=engine,
        pick=pick,
    )
    plain, flipped = evaluate_both(pairs, emb, metric)
    extra = {
        "images": len(names),
        **detector.to_dict(),
        "pick": pick,
        "no_face_fallbacks": len(emb.fallbacks),
        "fallback_images": emb.fallbacks,
    }
    for res in (plain, flipped):
        write_reports(out, res, embedder.name, extra)
    return plain, flipped, emb


def evaluate_both(pairs: Sequence, emb: LfwEmbeddings, metric: str) -> tuple[LfwResult, LfwResult]:
    """The protocol on plain and on mirror-averaged embeddings."""
    return (
        evaluate(pairs, score_pairs(emb, pairs, metric, False), metric, False),
        evaluate(pairs, score_pairs(emb, pairs, metric, True), metric, True),
    )


# ---- OpenFace's classification experiment -------------------------------------------------


@dataclass
class ClassifyRow:
    people: int
    classifier: str
    accuracy_mean: float
    accuracy_std: float
    train_s: float
    predict_ms: float
    runs: int


def eligible_people(image_root: Path, min_images: int) -> dict[str, list[str]]:
    """People with at least ``min_images`` photos: name -> sorted image names."""
    out = {}
    for d in sorted(p for p in image_root.iterdir() if p.is_dir()):
        files = sorted(f.name for f in d.iterdir() if f.suffix.lower() == ".jpg")
        if len(files) >= min_images:
            out[d.name] = [f"{d.name}/{f}" for f in files]
    return out


def run_lfw_classify(
    lfw_dir: os.PathLike | str,
    out_dir: os.PathLike | str,
    embedder,
    people_counts: Sequence[int] = (10, 25, 50, 100),
    classifiers: Optional[Sequence[str]] = None,
    min_images: int = 20,
    train_per_person: int = 10,
    runs: int = 5,
    images: str = "deepfunneled",
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[ClassifyRow], list[int]]:
    """For each N: ``runs`` times pick N people with >= ``min_images`` photos, take
    ``min_images`` photos of each, train on ``train_per_person`` and test on the rest.
    Returns the rows and the values of N that were skipped (too few eligible people)."""
    import time

    from openface_py.recognize.classifiers import CLASSIFIER_NAMES, make_classifier

    # all of them but the grid search, whose cost grows fastest with the number of people
    classifiers = classifiers or [c for c in CLASSIFIER_NAMES if c != "GridSearchSvm"]
    root, out = Path(lfw_dir) / images, Path(out_dir)
    if train_per_person >= min_images:
        raise UsageError("train_per_person must be below min_images (the rest is the test set)")
    people = eligible_people(root, min_images)
    rng = np.random.default_rng(seed)
    plans = []  # (N, run, {person: [images]})
    skipped = [n for n in people_counts if n > len(people)]
    for n in people_counts:
        if n in skipped:
            continue
        for r in range(runs):
            chosen = rng.choice(sorted(people), n, replace=False)
            plans.append((n, r, {p: list(rng.choice(people[p], min_images, replace=False)) for p in chosen}))
    names = sorted({img for _, _, plan in plans for imgs in plan.values() for img in imgs})
    out.mkdir(parents=True, exist_ok=True)
    emb = embed_lfw_images(
        root, names, embedder, embedding_cache_path(out, embedder.identity, root), workers, progress=progress
    )
    acc: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    for n, _r, plan in plans:
        tr_names, tr_y, te_names, te_y = [], [], [], []
        for k, (_person, imgs) in enumerate(sorted(plan.items())):
            tr_names += imgs[:train_per_person]
            tr_y += [k] * train_per_person
            te_names += imgs[train_per_person:]
            te_y += [k] * (len(imgs) - train_per_person)
        Xtr, Xte = emb.lookup(tr_names, False).astype(np.float64), emb.lookup(te_names, False).astype(np.float64)
        ytr, yte = np.array(tr_y), np.array(te_y)
        for name in classifiers:
            t0 = time.perf_counter()
            clf = make_classifier(name, seed=seed).fit(Xtr, ytr)
            t1 = time.perf_counter()
            pred = clf.decide(Xte)[0]
            t2 = time.perf_counter()
            acc.setdefault((n, name), []).append(((pred == yte).mean(), t1 - t0, 1000 * (t2 - t1) / len(yte)))
        log.info("lfw-classify: N=%d run done", n)
    rows = [
        ClassifyRow(n, name, float(np.mean([a for a, _, _ in v])), float(np.std([a for a, _, _ in v])),
                    float(np.mean([t for _, t, _ in v])), float(np.mean([p for _, _, p in v])), len(v))
        for (n, name), v in sorted(acc.items())
    ]  # fmt: skip
    lines = ["people,classifier,accuracy_mean,accuracy_std,train_s,predict_ms_per_face,runs"]
    lines += [f"{r.people},{r.classifier},{r.accuracy_mean:.4f},{r.accuracy_std:.4f},{r.train_s:.4f},"
              f"{r.predict_ms:.4f},{r.runs}" for r in rows]  # fmt: skip
    atomic_write_text(out / "classification.csv", "\n".join(lines) + "\n")
    atomic_write_bytes(out / "accuracies.png", classify_png(rows, embedder.name, min_images, train_per_person))
    atomic_write_bytes(
        out / "train-times.png", classify_png(rows, embedder.name, min_images, train_per_person, "train_s")
    )
    return rows, skipped


def classify_png(rows: list[ClassifyRow], model: str, min_images: int, train: int, field: str = "accuracy") -> bytes:
    fig, ax = _figure((6, 4.5))
    for name in sorted({r.classifier for r in rows}):
        rs = [r for r in rows if r.classifier == name]
        x = [r.people for r in rs]
        if field == "accuracy":
            ax.errorbar(x, [r.accuracy_mean for r in rs], yerr=[r.accuracy_std for r in rs], marker="o", capsize=3,
                        label=name)  # fmt: skip
        else:
            ax.plot(x, [r.train_s for r in rs], marker="o", label=name)
    ax.set_xlabel("people")
    ax.set_ylabel("accuracy" if field == "accuracy" else "training time (s)")
    if field != "accuracy":
        ax.set_yscale("log")
    ax.set_title(f"LFW classification, {model}: {train} train / {min_images - train} test photos per person",
                 fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
