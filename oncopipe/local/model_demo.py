"""The model part of ``make demo`` (``oncopipe local model``), on the local machine.

The three sample patients are too few to train on, so the model is trained on a
synthetic cohort emitted directly as feature tables with the stages' schemas
(:mod:`oncopipe.cohort.synthetic`, labels from its documented ground-truth rule), then
applied to the real sample patients whose features the local run wrote to curated:

1. synthetic tables -> cohort dataset (patient-level splits, train-only normalisation);
2. training (script mode's code path) with checkpoints and an MLflow file store;
3. ablations on the held-out split -> ``evaluation.json`` and ``roc.png``;
4. per-patient explanations (Integrated Gradients) -> JSON and HTML;
5. pruning -> the pruned model, its AUC and latency against the full one;
6. the serving handler on the curated features of the sample patients.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelReport:
    out: Path
    table: str
    goals: dict[str, Any]
    prune: dict[str, Any]
    explanations: list[Path]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def _curated_tables(store: Any, bucket: str) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oncopipe import catalog
    from oncopipe.catalog import committed_files

    # the Glue tables' committed files only (what Athena reads), never a prefix listing
    sources = {"variants": catalog.VARIANTS, "radiomics": catalog.RADIOMICS,
               "notes": catalog.NOTE_CONCEPTS}  # fmt: skip
    tables = {}
    for name, spec in sources.items():
        table = spec.name
        keys = committed_files(store, bucket, table)
        parts = [pq.read_table(io.BytesIO(store.get_bytes(bucket, k))) for k in keys]
        tables[name] = (pa.concat_tables(parts, promote_options="permissive") if parts
                        else catalog.arrow_schema(spec).empty_table())  # fmt: skip
    return tables


def run_model_demo(
    out: Path,
    *,
    patients: int = 1000,
    store: Any = None,
    curated: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ModelReport:
    """Run steps 1-6 under ``out``; return what to print.

    ``progress`` gets one line per phase and per unit of work in it: the synthetic cohort,
    each training epoch, each ablation model, the explanations, pruning, scoring.
    """
    from oncopipe.cohort.dataset import build_dataset_from_dir, patient_payloads, write_dataset
    from oncopipe.cohort.synthetic import generate_tables, write_tables
    from training.evaluate import evaluate, format_table
    from training.explain import explain
    from training.fit import HyperParameters
    from training.inference import predict_local
    from training.prune import prune
    from training.train import train

    say = progress or (lambda _line: None)
    out.mkdir(parents=True, exist_ok=True)
    say(f"synthetic cohort: {patients} patients, dataset splits")
    write_tables(generate_tables(patients, seed=0), out / "synthetic")
    write_dataset(build_dataset_from_dir(out / "synthetic"), out / "dataset")
    os.environ.setdefault("MLFLOW_TRACKING_URI", (out / "mlruns").resolve().as_uri())
    epochs = HyperParameters().epochs

    def epoch_done(epoch: int, metrics: dict[str, float]) -> None:
        auc = metrics.get("val_auc")
        shown = f", validation AUC {auc:.3f}" if isinstance(auc, float) else ""
        say(f"training the multimodal model: epoch {epoch}/{epochs}{shown}")

    train(out / "dataset", out / "model", output_dir=out / "output",
          checkpoint_dir=out / "checkpoints", on_epoch=epoch_done)  # fmt: skip

    def model_started(name: str, index: int, total: int) -> None:
        say(f"ablations: model {index}/{total} ({name})")

    report = evaluate(out / "dataset", out / "evaluation", on_model=model_started)
    say("explanations: integrated gradients for 3 patients")
    explain(out / "model", out / "dataset", out / "evaluation", limit=3)
    say("pruning and latency of the pruned vs full model")
    pruned = prune(out / "model", out / "dataset", out / "pruned")
    result = ModelReport(out, format_table(report), report.get("goals", {}), pruned,
                         sorted((out / "evaluation" / "explanations").glob("*.html")))  # fmt: skip
    if store is not None and curated:
        tables = _curated_tables(store, curated)
        payloads = patient_payloads(tables["variants"], tables["radiomics"], tables["notes"])
        if payloads:
            answer = predict_local(out / "pruned", list(payloads.values()))
            result.predictions = answer if isinstance(answer, list) else [answer]
    return result
