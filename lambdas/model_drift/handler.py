"""Lambda adapter of the daily model drift job (:mod:`oncopipe.monitor.job`).

Event: the daily EventBridge rule's event; its ``time`` minus one day is the window (the
previous, complete UTC day). ``{"day": "YYYY-MM-DD"}`` (a manual invoke) picks the day.

The baseline is the one of the latest *Approved* package of ``MODEL_PACKAGE_GROUP``
(``monitor/baselines/v<version>/baseline.json`` in the artifacts bucket). Without an
approved package or its baseline the job publishes nothing (the alarm treats missing data
as not breaching) and says why in its result. The log holds counts only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.layout import CURATED_GENOMICS_VAF_HISTOGRAMS
from oncopipe.monitor.job import baseline_key, run
from oncopipe.monitor.window import AlarmRule

logger = Logger(service="model-drift")


@dataclass(frozen=True)
class Settings:
    """The function's environment, checked at cold start."""

    curated_bucket: str
    artifacts_bucket: str
    model_package_group: str
    environment: str
    rule: AlarmRule

    @classmethod
    def from_env(cls) -> Settings:
        """Return the settings.

        Raises:
            RuntimeError: a variable is missing or not a number (names it).
        """
        try:
            return cls(
                curated_bucket=os.environ["CURATED_BUCKET"],
                artifacts_bucket=os.environ["ARTIFACTS_BUCKET"],
                model_package_group=os.environ["MODEL_PACKAGE_GROUP"],
                environment=os.environ["ONCOPIPE_ENV"],
                rule=AlarmRule(
                    threshold=float(os.environ["DRIFT_THRESHOLD"]),
                    m=int(os.environ["DRIFT_ALARM_WINDOWS"]),
                    n=int(os.environ["DRIFT_ALARM_OF_WINDOWS"]),
                    min_samples=int(os.environ["DRIFT_MIN_SAMPLES"]),
                ),
            )
        except KeyError as e:
            raise RuntimeError(f"model drift: environment variable {e} is not set") from e
        except ValueError as e:
            raise RuntimeError(f"model drift: bad numeric setting ({e})") from e


SETTINGS = Settings.from_env()


@cache
def _clients() -> tuple[Any, Any, Any]:
    import boto3

    return boto3.client("s3"), boto3.client("cloudwatch"), boto3.client("sagemaker")


def window_day(event: dict[str, Any]) -> str:
    """Return the day the event asks for (default: the day before the event's time)."""
    if "day" in event:
        return datetime.strptime(str(event["day"]), "%Y-%m-%d").strftime("%Y-%m-%d")
    try:
        moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        moment = datetime.now(UTC)
    return (moment - timedelta(days=1)).strftime("%Y-%m-%d")


def approved_baseline(s3: Any, sagemaker: Any, settings: Settings) -> dict[str, Any] | None:
    """Return the baseline of the latest approved model package, or None if there is none."""
    packages = sagemaker.list_model_packages(
        ModelPackageGroupName=settings.model_package_group,
        ModelApprovalStatus="Approved",
        SortBy="CreationTime",
        SortOrder="Descending",
        MaxResults=1,
    ).get("ModelPackageSummaryList", [])
    if not packages:
        return None
    key = baseline_key(int(packages[0]["ModelPackageVersion"]))
    try:
        body = s3.get_object(Bucket=settings.artifacts_bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        logger.warning("approved model package has no drift baseline", extra={"key": key})
        return None
    baseline: dict[str, Any] = json.loads(body)
    return baseline


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run the drift job for one day; return the day, status and per-monitor distances.

    Raises:
        oncopipe.monitor.histogram.HistogramError: a malformed histogram or baseline.
        botocore.exceptions.ClientError: an AWS call was refused.
    """
    s3, cloudwatch, sagemaker = _clients()
    day = window_day(event)
    baseline = approved_baseline(s3, sagemaker, SETTINGS)
    if baseline is None:
        logger.info("no approved model baseline: drift not evaluated", extra={"day": day})
        return {"day": day, "status": "no_baseline"}
    report = run(
        s3=s3, cloudwatch=cloudwatch, curated_bucket=SETTINGS.curated_bucket,
        histograms_prefix=CURATED_GENOMICS_VAF_HISTOGRAMS,
        artifacts_bucket=SETTINGS.artifacts_bucket, baseline=baseline, day=day,
        rule=SETTINGS.rule, environment=SETTINGS.environment,
    )  # fmt: skip
    result = report.as_dict()
    logger.info("drift evaluated", extra={"day": day, "monitors": len(report.results),
                                          "breaching": sum(r.breaching
                                                           for r in report.results)})  # fmt: skip
    return {"day": day, "status": "evaluated", "monitors": result["monitors"]}
