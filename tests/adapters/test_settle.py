"""Series settle: a series converts once, when no instance has arrived for the settle time.

moto DynamoDB + SQS in process; the clock is injected and also drives moto's SQS delays
(``unix_time_millis``), so a delayed message becomes visible when the test moves the clock,
without sleeping.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from oncopipe import settle
from oncopipe.errors import ConfigError
from oncopipe.pseudonym import keyer
from oncopipe.settle import (
    SeriesKey,
    SettledSeries,
    SettleError,
    SettleTable,
    SettleTimer,
    TimerMessage,
)
from tests.conftest import REGION

SECRET = bytes(range(32))
SOURCE_ID = "MRN-0042-SILVA"
PATIENT = keyer(SECRET)(SOURCE_ID)
SERIES_A = "2.25.1111"
SERIES_B = "2.25.2222"
RUN = "ingest-20261202"
T0 = 1_800_000_000.0


class Clock:
    """The injected clock (epoch seconds)."""

    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import moto.sqs.models

    clock = Clock()
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", lambda *a: clock.now * 1000.0)
    return clock


@pytest.fixture
def aws(aws_env: None) -> Iterator[dict[str, Any]]:
    from moto import mock_aws

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        ddb.create_table(
            TableName="settle",
            KeySchema=[{"AttributeName": "patient_key", "KeyType": "HASH"},
                       {"AttributeName": "series", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "patient_key", "AttributeType": "S"},
                                  {"AttributeName": "series", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )  # fmt: skip
        sqs = boto3.client("sqs", region_name=REGION)
        url = sqs.create_queue(QueueName="settle-timers")["QueueUrl"]
        yield {"ddb": ddb, "sqs": sqs, "url": url,
               "table": SettleTable(ddb, "settle"), "timer": SettleTimer(sqs, url)}  # fmt: skip


class Recorder:
    """A conversion that records what it was asked to convert."""

    def __init__(self) -> None:
        self.calls: list[SettledSeries] = []

    def __call__(self, settled: SettledSeries) -> dict[str, Any]:
        self.calls.append(settled)
        return {"volumes": {"converted": len(settled.targets)}}


def arrive(aws: dict[str, Any], clock: Clock, series: str = SERIES_A, *,
           seconds: int = 300, modality: str = "CT", run_id: str = RUN) -> int:  # fmt: skip
    return settle.instance_arrived(
        aws["table"], aws["timer"], SeriesKey(PATIENT, series), clock.now,
        run_id=run_id, modality=modality, settle_seconds=seconds,
    )  # fmt: skip


def deliver(aws: dict[str, Any], clock: Clock, convert: Any) -> list[settle.SettleOutcome]:
    """Act as the Lambda event source mapping: receive what is visible now, handle it,
    delete the messages that did not fail. Return the outcomes."""
    response = aws["sqs"].receive_message(
        QueueUrl=aws["url"], MaxNumberOfMessages=10, VisibilityTimeout=60
    )
    messages = response.get("Messages", [])
    records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]

    def one(message: TimerMessage) -> settle.SettleOutcome:
        return settle.settle(message, table=aws["table"], timer=aws["timer"],
                             convert=convert, now=clock.now)  # fmt: skip

    outcomes, failures = settle.handle_records(records, one)
    failed = {f["itemIdentifier"] for f in failures}
    for m in messages:
        if m["MessageId"] not in failed:
            aws["sqs"].delete_message(QueueUrl=aws["url"], ReceiptHandle=m["ReceiptHandle"])
    return outcomes


def test_a_single_series_settles_once_after_the_settle_time(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    for _ in range(3):  # three instances in one burst: generations 1..3
        arrive(aws, clock)
    clock.advance(299)
    assert deliver(aws, clock, convert) == []  # nothing is due yet
    clock.advance(2)
    outcomes = deliver(aws, clock, convert)
    assert sorted(o.status for o in outcomes) == ["converted", "restarted", "restarted"]
    (call,) = convert.calls
    assert call.generation == 3 and call.targets == (SERIES_A,) and call.run_id == RUN
    state = aws["table"].get(SeriesKey(PATIENT, SERIES_A))
    assert state.converted_generation == 3 and state.instances == 3
    assert state.lease_until == 0.0  # the lease was dropped
    clock.advance(3600)
    assert deliver(aws, clock, convert) == [] and len(convert.calls) == 1


def test_a_later_instance_restarts_the_timer(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    assert arrive(aws, clock) == 1
    clock.advance(200)
    assert arrive(aws, clock) == 2  # within the window: the timer restarts
    clock.advance(101)  # the first timer is due, the second is not
    (first,) = deliver(aws, clock, convert)
    assert first.status == "restarted" and first.generation == 1
    assert convert.calls == []
    clock.advance(200)
    (second,) = deliver(aws, clock, convert)
    assert second.status == "converted" and second.generation == 2
    assert [c.generation for c in convert.calls] == [2]


def test_a_duplicate_delivery_converts_once(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    arrive(aws, clock)
    clock.advance(300)
    body = TimerMessage(SeriesKey(PATIENT, SERIES_A), 1, T0 + 300).body()
    aws["sqs"].send_message(QueueUrl=aws["url"], MessageBody=body)  # SQS: at least once
    outcomes = deliver(aws, clock, convert)
    assert sorted(o.status for o in outcomes) == ["converted", "duplicate"]
    assert len(convert.calls) == 1


def test_a_late_instance_after_conversion_reconverts_the_series(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    arrive(aws, clock)
    arrive(aws, clock)
    clock.advance(300)
    deliver(aws, clock, convert)
    clock.advance(86_400)  # the next day: a late instance, in the next day's run
    assert arrive(aws, clock, run_id="ingest-20261203") == 3
    clock.advance(300)
    (outcome,) = deliver(aws, clock, convert)
    assert outcome.status == "converted"
    assert [(c.generation, c.run_id) for c in convert.calls] == [
        (2, RUN), (3, "ingest-20261203"),
    ]  # fmt: skip


def test_two_series_settle_independently(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    arrive(aws, clock, SERIES_A)
    clock.advance(150)
    arrive(aws, clock, SERIES_B)
    clock.advance(150)
    (a,) = deliver(aws, clock, convert)  # A settled; B's instance did not restart it
    assert a.status == "converted" and a.key.series == SERIES_A
    arrive(aws, clock, SERIES_A)  # A again: B is not touched
    clock.advance(150)
    (b,) = deliver(aws, clock, convert)
    assert b.status == "converted" and b.key.series == SERIES_B and b.generation == 1
    clock.advance(150)
    (a2,) = deliver(aws, clock, convert)
    assert a2.key.series == SERIES_A and a2.generation == 2
    assert [(c.key.series, c.generation) for c in convert.calls] == [
        (SERIES_A, 1), (SERIES_B, 1), (SERIES_A, 2),
    ]  # fmt: skip


def test_a_structure_set_reconverts_the_patients_image_series_of_its_run(
    aws: Any, clock: Clock
) -> None:
    convert = Recorder()
    arrive(aws, clock, SERIES_A)
    arrive(aws, clock, "2.25.3333", run_id="ingest-20261130")  # an older run's series
    arrive(aws, clock, SERIES_B, modality="RTSTRUCT")
    clock.advance(300)
    deliver(aws, clock, convert)
    by_series = {c.key.series: c.targets for c in convert.calls}
    assert by_series[SERIES_B] == (SERIES_A,)  # the masks go with the run's image series


def test_a_failed_conversion_is_retried_and_then_converts(aws: Any, clock: Clock) -> None:
    attempts: list[int] = []

    def flaky(settled: SettledSeries) -> dict[str, Any]:
        attempts.append(settled.generation)
        if len(attempts) == 1:
            raise RuntimeError("volume job could not start")
        return {}

    arrive(aws, clock)
    clock.advance(300)
    assert deliver(aws, clock, flaky) == []  # failed: reported, left on the queue
    state = aws["table"].get(SeriesKey(PATIENT, SERIES_A))
    assert state.converted_generation == 0 and state.lease_until == 0.0  # released
    clock.advance(61)  # the visibility timeout passes: SQS delivers it again
    (outcome,) = deliver(aws, clock, flaky)
    assert outcome.status == "converted" and attempts == [1, 1]


def test_a_held_lease_makes_the_message_wait(aws: Any, clock: Clock) -> None:
    key = SeriesKey(PATIENT, SERIES_A)
    arrive(aws, clock)
    clock.advance(300)
    assert aws["table"].claim(key, 1, clock.now, 900)  # another consumer converts it
    convert = Recorder()
    assert deliver(aws, clock, convert) == [] and convert.calls == []  # busy: retried
    clock.advance(901)  # that consumer died: its lease expired
    (outcome,) = deliver(aws, clock, convert)
    assert outcome.status == "converted" and len(convert.calls) == 1


def test_a_settle_time_over_the_sqs_maximum_is_re_enqueued(aws: Any, clock: Clock) -> None:
    convert = Recorder()
    arrive(aws, clock, seconds=2000)
    clock.advance(899)
    assert deliver(aws, clock, convert) == []  # SQS holds it for at most 900 s
    clock.advance(1)
    (hop,) = deliver(aws, clock, convert)
    assert hop.status == "waiting" and hop.detail["delay"] == 900
    clock.advance(900)
    (hop2,) = deliver(aws, clock, convert)
    assert hop2.status == "waiting" and hop2.detail["delay"] == 200
    clock.advance(199)
    assert deliver(aws, clock, convert) == []
    clock.advance(1)
    (done,) = deliver(aws, clock, convert)
    assert done.status == "converted" and len(convert.calls) == 1


def test_a_restart_during_a_long_settle_drops_the_old_timer_without_re_enqueueing(
    aws: Any, clock: Clock
) -> None:
    arrive(aws, clock, seconds=2000)
    clock.advance(500)
    arrive(aws, clock, seconds=2000)
    clock.advance(400)
    (old,) = deliver(aws, clock, Recorder())
    assert old.status == "restarted"
    attributes = aws["sqs"].get_queue_attributes(QueueUrl=aws["url"], AttributeNames=["All"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"  # the new one


@pytest.mark.parametrize("value", ["-1", "86401", "five", "", True, 3.5])
def test_settle_seconds_out_of_range_are_refused(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"0\.\.86400"):
        settle.validate_settle_seconds(value)


def test_settle_seconds_accepts_zero_and_longer_than_sqs() -> None:
    assert settle.validate_settle_seconds("0") == 0
    assert settle.validate_settle_seconds(3600) == 3600


def test_a_source_id_or_an_ingest_key_can_never_key_the_tracker() -> None:
    with pytest.raises(SettleError, match="patient_key"):
        SeriesKey(SOURCE_ID, SERIES_A)
    with pytest.raises(SettleError, match="series"):
        SeriesKey(PATIENT, "dicom/MRN-0042-SILVA/1.dcm")


@pytest.mark.parametrize(
    "body",
    ["not json", "{}", '{"patient_key": "x", "series": "1.2", "generation": 1, "due": 0}',
     json.dumps({"patient_key": PATIENT, "series": SERIES_A, "generation": 0, "due": 0})],
)  # fmt: skip
def test_a_message_that_is_not_a_timer_is_refused(body: str) -> None:
    with pytest.raises(SettleError):
        TimerMessage.from_body(body)


def test_settings_name_every_missing_variable() -> None:
    with pytest.raises(ConfigError, match=r"SETTLE_TABLE, SETTLE_QUEUE_URL$"):
        settle.SettleSettings.from_env({})
    with pytest.raises(ConfigError, match="SETTLE_QUEUE_URL, SETTLE_STATE_MACHINE_ARN"):
        settle.SettleSettings.from_env({"SETTLE_TABLE": "t"}, consumer=True)
    env = {"SETTLE_TABLE": "t", "SETTLE_QUEUE_URL": "u", "SETTLE_STATE_MACHINE_ARN": "a",
           "SERIES_SETTLE_SECONDS": "901"}  # fmt: skip
    assert settle.SettleSettings.from_env(env, consumer=True).settle_seconds == 901
    assert settle.SettleSettings.from_env({"SETTLE_TABLE": "t", "SETTLE_QUEUE_URL": "u"}) == (
        settle.SettleSettings("t", "u", 300)
    )
    with pytest.raises(ConfigError):
        settle.SettleSettings.from_env({**env, "SERIES_SETTLE_SECONDS": "100000"})


def test_the_handler_starts_one_execution_and_never_logs_phi(
    aws: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    ingest_key = f"dicom/{SOURCE_ID}/CT_0001.dcm"  # what de-id saw; must never come out
    sfn = boto3.client("stepfunctions", region_name=REGION)
    iam_role = "arn:aws:iam::123456789012:role/settle-flow"
    arn = sfn.create_state_machine(
        name="series-imaging", roleArn=iam_role,
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
    )["stateMachineArn"]  # fmt: skip
    for name, value in {"SETTLE_TABLE": "settle", "SETTLE_QUEUE_URL": aws["url"],
                        "SETTLE_STATE_MACHINE_ARN": arn}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "series-settle")
    sys.modules.pop("lambdas.series_settle.handler", None)
    handler = importlib.import_module("lambdas.series_settle.handler")
    monkeypatch.setattr(handler.time, "time", lambda: clock.now)
    arrive(aws, clock)
    arrive(aws, clock)
    clock.advance(300)
    messages = aws["sqs"].receive_message(QueueUrl=aws["url"], MaxNumberOfMessages=10)
    records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages["Messages"]]
    duplicate = {"messageId": "dup", "body": records[-1]["body"]}
    broken = {"messageId": "broken", "body": json.dumps({"key": ingest_key})}

    class Context:
        function_name, memory_limit_in_mb, aws_request_id = "settle", 512, "req-1"
        invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:settle"

    result = handler.lambda_handler({"Records": [*records, duplicate, broken]}, Context())
    assert result == {"batchItemFailures": []}
    (execution,) = sfn.list_executions(stateMachineArn=arn)["executions"]
    document = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])
    assert document == {"run_id": RUN, "patient_key": PATIENT, "series": [SERIES_A],
                        "generation": 2}  # fmt: skip
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert '"status":"converted"' in text.replace(" ", "") and PATIENT in text
    item = aws["ddb"].scan(TableName="settle")["Items"]
    for leak in (SOURCE_ID, ingest_key):
        assert leak not in text and leak not in json.dumps(item) and leak not in str(document)


def test_a_retried_start_of_the_same_conversion_is_not_run_twice(aws_env: None) -> None:
    from datetime import UTC, datetime

    from botocore.stub import Stubber
    from moto import mock_aws

    settled = SettledSeries(SeriesKey(PATIENT, SERIES_A), 4, RUN, "CT", (SERIES_A,))
    assert len(settle.execution_name(settled)) <= 80
    with mock_aws():  # a running execution of that name: StartExecution is idempotent
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="series-imaging", roleArn="arn:aws:iam::123456789012:role/settle-flow",
            definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        )["stateMachineArn"]  # fmt: skip
        convert = settle.StateMachineConversion(sfn, arn)
        assert convert(settled) == {"execution": "started"}
        convert(settled)
        assert len(sfn.list_executions(stateMachineArn=arn)["executions"]) == 1
    # a finished execution of that name (or another input): ExecutionAlreadyExists
    client = boto3.client("stepfunctions", region_name=REGION)
    expected = {"stateMachineArn": arn, "name": settle.execution_name(settled),
                "input": json.dumps({"generation": 4, "patient_key": PATIENT, "run_id": RUN,
                                     "series": [SERIES_A]}, sort_keys=True)}  # fmt: skip
    with Stubber(client) as stub:
        stub.add_response("start_execution",
                          {"executionArn": f"{arn}:x", "startDate": datetime.now(UTC)},
                          expected)  # fmt: skip
        stub.add_client_error("start_execution", service_error_code="ExecutionAlreadyExists",
                              http_status_code=400, expected_params=expected)  # fmt: skip
        convert = settle.StateMachineConversion(client, arn)
        assert convert(settled) == {"execution": "started"}
        assert convert(settled) == {"execution": "already-started"}
        stub.assert_no_pending_responses()


def test_in_process_conversion_builds_the_whole_series_and_again_after_a_late_instance(
    aws: Any, clock: Clock, tmp_path: Path
) -> None:
    from oncopipe.imaging import stage
    from oncopipe.imaging.sample import write_ct_series
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_buckets

    s3 = boto3.client("s3", region_name=REGION)
    buckets = make_buckets(s3, "t")
    store = ObjectStore(s3)
    paths = write_ct_series(tmp_path, random.Random(7), mrn=SOURCE_ID, name="Ana Silva",
                            slices=4, with_rtstruct=False)  # fmt: skip
    convert = settle.InProcessConversion(store, buckets, radiomics=False)
    key: SeriesKey | None = None

    def deid(n: int, run_id: str) -> None:
        nonlocal key
        ingest_key = f"dicom/{SOURCE_ID}/{n}.dcm"
        s3.put_object(Bucket=buckets.ingest, Key=ingest_key, Body=paths[n].read_bytes())
        ref = store.head(buckets.ingest, ingest_key)
        assert ref is not None
        result = stage.deidentify_object(store, buckets, ref, run_id, secret=SECRET)
        summary = result.summary
        key = SeriesKey(summary["patient_key"], summary["series"])
        assert settle.after_deid(aws["table"], aws["timer"], result.status, summary, clock.now,
                                 run_id=run_id, settle_seconds=300)  # fmt: skip
        # the same event delivered again: the de-id item is skipped, no new instance
        again = stage.deidentify_object(store, buckets, ref, run_id, secret=SECRET)
        assert again.status == "skipped"
        generation = aws["table"].get(key).generation
        assert (
            settle.after_deid(
                aws["table"],
                aws["timer"],
                again.status,
                again.summary,
                clock.now,
                run_id=run_id,
                settle_seconds=300,
            )
            == generation
        )

    for n in range(3):
        deid(n, RUN)
    clock.advance(300)
    outcomes = deliver(aws, clock, convert)  # each timer twice (the duplicate events)
    assert sorted(o.status for o in outcomes) == ["converted", "duplicate", *["restarted"] * 4]
    (first,) = [o for o in outcomes if o.status == "converted"]
    assert first.detail["volumes"] == {"converted": 1}
    assert aws["table"].get(key).instances == 3  # the duplicates added no instance
    assert key is not None and key.patient_key == PATIENT
    volume = store.head(buckets.curated, stage.volume_key(key.patient_key, key.series))
    manifest = json.loads(
        store.get_bytes(buckets.curated, stage.manifest_key(RUN, "volume", key.series))
    )
    assert manifest["summary"]["dimensions"][-1] == 3 and volume is not None
    # the daily sweep of the same run sees the same inputs: nothing to redo
    (swept,) = stage.build_series_volumes(store, buckets, RUN)
    assert swept.status == "skipped"
    clock.advance(86_400)
    late_run = "ingest-20261203"
    deid(3, late_run)  # the late instance, a day later
    clock.advance(300)
    late = [o for o in deliver(aws, clock, convert) if o.status == "converted"]
    assert [o.generation for o in late] == [4]
    (result,) = stage.build_series_volumes(store, buckets, late_run)
    assert result.status == "skipped"  # already converted by the settle, whole
    assert result.summary["dimensions"][-1] == 4  # all four slices, not the late one alone


@pytest.mark.parametrize(("value", "ok"), [(0, True), (2000, True), (86_401, False), (-5, False)])
def test_cdk_json_series_settle_seconds_is_validated_like_the_runtime(value: int, ok: bool) -> None:
    import copy

    from oncopipe.deployment import ConfigurationError, load_config, read_cdk_json

    context = copy.deepcopy(read_cdk_json())
    assert load_config(context, "dev").series_settle_seconds == 300  # the committed default
    context["oncopipe:environments"]["dev"]["series_settle_seconds"] = value
    if ok:
        assert load_config(context, "dev").series_settle_seconds == value
        assert settle.validate_settle_seconds(value) == value
        return
    with pytest.raises(ConfigurationError, match=r"series_settle_seconds: .* outside 0\.\.86400"):
        load_config(context, "dev")
    with pytest.raises(ConfigError):
        settle.validate_settle_seconds(value)


def test_a_quarantined_object_starts_no_timer(aws: Any, clock: Clock) -> None:
    summary = {"kind": "dicom", "status": "quarantined", "reason_code": "invalid-dicom"}
    assert settle.after_deid(aws["table"], aws["timer"], "done", summary, clock.now,
                             run_id=RUN, settle_seconds=300) is None  # fmt: skip
    assert aws["ddb"].scan(TableName="settle")["Items"] == []
    clock.advance(300)
    assert aws["sqs"].receive_message(QueueUrl=aws["url"]).get("Messages", []) == []


def test_a_retried_deid_mends_a_timer_that_was_never_sent(aws: Any, clock: Clock) -> None:
    class Failing(SettleTimer):
        def start(self, message: TimerMessage, now: float) -> int:
            raise ConnectionError("sqs unreachable")

    summary = {"status": "deidentified", "patient_key": PATIENT, "series": SERIES_A,
               "modality": "CT"}  # fmt: skip
    with pytest.raises(ConnectionError):  # recorded, but the timer was lost: de-id fails
        settle.after_deid(aws["table"], Failing(aws["sqs"], aws["url"]), "done", summary,
                          clock.now, run_id=RUN, settle_seconds=300)  # fmt: skip
    clock.advance(30)  # the state machine retries: the de-id item is now skipped
    assert settle.after_deid(aws["table"], aws["timer"], "skipped", summary, clock.now,
                             run_id=RUN, settle_seconds=300) == 1  # fmt: skip
    convert = Recorder()
    clock.advance(269)
    assert deliver(aws, clock, convert) == []  # due 300 s after the instance, not the retry
    clock.advance(1)
    (outcome,) = deliver(aws, clock, convert)
    assert outcome.status == "converted" and len(convert.calls) == 1
    # once converted, a duplicate event sends no timer at all
    assert settle.after_deid(aws["table"], aws["timer"], "skipped", summary, clock.now,
                             run_id=RUN, settle_seconds=300) == 1  # fmt: skip
    clock.advance(3600)
    assert aws["sqs"].receive_message(QueueUrl=aws["url"]).get("Messages", []) == []


def test_a_skipped_deid_of_an_untracked_series_records_it(aws: Any, clock: Clock) -> None:
    summary = {"status": "deidentified", "patient_key": PATIENT, "series": SERIES_B,
               "modality": "MR"}  # fmt: skip
    assert settle.after_deid(aws["table"], aws["timer"], "skipped", summary, clock.now,
                             run_id=RUN, settle_seconds=0) == 1  # fmt: skip
    (outcome,) = deliver(aws, clock, Recorder())
    assert outcome.status == "converted"
