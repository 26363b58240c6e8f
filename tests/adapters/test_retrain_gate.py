"""The retrain gate on moto DynamoDB, S3, CloudWatch, SNS and SageMaker Pipelines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber

from oncopipe.monitor.gate import (
    GateError,
    GateSettings,
    RetrainGate,
    Trigger,
    decision_key,
    sagemaker_starter,
)
from tests.conftest import REGION, make_bucket

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
ARTIFACTS = "gate-artifacts"
TABLE = "retrain-leases"


class World:
    """The AWS stand-ins and the gate's injected parts."""

    def __init__(self) -> None:
        self.db = boto3.client("dynamodb", region_name=REGION)
        self.db.create_table(
            TableName=TABLE,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self.s3 = boto3.client("s3", region_name=REGION)
        make_bucket(self.s3, ARTIFACTS)
        self.cw = boto3.client("cloudwatch", region_name=REGION)
        self.sagemaker = boto3.client("sagemaker", region_name=REGION)
        self.sagemaker.create_pipeline(
            PipelineName="response-training",
            PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}),
            RoleArn="arn:aws:iam::123456789012:role/pipeline",
        )
        self.samples = 100
        self.messages: list[tuple[str, str]] = []

    def gate(self, *, budget: int = 2, cooldown: int = 72, min_new: int = 20) -> RetrainGate:
        return RetrainGate(
            GateSettings("response", cooldown, min_new, budget),
            dynamodb=self.db,
            table_name=TABLE,
            s3=self.s3,
            artifacts_bucket=ARTIFACTS,
            cloudwatch=self.cw,
            environment="test",
            start_pipeline=sagemaker_starter(self.sagemaker, "response-training"),
            count_samples=lambda: self.samples,
            notify=lambda subject, body: self.messages.append((subject, body)),
        )

    def executions(self) -> int:
        answer = self.sagemaker.list_pipeline_executions(PipelineName="response-training")
        return len(answer["PipelineExecutionSummaries"])

    def metric_sum(self, name: str, reason: str | None = None) -> float:
        dims = [{"Name": "Environment", "Value": "test"}]
        if reason:
            dims.append({"Name": "Reason", "Value": reason})
        answer = self.cw.get_metric_statistics(
            Namespace="Oncopipe", MetricName=name, Dimensions=dims,
            StartTime=datetime.now(UTC) - timedelta(hours=1),
            EndTime=datetime.now(UTC) + timedelta(hours=1), Period=3600, Statistics=["Sum"],
        )  # fmt: skip
        return sum(p["Sum"] for p in answer["Datapoints"])


@pytest.fixture
def world(aws_env: None) -> Iterator[World]:
    from moto import mock_aws

    with mock_aws():
        yield World()


def alarm(n: int, at: datetime = T0) -> Trigger:
    return Trigger("drift_alarm", f"event-{n}", at)


def test_first_trigger_starts_the_pipeline_and_records_the_decision(world: World) -> None:
    decision = world.gate().decide(alarm(1))
    assert decision.outcome == "triggered" and decision.new_samples == 100
    assert decision.execution_arn and world.executions() == 1
    record = json.loads(
        world.s3.get_object(Bucket=ARTIFACTS, Key=decision_key(decision))["Body"].read()
    )
    assert record["outcome"] == "triggered" and record["rules"]["monthly_budget"] == 2
    assert world.metric_sum("RetrainTriggered") == 1


def test_a_held_lease_ends_skipped_cooldown_until_it_expires(world: World) -> None:
    gate = world.gate(cooldown=72)
    assert gate.decide(alarm(1)).outcome == "triggered"
    world.samples += 50
    later = gate.decide(Trigger("schedule", "week-1", T0 + timedelta(hours=71)))
    assert (later.outcome, later.reason) == ("skipped", "cooldown")
    assert world.executions() == 1
    assert world.metric_sum("RetrainSkipped", "cooldown") == 1
    after = gate.decide(Trigger("schedule", "week-2", T0 + timedelta(hours=73)))
    assert after.outcome == "triggered" and world.executions() == 2


