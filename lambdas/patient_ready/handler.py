"""Lambda adapter of patient readiness: cohort row and prediction once a patient is complete.

Event: an SQS batch of ``{"run_id": ...}`` messages or EventBridge ``Step Functions
Execution Status Change`` events (a features flow of a run succeeded). For each run named,
:func:`oncopipe.completeness.predict_ready` predicts every patient whose sample sheet's
modalities are all query-able and that has no prediction yet, through the serving endpoint
(``SERVING_ENDPOINT_NAME``; empty: no model deployed, nothing is predicted), and records
``TimeToInsight`` (EMF, stage ``endpoint``). Result: the partial batch response.

Logs hold run ids, pseudonymous keys and counts only.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.completeness import EndpointPredictor, group_by_run, predict_ready
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore

logger = Logger(service="patient-ready")
ENDPOINT_ENV = "SERVING_ENDPOINT_NAME"
SETTINGS = StageSettings.from_env()  # fails at cold start when misconfigured
STORE = ObjectStore(boto3.client("s3"))
ENDPOINT = os.environ.get(ENDPOINT_ENV, "").strip()
PREDICTOR = EndpointPredictor(boto3.client("sagemaker-runtime"), ENDPOINT) if ENDPOINT else None


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Predict the complete patients of each run; return ``{"batchItemFailures": [...]}``."""
    runs, bad = group_by_run(event.get("Records", []))
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
