"""The ops stack: what is alarmed, where alarms go, the dashboard, the scheduled checks.

The expected dead-letter queues and state machines are read from the synthesized templates
of every stack (not from the ops stack's discovery), so a queue the discovery misses fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Duration, Stack
from aws_cdk.assertions import Match, Template
from aws_cdk.aws_events import Schedule

from oncopipe import metrics as m
from oncopipe.ops.batch_queue import RUNNABLE_AGE
from stacks.app_factory import OncopipeApp
from stacks.components.ops_topic import AlarmTopic

pytestmark = pytest.mark.slow

EMAILS = ["oncall@example.org", "platform@example.org"]


@pytest.fixture(scope="module")
def built(app_dev: Any) -> tuple[OncopipeApp, Path]:
    """The dev app of the session (nag packs on: synth raised on any unacknowledged finding)."""
    return app_dev.built, app_dev.outdir


def _templates(outdir: Path) -> dict[str, dict[str, Any]]:
    return {
        p.name.removesuffix(".template.json"): json.loads(p.read_text())
        for p in outdir.glob("*.template.json")
    }


def _ops(built: tuple[OncopipeApp, Path]) -> Template:
    return Template.from_stack(built[0].ops)


def _ref_id(value: Any) -> str | None:
    """Return the logical ID a GetAtt/Ref names, else None."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
        if "Ref" in value:
            return str(value["Ref"])
    return None


def _dead_letter_ids(template: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Lambda::Function":
            found.add(_ref_id(props.get("DeadLetterConfig", {}).get("TargetArn")) or "")
        elif resource["Type"] == "AWS::SQS::Queue":
            found.add(_ref_id(props.get("RedrivePolicy", {}).get("deadLetterTargetArn")) or "")
        elif resource["Type"] == "AWS::Events::Rule":
            for target in props.get("Targets", []):
                found.add(_ref_id(target.get("DeadLetterConfig", {}).get("Arn")) or "")
    found.discard("")
    return found


def _exports_of(template: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Return export name -> (logical ID, attribute or 'Ref') of a template's outputs."""
    exports: dict[str, tuple[str, str]] = {}
    for output in template.get("Outputs", {}).values():
        name = output.get("Export", {}).get("Name")
        value = output.get("Value", {})
        if isinstance(name, str) and isinstance(value, dict):
            if "Fn::GetAtt" in value:
                exports[name] = (value["Fn::GetAtt"][0], value["Fn::GetAtt"][1])
            elif "Ref" in value:
                exports[name] = (value["Ref"], "Ref")
    return exports


def _alarmed(built: tuple[OncopipeApp, Path], metric: str, dimension: str) -> set[tuple[str, str]]:
    """Return (stack, logical ID) of what the ops alarms on ``metric`` watch, with topic actions."""
    _, outdir = built
    templates = _templates(outdir)
    ops_name = built[0].ops.stack_name
    exports = {
        name: (stack, target)
        for stack, template in templates.items()
        for name, target in _exports_of(template).items()
    }
    watched: set[tuple[str, str]] = set()
    for alarm in templates[ops_name]["Resources"].values():
        if alarm["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = alarm["Properties"]
        if props.get("MetricName") != metric:
            continue
        assert props["AlarmActions"] and props["OKActions"]
        assert props["Threshold"] == 1
        assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        for dim in props["Dimensions"]:
            if dim["Name"] != dimension:
                continue
            value = dim["Value"]
            if "Fn::ImportValue" in value:
                stack, (logical_id, _) = exports[value["Fn::ImportValue"]]
                watched.add((stack, logical_id))
            else:
                watched.add((ops_name, str(_ref_id(value))))
    return watched


def test_every_dead_letter_queue_of_the_app_has_an_alarm(built: Any) -> None:
    expected = {
        (stack, logical_id)
        for stack, template in _templates(built[1]).items()
        for logical_id in _dead_letter_ids(template)
    }
    assert len(expected) >= 8  # the functions', the rules' and the settle queue's
    assert _alarmed(built, "ApproximateNumberOfMessagesVisible", "QueueName") == expected


@pytest.mark.parametrize("metric", ["ExecutionsFailed", "ExecutionsTimedOut"])
def test_every_state_machine_of_the_app_has_failure_alarms(built: Any, metric: str) -> None:
    expected = {
        (stack, logical_id)
        for stack, template in _templates(built[1]).items()
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::StepFunctions::StateMachine"
    }
    assert expected
    assert _alarmed(built, metric, "StateMachineArn") == expected


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(built: Any) -> None:
    ops = _ops(built)
    keys = ops.find_resources("AWS::KMS::Key")
    assert len(keys) == 1
    key_id, key = next(iter(keys.items()))
    assert key["Properties"]["EnableKeyRotation"] is True
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    cloudwatch = [
        s for s in statements if s.get("Principal", {}).get("Service") == "cloudwatch.amazonaws.com"
    ]
    assert cloudwatch and set(cloudwatch[0]["Action"]) == {"kms:GenerateDataKey*", "kms:Decrypt"}
    ops.has_resource_properties(
        "AWS::SNS::Topic", {"KmsMasterKeyId": {"Fn::GetAtt": [key_id, "Arn"]}}
    )
    ops.has_resource_properties(
        "AWS::SNS::TopicPolicy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Deny",
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ),
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Action": "sns:Publish",
                                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                            }
                        ),
                    ]
                )
            }
        },
    )


