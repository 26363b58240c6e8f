"""Lambda adapter of the daily model drift job (:mod:`oncopipe.monitor.job`).

Event: the daily EventBridge rule's event; its ``time`` minus one day is the window (the
previous, complete UTC day). ``{"day": "YYYY-MM-DD"}`` (a manual invoke) picks the day.

The baseline is the one of the latest *Approved* package of ``MODEL_PACKAGE_GROUP``
(``monitor/baselines/v<version>/baseline.json`` in the artifacts bucket). Without an
approved package or its baseline the job publishes nothing (the alarm treats missing data
as not breaching) and says why in its result. The log holds counts only.

Beside the VAF histograms, the job reads the day's windows of the kinds the baseline has
monitors of (:mod:`oncopipe.monitor.modalities`): radiomics and note concepts from the
curated tables, predictions from the data capture of ``SERVING_ENDPOINT_NAME`` (empty: no
endpoint, the predictions monitor is reported as not read). The bundle carries pyarrow for
the tables, less the parts it never loads (``stacks.bundling.UNUSED_PARTS``). A kind whose
window cannot be read (a malformed file, a module missing from the bundle) is reported as
not read, with the reason, and the other kinds are still evaluated.
``DRIFT_KIND_THRESHOLDS`` (JSON, kind -> threshold; default
:data:`oncopipe.monitor.job.KIND_THRESHOLDS`) sets the other kinds' thresholds;
``DRIFT_THRESHOLD`` is VAF's.
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
from oncopipe.monitor import modalities
from oncopipe.monitor.histogram import Histogram
from oncopipe.monitor.job import KIND_THRESHOLDS, baseline_key, kind_rules, run
from oncopipe.monitor.window import AlarmRule
from oncopipe.settings import BUCKET_ENV

logger = Logger(service="model-drift")

ENDPOINT_ENV = "SERVING_ENDPOINT_NAME"
KIND_THRESHOLDS_ENV = "DRIFT_KIND_THRESHOLDS"


def _kind_thresholds(text: str | None) -> dict[str, float]:
    if not text:
        return dict(KIND_THRESHOLDS)
    try:
        parsed = json.loads(text)
        return {str(k): float(v) for k, v in parsed.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise RuntimeError(
            f"model drift: {KIND_THRESHOLDS_ENV} must be a JSON object of kind: number ({e})"
        ) from e


@dataclass(frozen=True)
class Settings:
    """The function's environment, checked at cold start."""

    curated_bucket: str
    artifacts_bucket: str
    model_package_group: str
    environment: str
    rule: AlarmRule
    #: The rules of the other kinds (radiomics, notes, predictions): ``rule``, own threshold.
    rules: dict[str, AlarmRule]
    endpoint_name: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        """Return the settings.

        Raises:
            RuntimeError: a variable is missing or not a number (names it).
        """
        try:
            rule = AlarmRule(
                threshold=float(os.environ["DRIFT_THRESHOLD"]),
                m=int(os.environ["DRIFT_ALARM_WINDOWS"]),
                n=int(os.environ["DRIFT_ALARM_OF_WINDOWS"]),
                min_samples=int(os.environ["DRIFT_MIN_SAMPLES"]),
            )
            return cls(
                curated_bucket=os.environ[BUCKET_ENV["curated"]],
                artifacts_bucket=os.environ[BUCKET_ENV["artifacts"]],
                model_package_group=os.environ["MODEL_PACKAGE_GROUP"],
                environment=os.environ["ONCOPIPE_ENV"],
                rule=rule,
                rules=kind_rules(rule, _kind_thresholds(os.environ.get(KIND_THRESHOLDS_ENV))),
                endpoint_name=os.environ.get(ENDPOINT_ENV, "").strip(),
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


def feature_windows(
    s3: Any, settings: Settings, baseline: dict[str, Any], day: str
) -> tuple[dict[str, Histogram], dict[str, str]]:
    """Return the day's windows of the baseline's other kinds, and the kinds not read (why)."""
    curated, artifacts = settings.curated_bucket, settings.artifacts_bucket
    readers = {
        modalities.RADIOMICS: lambda: modalities.read_radiomics_window(
            s3, bucket=curated, day=day, baseline=baseline),
        modalities.NOTES: lambda: modalities.read_notes_window(
            s3, bucket=curated, day=day, baseline=baseline),
        modalities.PREDICTIONS: lambda: modalities.read_predictions_window(
            s3, bucket=artifacts, endpoint_name=settings.endpoint_name, day=day),
    }  # fmt: skip
    windows: dict[str, Histogram] = {}
    unavailable: dict[str, str] = {}
    for kind, read in readers.items():
        if not modalities.monitors_of(baseline, kind):
            continue
        if kind == modalities.PREDICTIONS and not settings.endpoint_name:
            unavailable[kind] = f"not read: no endpoint ({ENDPOINT_ENV} is empty)"
            continue
        try:
            windows.update(read())
        except ImportError as e:  # a bundle without pyarrow, which reads the Parquet tables
            unavailable[kind] = f"not read: {e.name or 'a module'} is not in the function's bundle"
        except modalities.WindowError as e:  # names the S3 key and line, never a record
            unavailable[kind] = f"not read: {e}"
        if kind in unavailable:
            logger.error("drift window not read", extra={"kind": kind,
                                                         "reason": unavailable[kind]})  # fmt: skip
    return windows, unavailable


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
    windows, unavailable = feature_windows(s3, SETTINGS, baseline, day)
    report = run(
        s3=s3, cloudwatch=cloudwatch, curated_bucket=SETTINGS.curated_bucket,
        histograms_prefix=CURATED_GENOMICS_VAF_HISTOGRAMS,
        artifacts_bucket=SETTINGS.artifacts_bucket, baseline=baseline, day=day,
        rule=SETTINGS.rule, environment=SETTINGS.environment, feature_windows=windows,
        rules=SETTINGS.rules, unavailable=unavailable,
    )  # fmt: skip
    result = report.as_dict()
    logger.info("drift evaluated", extra={"day": day, "monitors": len(report.results),
                                          "breaching": sum(r.breaching
                                                           for r in report.results)})  # fmt: skip
    return {"day": day, "status": "evaluated", "kinds": result["kinds"],
            "monitors": result["monitors"], "not_read": unavailable}  # fmt: skip
