"""MonitorStack in the full app: alarm, schedule, gate wiring, both nag packs, cfn-lint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template


@pytest.fixture(scope="module")
def synthesized(app_dev: Any) -> tuple[Template, Path]:
    """The monitor stack in the dev app of the session, as deployed (nag packs on)."""
    return Template.from_stack(app_dev.built.monitor), app_dev.outdir


@pytest.mark.slow
def test_nag_packs_and_cfn_lint_pass(synthesized: tuple[Template, Path]) -> None:
    from cfnlint.api import lint_all

    _, outdir = synthesized
    report = outdir / "validation-report.json"
    if report.exists():
        document = json.loads(report.read_text())
        assert [v for p in document["pluginReports"] for v in p.get("violations", [])] == []
    template = outdir / "Oncopipe-dev-Monitor.template.json"
    errors = [str(m) for m in lint_all(template.read_text()) if m.rule.id.startswith("E")]
    assert errors == []


@pytest.mark.slow
def test_drift_alarm_is_m_of_n_daily_not_breaching_when_missing(
    synthesized: tuple[Template, Path],
) -> None:
    template, _ = synthesized
    template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "MetricName": "DriftScore", "Namespace": "Oncopipe", "Period": 86400,
        "Statistic": "Maximum", "Threshold": Match.any_value(),
        "EvaluationPeriods": Match.any_value(), "DatapointsToAlarm": Match.any_value(),
        "TreatMissingData": "notBreaching",
        "Dimensions": Match.array_with([{"Name": "Monitor", "Value": "vaf"}]),
    })  # fmt: skip


@pytest.mark.slow
def test_alarm_state_change_and_weekly_schedule_reach_the_gate(
    synthesized: tuple[Template, Path],
) -> None:
    template, _ = synthesized
    template.has_resource_properties("AWS::Events::Rule", {
        "EventPattern": {"source": ["aws.cloudwatch"],
                         "detail-type": ["CloudWatch Alarm State Change"],
                         "detail": {"state": {"value": ["ALARM"]}},
                         "resources": [Match.any_value()]},
    })  # fmt: skip
    template.has_resource_properties("AWS::Scheduler::Schedule", {
        "ScheduleExpression": "cron(0 3 ? * MON *)",
        "Target": Match.object_like({"Input": Match.string_like_regexp("scheduled-time")}),
    })  # fmt: skip
    template.has_resource_properties("AWS::Events::Rule", {
        "ScheduleExpression": "cron(15 1 * * ? *)"})  # fmt: skip


@pytest.mark.slow
def test_lease_table_is_kms_encrypted_with_pitr_and_ttl(
    synthesized: tuple[Template, Path],
) -> None:
    template, _ = synthesized
    template.has_resource("AWS::DynamoDB::Table", {
        "DeletionPolicy": "Retain",
        "Properties": Match.object_like({
            "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS",
                                 "KMSMasterKeyId": Match.any_value()},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
        }),
    })  # fmt: skip


@pytest.mark.slow
def test_gate_may_start_the_pipeline_only(synthesized: tuple[Template, Path]) -> None:
    template, _ = synthesized
    statements: list[Any] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    # the retrain target is the model stack's SageMaker Pipeline, by its ARN
    starts = [s for s in statements if "sagemaker:StartPipelineExecution" in str(s["Action"])]
    assert len(starts) == 1
    assert starts[0]["Resource"]["Fn::Join"][1][-1].endswith(":pipeline/oncopipe-dev-response")
    # nothing of the retired Step Functions route to training is left
    assert not any("states:StartExecution" in str(s["Action"]) and "ModelPipeline" in
                   str(s["Resource"]) for s in statements)  # fmt: skip
    assert not any(s["Action"] == "*" or (s["Resource"] == "*" and "s3:" in str(s["Action"]))
                   for s in statements)  # fmt: skip


def _drift_statements(template: Template) -> list[Any]:
    """The statements of the policies attached to the drift job's role."""
    statements: list[Any] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if "DriftJob" in json.dumps(policy["Properties"]["Roles"]):
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    return statements


