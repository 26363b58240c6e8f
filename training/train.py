"""Train the multimodal response model: SageMaker script mode, and the same run locally.

In a SageMaker training job (``SAGEMAKER_PROGRAM=training/train.py``) the toolkit passes
the hyperparameters as arguments and sets:

* ``SM_CHANNEL_TRAIN``: a folder with ``dataset.parquet`` + ``preprocess.json``
  (:func:`oncopipe.cohort.dataset.write_dataset`). Training uses its ``train`` split and
  validates on its ``validation`` split, unless ``SM_CHANNEL_VALIDATION`` names another
  such folder (its ``validation`` rows, or all rows when it has none).
* ``SM_MODEL_DIR``: receives ``model.pt``, ``config.json`` and ``preprocess.json`` (what
  :mod:`training.inference` loads).
* ``SM_OUTPUT_DATA_DIR``: receives ``metrics.json`` (per-epoch loss and validation AUC,
  the chosen epoch, training samples/s).

Locally the same script runs with ``--train DIR --model-dir DIR --output-dir DIR``.

Checkpoints (Managed Spot Training): after every epoch the model, optimiser, scheduler,
RNG state, epoch, best metric and best weights go to ``<checkpoint dir>/checkpoint.pt``,
written to a temporary file and renamed, so an interruption leaves the previous
checkpoint whole. A run that finds a checkpoint resumes after its epoch. Every epoch
reseeds its own random streams (shuffle, modality dropout, dropout) from ``(seed, epoch)``,
so a resumed run ends with the same weights as an uninterrupted one. The checkpoint
folder is ``--checkpoint-dir``, else ``SM_CHECKPOINT_DIR``, else ``/opt/ml/checkpoints``
when it exists (SageMaker syncs it with ``checkpoint_s3_uri``), else none.

MLflow: when ``MLFLOW_TRACKING_URI`` is set, parameters, per-epoch metrics and the model
(``mlflow.pytorch.log_model``, pickle format with this code attached) are logged; a
resumed job continues the same MLflow run. Locally a file store (``file:///path``) works:
MLflow 3.17 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE=true``, which this script
sets for ``file:`` URIs only. In the cloud the URI is the SageMaker managed MLflow tracking
server's ARN, which needs the ``sagemaker-mlflow`` plugin in the training image
(``training/requirements.txt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `training` and `oncopipe` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from oncopipe.cohort.dataset import CohortDataset, read_dataset
from training.data import (
    RadiomicLayout,
    encode_rows,
)
from training.fit import (
    CHECKPOINT_FILE,
    DEFAULT_SPOT_CHECKPOINTS,
    HyperParameters,
    TrainResult,
    fit,
)

log = logging.getLogger(__name__)


def _validation_rows(train_ds: CohortDataset, validation_dir: Path | None) -> Any:
    if validation_dir is None:
        return train_ds.split("validation")
    other = read_dataset(validation_dir)
    rows = other.split("validation")
    return rows if rows.num_rows else other.table


class _MlflowLogger:
    """Logs to MLflow when ``MLFLOW_TRACKING_URI`` is set; does nothing otherwise."""

    def __init__(self, experiment: str, run_id: str | None):
        self.enabled = bool(os.environ.get("MLFLOW_TRACKING_URI"))
        self.run_id = run_id
        self._mlflow: Any = None
        if not self.enabled:
            return
        uri = os.environ["MLFLOW_TRACKING_URI"]
        if uri.startswith("file:"):
            # MLflow 3.17 refuses file stores unless told to (local mode only)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow

        self._mlflow = mlflow
        mlflow.set_experiment(experiment)
        # a SageMaker job (a tuning trial too) names its run: one MLflow run per job
        job = os.environ.get("TRAINING_JOB_NAME") or None
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=job)
        self.run_id = run.info.run_id

    def params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            self._mlflow.log_params({k: str(v) for k, v in params.items()})

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            clean = {k: v for k, v in metrics.items() if k != "epoch" and math.isfinite(v)}
            self._mlflow.log_metrics(clean, step=epoch)

    def finish(self, model: Any, summary: dict[str, float]) -> None:
        if not self.enabled:
            return
        import mlflow.pytorch

        self._mlflow.log_metrics({k: v for k, v in summary.items() if math.isfinite(v)})
        root = Path(__file__).resolve().parent.parent
        mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",  # the default pt2 needs a traceable tensor input
            code_paths=[str(root / "training"), str(root / "oncopipe")],
            pip_requirements=[line for line in _requirements() if line],
        )
        self._mlflow.end_run()

    def abort(self) -> None:
        if self.enabled:
            self._mlflow.end_run(status="FAILED")


def _requirements() -> list[str]:
    path = Path(__file__).with_name("requirements.txt")
    if not path.exists():
        return ["torch"]
    return [
        ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]


def resolve_checkpoint_dir(explicit: str | Path | None) -> Path | None:
    """Return the checkpoint folder: explicit, ``SM_CHECKPOINT_DIR``, or /opt/ml/checkpoints.

    In a tuning trial (``ONCOPIPE_CHECKPOINT_PER_JOB=true``, set by the pipeline's tuning
    step) the folder is ``<that>/<TRAINING_JOB_NAME>``: the trials share the step's
    checkpoint S3 prefix, and a trial must resume only from its own checkpoint (a spot
    restart keeps the job name), never from another trial's hyperparameters.
    """
    if explicit:
        return Path(explicit)
    if os.environ.get("SM_CHECKPOINT_DIR"):
        base: Path | None = Path(os.environ["SM_CHECKPOINT_DIR"])
    else:
        base = DEFAULT_SPOT_CHECKPOINTS if DEFAULT_SPOT_CHECKPOINTS.is_dir() else None
    job = os.environ.get("TRAINING_JOB_NAME", "")
    if base is not None and os.environ.get("ONCOPIPE_CHECKPOINT_PER_JOB") == "true":
        if not job or "/" in job or job.startswith("."):
            raise ValueError(
                "ONCOPIPE_CHECKPOINT_PER_JOB=true needs TRAINING_JOB_NAME (a plain job name)"
            )
        return base / job
    return base


def _both(
    first: Callable[[int, dict[str, float]], None],
    then: Callable[[int, dict[str, float]], None] | None,
) -> Callable[[int, dict[str, float]], None]:
    if then is None:
        return first

    def each(epoch: int, metrics: dict[str, float]) -> None:
        first(epoch, metrics)
        then(epoch, metrics)

    return each


def train(
    train_dir: Path | str,
    model_dir: Path | str,
    *,
    output_dir: Path | str | None = None,
    validation_dir: Path | str | None = None,
    checkpoint_dir: Path | str | None = None,
    hparams: HyperParameters | None = None,
    experiment: str = "oncopipe-response",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train from a dataset folder and write the model folder (see the module docstring).

    ``on_epoch(epoch, metrics)`` is called after each epoch (1-based), after MLflow's.

    Returns: the run's :class:`TrainResult` (``metrics`` is what ``metrics.json`` holds).

    Raises:
        CohortError: the dataset folder lacks ``dataset.parquet`` or ``preprocess.json``.
        ValueError: bad hyperparameters or a checkpoint of other hyperparameters.
    """
    hp = hparams or HyperParameters()
    ds = read_dataset(train_dir)
    prep = ds.preprocessing
    layout = RadiomicLayout.from_features(prep.radiomic_features)
    enc = {"max_variants": hp.max_variants, "max_notes": hp.max_notes, "layout": layout}
    train_data = encode_rows(ds.split("train"), prep, **enc)  # type: ignore[arg-type]
    val_rows = _validation_rows(ds, Path(validation_dir) if validation_dir else None)
    val_data = encode_rows(val_rows, prep, **enc)  # type: ignore[arg-type]
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    extra: dict[str, Any] = {}
    if ckpt is not None and (ckpt / CHECKPOINT_FILE).exists():
        import torch

        saved = torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        extra = dict(saved.get("extra", {}))
    tracker = _MlflowLogger(experiment, extra.get("mlflow_run_id"))
    if tracker.run_id:
        extra["mlflow_run_id"] = tracker.run_id
    if not extra.get("params_logged"):
        tracker.params(
            {**asdict(hp), "train_patients": len(train_data), "validation_patients": len(val_data)}
        )
        extra["params_logged"] = True
    try:
        result = fit(
            train_data,
            val_data,
            prep,
            hp,
            checkpoint_dir=ckpt,
            on_epoch=_both(tracker.epoch, on_epoch),
            state_extra=extra,
        )
    except BaseException:
        tracker.abort()
        raise
    from training.model import save_model

    out = Path(model_dir)
    save_model(result.model, out, hparams=asdict(hp))
    from oncopipe.cohort.dataset import preprocess_path

    shutil.copyfile(preprocess_path(train_dir), out / "preprocess.json")
    result.metrics = {
        "best_epoch": result.best_epoch,
        "best_val_auc": result.best_val_auc,
        "epochs": hp.epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_patients": len(train_data),
        "validation_patients": len(val_data),
        "samples_per_second": result.samples_per_second,
        "train_seconds": result.train_seconds,
        "parameters": result.model.parameter_count(),
        "history": result.history,
        "hparams": asdict(hp),
        "mlflow_run_id": tracker.run_id,
    }
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(
            json.dumps(result.metrics, indent=1) + "\n", encoding="utf-8"
        )
    summary = {
        "best_val_auc": result.best_val_auc or float("nan"),
        "samples_per_second": result.samples_per_second,
    }
    tracker.finish(result.model, summary)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the job's arguments; folders default to the SageMaker ``SM_*`` variables."""
    env = os.environ
    d = HyperParameters()
    p = argparse.ArgumentParser(prog="training/train.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "--train",
        default=env.get("SM_CHANNEL_TRAIN"),
        help="dataset folder (default $SM_CHANNEL_TRAIN)",
    )
    p.add_argument("--validation", default=env.get("SM_CHANNEL_VALIDATION"))
    p.add_argument("--model-dir", default=env.get("SM_MODEL_DIR"))
    p.add_argument("--output-dir", default=env.get("SM_OUTPUT_DATA_DIR"))
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="default $SM_CHECKPOINT_DIR, else /opt/ml/checkpoints if it exists",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--ff", type=int, default=d.ff)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--modality-dropout", type=float, default=d.modality_dropout)
    p.add_argument("--modalities", default=",".join(d.modalities))
    p.add_argument("--radiomic-noise", type=float, default=d.radiomic_noise)
    p.add_argument("--radiomic-group-dropout", type=float, default=d.radiomic_group_dropout)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 for bit-identical runs across machines)",
    )
    p.add_argument("--experiment", default="oncopipe-response", help="MLflow experiment")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--package",
        type=lambda v: str(v).lower() in ("1", "true", "yes"),
        default=bool(os.environ.get("SM_MODEL_DIR")),
        help="also write pruned/ for serving (default: in SageMaker)",
    )
    args = p.parse_args(argv)
    missing = [n for n in ("train", "model_dir") if not getattr(args, n)]
    if missing:
        p.error(
            f"no {', '.join('--' + m.replace('_', '-') for m in missing)} "
            "(or SM_CHANNEL_TRAIN / SM_MODEL_DIR)"
        )
    return args