def test_alarm_emails_of_the_config_are_subscribed(built: Any) -> None:
    app, _ = built
    subscriptions = _ops(built).find_resources("AWS::SNS::Subscription")
    endpoints = sorted(s["Properties"]["Endpoint"] for s in subscriptions.values())
    assert endpoints == sorted(app.config.ops.alarm_emails)  # the app passes what cdk.json names
    # ... and the topic subscribes each address by e-mail
    stack = Stack(App(), "Bare")
    AlarmTopic(stack, "Alarms", prefix="oncopipe-test", emails=EMAILS)
    subscriptions = Template.from_stack(stack).find_resources("AWS::SNS::Subscription")
    assert sorted(s["Properties"]["Endpoint"] for s in subscriptions.values()) == EMAILS
    assert {s["Properties"]["Protocol"] for s in subscriptions.values()} == {"email"}


def test_every_alarm_notifies_the_topic_on_alarm_and_ok(built: Any) -> None:
    ops = _ops(built)
    topic_id = next(iter(ops.find_resources("AWS::SNS::Topic")))
    alarms = ops.find_resources("AWS::CloudWatch::Alarm")
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}]
        assert alarm["Properties"]["OKActions"] == [{"Ref": topic_id}]


def test_quarantine_rate_alarm_per_stage_is_metric_math_over_the_stage_metrics(built: Any) -> None:
    app, _ = built
    percent = app.config.ops.quarantine_alarm_percent
    ops = _ops(built)
    for stage in m.STAGES:

        def stat(name: str, stage: str = stage) -> Any:
            return Match.object_like(
                {
                    "MetricStat": Match.object_like(
                        {
                            "Metric": {
                                "Namespace": m.NAMESPACE,
                                "MetricName": name,
                                "Dimensions": Match.array_with(
                                    [
                                        {"Name": "Environment", "Value": app.config.name},
                                        {"Name": "Stage", "Value": stage},
                                    ]
                                ),
                            }
                        }
                    )
                }
            )

        ops.has_resource_properties(
            "AWS::CloudWatch::Alarm",
            {
                "Threshold": percent,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "notBreaching",
                "Metrics": Match.array_with(
                    [
                        Match.object_like({"Expression": "100 * q / n"}),
                        stat(m.QUARANTINED),
                        stat(m.ITEMS_IN),
                    ]
                ),
            },
        )


def test_batch_runnable_age_is_watched_and_alarmed(built: Any) -> None:
    app, _ = built
    ops = _ops(built)
    ops.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": m.NAMESPACE,
            "MetricName": RUNNABLE_AGE,
            "Threshold": app.config.ops.batch_runnable_alarm_minutes * 60,
            "ComparisonOperator": "GreaterThanThreshold",
            "Dimensions": Match.array_with([{"Name": "Environment", "Value": app.config.name}]),
        },
    )
    ops.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "lambdas.ops_batch_queue.handler.lambda_handler",
            "Environment": {
                "Variables": Match.object_like({"BATCH_JOB_QUEUES": Match.any_value()})
            },
        },
    )
    ops.has_resource_properties("AWS::Events::Rule", {"ScheduleExpression": "rate(5 minutes)"})
    ops.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {"Action": Match.array_with(["batch:ListJobs"]), "Resource": "*"}
                        )
                    ]
                )
            }
        },
    )


