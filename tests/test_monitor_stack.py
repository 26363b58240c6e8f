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
    starts = [s for s in statements if "states:StartExecution" in str(s["Action"])]
    assert starts and all(s["Resource"] != "*" for s in starts)
    assert not any(s["Action"] == "*" or (s["Resource"] == "*" and "s3:" in str(s["Action"]))
                   for s in statements)  # fmt: skip
