"""CloudFormation drift (``oncopipe ops drift`` and the scheduled check).

moto implements no drift API, so CloudFormation is botocore's Stubber fed with the
response shapes of tests/data/drift (after the API reference; the Stubber validates each
against the service model, and each request against the expected parameters, in order).
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from click.testing import CliRunner

from oncopipe.cli import main
from oncopipe.deployment import (
    ConfigurationError,
    DriftAllowEntry,
    load_config,
    parse_drift_allow_list,
    read_cdk_json,
    stack_names,
)
from oncopipe.errors import ConfigError
from oncopipe.ops import drift as drift_module
from oncopipe.ops.drift import (
    DriftReport,
    DriftSettings,
    Progress,
    detect,
    report_key,
    severity,
)
from oncopipe.ops.drift_report import to_dict, to_html, to_json, to_markdown

DATA = Path(__file__).parents[1] / "data" / "drift"
TIMESTAMPS = {"Timestamp", "LastUpdatedTimestamp", "LastCheckTimestamp"}
FILTERS = ["MODIFIED", "DELETED", "UNKNOWN"]


def _timestamps(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: datetime.fromisoformat(v.replace("Z", "+00:00"))
            if k in TIMESTAMPS
            else _timestamps(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_timestamps(v) for v in value]
    return value


def _scenario(name: str) -> dict[str, Any]:
    return _timestamps(json.loads((DATA / f"{name}.json").read_text()))


DATALAKE = "datalake_drifted"
NETWORK = "network_in_sync"
GENOMICS = "genomics_failed"
FEATURES = "features_nested"


class Clock:
    """A fake clock: ``sleep`` advances it and records the pauses."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Calls:
    """Queues the responses of one stack's calls on a Stubber, with the expected requests."""

    def __init__(self, stubber: Stubber) -> None:
        self.stubber = stubber

    def detect(self, sc: dict[str, Any]) -> None:
        self.stubber.add_response("detect_stack_drift", sc["detect"], {"StackName": sc["stack"]})

    def status(self, sc: dict[str, Any], index: int) -> None:
        self.stubber.add_response(
            "describe_stack_drift_detection_status",
            sc["status"][index],
            {"StackDriftDetectionId": sc["detect"]["StackDriftDetectionId"]},
        )

    def results(self, sc: dict[str, Any]) -> None:
        self._pages("list_stack_resources", sc["list_stack_resources"], {"StackName": sc["stack"]})
        self._pages(
            "describe_stack_resource_drifts",
            sc["describe_stack_resource_drifts"],
            {
                "StackName": sc["stack"],
                "StackResourceDriftStatusFilters": FILTERS,
                "MaxResults": 100,
            },
        )

    def _pages(self, operation: str, pages: list[dict[str, Any]], params: dict[str, Any]) -> None:
        token = None
        for page in pages:
            self.stubber.add_response(
                operation, page, {**params, **({"NextToken": token} if token else {})}
            )
            token = page.get("NextToken")

    def missing(self, name: str) -> None:
        self.stubber.add_client_error(
            "detect_stack_drift",
            service_error_code="ValidationError",
            service_message=f"Stack with id {name} does not exist",
            http_status_code=400,
            expected_params={"StackName": name},
        )

    def denied(self, name: str) -> None:
        self.stubber.add_client_error(
            "detect_stack_drift",
            service_error_code="AccessDenied",
            service_message="User: arn:aws:sts::123456789012:assumed-role/ci/session is not "
            "authorized to perform: cloudformation:DetectStackDrift",
            http_status_code=403,
            expected_params={"StackName": name},
        )


