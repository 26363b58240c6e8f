"""Lambda adapter of patient readiness: cohort row and prediction once a patient is complete.

Event: an SQS batch of ``{"run_id": ...}`` messages, EventBridge ``Step Functions
Execution Status Change`` events (a features flow of a run succeeded) or
``{"sweep_started_ms": ...}`` (a daily sweep succeeded: the previous UTC day's run of its
start, as the sweep's jobs take). For each run named,
:func:`oncopipe.completeness.predict_ready` predicts every patient whose sample sheet's
modalities are all query-able and that has no prediction yet, through the serving endpoint
(``SERVING_ENDPOINT_NAME``; empty: no model deployed, nothing is predicted), and records
``TimeToInsight`` (EMF, stage ``endpoint``). Result: the partial batch response.

Logs hold run ids, pseudonymous keys and counts only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.completeness import EndpointPredictor, group_by_run, predict_ready
from oncopipe.runs import previous_daily_run_id
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore

logger = Logger(service="patient-ready")
ENDPOINT_ENV = "SERVING_ENDPOINT_NAME"
#: The key of a daily sweep's message (``stacks/components/patient_ready.py``).
SWEEP_STARTED_KEY = "sweep_started_ms"
SETTINGS = StageSettings.from_env()  # fails at cold start when misconfigured
STORE = ObjectStore(boto3.client("s3"))
ENDPOINT = os.environ.get(ENDPOINT_ENV, "").strip()
PREDICTOR = EndpointPredictor(boto3.client("sagemaker-runtime"), ENDPOINT) if ENDPOINT else None


def sweep_record(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the record with a daily sweep's message replaced by its run's ``{"run_id"}``.

    A sweep's execution input (the schedule's event) names no run; its jobs take the
    previous UTC day's ingest run of the moment they start, so the same run is derived
    from the execution's start (milliseconds since the epoch, a number or a numeric
    string). Any other record, or a sweep message without a usable start, is returned
    unchanged (a malformed message is then dropped and counted).
    """
    try:
        document = json.loads(str(record.get("body", "")))
        started = float(document[SWEEP_STARTED_KEY])
        moment = datetime.fromtimestamp(started / 1000.0, UTC)
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return record
    return {**record, "body": json.dumps({"run_id": previous_daily_run_id(moment)})}


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Predict the complete patients of each run; return ``{"batchItemFailures": [...]}``."""
    runs, bad = group_by_run([sweep_record(r) for r in event.get("Records", [])])
    failures: list[dict[str, str]] = []
    for run_id, message_ids in runs.items():
        try:
            outcomes = predict_ready(STORE, SETTINGS.buckets, run_id, PREDICTOR,
                                     model_version=ENDPOINT)  # fmt: skip
        except Exception:  # retried by SQS; logged by type only
            logger.exception("run failed", extra={"run_id": run_id})
            failures += [{"itemIdentifier": m} for m in message_ids]
            continue
        for outcome in outcomes:
            logger.info("patient", extra={"run_id": run_id, "patient_key": outcome.patient_key,
                                          "status": outcome.status,
                                          "missing": list(outcome.missing)})  # fmt: skip
    logger.info("batch", extra={"runs": len(runs), "malformed": len(bad),
                                "retried": len(failures)})  # fmt: skip
    return {"batchItemFailures": failures}