def test_drift_runs_on_the_configured_schedule_with_a_scoped_role(built: Any) -> None:
    app, _ = built
    config = app.config
    ops = _ops(built)
    ops.has_resource_properties(
        "AWS::Events::Rule",
        {
            # CDK renders whole days as "rate(N days)": the same period.
            "ScheduleExpression": Schedule.rate(
                Duration.hours(config.ops.drift_check_hours)
            ).expression_string,
            "Targets": [Match.object_like({"DeadLetterConfig": Match.any_value()})],
        },
    )
    functions = ops.find_resources(
        "AWS::Lambda::Function",
        {"Properties": {"Handler": "lambdas.ops_drift.handler.lambda_handler"}},
    )
    assert len(functions) == 1
    props = next(iter(functions.values()))["Properties"]
    assert props["Timeout"] == 900
    stacks = props["Environment"]["Variables"]["DRIFT_STACK_NAMES"].split(",")
    assert f"Oncopipe-{config.name}-Ops" in stacks and f"Oncopipe-{config.name}-DataLake" in stacks
    role = props["Role"]["Fn::GetAtt"][0]
    ops.has_resource_properties(
        "AWS::IAM::Role",
        {
            "ManagedPolicyArns": Match.array_with(
                [
                    {
                        "Fn::Join": [
                            "",
                            ["arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/SecurityAudit"],
                        ]
                    }
                ]
            )
        },
    )
    policies = ops.find_resources("AWS::IAM::Policy", {"Properties": {"Roles": [{"Ref": role}]}})
    statements = [
        s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    dumped = json.dumps(statements)
    assert f"stack/Oncopipe-{config.name}-*/*" in dumped
    assert "ops/drift/*" in dumped and "s3:PutObject" in dumped
    detect = [s for s in statements if "cloudformation:DetectStackDrift" in s["Action"]]
    assert detect and detect[0]["Resource"] != "*"
    assert "ReadOnlyAccess" not in json.dumps(ops.find_resources("AWS::IAM::Role"))


@pytest.mark.parametrize("metric", ["CriticalDriftedResources", "DriftDetectionErrors"])
def test_drift_alarms(built: Any, metric: str) -> None:
    app, _ = built
    _ops(built).has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "Namespace": m.NAMESPACE,
            "MetricName": metric,
            "Threshold": 1,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "Dimensions": [{"Name": "Environment", "Value": app.config.name}],
        },
    )


def test_dashboard_has_a_row_per_stage_with_its_metrics(built: Any) -> None:
    _app, _ = built
    dashboards = _ops(built).find_resources("AWS::CloudWatch::Dashboard")
    assert len(dashboards) == 1
    body = json.dumps(next(iter(dashboards.values()))["Properties"]["DashboardBody"])
    positions = [body.find(f"## Stage `{stage}`") for stage in m.STAGES]
    assert -1 not in positions and positions == sorted(positions)
    for name in (
        m.ITEMS_IN,
        m.SUCCEEDED,
        m.QUARANTINED,
        m.FAILED,
        m.DURATION,
        m.BYTES,
        m.COST,
        RUNNABLE_AGE,
        "ApproximateNumberOfMessagesVisible",
        "ExecutionsFailed",
        "CriticalDriftedResources",
    ):
        assert f'\\"{name}\\"' in body, name
    assert "p95" in body and "cost per sample" in body


def test_every_lambda_of_the_app_knows_its_environment(built: Any) -> None:
    app, outdir = built
    for name, template in _templates(outdir).items():
        for resource in template.get("Resources", {}).values():
            if resource["Type"] == "AWS::Lambda::Function" and "Handler" in resource["Properties"]:
                variables = resource["Properties"].get("Environment", {}).get("Variables", {})
                if "POWERTOOLS_SERVICE_NAME" in variables:  # the app's own functions
                    assert variables.get(m.ENV_ENVIRONMENT) == app.config.name, name


def test_nag_packs_report_no_unacknowledged_finding(built: Any) -> None:
    _, outdir = built
    report = outdir / "validation-report.json"
    if report.exists():  # written when a plugin reports; every plugin must pass
        document = json.loads(report.read_text())
        violations = [v for p in document["pluginReports"] for v in p.get("violations", [])]
        assert violations == []


def test_cfn_lint_finds_no_error_in_the_ops_template(built: Any) -> None:
    from cfnlint.api import lint_all

    app, outdir = built
    template = (outdir / f"{app.ops.stack_name}.template.json").read_text()
    errors = [str(e) for e in lint_all(template) if e.rule.id.startswith("E")]
    assert errors == []
