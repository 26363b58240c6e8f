"""The retrain gate: one decision per trigger (drift alarm or calendar) for a model family.

In order, each a reason to skip (``RetrainSkipped{Reason}``) or go on:

1. ``duplicate``: the trigger's idempotency key (family + source + trigger id, e.g. the
   EventBridge event id) was decided before; a redelivered event starts nothing twice.
2. ``min_new_samples``: fewer new samples than the minimum since the last training.
3. ``cooldown``: the family's lease is held (a retrain started less than the cooldown ago).
   The lease is a DynamoDB conditional put, so two concurrent triggers cannot both pass.
4. ``budget``: the calendar month's retrains are spent; the first such skip of a month
   notifies the operators, and auto-retrain stays stopped until the month turns.
5. Otherwise the pipeline is started (``RetrainTriggered``), with the idempotency key as its
   client token, and the sample count is recorded as the last training's.

Every decision, including a duplicate, is written as a JSON record to the artifacts bucket
(:func:`decision_key`). Records and metrics hold counts, reasons and ARNs: no PHI.

DynamoDB items (partition key ``pk``, string): ``lease#<family>``, ``budget#<family>#<YYYY-MM>``,
``trained#<family>``, ``idem#<key>`` (with ``expires_at`` for the table's TTL).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

logger = logging.getLogger(__name__)

REASONS = ("duplicate", "min_new_samples", "cooldown", "budget")
TRIGGERED = "RetrainTriggered"
SKIPPED = "RetrainSkipped"
#: Days an idempotency key is remembered (the table's TTL removes it after).
IDEMPOTENCY_DAYS = 35
DECISIONS_PREFIX = "monitor/retrain-decisions/"


class GateError(RuntimeError):
    """The gate could not decide (a table or pipeline call failed); nothing was started."""


class PipelineStarter(Protocol):
    """Starts one training pipeline execution; returns its ARN."""

    def __call__(self, *, token: str, reason: str) -> str: ...


@dataclass(frozen=True)
class GateSettings:
    """The gate's rules (``config.lifecycle``) for one model family."""

    family: str
    cooldown_hours: int
    min_new_samples: int
    monthly_budget: int