def _client() -> Any:
    return boto3.client(
        "cloudformation",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _run(
    queue: Any,
    names: list[str],
    *,
    allow_list: tuple[DriftAllowEntry, ...] = (),
    timeout_s: float = 600.0,
) -> tuple[DriftReport, Clock, list[Progress]]:
    """Run :func:`detect` on a stubbed client after ``queue(calls)``; check every call ran."""
    cfn = _client()
    clock, events = Clock(), []
    with Stubber(cfn) as stubber:
        queue(Calls(stubber))
        report = detect(
            cfn,
            names,
            allow_list=allow_list,
            environment="dev",
            poll_s=5,
            timeout_s=timeout_s,
            sleep=clock.sleep,
            clock=clock,
            progress=events.append,
        )
        stubber.assert_no_pending_responses()
    return report, clock, events


def _datalake(calls: Calls) -> None:
    sc = _scenario(DATALAKE)
    calls.detect(sc)
    calls.status(sc, 0)  # in progress: one pause
    calls.status(sc, 1)
    calls.results(sc)


# -- detection ---------------------------------------------------------------------------
def test_in_sync_stack_has_full_coverage_and_passes() -> None:
    sc = _scenario(NETWORK)

    def queue(calls: Calls) -> None:
        calls.detect(sc)
        calls.status(sc, 0)
        calls.results(sc)

    report, clock, _ = _run(queue, [sc["stack"]])
    (stack,) = report.stacks
    assert (stack.status, stack.detection_status) == ("IN_SYNC", "DETECTION_COMPLETE")
    assert stack.total_resources == 3 and stack.coverage == 1.0 and stack.drifts == ()
    assert stack.detected_at == "2026-12-01T06:00:41Z"
    assert clock.sleeps == []  # finished at the first poll: no wait
    assert report.exit_code("any") == 0 and report.exit_code("critical") == 0


def test_drifted_stack_severities_deletion_coverage_and_progress() -> None:
    report, clock, events = _run(_datalake, ["Oncopipe-dev-DataLake"])
    (stack,) = report.stacks
    assert stack.status == "DRIFTED"
    # 7 resources over two pages; CDK metadata and the custom resource are not checked
    assert stack.total_resources == 7
    assert sorted(u.resource_type for u in stack.unchecked) == [
        "AWS::CDK::Metadata",
        "Custom::S3AutoDeleteObjects",
    ]
    assert stack.coverage == pytest.approx(5 / 7)
    assert stack.drifted_resources == 3
    rows = {(d.logical_id, d.property_path): d for d in stack.drifts}
    action = rows["CuratedReadPolicy5F3A2B1C", "/PolicyDocument/Statement/0/Action"]
    assert (action.severity, action.expected, action.actual) == ("critical", "s3:GetObject", "s3:*")
    assert rows["CuratedReadPolicy5F3A2B1C", "/PolicyDocument/Statement/0/Resource"].actual == "*"
    deleted = rows["AccessLogsBucket83982689", ""]
    assert (deleted.status, deleted.severity, deleted.actual) == ("DELETED", "warning", None)
    assert rows["CuratedBucket6C2A9E7B", "/Tags/1/Value"].severity == "warning"
    assert report.drifted_resources == 3 and report.critical_resources == 1
    assert report.exit_code("critical") == 1 and report.exit_code("any") == 1
    assert report.exit_code("never") == 0
    assert clock.sleeps == [5]
    assert [e.event for e in events] == ["started", "waiting", "finished"]
    assert events[-1].detail == "DRIFTED" and events[-1].elapsed_s == 5


def test_allow_list_silences_matching_drift_only() -> None:
    tags = DriftAllowEntry(
        "Oncopipe-*-DataLake",
        "CuratedBucket*",
        "/Tags/*",
        "owner tag is set by the account's tag policy",
    )
    report, _, _ = _run(_datalake, ["Oncopipe-dev-DataLake"], allow_list=(tags,))
    allowed = [d for d in report.drifts if d.allowed]
    assert [(d.logical_id, d.allowed_reason) for d in allowed] == [
        ("CuratedBucket6C2A9E7B", "owner tag is set by the account's tag policy")
    ]
    assert report.drifted_resources == 2  # the policy and the deleted bucket remain
    assert report.exit_code("critical") == 1

    policy = DriftAllowEntry("*", "CuratedReadPolicy*", "/PolicyDocument/*", "break-glass test")
    report, _, _ = _run(_datalake, ["Oncopipe-dev-DataLake"], allow_list=(tags, policy))
    assert report.critical_resources == 0
    assert report.exit_code("critical") == 0 and report.exit_code("any") == 1  # the deletion
    # "*" also matches the empty property path of a deleted resource
    deletion = DriftAllowEntry("*", "AccessLogsBucket*", "*", "logs bucket moved to the org")
    report, _, _ = _run(_datalake, ["Oncopipe-dev-DataLake"], allow_list=(tags, policy, deletion))
    assert report.unallowed == [] and report.exit_code("any") == 0
    # an entry of another stack matches nothing here
    other = DriftAllowEntry("Oncopipe-dev-Model", "*", "*", "elsewhere")
    report, _, _ = _run(_datalake, ["Oncopipe-dev-DataLake"], allow_list=(other,))
    assert not any(d.allowed for d in report.drifts)


def test_nested_stack_is_detected_as_its_own_stack() -> None:
    sc = _scenario(FEATURES)
    nested = sc["nested"]

    def queue(calls: Calls) -> None:
        calls.detect(sc)
        calls.status(sc, 0)
        calls.results(sc)
        calls.detect(nested)  # started once the parent lists it, by its stack ARN
        calls.status(nested, 0)
        calls.results(nested)

    report, clock, _ = _run(queue, [sc["stack"]])
    parent, child = report.stacks
    name = "Oncopipe-dev-Features-RadiomicsNestedStackRadiomicsNe-1QAZ2WSX3EDC"
    assert parent.status == "IN_SYNC" and parent.nested == (name,)
    # the nested stack is reported as a stack, not as an unchecked resource of its parent
    assert parent.total_resources == 1 and parent.coverage == 1.0
    assert (child.name, child.parent) == (name, "Oncopipe-dev-Features")
    assert child.parent_logical_id == "RadiomicsNestedStackRadiomicsNestedStackResourceE1F2A3B4"
    (egress,) = child.drifts
    assert (egress.stack, egress.severity, egress.difference_type) == (name, "critical", "ADD")
    assert report.exit_code("critical") == 1
    assert clock.sleeps == [5]


def test_failed_detection_reports_its_reason_and_partial_results() -> None:
    sc = _scenario(GENOMICS)

    def queue(calls: Calls) -> None:
        calls.detect(sc)
        calls.status(sc, 0)
        calls.results(sc)

    report, _, _ = _run(queue, [sc["stack"]])
    (stack,) = report.stacks
    assert (stack.status, stack.detection_status) == ("UNKNOWN", "DETECTION_FAILED")
    assert "not authorized to perform: batch:DescribeComputeEnvironments" in stack.reason
    (unknown,) = stack.unchecked
    assert (unknown.status, unknown.reason) == ("UNKNOWN", "Internal Failure")
    assert stack.coverage == 0.5
    assert report.errors == [] and report.exit_code("any") == 0
    assert "DETECTION_FAILED" in to_markdown(report) and "Internal Failure" in to_markdown(report)


def test_missing_stack_is_not_deployed_and_access_denied_exits_2() -> None:
    sc = _scenario(NETWORK)

    def queue(calls: Calls) -> None:
        calls.detect(sc)
        calls.missing("Oncopipe-dev-Ingest")
        calls.denied("Oncopipe-dev-Model")
        calls.status(sc, 0)
        calls.results(sc)

    report, _, events = _run(queue, [sc["stack"], "Oncopipe-dev-Ingest", "Oncopipe-dev-Model"])
    network, ingest, model = report.stacks
    assert network.status == "IN_SYNC"
    assert ingest.status == "NOT_DEPLOYED" and ingest not in report.errors
    assert model.status == "ERROR" and report.errors == [model]
    assert "DetectStackDrift: AccessDenied" in model.reason
    assert "cloudformation:DetectStackDrift" in model.reason
    assert report.exit_code("never") == 2
    assert ("not-deployed", "Oncopipe-dev-Ingest") in [(e.event, e.stack) for e in events]


def test_detection_that_outlives_the_timeout_is_an_error() -> None:
    sc = _scenario(DATALAKE)

    def queue(calls: Calls) -> None:
        calls.detect(sc)
        for _ in range(4):  # at 0, 5, 10 and 15 s
            calls.status(sc, 0)

    report, clock, _ = _run(queue, [sc["stack"]], timeout_s=12)
    (stack,) = report.stacks
    assert (stack.status, stack.detection_status) == ("TIMED_OUT", "DETECTION_IN_PROGRESS")
    assert clock.sleeps == [5, 5, 5] and report.exit_code("never") == 2


@pytest.mark.parametrize(
    ("resource_type", "path", "expected"),
    [
        ("AWS::IAM::Role", "/AssumeRolePolicyDocument/Statement/0/Principal", "critical"),
        ("AWS::IAM::ManagedPolicy", "", "critical"),
        ("AWS::KMS::Key", "/KeyPolicy/Statement/1/Principal/AWS", "critical"),
        ("AWS::KMS::Key", "/EnableKeyRotation", "critical"),
        ("AWS::KMS::Key", "/Description", "warning"),
        ("AWS::S3::BucketPolicy", "/PolicyDocument/Statement/0/Condition", "critical"),
        ("AWS::S3::Bucket", "/PublicAccessBlockConfiguration/BlockPublicAcls", "critical"),
        ("AWS::S3::Bucket", "/LifecycleConfiguration/Rules/0/ExpirationInDays", "warning"),
        ("AWS::LakeFormation::PrincipalPermissions", "/Permissions/0", "critical"),
        ("AWS::EC2::SecurityGroupIngress", "/CidrIp", "critical"),
        ("AWS::EC2::VPCEndpoint", "/PolicyDocument", "critical"),
        ("AWS::Lambda::Function", "/MemorySize", "warning"),
    ],
)
def test_severity(resource_type: str, path: str, expected: str) -> None:
    assert severity(resource_type, path) == expected


# -- rendering ---------------------------------------------------------------------------
def test_reports_escape_hostile_values_and_json_keeps_them() -> None:
    report, _, _ = _run(_datalake, ["Oncopipe-dev-DataLake"])
    hostile = "<script>alert('x')</script> | `rm` [x](http://evil)"
    page = to_html(report)
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.replace("http://evil", "")
    markdown = to_markdown(report)
    assert "<script" not in markdown
    (row,) = [line for line in markdown.splitlines() if "/Tags/1/Value" in line]
    assert row.count(" | ") == 8  # 9 cells: the value's "|" is escaped, not a new column
    assert "\\`rm\\`" in row and "\\[x\\](http://evil)" in row
    data = json.loads(to_json(report))
    assert data == to_dict(report)
    assert list(data) == ["schema_version", "environment", "generated_at", "summary", "stacks"]
    assert data["summary"] == {
        "stacks": 1,
        "drifted_resources": 3,
        "critical_resources": 1,
        "allowed_drifts": 0,
        "unchecked_resources": 2,
        "detection_errors": 0,
    }
    (tags,) = [d for d in data["stacks"][0]["drifts"] if d["property_path"] == "/Tags/1/Value"]
    assert tags["actual"] == hostile
    assert data["stacks"][0]["coverage"] == round(5 / 7, 4)


# -- configuration -------------------------------------------------------------------------
def test_config_has_the_allow_list_and_the_stack_names() -> None:
    context = read_cdk_json()
    for env in context["oncopipe:environments"]:
        config = load_config(context, env)
        assert config.drift_allow_list == ()
        assert stack_names(config) == [
            f"Oncopipe-{env}-{kind}"
            for kind in (
                "DataLake",
                "Network",
                "Genomics",
                "Ingest",
                "Features",
                "Model",
                "Monitor",
                "Ops",
            )
        ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, "expected a list"),
        ([{"stack": "*", "logical_id": "*", "property_path": "*"}], "missing keys: reason"),
        (
            [{"stack": "*", "logical_id": "*", "property_path": "*", "reason": "r", "x": 1}],
            "unknown keys: x",
        ),
        (
            [{"stack": "*", "logical_id": "", "property_path": "*", "reason": "r"}],
            "[0].logical_id: expected a non-empty string",
        ),
    ],
)
def test_bad_allow_list_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^where") as info:
        parse_drift_allow_list(value, where="where")
    assert message in str(info.value)