@pytest.mark.slow
def test_one_alarm_per_drift_kind_with_its_own_threshold(
    synthesized: tuple[Template, Path],
) -> None:
    from oncopipe.monitor.job import KIND_THRESHOLDS

    template, _ = synthesized
    for kind, threshold in KIND_THRESHOLDS.items():
        template.has_resource_properties("AWS::CloudWatch::Alarm", {
            "MetricName": "DriftScore", "Namespace": "Oncopipe", "Period": 86400,
            "Statistic": "Maximum", "Threshold": threshold,
            "TreatMissingData": "notBreaching",
            "Dimensions": Match.array_with([{"Name": "Monitor", "Value": kind}]),
        })  # fmt: skip
    assert len(template.find_resources("AWS::CloudWatch::Alarm", {"Properties": {
        "MetricName": "DriftScore"}})) == 4  # fmt: skip


@pytest.mark.slow
def test_drift_job_reads_the_radiomics_and_note_concept_tables(
    synthesized: tuple[Template, Path],
) -> None:
    template, _ = synthesized
    template.has_resource_properties("AWS::Lambda::Function", {
        "Description": Match.string_like_regexp("daily model drift"),
        "Environment": {"Variables": Match.object_like({
            # the endpoint deployment on approval manages
            "SERVING_ENDPOINT_NAME": "oncopipe-dev-response",
            "DRIFT_KIND_THRESHOLDS": Match.string_like_regexp('"radiomics": 0.4')})},
    })  # fmt: skip
    statements = _drift_statements(template)
    reads = [json.dumps(s["Resource"]) for s in statements if "s3:GetObject" in s["Action"]]
    for prefix in ("genomics/vaf-histograms/*", "imaging/radiomics/*", "notes/concepts/*"):
        assert any(prefix in r for r in reads), prefix
    listed = [json.dumps(s["Condition"]) for s in statements if s["Action"] == "s3:ListBucket"]
    assert any("imaging/radiomics/*" in c and "notes/concepts/*" in c for c in listed)
    # prediction drift reads that endpoint's captured data
    assert any("data-capture/oncopipe-dev-response/*" in r or "data-capture/*" in r
               for r in reads)  # fmt: skip


@pytest.mark.slow
def test_an_endpoint_name_grants_its_data_capture(synthesized: tuple[Template, Path],
                                                  app_dev: Any) -> None:  # fmt: skip
    from aws_cdk import App, Stack, aws_ec2 as ec2, aws_kms as kms, aws_s3 as s3

    from stacks.components.model_monitor import DriftMonitor

    stack = Stack(App(), "Bare")
    key = kms.Key(stack, "Key")
    isolated = ec2.SubnetType.PRIVATE_ISOLATED
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=0, subnet_configuration=[
        ec2.SubnetConfiguration(name="isolated", subnet_type=isolated)])  # fmt: skip
    curated, artifacts = (
        s3.Bucket(stack, name, encryption=s3.BucketEncryption.KMS, encryption_key=key)
        for name in ("Curated", "Artifacts")
    )
    drift = DriftMonitor(
        stack, "Drift", config=app_dev.built.config, key=key, vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=isolated),
        curated=curated, artifacts=artifacts, model_package_group_name="response",
        endpoint_name="serving-ep", thresholds={"predictions": 0.25},
    )  # fmt: skip
    assert set(drift.alarms) == {"vaf", "radiomics", "notes", "predictions"}
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::Lambda::Function", {
        "Environment": {"Variables": Match.object_like({
            "SERVING_ENDPOINT_NAME": "serving-ep",
            "DRIFT_KIND_THRESHOLDS": Match.string_like_regexp('"predictions": 0.25')})},
    })  # fmt: skip
    template.has_resource_properties("AWS::CloudWatch::Alarm", {
        "Threshold": 0.25,
        "Dimensions": Match.array_with([{"Name": "Monitor", "Value": "predictions"}]),
    })  # fmt: skip
    reads = [json.dumps(s["Resource"]) for s in _drift_statements(template)
             if "s3:GetObject" in s["Action"]]  # fmt: skip
    assert any("/data-capture/*" in r and "Artifacts" in r for r in reads)
    with pytest.raises(ValueError, match="thresholds: kinds are"):
        DriftMonitor(
            stack, "Drift2", config=app_dev.built.config, key=key, vpc=vpc,
            subnets=ec2.SubnetSelection(subnet_type=isolated),
            curated=curated, artifacts=artifacts, model_package_group_name="response",
            thresholds={"images": 0.1},
        )  # fmt: skip