@dataclass(frozen=True)
class Trigger:
    """What asks for a retrain: ``source`` (``drift_alarm`` or ``schedule``) and its id."""

    source: str
    trigger_id: str
    at: datetime

    def idempotency_key(self, family: str) -> str:
        """Return the trigger's idempotency key (64 hex characters)."""
        text = f"{family}\x1f{self.source}\x1f{self.trigger_id}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Decision:
    """The gate's decision: ``triggered`` or ``skipped`` with a reason of :data:`REASONS`."""

    family: str
    outcome: str
    reason: str | None
    source: str
    trigger_id: str
    idempotency_key: str
    decided_at: str
    new_samples: int | None = None
    retrains_this_month: int | None = None
    execution_arn: str | None = None
    notified: bool = False
    rules: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the decision record."""
        return asdict(self)


def decision_key(decision: Decision) -> str:
    """Return the artifacts key of a decision record."""
    day = decision.decided_at[:10]
    return f"{DECISIONS_PREFIX}{decision.family}/{day}/{decision.idempotency_key}.json"


class RetrainGate:
    """Decides and, when it passes, starts a retrain (see the module doc).

    ``table`` is a boto3 DynamoDB client, ``s3`` an S3 client, ``cloudwatch`` a CloudWatch
    client; ``count_samples`` returns the samples the family can train on now;
    ``notify`` sends one operator message (subject, body).
    """

    def __init__(
        self,
        settings: GateSettings,
        *,
        dynamodb: Any,
        table_name: str,
        s3: Any,
        artifacts_bucket: str,
        cloudwatch: Any,
        environment: str,
        start_pipeline: PipelineStarter,
        count_samples: Callable[[], int],
        notify: Callable[[str, str], None],
    ) -> None:
        self.settings = settings
        self._db = dynamodb
        self._table = table_name
        self._s3 = s3
        self._bucket = artifacts_bucket
        self._cw = cloudwatch
        self._env = environment
        self._start = start_pipeline
        self._count = count_samples
        self._notify = notify

    # -- the decision --------------------------------------------------------------------
    def decide(self, trigger: Trigger) -> Decision:
        """Decide on ``trigger``; start the pipeline if it passes; record and publish.

        Raises:
            GateError: DynamoDB or the pipeline call failed (the lease and the budget are
                given back, so a later trigger can retry).
        """
        s = self.settings
        key = trigger.idempotency_key(s.family)
        base: dict[str, Any] = {
            "family": s.family, "source": trigger.source, "trigger_id": trigger.trigger_id,
            "idempotency_key": key, "decided_at": trigger.at.isoformat(),
            "rules": {"cooldown_hours": s.cooldown_hours,
                      "min_new_samples": s.min_new_samples,
                      "monthly_budget": s.monthly_budget},
        }  # fmt: skip
        if not self._claim_key(key, trigger.at):
            return self._finish(Decision(outcome="skipped", reason="duplicate", **base))
        trained = self._get(f"trained#{s.family}")
        now_samples = self._count()
        new = now_samples - int(trained.get("samples", {}).get("N", "0"))
        base["new_samples"] = new
        if new < s.min_new_samples:
            return self._finish(Decision(outcome="skipped", reason="min_new_samples", **base))
        if not self._take_lease(key, trigger.at):
            return self._finish(Decision(outcome="skipped", reason="cooldown", **base))
        month = trigger.at.strftime("%Y-%m")
        spent = self._spend_budget(month)
        if spent is None:
            self._release_lease(key)
            notified = self._notify_budget_once(month)
            return self._finish(Decision(outcome="skipped", reason="budget",
                                         retrains_this_month=s.monthly_budget,
                                         notified=notified, **base))  # fmt: skip
        base["retrains_this_month"] = spent
        try:
            arn = self._start(token=key, reason=trigger.source)
        except Exception as e:
            self._release_lease(key)
            self._refund_budget(month)
            self._forget_key(key)
            raise GateError(f"{s.family}: starting the pipeline failed ({type(e).__name__})") from e
        self._put(f"trained#{s.family}", {"samples": {"N": str(now_samples)},
                                         "execution_arn": {"S": arn},
                                         "at": {"S": trigger.at.isoformat()}})  # fmt: skip
        return self._finish(Decision(outcome="triggered", reason=None, execution_arn=arn,
                                     **base))  # fmt: skip

    # -- DynamoDB ------------------------------------------------------------------------
    def _conditional(self, call: Callable[..., Any], **kwargs: Any) -> bool:
        try:
            call(TableName=self._table, **kwargs)
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        except Exception as e:
            raise GateError(f"{self.settings.family}: lease table ({type(e).__name__})") from e
        return True

    def _get(self, pk: str) -> Mapping[str, Any]:
        try:
            item = self._db.get_item(TableName=self._table, Key={"pk": {"S": pk}},
                                     ConsistentRead=True).get("Item")  # fmt: skip
        except Exception as e:
            raise GateError(f"{self.settings.family}: lease table ({type(e).__name__})") from e
        return dict(item or {})

    def _put(self, pk: str, attributes: Mapping[str, Any]) -> None:
        self._conditional(self._db.put_item, Item={"pk": {"S": pk}, **attributes})

    def _claim_key(self, key: str, at: datetime) -> bool:
        expires = int((at + timedelta(days=IDEMPOTENCY_DAYS)).timestamp())
        return self._conditional(
            self._db.put_item,
            Item={"pk": {"S": f"idem#{key}"}, "expires_at": {"N": str(expires)}},
            ConditionExpression="attribute_not_exists(pk)",
        )

    def _forget_key(self, key: str) -> None:
        self._conditional(self._db.delete_item, Key={"pk": {"S": f"idem#{key}"}})

    def _take_lease(self, key: str, at: datetime) -> bool:
        now = int(at.timestamp())
        until = int((at + timedelta(hours=self.settings.cooldown_hours)).timestamp())
        return self._conditional(
            self._db.put_item,
            Item={"pk": {"S": f"lease#{self.settings.family}"}, "holder": {"S": key},
                  "until": {"N": str(until)}},
            ConditionExpression="attribute_not_exists(pk) OR #until <= :now",
            ExpressionAttributeNames={"#until": "until"},
            ExpressionAttributeValues={":now": {"N": str(now)}},
        )  # fmt: skip

    def _release_lease(self, key: str) -> None:
        self._conditional(
            self._db.delete_item,
            Key={"pk": {"S": f"lease#{self.settings.family}"}},
            ConditionExpression="holder = :me",
            ExpressionAttributeValues={":me": {"S": key}},
        )

    def _budget_key(self, month: str) -> dict[str, Any]:
        return {"pk": {"S": f"budget#{self.settings.family}#{month}"}}

    def _spend_budget(self, month: str) -> int | None:
        """Return the month's retrains including this one, or None when none is left."""
        try:
            answer = self._db.update_item(
                TableName=self._table,
                Key=self._budget_key(month),
                UpdateExpression="ADD retrains :one",
                ConditionExpression="attribute_not_exists(retrains) OR retrains < :budget",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":budget": {"N": str(self.settings.monthly_budget)},
                },
                ReturnValues="UPDATED_NEW",
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        except Exception as e:
            raise GateError(f"{self.settings.family}: lease table ({type(e).__name__})") from e
        return int(answer["Attributes"]["retrains"]["N"])

    def _refund_budget(self, month: str) -> None:
        self._conditional(
            self._db.update_item,
            Key=self._budget_key(month),
            UpdateExpression="ADD retrains :minus",
            ExpressionAttributeValues={":minus": {"N": "-1"}},
        )

    def _notify_budget_once(self, month: str) -> bool:
        first = self._conditional(
            self._db.update_item,
            Key=self._budget_key(month),
            UpdateExpression="SET notified = :yes",
            ConditionExpression="attribute_not_exists(notified)",
            ExpressionAttributeValues={":yes": {"BOOL": True}},
        )
        if first:
            s = self.settings
            self._notify(
                f"oncopipe {self._env}: retrain budget of {s.family} spent for {month}",
                f"The {s.monthly_budget} retrains of {month} for model family {s.family} have "
                "run; automatic retraining is stopped until the month ends. Start the "
                "pipeline by hand if a retrain is needed, or raise "
                "lifecycle.retrain_monthly_budget.",
            )
        return first

    # -- record and metrics --------------------------------------------------------------
    def _finish(self, decision: Decision) -> Decision:
        body = json.dumps(decision.as_dict(), indent=2, sort_keys=True).encode("utf-8")
        self._s3.put_object(Bucket=self._bucket, Key=decision_key(decision), Body=body,
                            ContentType="application/json")  # fmt: skip
        dims = [{"Name": "Environment", "Value": self._env}]
        if decision.outcome == "triggered":
            datum = {"MetricName": TRIGGERED, "Dimensions": dims, "Value": 1, "Unit": "Count"}
        else:
            dims.append({"Name": "Reason", "Value": str(decision.reason)})
            datum = {"MetricName": SKIPPED, "Dimensions": dims, "Value": 1, "Unit": "Count"}
        self._cw.put_metric_data(Namespace="Oncopipe", MetricData=[datum])
        logger.info("retrain gate: %s %s", decision.outcome, decision.reason or "")
        return decision


