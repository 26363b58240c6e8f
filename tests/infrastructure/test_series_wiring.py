"""Series settle wired in: the stacks' event-driven imaging triggers and the local mode.

The settle logic itself (restarts, duplicates, leases, long settle times) is in
``tests/adapters/test_settle.py``; here: what the app synthesizes for it (nag packs and cfn-lint
included), the de-id handler's hook, the job commands' ``--series``, and the local
series settle (a series converts without the daily job; a late instance reconverts it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Match, Template


@pytest.fixture(scope="module")
def synthesized(app_dev: Any) -> Any:
    """The dev app of the session (both nag packs on: synth raised on any finding)."""
    return app_dev.built, app_dev.outdir


def _statements(template: Template, role_logical_prefix: str) -> list[dict[str, Any]]:
    found = []
    for logical_id, policy in template.find_resources("AWS::IAM::Policy").items():
        if logical_id.startswith(role_logical_prefix):
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


@pytest.mark.slow
def test_settle_table_and_queue_are_encrypted_and_recoverable(synthesized: Any) -> None:
    built, _ = synthesized
    features = Template.from_stack(built.features)
    features.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": {
                "KeySchema": [
                    {"AttributeName": "patient_key", "KeyType": "HASH"},
                    {"AttributeName": "series", "KeyType": "RANGE"},
                ],
                "BillingMode": "PAY_PER_REQUEST",
                "SSESpecification": Match.object_like(
                    {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": Match.any_value()}
                ),
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            },
            "DeletionPolicy": "Retain",
        },
    )
    queues = features.find_resources(
        "AWS::SQS::Queue", {"Properties": {"RedrivePolicy": Match.any_value()}}
    )
    settle_queues = [q for q in queues if q.startswith("SeriesImagingSettleQueue")]
    assert len(settle_queues) == 1
    props = queues[settle_queues[0]]["Properties"]
    assert props["RedrivePolicy"]["maxReceiveCount"] == 5
    assert "KmsMasterKeyId" in props
    assert props["VisibilityTimeout"] >= 6 * 60  # above the settle function's timeout
    features.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {"BatchSize": 10, "FunctionResponseTypes": ["ReportBatchItemFailures"]},
    )


@pytest.mark.slow
def test_series_state_machine_runs_the_volume_job_then_radiomics_per_series(
    synthesized: Any,
) -> None:
    built, _ = synthesized
    features = Template.from_stack(built.features)
    machines = features.find_resources("AWS::StepFunctions::StateMachine")
    series = [m for m in machines if m.startswith("SeriesImaging")]
    assert len(series) == 1
    definition = json.dumps(machines[series[0]]["Properties"]["DefinitionString"])
    # one iteration per target series: the imaging Batch job with --series, then the
    # radiomics processing job with --series (the daily sweep has neither)
    assert "EachSeries" in definition and "$$.Map.Item.Value" in definition
    assert "'--series', $.series" in definition and "'processing.radiomics', 'stage'" in definition
    assert "batch:submitJob.sync" in definition
    assert "sagemaker:createProcessingJob.sync" in definition
    assert definition.index("SeriesVolumes") < definition.index("SeriesRadiomics")
    assert "SeriesImagingFailed" in definition


@pytest.mark.slow
def test_settle_function_env_and_least_privilege(synthesized: Any) -> None:
    built, _ = synthesized
    features = Template.from_stack(built.features)
    features.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "lambdas.series_settle.handler.lambda_handler",
            "Environment": {
                "Variables": Match.object_like(
                    {
                        "SETTLE_TABLE": Match.any_value(),
                        "SETTLE_QUEUE_URL": Match.any_value(),
                        "SERIES_SETTLE_SECONDS": str(built.config.series_settle_seconds),
                        "SETTLE_STATE_MACHINE_ARN": Match.any_value(),
                    }
                )
            },
            "VpcConfig": Match.any_value(),
        },
    )
    statements = _statements(features, "SeriesImagingSeriesSettleRole")
    actions = {a for s in statements for a in _actions(s)}
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"} <= actions
    assert {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage"} <= actions
    assert "states:StartExecution" in actions
    assert not {"dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:PutItem"} & actions
    for statement in statements:
        if any(a.startswith(("dynamodb:", "states:")) for a in _actions(statement)):
            assert statement["Resource"] != "*"


@pytest.mark.slow
def test_deid_function_records_instances_and_starts_timers(synthesized: Any) -> None:
    built, _ = synthesized
    ingest = Template.from_stack(built.ingest)
    ingest.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "lambdas.dicom_deid.handler.lambda_handler",
            "Environment": {
                "Variables": Match.object_like(
                    {
                        "SETTLE_TABLE": Match.any_value(),
                        "SETTLE_QUEUE_URL": Match.any_value(),
                        "SERIES_SETTLE_SECONDS": str(built.config.series_settle_seconds),
                    }
                )
            },
        },
    )
    statements = _statements(ingest, "DicomDeidRole")
    actions = {a for s in statements for a in _actions(s)}
    assert {"dynamodb:GetItem", "dynamodb:UpdateItem", "sqs:SendMessage"} <= actions
    # it starts timers; it never consumes them nor starts conversions
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage", "states:StartExecution"} & actions


@pytest.mark.slow
def test_cfn_lint_finds_no_errors_in_the_stacks_with_the_triggers(synthesized: Any) -> None:
    from cfnlint.api import lint_all

    _, outdir = synthesized
    errors = []
    for name in ("Features", "Ingest"):
        (template,) = Path(outdir).glob(f"*-{name}.template.json")
        errors += [
            f"{template.name}: {m}"
            for m in lint_all(template.read_text())
            if m.rule.id.startswith("E")
            and not (m.rule.id == "E3006" and "does not exist in" in m.message)
        ]
    assert errors == []


# -- the local series settle (moto in process; the clock drives SQS delays) ---------------
SECRET = bytes(range(32))
RUN = "local-settle-1"
SERIES_A = "2.25.31415"
SERIES_B = "2.25.27182"


class Clock:
    """The injected clock (epoch seconds); moto's SQS delays follow it."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeState:
    """The part of :class:`oncopipe.local.state.LocalState` the tracker uses."""

    def client_kwargs(self) -> dict[str, Any]:
        from tests.conftest import REGION

        return {"region_name": REGION}