def test_settings_round_trip_and_validation() -> None:
    config = load_config(read_cdk_json(), "dev")
    entry = DriftAllowEntry("*", "X", "/Tags/*", "tag policy")
    settings = DriftSettings.for_config(config, "artifacts-bucket")
    settings = DriftSettings(**{**settings.__dict__, "allow_list": (entry,)})
    assert DriftSettings.from_env(settings.as_env()) == settings
    with pytest.raises(ConfigError, match="DRIFT_STACK_NAMES"):
        DriftSettings.from_env({"ONCOPIPE_ENV": "dev", "ARTIFACTS_BUCKET": "b"})
    with pytest.raises(ConfigError, match="invalid drift settings"):
        DriftSettings.from_env({**settings.as_env(), "DRIFT_ALLOW_LIST": "[{}]"})
    assert report_key(datetime.fromisoformat("2026-12-01T23:30:00-02:00")) == (
        "ops/drift/2026-12-02/report.json"
    )


# -- command line ------------------------------------------------------------------------
@pytest.fixture
def stubbed_cli(monkeypatch: pytest.MonkeyPatch) -> Stubber:
    cfn = _client()
    monkeypatch.setattr(drift_module, "make_cloudformation_client", lambda region=None: cfn)
    with Stubber(cfn) as stubber:
        yield stubber