def approved_auc(sagemaker: Any, s3: Any, group: str) -> float | None:
    """Return the test AUC of the newest approved version of ``group`` (None: none approved).

    The AUC is the ``metrics.auc`` of the version's evaluation report (its
    ``ModelMetrics.ModelQuality.Statistics``, written by the pipeline's evaluation step). A
    version without a readable report (one registered by hand) gives None: the candidate
    then only has to clear the pipeline's ``MinAuc``.
    """
    found = sagemaker.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved",
        SortBy="CreationTime", SortOrder="Descending", MaxResults=1,
    ).get("ModelPackageSummaryList", [])  # fmt: skip
    if not found:
        return None
    package = sagemaker.describe_model_package(ModelPackageName=found[0]["ModelPackageArn"])
    uri = (package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
           .get("S3Uri", ""))  # fmt: skip
    match = re.match(r"^s3://([^/]+)/(.+)$", str(uri))
    if not match:
        logger.warning("retrain gate: the approved version has no evaluation report")
        return None
    try:
        report = json.loads(s3.get_object(Bucket=match[1], Key=match[2])["Body"].read())
        return float(report["metrics"]["auc"])
    except (KeyError, TypeError, ValueError) as e:
        logger.warning("retrain gate: the approved version's report has no AUC (%s)", type(e))
        return None


def count_samples(s3: Any, bucket: str, prefix: str) -> int:
    """Return the number of objects under ``prefix``: the samples, counted as their
    per-sample VAF histograms (``genomics/vaf-histograms/`` of the curated bucket)."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        count += int(page.get("KeyCount", 0))
    return count


def retrain_parameters(sagemaker: Any, s3: Any, group: str) -> dict[str, str]:
    """Return the pipeline parameters of a retrain: ``ApprovedAuc``, the test AUC of the
    newest approved version of ``group`` (:func:`approved_auc`); none without one."""
    auc = approved_auc(sagemaker, s3, group) if group else None
    return {} if auc is None else {"ApprovedAuc": repr(auc)}


#: The model pipeline's parameter that names its cohort build (oncopipe.pipeline.definition).
COHORT_RUN_ID = "CohortRunId"


def sagemaker_starter(
    client: Any,
    pipeline_name: str,
    parameters: Callable[[], Mapping[str, str]] | None = None,
    *,
    build_parameter: str | None = None,
) -> PipelineStarter:
    """Return a starter of the SageMaker Pipeline ``pipeline_name`` (token = client token).

    ``parameters`` (called at each start) gives pipeline parameters to set, e.g. the
    approved version's AUC as ``ApprovedAuc``. ``build_parameter`` (the model pipeline's
    :data:`COHORT_RUN_ID`) is set to ``retrain-<token[:12]>``: each retrain builds its
    cohort anew, where the same build id would let the step cache (``P30D``) hand back the
    last run's dataset and model; a retried start (same token) gets the same build id.
    """

    def start(*, token: str, reason: str) -> str:
        values = dict(parameters() if parameters is not None else {})
        if build_parameter:
            values[build_parameter] = f"retrain-{token[:12]}"
        extra = ({"PipelineParameters": [{"Name": k, "Value": v} for k, v in values.items()]}
                 if values else {})  # fmt: skip
        answer = client.start_pipeline_execution(
            PipelineName=pipeline_name,
            PipelineExecutionDisplayName=f"retrain-{reason.replace('_', '-')}-{token[:12]}",
            PipelineExecutionDescription=f"retrain gate: {reason}",
            ClientRequestToken=token,
            **extra,
        )
        return str(answer["PipelineExecutionArn"])

    return start