@pytest.fixture
def tracker(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    import moto.sqs.models
    from moto import mock_aws

    from oncopipe.local.series import LocalSeriesSettle

    clock = Clock()
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", lambda *a: clock.now * 1000.0)
    converted: list[Any] = []

    def convert(settled: Any) -> dict[str, Any]:
        converted.append(settled)
        return {"volumes": {"converted": len(settled.targets)}}

    with mock_aws():
        settler = LocalSeriesSettle(FakeState(), 5, convert=convert, clock=clock)  # type: ignore[arg-type]
        yield settler, clock, converted


def _deid(series: str, *, skipped: bool = False, modality: str = "CT") -> Any:
    from oncopipe.local.worker import Execution
    from oncopipe.pseudonym import keyer

    result = {"status": "deidentified", "patient_key": keyer(SECRET)("MRN-7-X"),
              "series": series, "modality": modality, "skipped": skipped}  # fmt: skip
    return Execution(f"dicom/{series}.dcm", "SUCCEEDED", "Deidentified", result, 0.1)


def test_local_series_converts_once_after_the_last_instance_settles(tracker: Any) -> None:
    settler, clock, converted = tracker
    assert settler.observe(_deid(SERIES_A), RUN) == 1
    clock.now += 3
    assert settler.observe(_deid(SERIES_A), RUN) == 2  # restarts the timer
    clock.now += 3  # the first timer is due; the series has not settled
    settler.drain(patience=1.5)
    assert converted == []
    assert [o.status for o in settler.outcomes] == ["restarted"]
    clock.now += 3  # 6 s after the last instance
    settler.drain(patience=1.5)
    assert [(s.key.series, s.generation, s.targets) for s in converted] == [
        (SERIES_A, 2, (SERIES_A,))
    ]
    assert settler.pending() == []
    assert [o.status for o in settler.converted()] == ["converted"]


def test_a_late_instance_after_conversion_reconverts_the_series(tracker: Any) -> None:
    settler, clock, converted = tracker
    settler.observe(_deid(SERIES_A), RUN)
    clock.now += 6
    settler.drain(patience=1.5)
    assert len(converted) == 1
    clock.now += 60
    assert settler.observe(_deid(SERIES_A), RUN) == 2  # late instance
    assert [k.series for k in settler.pending()] == [SERIES_A]
    clock.now += 6
    settler.drain(patience=1.5)
    assert [s.generation for s in converted] == [1, 2]
    assert settler.pending() == []


def test_a_redelivered_deid_adds_no_instance_and_a_structure_set_converts_its_images(
    tracker: Any,
) -> None:
    settler, clock, converted = tracker
    settler.observe(_deid(SERIES_A), RUN)
    clock.now += 6
    settler.drain(patience=1.5)
    # the same object again (its manifest existed): no new instance, no new conversion
    assert settler.observe(_deid(SERIES_A, skipped=True), RUN) == 1
    assert settler.pending() == []
    settler.observe(_deid(SERIES_B, modality="RTSTRUCT"), RUN)
    clock.now += 6
    settler.drain(patience=1.5)
    assert [(s.key.series, s.targets) for s in converted] == [
        (SERIES_A, (SERIES_A,)), (SERIES_B, (SERIES_A,)),
    ]  # fmt: skip


def test_a_failed_conversion_is_retried_until_it_succeeds(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moto.sqs.models
    from moto import mock_aws

    from oncopipe.local.series import LocalSeriesSettle

    clock = Clock()
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", lambda *a: clock.now * 1000.0)
    attempts: list[int] = []

    def flaky(settled: Any) -> dict[str, Any]:
        attempts.append(settled.generation)
        if len(attempts) == 1:
            raise RuntimeError("the volume job failed")
        return {}

    with mock_aws():
        settler = LocalSeriesSettle(FakeState(), 1, convert=flaky, clock=clock)  # type: ignore[arg-type]
        settler.observe(_deid(SERIES_A), RUN)
        clock.now += 2
        settler.drain(patience=1.5)  # fails; the message is not deleted
        assert settler.pending() != []
        clock.now += 3  # past the visibility timeout: redelivered
        settler.drain(patience=1.5)
        assert settler.pending() == []
    assert attempts == [1, 1]


def test_the_job_commands_refuse_a_series_that_is_not_a_uid() -> None:
    from batch_jobs.imaging.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(["volumes", "--run-id", RUN, "--series", "MRN-7-X"])
    assert raised.value.code == 2