def hparams_from_args(args: argparse.Namespace) -> HyperParameters:
    """Return the hyperparameters of parsed arguments."""
    return HyperParameters(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        ff=args.ff,
        dropout=args.dropout,
        modality_dropout=args.modality_dropout,
        modalities=[m.strip() for m in args.modalities.split(",") if m.strip()],
        seed=args.seed,
        threads=args.threads,
        radiomic_noise=args.radiomic_noise,
        radiomic_group_dropout=args.radiomic_group_dropout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Script entry: train, write the model and metrics; print a one-line summary.

    The job's cost estimate (:func:`oncopipe.ops.cost.training_job_profile`: the instances
    of ``resourceconfig.json`` for the job's seconds, spot from ``ONCOPIPE_SM_MANAGED_SPOT``)
    goes into the summary line and ``metrics.json`` as ``cost``; EMF stage metrics (stage
    ``training``: the job as one item, its duration, the dataset's bytes,
    ``CostEstimateUSD``) go to stderr.
    """
    from oncopipe.metrics import StageMetrics
    from oncopipe.ops.cost import training_job_profile

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    profile = training_job_profile()
    with StageMetrics("training") as stage_metrics:
        stage_metrics.items_in()
        started = time.perf_counter()
        try:
            result = train(
                args.train,
                args.model_dir,
                output_dir=args.output_dir,
                validation_dir=args.validation,
                checkpoint_dir=resolve_checkpoint_dir(args.checkpoint_dir),
                hparams=hparams_from_args(args),
                experiment=args.experiment,
            )
            summary = {
                k: result.metrics[k]
                for k in ("best_epoch", "best_val_auc", "samples_per_second", "resumed_from_epoch")
            }
            if args.package:
                summary["pruned"] = package_for_serving(args.model_dir, args.train, args.output_dir)
        except BaseException:
            stage_metrics.outcome("failed", seconds=time.perf_counter() - started)
            stage_metrics.job_cost(profile.job_fields())
            raise
        cost = profile.job_fields()
        stage_metrics.outcome("succeeded", seconds=time.perf_counter() - started,
                              nbytes=_dataset_bytes(args.train))  # fmt: skip
        stage_metrics.job_cost(cost)
    summary["cost"] = cost
    if args.output_dir is not None:
        _record_cost(Path(args.output_dir) / "metrics.json", cost)
    print(json.dumps(summary, default=str))
    return 0


def _dataset_bytes(train_dir: Path | str) -> int | None:
    """Return the bytes of the training dataset's files (None when unreadable)."""
    try:
        return sum(p.stat().st_size for p in Path(train_dir).rglob("*") if p.is_file())
    except OSError:
        return None


def _record_cost(metrics_path: Path, cost: dict[str, Any]) -> None:
    """Add the job's ``cost`` to ``metrics.json`` (the training job's record of what it did)."""
    try:
        document = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    document["cost"] = cost
    metrics_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def package_for_serving(model_dir: Path | str, train_dir: Path | str,
                        output_dir: Path | str | None) -> dict[str, Any]:  # fmt: skip
    """Add the pruned model for serving to the model folder; return the prune report.

    Adds ``pruned/`` (:func:`training.prune.prune`, chosen on the validation split): the
    endpoint serves it and batch transform the full model. The code that serves both is in
    the image (``training/serve.py``), not in ``model.tar.gz``.
    """
    from training.prune import prune

    root = Path(model_dir)
    report = prune(root, train_dir, root / "pruned")
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "prune_report.json").write_text(
            json.dumps(report, indent=2, default=str), encoding="utf-8"
        )
    return {k: report[k] for k in report if not isinstance(report[k], dict | list)}


if __name__ == "__main__":
    raise SystemExit(main())
