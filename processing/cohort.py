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
import time
from typing import Any

from oncopipe.cohort.stage import build, publish_features
from oncopipe.settings import BUCKET_ENV

#: Summary fields the outcome line may carry (an allow-list: :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("build_id", "patients", "splits", "prefix", "feature_records")


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
