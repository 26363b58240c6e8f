"""Lambda adapter of the retrain gate (:mod:`oncopipe.monitor.gate`).

Events:

- the drift alarm's ``CloudWatch Alarm State Change`` (EventBridge rule, state ALARM):
  source ``drift_alarm``, trigger id the event's ``id``;
- the weekly EventBridge Scheduler schedule, input
  ``{"source": "schedule", "scheduled_time": "<aws.scheduler.scheduled-time>"}``:
  trigger id the scheduled time (a retried delivery has the same one).

A SageMaker Pipeline retrain gets ``ApprovedAuc``: the test AUC of the newest approved
version of ``MODEL_PACKAGE_GROUP`` (none approved: the pipeline's default, 0), and a new
``CohortRunId`` (``retrain-<token>``), so the cached cohort and training steps run again.

New samples are counted as the per-sample VAF histograms in the curated bucket. Returns the
decision record; the log holds the outcome and reason only.
"""

from __future__ import annotations

import os
from datetime import datetime
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.layout import CURATED_GENOMICS_VAF_HISTOGRAMS
from oncopipe.monitor.gate import (
    COHORT_RUN_ID,
    GateSettings,
    PipelineStarter,
    RetrainGate,
    Trigger,
    count_samples,
    retrain_parameters,
    sagemaker_starter,
)
from oncopipe.settings import BUCKET_ENV

logger = Logger(service="retrain-gate")


def _env(name: str) -> str:
    try:
        return os.environ[name]
    except KeyError as e:
        raise RuntimeError(f"retrain gate: environment variable {name} is not set") from e


SETTINGS = GateSettings(
    family=_env("MODEL_FAMILY"),
    cooldown_hours=int(_env("RETRAIN_COOLDOWN_HOURS")),
    min_new_samples=int(_env("RETRAIN_MIN_NEW_SAMPLES")),
    monthly_budget=int(_env("RETRAIN_MONTHLY_BUDGET")),
)


def trigger_of(event: dict[str, Any]) -> Trigger:
    """Return the trigger an event describes.

    Raises:
        ValueError: neither an alarm state change nor the schedule's input.
    """
    if event.get("detail-type") == "CloudWatch Alarm State Change":
        at = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        return Trigger("drift_alarm", str(event["id"]), at)
    if event.get("source") == "schedule" and event.get("scheduled_time"):
        at = datetime.fromisoformat(str(event["scheduled_time"]).replace("Z", "+00:00"))
        return Trigger("schedule", at.isoformat(), at)
    raise ValueError("not a drift alarm state change nor the retrain schedule's input")


@cache
def _gate() -> RetrainGate:
    import boto3

    s3 = boto3.client("s3")
    sns = boto3.client("sns")
    pipeline = _env("PIPELINE_ID")
    group = os.environ.get("MODEL_PACKAGE_GROUP", "")
    sagemaker = boto3.client("sagemaker")
    start: PipelineStarter = sagemaker_starter(
        sagemaker,
        pipeline,
        parameters=lambda: retrain_parameters(sagemaker, s3, group),
        build_parameter=COHORT_RUN_ID,  # a retrain builds its cohort anew (no cached dataset)
    )
    topic, curated = _env("NOTIFY_TOPIC_ARN"), _env(BUCKET_ENV["curated"])
    return RetrainGate(
        SETTINGS,
        dynamodb=boto3.client("dynamodb"),
        table_name=_env("LEASE_TABLE"),
        s3=s3,
        artifacts_bucket=_env(BUCKET_ENV["artifacts"]),
        cloudwatch=boto3.client("cloudwatch"),
        environment=_env("ONCOPIPE_ENV"),
        start_pipeline=start,
        count_samples=lambda: count_samples(s3, curated, CURATED_GENOMICS_VAF_HISTOGRAMS),
        notify=lambda subject, body: sns.publish(
            TopicArn=topic, Subject=subject[:100], Message=body
        ),
    )


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Decide on one trigger; return the decision record.

    Raises:
        ValueError: an event of another kind.
        oncopipe.monitor.gate.GateError: the table or the pipeline call failed.
    """
    decision = _gate().decide(trigger_of(event))
    logger.info("retrain decision", extra={"outcome": decision.outcome,
                                           "reason": decision.reason})  # fmt: skip
    return decision.as_dict()
