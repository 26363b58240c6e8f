"""Lambda adapter of the scheduled CloudFormation drift check.

Event: the EventBridge schedule's event (its ``time`` dates the report; any other event,
such as ``{}`` from a manual invoke, uses the current time). The function runs
:func:`oncopipe.ops.drift.detect` on the app's stacks (``DRIFT_STACK_NAMES``, see
:class:`oncopipe.ops.drift.DriftSettings`), writes the JSON report to the artifacts bucket
under ``ops/drift/<YYYY-MM-DD>/report.json`` and publishes, in the ``Oncopipe`` namespace
with the single dimension ``Environment``:

- ``DriftedResources``: resources with drift that the allow-list does not silence,
- ``CriticalDriftedResources``: those with a critical drift (the alarm's metric),
- ``DriftDetectionErrors``: stacks whose detection failed (access denied, timeout), so a
  check that cannot see does not read as "no drift".

Detection waits until shortly before the function's own timeout (:data:`MARGIN_S` left to
collect the results and write the report). The log and the result hold counts and the
report's key only: property values stay in the report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.ops.drift import DriftSettings, Progress, detect, report_key
from oncopipe.ops.drift_report import to_json

NAMESPACE = "Oncopipe"
#: Seconds of the function's time kept for collecting results and writing the report.
MARGIN_S = 90.0

logger = Logger(service="ops-drift")
# service="": the functions' environment sets POWERTOOLS_SERVICE_NAME, which Powertools
# would add as a second dimension; the alarms select on Environment alone.
metrics = Metrics(namespace=NAMESPACE, service="")
SETTINGS = DriftSettings.from_env()  # fails at cold start when misconfigured


@cache
def _clients() -> tuple[Any, Any]:
    """Return the (CloudFormation, S3) clients, made once per execution environment."""
    from oncopipe.ops.drift import make_cloudformation_client
    from oncopipe.storage import make_client

    return make_cloudformation_client(), make_client()


def _moment(event: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return datetime.now(UTC)


def _log_progress(event: Progress) -> None:
    if event.event != "waiting":
        logger.info(
            "drift detection",
            extra={"stack": event.stack, "event": event.event, "detail": event.detail},
        )


@metrics.log_metrics(raise_on_empty_metrics=False)
@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Detect drift, write the report, publish the metrics; return counts and the report URI.

    Raises:
        botocore.exceptions.ClientError: the report could not be written (the metrics are
            still published, from the detection).
        oncopipe.ops.drift.DriftDetectionError: CloudFormation cannot be called at all.
    """
    cfn, s3 = _clients()
    budget_s = context.get_remaining_time_in_millis() / 1000 - MARGIN_S
    report = detect(
        cfn,
        SETTINGS.stack_names,
        allow_list=SETTINGS.allow_list,
        environment=SETTINGS.environment,
        poll_s=SETTINGS.poll_s,
        timeout_s=max(budget_s, SETTINGS.poll_s),
        progress=_log_progress,
    )
    metrics.add_dimension(name="Environment", value=SETTINGS.environment)
    metrics.add_metric(name="DriftedResources", unit=MetricUnit.Count,
                       value=report.drifted_resources)  # fmt: skip
    metrics.add_metric(name="CriticalDriftedResources", unit=MetricUnit.Count,
                       value=report.critical_resources)  # fmt: skip
    metrics.add_metric(name="DriftDetectionErrors", unit=MetricUnit.Count,
                       value=len(report.errors))  # fmt: skip
    key = report_key(_moment(event))
    s3.put_object(
        Bucket=SETTINGS.artifacts_bucket,
        Key=key,
        Body=to_json(report).encode("utf-8"),
        ContentType="application/json",
    )
    summary = {
        "report": f"s3://{SETTINGS.artifacts_bucket}/{key}",
        "stacks": len(report.stacks),
        "drifted_resources": report.drifted_resources,
        "critical_resources": report.critical_resources,
        "detection_errors": len(report.errors),
    }
    logger.info("drift checked", extra=summary)
    return summary