def _finished_datalake(calls: Calls) -> None:
    sc = _scenario(DATALAKE)
    calls.detect(sc)
    calls.status(sc, 1)
    calls.results(sc)


@pytest.mark.parametrize(("fail_on", "code"), [("critical", 1), ("any", 1), ("never", 0)])
def test_cli_exit_code_follows_fail_on(stubbed_cli: Stubber, fail_on: str, code: int) -> None:
    _finished_datalake(Calls(stubbed_cli))
    result = CliRunner().invoke(
        main,
        [
            "ops",
            "drift",
            "--env",
            "dev",
            "--stack",
            "Oncopipe-dev-DataLake",
            "--format",
            "json",
            "--fail-on",
            fail_on,
        ],
    )
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["summary"]["critical_resources"] == 1
    assert "Oncopipe-dev-DataLake: detection finished: DRIFTED" in result.stderr
    stubbed_cli.assert_no_pending_responses()


def test_cli_in_sync_exits_0_and_writes_html(stubbed_cli: Stubber, tmp_path: Path) -> None:
    sc = _scenario(NETWORK)
    calls = Calls(stubbed_cli)
    calls.detect(sc)
    calls.status(sc, 0)
    calls.results(sc)
    out = tmp_path / "drift.html"
    result = CliRunner().invoke(
        main,
        [
            "ops",
            "drift",
            "--stack",
            "Oncopipe-dev-Network",
            "--format",
            "html",
            "--fail-on",
            "any",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "<td>Oncopipe-dev-Network</td>" in out.read_text() and result.stdout == ""


def test_cli_access_denied_and_unknown_stack_exit_2(stubbed_cli: Stubber) -> None:
    Calls(stubbed_cli).denied("Oncopipe-dev-Model")
    result = CliRunner().invoke(main, ["ops", "drift", "--stack", "Oncopipe-dev-Model"])
    assert result.exit_code == 2
    assert "Oncopipe-dev-Model: DetectStackDrift: AccessDenied" in result.stderr
    result = CliRunner().invoke(main, ["ops", "drift", "--stack", "Oncopipe-dev-Nope"])
    assert result.exit_code == 2 and "not a stack of the app: Oncopipe-dev-Nope" in result.stderr


# -- scheduled check (Lambda) ------------------------------------------------------------
class _Context:
    function_name = "ops-drift"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ops-drift"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 600_000


def test_lambda_writes_the_report_and_publishes_metrics(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moto import mock_aws

    settings = DriftSettings(
        environment="dev",
        stack_names=("Oncopipe-dev-DataLake", "Oncopipe-dev-Network"),
        artifacts_bucket="oncopipe-dev-artifacts",
        poll_s=1,
    )
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    # set on every stage function; it must not become a second metric dimension
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "ops-drift")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    sys.modules.pop("lambdas.ops_drift.handler", None)
    handler = importlib.import_module("lambdas.ops_drift.handler")
    datalake, network = _scenario(DATALAKE), _scenario(NETWORK)
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-west-1")
        s3.create_bucket(
            Bucket=settings.artifacts_bucket,
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
        )
        cfn = _client()
        monkeypatch.setattr(handler, "_clients", lambda: (cfn, s3))
        with Stubber(cfn) as stubber:
            calls = Calls(stubber)
            calls.detect(datalake)
            calls.detect(network)
            calls.status(datalake, 1)
            calls.results(datalake)
            calls.status(network, 0)
            calls.results(network)
            result = handler.lambda_handler({"time": "2026-12-01T06:00:00Z"}, _Context())
            stubber.assert_no_pending_responses()
        key = "ops/drift/2026-12-01/report.json"
        stored = json.loads(s3.get_object(Bucket=settings.artifacts_bucket, Key=key)["Body"].read())
    assert result == {
        "report": f"s3://oncopipe-dev-artifacts/{key}",
        "stacks": 2,
        "drifted_resources": 3,
        "critical_resources": 1,
        "detection_errors": 0,
    }
    assert stored["summary"]["critical_resources"] == 1
    assert [s["status"] for s in stored["stacks"]] == ["DRIFTED", "IN_SYNC"]
    out = capsys.readouterr().out
    (emf,) = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    (directive,) = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Oncopipe" and directive["Dimensions"] == [["Environment"]]
    assert emf["Environment"] == "dev" and "service" not in emf
    assert (
        emf["DriftedResources"],
        emf["CriticalDriftedResources"],
        emf["DriftDetectionErrors"],
    ) == ([3.0], [1.0], [0.0])
    # the logs hold counts and stack names, never property values or physical ids
    assert "s3:GetObject" not in out and "<script>" not in out and "Oncop-Curat" not in out


def test_no_credentials_is_a_detection_error_with_a_hint() -> None:
    from botocore.exceptions import NoCredentialsError

    class NoCredentials:
        def detect_stack_drift(self, **kwargs: Any) -> dict[str, Any]:
            raise NoCredentialsError()

    with pytest.raises(drift_module.DriftDetectionError, match="configure AWS credentials"):
        detect(NoCredentials(), ["Oncopipe-dev-DataLake"])  # type: ignore[arg-type]
