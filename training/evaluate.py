"""Evaluation of the response model: metrics, modality ablations and graceful degradation.

:func:`evaluate` trains one model per non-empty subset of the modalities (3 single, 3
pairs, all three) on the same training split with the same hyperparameters and seed,
picks each one's epoch on the validation split, and scores all of them on the held-out
test split. The all-three model is also scored with one modality masked for every test
patient (what happens when a modality is missing in production). It writes
``evaluation.json`` (every row's metrics, the goals and whether they are met) and
``roc.png`` (ROC curves of the seven models).

Metrics per row (:func:`binary_metrics`): ROC AUC, recall (sensitivity) at 90 %
specificity, Brier score, expected calibration error over 10 equal-width bins and the
reliability bins themselves.

Usage: ``python -m training.evaluate --dataset DIR --out DIR [--epochs N ...]``.

``python -m training.evaluate score --model DIR --dataset DIR --out DIR [--approved-auc A
--tolerance T]`` (:func:`score`) scores one trained model on the test split instead: the
model pipeline's evaluation step, whose ``evaluation.json`` the pipeline's AUC gate reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from training.data import MODALITIES, Encoded, RadiomicLayout, encode_rows, select_modalities
from training.fit import HyperParameters, fit, predict, roc_auc

log = logging.getLogger(__name__)

ABLATIONS: tuple[tuple[str, ...], ...] = (
    ("genomics",),
    ("radiomics",),
    ("notes",),
    ("genomics", "radiomics"),
    ("genomics", "notes"),
    ("radiomics", "notes"),
    MODALITIES,
)
GOAL_AUC = 0.85
GOAL_MARGIN = 0.10
SPECIFICITY = 0.90


def roc_curve(labels: Any, scores: Any) -> tuple[Any, Any]:
    """Return (false positive rates, true positive rates) at every distinct threshold."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(y.sum(), 1.0), max(len(y) - y.sum(), 1.0)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def recall_at_specificity(labels: Any, scores: Any, specificity: float = SPECIFICITY) -> float:
    """Return the highest recall among thresholds whose specificity is >= ``specificity``."""
    fpr, tpr = roc_curve(labels, scores)
    ok = fpr <= 1.0 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def calibration(labels: Any, probs: Any, bins: int = 10) -> tuple[float, list[dict[str, Any]]]:
    """Return (expected calibration error, reliability bins) over equal-width bins."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    table = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        row: dict[str, Any] = {"low": float(edges[b]), "high": float(edges[b + 1]), "count": n}
        if n:
            row["mean_predicted"] = float(p[sel].mean())
            row["observed_rate"] = float(y[sel].mean())
            ece += n / len(y) * abs(row["mean_predicted"] - row["observed_rate"])
        table.append(row)
    return float(ece), table


def binary_metrics(labels: Any, probs: Any) -> dict[str, Any]:
    """Return AUC, recall at 90 % specificity, Brier, ECE and reliability bins."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    ece, bins = calibration(y, p)
    return {
        "patients": len(y),
        "positives": int(y.sum()),
        "auc": roc_auc(y, p),
        "recall_at_90_specificity": recall_at_specificity(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": ece,
        "reliability": bins,
    }


def _name(modalities: Sequence[str]) -> str:
    return "+".join(modalities)


def _plot(curves: dict[str, tuple[Any, Any, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training instances
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for name, (fpr, tpr, auc) in curves.items():
        width = 2.4 if name == _name(MODALITIES) else 1.2
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})", linewidth=width)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Response model: modality ablations (test split)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def goals(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return the benchmark goals (AUC >= 0.85, >= best single modality + 0.10)."""
    full = rows[_name(MODALITIES)]["auc"]
    singles = {m: rows[m]["auc"] for m in MODALITIES}
    best = max(singles, key=lambda m: singles[m])
    return {
        "multimodal_auc": full,
        "best_single_modality": best,
        "best_single_auc": singles[best],
        "margin": full - singles[best],
        "auc_goal": GOAL_AUC,
        "margin_goal": GOAL_MARGIN,
        "meets_auc_goal": bool(full >= GOAL_AUC),
        "meets_margin_goal": bool(full - singles[best] >= GOAL_MARGIN),
    }


def evaluate_data(
    dataset: Any,
    out_dir: Path | str,
    *,
    hparams: HyperParameters | None = None,
    ablations: Sequence[Sequence[str]] = ABLATIONS,
    on_model: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train and score the ablations on a :class:`CohortDataset`; write the report files.

    ``on_model(name, index, total)`` is called before each ablation model trains (1-based).

    Returns: the content of ``evaluation.json``.

    Raises:
        ValueError: the test split is empty or has a single class.
    """
    hp = hparams or HyperParameters()
    prep = dataset.preprocessing
    layout = RadiomicLayout.from_features(prep.radiomic_features)

    def enc(split: str) -> Encoded:
        return encode_rows(
            dataset.split(split),
            prep,
            max_variants=hp.max_variants,
            max_notes=hp.max_notes,
            layout=layout,
        )

    train, val, test = enc("train"), enc("validation"), enc("test")
    y = test.labels
    if not len(test) or len(set(y[~np.isnan(y)].tolist())) < 2:
        raise ValueError("the test split needs patients of both classes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[Any, Any, float]] = {}
    models: dict[str, Any] = {}
    t_all = time.perf_counter()
    for index, modalities in enumerate(ablations, start=1):
        name = _name(modalities)
        if on_model is not None:
            on_model(name, index, len(ablations))
        t0 = time.perf_counter()
        result = fit(train, val, prep, replace(hp, modalities=list(modalities)))
        probs = predict(result.model, test, present=select_modalities(test.present, modalities))
        row = binary_metrics(y, probs)
        row.update(
            {
                "modalities": list(modalities),
                "best_epoch": result.best_epoch,
                "val_auc": result.best_val_auc,
                "train_seconds": result.train_seconds,
                "samples_per_second": result.samples_per_second,
                "seconds": time.perf_counter() - t0,
            }
        )
        rows[name] = row
        fpr, tpr = roc_curve(y, probs)
        curves[name] = (fpr, tpr, row["auc"])
        models[name] = result.model
        log.info(
            "%s: test AUC %.3f (val %.3f, %.0f s)",
            name,
            row["auc"],
            result.best_val_auc or float("nan"),
            row["seconds"],
        )
    masked: dict[str, dict[str, Any]] = {}
    full = _name(MODALITIES)
    if full in models:
        for j, missing in enumerate(MODALITIES):
            present = test.present.copy()
            present[:, j] = False
            probs = predict(models[full], test, present=present)
            masked[f"{full} without {missing}"] = {
                "masked": missing,
                "nan_predictions": int(np.isnan(probs).sum()),
                **binary_metrics(y, np.nan_to_num(probs, nan=0.5)),
            }
    report: dict[str, Any] = {
        "split_counts": dataset.counts(),
        "hparams": asdict(hp),
        "ablations": rows,
        "masked_at_inference": masked,
        "total_seconds": time.perf_counter() - t_all,
    }
    if full in rows and all(m in rows for m in MODALITIES):
        report["goals"] = goals(rows)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    _plot(curves, out / "roc.png")
    report["models"] = models  # in memory only: callers may reuse the trained models
    return report


def evaluate(
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    hparams: HyperParameters | None = None,
    ablations: Sequence[Sequence[str]] = ABLATIONS,
    on_model: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the ablations on a dataset folder (``dataset.parquet`` + ``preprocess.json``).

    Writes ``evaluation.json`` and ``roc.png`` into ``out_dir``.

    Returns: the report (as in ``evaluation.json``, plus ``models``: name -> trained model).

    Raises:
        CohortError: the folder is not a dataset.
        ValueError: the test split is empty or has a single class.
    """
    from oncopipe.cohort.dataset import read_dataset

    return evaluate_data(read_dataset(dataset_dir), out_dir, hparams=hparams, ablations=ablations,
                         on_model=on_model)  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    """Return the ablation and masking rows as an aligned text table."""
    lines = [f"{'model':<34}{'AUC':>7}{'rec@90sp':>10}{'Brier':>8}{'ECE':>7}{'val AUC':>9}"]
    for name, r in report["ablations"].items():
        val = r.get("val_auc")
        lines.append(
            f"{name:<34}{r['auc']:>7.3f}{r['recall_at_90_specificity']:>10.3f}"
            f"{r['brier']:>8.3f}{r['ece']:>7.3f}"
            f"{(val if val is not None else float('nan')):>9.3f}"
        )
    for name, r in report.get("masked_at_inference", {}).items():
        lines.append(
            f"{name:<34}{r['auc']:>7.3f}{r['recall_at_90_specificity']:>10.3f}"
            f"{r['brier']:>8.3f}{r['ece']:>7.3f}{'':>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (see the module docstring); ``score ...`` runs :func:`score_main`."""
    from training.train import hparams_from_args, parse_args

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["score"]:
        return score_main(args_list[1:])
    argv = args_list
    parser = argparse.ArgumentParser(prog="python -m training.evaluate")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    train_args = parse_args(["--train", str(args.dataset), "--model-dir", str(args.out), *rest])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = evaluate(args.dataset, args.out, hparams=hparams_from_args(train_args))
    print(format_table(report))
    print(json.dumps(report.get("goals", {}), indent=1))
    return 0


# -- score: one trained model on the test split (the pipeline's evaluation step) ------------
SCORE_FILE = "evaluation.json"
BOOTSTRAP_SAMPLES = 200


def _model_folder(model: Path, scratch: Path) -> Path:
    """The model folder: ``model`` itself, or ``model.tar.gz`` in it extracted to ``scratch``."""
    import tarfile

    if (model / "model.pt").exists():
        return model
    archive = model / "model.tar.gz" if model.is_dir() else model
    if not archive.is_file():
        raise FileNotFoundError(f"{model}: neither model.pt nor model.tar.gz")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(scratch, filter="data")  # refuses links and paths outside scratch
    return scratch


def _artifact_digest(model: Path) -> dict[str, Any] | None:
    """SHA-256 and size of ``model.tar.gz`` (``model`` or in it); None for a model folder."""
    import hashlib

    archive = model / "model.tar.gz" if model.is_dir() else model
    if not archive.is_file():
        return None
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        for chunk in iter(lambda: f.read(8 * 1024 * 1024), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "size": archive.stat().st_size}


def _auc_std(labels: Any, probs: Any, samples: int = BOOTSTRAP_SAMPLES) -> float:
    """Bootstrap standard deviation of the AUC (seeded: the same data give the same value)."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, len(labels), len(labels))
        a = roc_auc(labels[idx], probs[idx])
        if not np.isnan(a):
            values.append(a)
    return float(np.std(values)) if values else float("nan")


#: What ``serving`` of evaluation.json copies from the pruning report (training/prune.py).
SERVING_KEYS = ("latency_ms", "speedup_p50", "test_auc", "auc_loss", "parameters")


def _serving_report(model: Path) -> dict[str, Any] | None:
    """The pruned-vs-full figures of a packaged model folder (None: no pruned model)."""
    path = model / "pruned" / "prune_report.json"
    if not path.is_file():
        return None
    try:
        pruned = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a pruning report ({e})") from e
    missing = [k for k in SERVING_KEYS if k not in pruned]
    if missing:
        raise ValueError(f"{path}: the pruning report lacks {', '.join(missing)}")
    return {k: pruned[k] for k in SERVING_KEYS}


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def score(
    model_dir: Path | str,
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    approved_auc: float = 0.0,
    tolerance: float = 0.0,
    histograms_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Score a trained model on the test split of a dataset; write ``evaluation.json``.

    ``model_dir`` is a model folder (``model.pt``, ``preprocess.json``) or a folder with the
    training job's ``model.tar.gz`` (what a SageMaker Processing input of the artifact
    holds). The report has ``metrics`` (:func:`binary_metrics` of the test split),
    ``binary_classification_metrics`` (SageMaker's model-quality format: ``auc`` value and
    bootstrap standard deviation, the model registry shows it) and ``comparison``: the
    approved model's AUC, the tolerance, and ``approved_floor`` = approved AUC - tolerance,
    the value the pipeline's condition compares the AUC with. When the model came as
    ``model.tar.gz``, ``artifact`` holds that file's SHA-256 and size (the register step
    records the digest on the package; deployment checks the artefact against it).
    When the artefact holds the pruned model for serving (``pruned/prune_report.json``,
    written by ``train.py --package``), ``serving`` holds the pruned-vs-full comparison the
    approver sees on the version: one-patient latency p50/p95 of both, the p50 speed-up,
    both test AUCs and the AUC loss, and the parameter counts.

    Also writes ``baseline.json``: the drift baseline of this model
    (:func:`oncopipe.monitor.baseline.training_baseline`): the VAF histogram documents in
    ``histograms_dir`` of the training split's patients, the training split's radiomic
    features and note concepts (from the dataset, in the curated tables' units and
    spelling), and the histogram of this model's test-split predictions (what served
    predictions are compared with).

    Returns: the report.

    Raises:
        FileNotFoundError: no model in ``model_dir``.
        CohortError: ``dataset_dir`` is not a dataset.
        ValueError: the test split lacks a class, or a negative tolerance.
    """
    import tempfile

    from oncopipe.cohort.dataset import read_dataset
    from oncopipe.cohort.preprocess import Preprocessing
    from training.model import load_model

    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    from oncopipe.monitor.baseline import BASELINE_FILE, training_baseline
    from oncopipe.monitor.modalities import predictions_baseline

    with tempfile.TemporaryDirectory(prefix="oncopipe-score-") as scratch:
        artifact = _artifact_digest(Path(model_dir))
        root = _model_folder(Path(model_dir), Path(scratch))
        model = load_model(root)
        prep = Preprocessing.load(root / "preprocess.json")
        serving = _serving_report(root)
    dataset = read_dataset(dataset_dir)
    config = model.config
    test = encode_rows(
        dataset.split("test"),
        prep,
        max_variants=config.max_variants,
        max_notes=config.max_notes,
        layout=RadiomicLayout.from_features(prep.radiomic_features),
    )
    ok = ~np.isnan(test.labels)
    y = test.labels[ok]
    if len(set(y.tolist())) < 2:
        raise ValueError(f"{dataset_dir}: the test split needs labelled patients of both classes")
    probs = predict(model, test, present=select_modalities(test.present, config.modalities))[ok]
    metrics = binary_metrics(y, probs)
    report: dict[str, Any] = {
        "metrics": metrics,
        "binary_classification_metrics": {
            "auc": {"value": metrics["auc"], "standard_deviation": _auc_std(y, probs)},
            "recall_at_90_specificity": {
                "value": metrics["recall_at_90_specificity"],
                "standard_deviation": float("nan"),
            },
        },
        "comparison": {
            "approved_auc": float(approved_auc),
            "tolerance": float(tolerance),
            # rounded off float noise only (0.95 - 0.02 is 0.9299999999999999)
            "approved_floor": round(float(approved_auc) - float(tolerance), 10),
        },
        "split_counts": dataset.counts(),
        "modalities": list(config.modalities),
    }
    if artifact is not None:
        report["artifact"] = artifact
    if serving is not None:
        report["serving"] = serving
    trained_on = dataset.split("train")["patient_key"].to_pylist()
    # served predictions are compared with this model's predictions on held-out patients
    baseline = training_baseline(histograms_dir, trained_on, dataset=dataset,
                                 features=predictions_baseline(probs.tolist()))  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BASELINE_FILE).write_text(json.dumps(baseline, indent=1) + "\n", encoding="utf-8")
    # NaN is not JSON: a value that does not exist (one-class bootstrap) is written as null
    text = json.dumps(_nan_to_none(report), indent=1, allow_nan=False)
    (out / SCORE_FILE).write_text(text + "\n", encoding="utf-8")
    return report


def score_main(argv: Sequence[str]) -> int:
    """``python -m training.evaluate score --model DIR --dataset DIR --out DIR ...``."""
    parser = argparse.ArgumentParser(prog="python -m training.evaluate score")
    parser.add_argument("--model", type=Path, required=True,
                        help="model folder, or a folder with model.tar.gz")  # fmt: skip
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--approved-auc", type=float, default=0.0,
                        help="test AUC of the model now approved (0: none)")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="how far below the approved AUC a new model may score")  # fmt: skip
    parser.add_argument("--histograms", type=Path, default=None,
                        help="folder of VAF histogram documents (drift baseline)")  # fmt: skip
    args = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = score(args.model, args.dataset, args.out, approved_auc=args.approved_auc,
                   tolerance=args.tolerance, histograms_dir=args.histograms)  # fmt: skip
    print(json.dumps({"auc": report["metrics"]["auc"], **report["comparison"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