def test_a_redelivered_event_is_decided_once(world: World) -> None:
    gate = world.gate(cooldown=0)
    assert gate.decide(alarm(7)).outcome == "triggered"
    world.samples += 50
    again = gate.decide(alarm(7, T0 + timedelta(hours=1)))
    assert (again.outcome, again.reason) == ("skipped", "duplicate")
    assert world.executions() == 1
    assert world.metric_sum("RetrainSkipped", "duplicate") == 1


def test_too_few_new_samples_since_the_last_training_skip(world: World) -> None:
    gate = world.gate(cooldown=0, min_new=20)
    assert gate.decide(alarm(1)).outcome == "triggered"
    world.samples += 19
    skipped = gate.decide(alarm(2, T0 + timedelta(hours=1)))
    assert (skipped.reason, skipped.new_samples) == ("min_new_samples", 19)
    world.samples += 1
    assert gate.decide(alarm(3, T0 + timedelta(hours=2))).outcome == "triggered"


def test_the_monthly_budget_stops_auto_retrain_and_notifies_once(world: World) -> None:
    gate = world.gate(budget=2, cooldown=0, min_new=0)
    outcomes = [gate.decide(alarm(i, T0 + timedelta(hours=i))).reason for i in range(4)]
    assert outcomes == [None, None, "budget", "budget"]
    assert world.executions() == 2
    assert len(world.messages) == 1 and "2026-12" in world.messages[0][0]
    assert world.metric_sum("RetrainSkipped", "budget") == 2
    next_month = gate.decide(alarm(9, datetime(2027, 1, 1, 3, tzinfo=UTC)))
    assert next_month.outcome == "triggered" and next_month.retrains_this_month == 1


def test_a_failed_start_gives_back_lease_budget_and_key(world: World) -> None:
    stubbed = boto3.client("sagemaker", region_name=REGION)
    gate = world.gate(budget=1)
    gate._start = sagemaker_starter(stubbed, "response-training")
    with Stubber(stubbed) as stub:
        stub.add_client_error("start_pipeline_execution", "ThrottlingException")
        with pytest.raises(GateError, match="starting the pipeline failed"):
            gate.decide(alarm(1))
    # the same event, redelivered, now passes: nothing of the failed attempt was kept
    retry = world.gate(budget=1).decide(alarm(1))
    assert retry.outcome == "triggered" and retry.retrains_this_month == 1


def test_the_start_call_carries_the_idempotency_key(world: World) -> None:
    stubbed = boto3.client("sagemaker", region_name=REGION)
    trigger = alarm(1)
    key = trigger.idempotency_key("response")
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/response-training/execution/x1"
    with Stubber(stubbed) as stub:
        stub.add_response(
            "start_pipeline_execution",
            {"PipelineExecutionArn": arn},
            {"PipelineName": "response-training", "ClientRequestToken": key,
             "PipelineExecutionDisplayName": f"retrain-drift-alarm-{key[:12]}",
             "PipelineExecutionDescription": "retrain gate: drift_alarm"},
        )  # fmt: skip
        gate = world.gate()
        gate._start = sagemaker_starter(stubbed, "response-training")
        assert gate.decide(trigger).execution_arn == arn


