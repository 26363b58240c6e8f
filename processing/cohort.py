"""SageMaker Processing entry: ``python -m processing.cohort stage --build-id B``.

The model pipeline's first step: the curated feature tables (Glue tables ``variants``,
``radiomics``, ``note_concepts``: their committed files only) and labels
(``cohort/labels/``, Parquet with patient_key, response[, eligible]) -> the training
dataset (patient-level splits, presence flags, normalisation fitted on the training split) in
``cohort/dataset/<build-id>/`` (``dataset.parquet``, ``preprocess.json``) and one JSON line
per patient under ``inference/`` for the batch transform. Environment: ``CURATED_BUCKET``.

With ``FEATURE_GROUP_NAME`` set (``lifecycle.feature_store`` on), the committed dataset is
then published to that SageMaker Feature Store group, a record per patient
(:func:`publish_features`); the job needs the ``sagemaker.featurestore-runtime`` VPC
interface endpoint. A publishing failure fails the job after the dataset is committed.

Prints one JSON line: the build's counts, or on failure its error type and reason code
(:mod:`oncopipe.boundary`), never an error message (stdout and stderr go to CloudWatch), and
the job's ``cost`` estimate (the processing instance for the job's seconds so far), which
the build's manifest records too. EMF stage metrics (stage ``cohort``: the build in and its
outcome, duration, bytes of the tables read, ``CostEstimateUSD``) go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oncopipe.settings import BUCKET_ENV

if TYPE_CHECKING:
    from oncopipe.storage import ObjectStore

#: Summary fields the outcome line may carry (an allow-list: :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("build_id", "patients", "splits", "prefix", "feature_records")


def build(curated: str, build_id: str, store: ObjectStore, *, seed: int = 0,
          stats: dict[str, object] | None = None) -> dict[str, object]:  # fmt: skip
    """Read the committed tables, build the dataset and commit it; return counts.

    ``stats``, when given, receives the item's ``status`` (done or skipped), the
    ``input_bytes`` of the committed files read, for the adapter's metrics, and the
    build's ``manifest_key`` (for :func:`publish_features`).

    The build is one item of step ``cohort`` (run id = build id): its inputs are the
    committed files it read (:func:`oncopipe.cohort.dataset.fetch_committed_sources`), its
    outputs ``cohort/dataset/<build-id>/dataset.parquet`` (Glue table ``cohort_dataset``,
    through its symlink file), ``_preprocess.json`` and the batch-transform input; its
    manifest commits them. The same build id with the same inputs is skipped; a failed
    build leaves nothing behind.

    Raises:
        CohortError: no labels, a table lacks a required column, a committed file is gone.
    """
    import pyarrow.parquet as pq

    from oncopipe import layout
    from oncopipe.cohort.dataset import (
        build_dataset_from_dir,
        fetch_committed_sources,
        patient_payloads,
        write_dataset,
    )
    from oncopipe.manifest import ItemWriter, StepContext, process_item

    prefix = f"{layout.CURATED_COHORT_DATASET}{build_id}/"
    inference = f"{layout.CURATED_COHORT_INFERENCE}{build_id}/"
    with tempfile.TemporaryDirectory(prefix="oncopipe-cohort-") as tmp:
        root = Path(tmp) / "in"
        inputs = fetch_committed_sources(store, curated, root)
        ctx = StepContext(store=store, manifest_bucket=curated, run_id=build_id, step="cohort",
                          params={"seed": seed, "dataset": "cohort-v1"})  # fmt: skip

        def work(writer: ItemWriter) -> dict[str, object]:
            dataset = build_dataset_from_dir(root, seed=seed)
            out = Path(tmp) / "out"
            written = write_dataset(dataset, out)
            tables = {name: pq.read_table(str(root / name))
                      for name in ("variants", "radiomics", "notes")
                      if (root / name).is_dir()}  # fmt: skip
            lines = []
            if len(tables) == 3:
                payloads = patient_payloads(tables["variants"], tables["radiomics"],
                                            tables["notes"])  # fmt: skip
                lines = [json.dumps(p, default=str) for p in payloads.values()]
            (out / "patients.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            # the dataset folder stays a Parquet table for Athena: only dataset.parquet is in
            # the table's symlink file; the batch-transform input lives under cohort/inference/
            names = {"dataset.parquet": f"{prefix}dataset.parquet",
                     "preprocess.json": f"{prefix}_preprocess.json",
                     "patients.jsonl": f"{inference}patients.jsonl"}  # fmt: skip
            for path in (*written.values(), out / "patients.jsonl"):
                writer.upload_file(str(path), curated, names[path.name])
            return {"build_id": build_id, "patients": dataset.table.num_rows,
                    "splits": dataset.counts(), "prefix": prefix}  # fmt: skip

        result = process_item(ctx, build_id, inputs, work)
    if stats is not None:
        stats.update(status=result.status, input_bytes=sum(int(i.size or 0) for i in inputs),
                     manifest_key=result.manifest_key)  # fmt: skip
    return dict(result.summary)


def publish_features(curated: str, build_id: str, store: ObjectStore, client: Any,
                     feature_group: str, *, manifest_key: str) -> int:  # fmt: skip
    """Publish a committed build's dataset to a Feature Store group; return the records put.

    Reads what the build's manifest (``manifest_key``) committed: ``dataset.parquet`` and
    ``_preprocess.json`` of ``cohort/dataset/<build-id>/``. Each patient becomes one
    record (:func:`oncopipe.cohort.feature_store.dataset_records`) whose event time is the
    manifest's ``finished_at``, the time the dataset was committed. ``client`` is a
    ``sagemaker-featurestore-runtime`` client.

    A rerun is idempotent: a finished build is skipped and keeps its manifest, so the same
    records go in again with the same record id and event time, and PutRecord upserts on
    that pair (the online store keeps one record per patient, the offline store may hold
    the same row twice; a reader deduplicates on ``patient_key``, ``event_time``). A
    rerun after a failed publish therefore completes it. A build rebuilt on new inputs
    commits a new manifest and publishes under a new, later event time.

    Raises:
        CohortError: the build has no committed manifest.
        FeatureStoreError: a record cannot be built or put (names the patient key and
            the feature, never a value).
    """
    from oncopipe import layout
    from oncopipe.cohort.dataset import CohortError, read_dataset
    from oncopipe.cohort.feature_store import dataset_records, publish
    from oncopipe.manifest import is_committed, read_manifest

    document = read_manifest(store, curated, manifest_key)
    if document is None or not is_committed(document):
        raise CohortError(f"s3://{curated}/{manifest_key}", "the build has no committed dataset")
    prefix = f"{layout.CURATED_COHORT_DATASET}{build_id}/"
    with tempfile.TemporaryDirectory(prefix="oncopipe-features-") as tmp:
        for name in ("dataset.parquet", "_preprocess.json"):
            store.download_file(curated, f"{prefix}{name}", str(Path(tmp) / name))
        dataset = read_dataset(tmp)
    records = dataset_records(dataset, when=str(document["finished_at"]), build_id=build_id)
    put = publish(client, feature_group, records)
    logging.getLogger("processing.cohort").info(
        "cohort build %s: %d records put to feature group %s", build_id, put, feature_group
    )
    return put


def featurestore_client() -> Any:
    """A ``sagemaker-featurestore-runtime`` client (standard retries; throttling that
    outlasts them is retried by :func:`oncopipe.cohort.feature_store.publish`)."""
    import boto3
    from botocore.config import Config

    return boto3.client("sagemaker-featurestore-runtime",
                        config=Config(retries={"mode": "standard", "max_attempts": 3}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.cohort",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("stage",))
    parser.add_argument("--build-id", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from oncopipe.boundary import failure_fields, log_failure, pick
    from oncopipe.cohort.feature_store import FeatureStoreError
    from oncopipe.metrics import StageMetrics
    from oncopipe.ops.cost import metering, processing_job_profile
    from oncopipe.storage import ObjectStore, make_client

    # one item per job: the build's manifest is charged the whole job so far
    profile = processing_job_profile(whole_job=True)
    with StageMetrics("cohort") as metrics, metering(profile):
        metrics.items_in()
        started = time.perf_counter()
        stats: dict[str, object] = {}
        try:
            curated, store = os.environ[BUCKET_ENV["curated"]], ObjectStore(make_client())
            summary = build(curated, args.build_id, store, seed=args.seed, stats=stats)
            group = os.environ.get("FEATURE_GROUP_NAME", "")
            if group:  # after the commit: a failure here leaves the dataset committed
                put = publish_features(curated, args.build_id, store, featurestore_client(),
                                       group, manifest_key=str(stats["manifest_key"]))  # fmt: skip
                summary = {**summary, "feature_records": put}
        except Exception as e:  # noqa: BLE001 - the boundary: log by type, fail the job
            metrics.outcome("failed", seconds=time.perf_counter() - started)
            metrics.job_cost(profile.job_fields())
            # never str(e) nor a traceback's message: stdout and stderr go to CloudWatch Logs;
            # a publishing error may say which patient (pseudonymous key) and feature
            fields = failure_fields(e)
            if isinstance(e, FeatureStoreError):
                fields.update(e.fields(), dataset="committed")
            print(json.dumps({"build_id": args.build_id, **fields}), flush=True)
            log_failure(logging.getLogger("processing.cohort"), f"cohort build {args.build_id}",
                        e)  # fmt: skip
            return 1
        skipped = stats.get("status") == "skipped"
        nbytes = stats.get("input_bytes")
        metrics.outcome(
            "skipped" if skipped else "succeeded",
            seconds=time.perf_counter() - started,
            nbytes=nbytes if isinstance(nbytes, int) and not skipped else None,
        )
        job = profile.job_fields()
        metrics.job_cost(job)
    print(json.dumps({**pick(summary, OUTCOME_FIELDS), "cost": job}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
