"""The model pipeline's definition run locally: a cold run, then a re-run on the same cohort.

The SageMaker Pipeline definition the stack deploys (:func:`oncopipe.pipeline.definition.
model_pipeline`) is run by :class:`oncopipe.pipeline.local_runner.LocalPipelineRunner` on a
synthetic cohort committed to an in-process S3 (moto) the way the stages commit their
tables: cohort (Processing) -> train (script mode) -> evaluate -> AUC gate -> register.

Side by side in one run:

1. the cold run: every step runs (the figure a user waits for on a laptop);
2. the re-run with the same ``CohortRunId``: the step cache answers ``Cohort`` and
   ``Train`` (same resolved arguments, outputs still there) and only evaluation and the
   gate run again; the ratio is re-run / cold time. The row passes when both cached steps
   were skipped and the dataset object was not rewritten.

Per-step seconds come from the runner's progress lines (``<step>: running`` ...
``<step>: succeeded``). ``--quick``: 300 patients, 4 epochs (full: 1,000 patients, the
deployed 16 epochs).

Run: ``.venv/bin/python benchmarks/pipeline_local.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")
from _bench import Report

REGION = "eu-west-1"
CURATED, ARTIFACTS, GROUP = "bench-curated", "bench-artifacts", "bench-response"
ROLE = "arn:aws:iam::123456789012:role/bench"


def _commit_cohort(store: Any, patients: int) -> None:
    """Commit synthetic feature tables (manifests + symlinks), labels and VAF histograms."""
    from oncopipe import layout
    from oncopipe.cohort.columns import radiomic_feature_names
    from oncopipe.cohort.dataset import split_of
    from oncopipe.cohort.synthetic import commit_tables, generate_tables
    from oncopipe.monitor.histogram import VAF_EDGES, Histogram, Stratum, encode, to_document

    features = [f for f in radiomic_feature_names()
                if f.startswith(("original_", "log-sigma-1-0-mm-3D_"))]  # fmt: skip
    tables = generate_tables(patients, seed=5, features=features)
    commit_tables(tables, store, CURATED, run_id="feat-1")
    for patient in tables.labels["patient_key"].to_pylist():
        vaf = {"train": 0.05, "validation": 0.3, "test": 0.6}[split_of(patient)]
        doc = to_document(Histogram.of([vaf], VAF_EDGES), Stratum("panel-v1", "paired"),
                          day="2026-11-02")  # fmt: skip
        store.put_bytes(CURATED, layout.vaf_histogram_key("2026-11-02", patient, "tumour"),
                        encode(doc), tags={})  # fmt: skip


class _Clock:
    """The runner's echo: keeps each line with the time it came."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.perf_counter(), line))

    def steps(self) -> dict[str, float]:
        """Seconds from ``<step>: running`` to ``<step>: succeeded`` (cached: 0)."""
        started: dict[str, float] = {}
        out: dict[str, float] = {}
        for at, line in self.lines:
            step, _, event = line.partition(": ")
            if event == "running":
                started[step] = at
            elif event == "succeeded" and step in started:
                out[step] = at - started[step]
            elif event == "cached":
                out[step] = 0.0
        return out

    def said(self, text: str) -> bool:
        return any(line == text for _, line in self.lines)


def run(quick: bool) -> Report:
    import boto3
    from moto import mock_aws

    from oncopipe import layout
    from oncopipe.pipeline import definition as d
    from oncopipe.pipeline.local_runner import CACHED, LocalPipelineRunner
    from oncopipe.storage import ObjectStore

    patients, epochs = (300, 4) if quick else (1000, 16)
    report = Report("pipeline_local", quick=quick)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION})  # fmt: skip
    hyperparameters = {**d.DEFAULT_HYPERPARAMETERS, "epochs": str(epochs), "threads": "1",
                       "package": "false", "log-level": "WARNING"}  # fmt: skip
    settings = d.PipelineSettings(
        curated_bucket=CURATED, artifacts_bucket=ARTIFACTS, cohort_role_arn=ROLE,
        training_role_arn=ROLE, evaluation_role_arn=ROLE, processing_image_uri="local",
        training_image_uri="local", inference_image_uri="local",
        kms_key_arn="arn:aws:kms:eu-west-1:123456789012:key/bench", subnet_ids=("subnet-0",),
        security_group_ids=("sg-0",), model_package_group_name=GROUP,
        hyperparameters=hyperparameters, cohort_run_id="build-1",
    )  # fmt: skip
    with mock_aws(), tempfile.TemporaryDirectory() as work:
        client = boto3.client("s3", region_name=REGION)
        for bucket in (CURATED, ARTIFACTS):
            client.create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
            )
            client.put_bucket_versioning(Bucket=bucket,
                                         VersioningConfiguration={"Status": "Enabled"})  # fmt: skip
        store = ObjectStore(client)
        _commit_cohort(store, patients)
        definition = d.model_pipeline(settings)
        dataset = f"{layout.CURATED_COHORT_DATASET}build-1/dataset.parquet"
        clocks, seconds, results = [], [], []
        for execution in ("cold", "rerun"):
            clock = _Clock()
            runner = LocalPipelineRunner(definition, store, work_dir=work,
                                         artifacts_bucket=ARTIFACTS, region=REGION,
                                         echo=clock)  # fmt: skip
            started = time.perf_counter()
            results.append(runner.start({"MinAuc": 0.0}, execution_id=f"bench-{execution}"))
            seconds.append(time.perf_counter() - started)
            clocks.append(clock)
            if execution == "cold":
                written = store.head(CURATED, dataset)
        cold, rerun = seconds
        steps = clocks[0].steps()
        detail = ", ".join(f"{s} {t:.1f} s" for s, t in steps.items())
        report.add("definition -> local run of every step (cold)", cold, None, unit="s",
                   note=f"{patients} patients, {epochs} epochs; {detail}")  # fmt: skip
        skipped = all(results[1].status_of(s) == CACHED for s in ("Cohort", "Train"))
        untouched = store.head(CURATED, dataset) == written
        report.add(
            "re-run, same cohort: Cohort and Train from the step cache vs the cold run",
            rerun, cold, unit="s", goal="Cohort and Train cached", passed=skipped and untouched,
            note=f"ran again: {', '.join(s for s, t in clocks[1].steps().items() if t > 0)}; "
            f"dataset {'not rewritten' if untouched else 'REWRITTEN'}",
        )  # fmt: skip
    print(f"{'run':<8}{'seconds':>10}  steps")
    for name, total, clock in zip(("cold", "rerun"), seconds, clocks, strict=True):
        per_step = ", ".join(f"{s} {t:.1f}" for s, t in clock.steps().items())
        print(f"{name:<8}{total:>10.1f}  {per_step}")
    print(f"re-run / cold = {rerun / cold:.2f}; cohort and train cached: {skipped}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cohort, few epochs")
    parser.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    report = run(args.quick)
    report.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