def test_handler_reads_alarm_and_schedule_events(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MODEL_FAMILY": "response", "RETRAIN_COOLDOWN_HOURS": "72",
           "RETRAIN_MIN_NEW_SAMPLES": "20", "RETRAIN_MONTHLY_BUDGET": "4"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from lambdas.retrain_gate.handler import trigger_of

    alarm_event = {"id": "c4c1c1c9-6542", "detail-type": "CloudWatch Alarm State Change",
                   "source": "aws.cloudwatch", "time": "2026-12-01T03:00:00Z",
                   "detail": {"state": {"value": "ALARM"}}}  # fmt: skip
    assert trigger_of(alarm_event) == Trigger("drift_alarm", "c4c1c1c9-6542", T0)
    scheduled = trigger_of({"source": "schedule", "scheduled_time": "2026-12-01T03:00:00Z"})
    assert scheduled.source == "schedule" and scheduled.at == T0
    with pytest.raises(ValueError, match="not a drift alarm"):
        trigger_of({"hello": "world"})


def _register(world: World, group: str, auc: float | None, status: str) -> str:
    world.sagemaker.create_model_package_group(ModelPackageGroupName=group)
    metrics: dict[str, object] = {}
    if auc is not None:
        key = "evaluation/exec-1/evaluation.json"
        world.s3.put_object(Bucket=ARTIFACTS, Key=key,
                            Body=json.dumps({"metrics": {"auc": auc}}).encode())  # fmt: skip
        metrics = {"ModelMetrics": {"ModelQuality": {"Statistics": {
            "ContentType": "application/json", "S3Uri": f"s3://{ARTIFACTS}/{key}"}}}}  # fmt: skip
    arn = world.sagemaker.create_model_package(
        ModelPackageGroupName=group, ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={"Containers": [{"Image": "img", "ModelDataUrl": "s3://b/m"}],
                                "SupportedContentTypes": ["application/json"],
                                "SupportedResponseMIMETypes": ["application/json"]},
        **metrics,  # type: ignore[arg-type]
    )["ModelPackageArn"]  # fmt: skip
    world.sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)
    return str(arn)


def test_a_retrain_must_reach_the_approved_versions_auc(world: World) -> None:
    from oncopipe.monitor.gate import approved_auc

    assert approved_auc(world.sagemaker, world.s3, "nothing-yet") is None
    _register(world, "response", 0.91, "Approved")
    assert approved_auc(world.sagemaker, world.s3, "response") == pytest.approx(0.91)
    # a pending version is not the floor; a version without a report gives none
    _register(world, "pending", 0.99, "PendingManualApproval")
    assert approved_auc(world.sagemaker, world.s3, "pending") is None
    _register(world, "by-hand", None, "Approved")
    assert approved_auc(world.sagemaker, world.s3, "by-hand") is None
    # the starter passes it as the pipeline's ApprovedAuc parameter
    stubbed = boto3.client("sagemaker", region_name=REGION)
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/response-training/execution/x2"
    with Stubber(stubbed) as stub:
        stub.add_response(
            "start_pipeline_execution",
            {"PipelineExecutionArn": arn},
            {"PipelineName": "response-training", "ClientRequestToken": "t" * 32,
             "PipelineExecutionDisplayName": f"retrain-schedule-{'t' * 12}",
             "PipelineExecutionDescription": "retrain gate: schedule",
             "PipelineParameters": [{"Name": "ApprovedAuc", "Value": "0.91"}]},
        )  # fmt: skip
        start = sagemaker_starter(stubbed, "response-training",
                                  parameters=lambda: {"ApprovedAuc": "0.91"})  # fmt: skip
        assert start(token="t" * 32, reason="schedule") == arn


def test_a_retrain_builds_its_cohort_anew(world: World) -> None:
    """The step cache answers an unchanged CohortRunId: each retrain gets its own build."""
    from oncopipe.monitor.gate import COHORT_RUN_ID

    stubbed = boto3.client("sagemaker", region_name=REGION)
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/response-training/execution/x3"
    with Stubber(stubbed) as stub:
        stub.add_response(
            "start_pipeline_execution",
            {"PipelineExecutionArn": arn},
            {"PipelineName": "response-training", "ClientRequestToken": "k" * 64,
             "PipelineExecutionDisplayName": f"retrain-drift-alarm-{'k' * 12}",
             "PipelineExecutionDescription": "retrain gate: drift_alarm",
             "PipelineParameters": [{"Name": "ApprovedAuc", "Value": "0.9"},
                                    {"Name": COHORT_RUN_ID, "Value": f"retrain-{'k' * 12}"}]},
        )  # fmt: skip
        start = sagemaker_starter(stubbed, "response-training", build_parameter=COHORT_RUN_ID,
                                  parameters=lambda: {"ApprovedAuc": "0.9"})  # fmt: skip
        assert start(token="k" * 64, reason="drift_alarm") == arn
