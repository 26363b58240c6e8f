"""No PHI in logs, Lambda results (Step Functions state output) or errors of the ingest flow.

The router, quarantine and reconcile handlers run with moto on objects whose keys name a
patient (as hospital exports do); the planted strings must appear in no log line, no
returned JSON and no raised error, while the quarantine zone keeps the readable reason.
"""

from __future__ import annotations

import gzip
import importlib
import json
import logging
import sys
from typing import Any

import pytest

from oncopipe.layout import Buckets
from oncopipe.pseudonym import object_ref
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
MRN = "MRN-6433012"
NOTE = "notes/moreau_aiko_1955-07-30.txt"
FASTQ_1 = f"fastq/{MRN}_R1.fastq.gz"
FASTQ_2 = f"fastq/{MRN}_R2.fastq.gz"
SHEET_KEY = "samplesheets/moreau_aiko_1955-07-30.csv"
#: Every spelling that would betray the patient: name, birth date, MRN (with and without -).
PLANTED = ("moreau", "aiko", "1955-07-30", "19550730", MRN, "6433012")
BUCKETS = Buckets(
    ingest="p-ingest", quarantine="p-quarantine", curated="p-curated", artifacts="p-artifacts"
)
FASTQ = gzip.compress(b"@r1\nACGT\n+\nIIII\n", mtime=0)


def _sheet(*, fastq_2: str = FASTQ_2, lane: str = "1") -> bytes:
    return (
        "patient,sample,type,fastq_1,fastq_2,lane,notes,note_date\n"
        f"{MRN},P1-T,tumour,{FASTQ_1},{fastq_2},{lane},{NOTE},2026-03-01\n"
    ).encode()


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(s3, name)
    return ObjectStore(s3)


@pytest.fixture
def env(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    arn = boto3.client("secretsmanager").create_secret(
        Name="oncopipe/phi-test", SecretString=SECRET.hex()
    )["ARN"]
    for name, value in {
        "INGEST_BUCKET": BUCKETS.ingest,
        "QUARANTINE_BUCKET": BUCKETS.quarantine,
        "CURATED_BUCKET": BUCKETS.curated,
        "ARTIFACTS_BUCKET": BUCKETS.artifacts,
        "PSEUDONYM_SECRET_ARN": arn,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
    }.items():
        monkeypatch.setenv(name, value)


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is now (the test's capture)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _rebind_powertools_streams() -> None:
    for service in ("ingest-router", "ingest-quarantine", "ingest-reconcile"):
        for bound in logging.getLogger(service).handlers:
            if isinstance(bound, logging.StreamHandler):
                bound.stream = _CurrentStdout()  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _powertools_to_captured_stdout(capsys: pytest.CaptureFixture[str]) -> Any:
    """Keep Powertools writing to the current test's captured stdout.

    Powertools reuses a service's handler when the module is loaded again, with the
    stream of the test that first created it (closed by then).
    """
    _rebind_powertools_streams()
    yield
    _rebind_powertools_streams()


class _Context:
    function_name = "ingest"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ingest"
    aws_request_id = "req-1"


def _load(module: str) -> Any:
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def _event(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-29T10:00:00Z",
        "detail": {"bucket": {"name": BUCKETS.ingest}, "object": {"key": key, "size": 1}},
        **extra,
    }


def _upload(store: ObjectStore, key: str, body: bytes) -> None:
    store.client.put_object(Bucket=BUCKETS.ingest, Key=key, Body=body)


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for planted in PLANTED:
            assert planted.lower() not in text.lower(), f"{planted!r} leaked: {text[:400]}"


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Any:
    """Return a function giving everything logged so far (Powertools stdout + logging)."""
    # Our loggers at every level; libraries (botocore's request dumps) at their Lambda level.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="oncopipe")

    def read() -> str:
        out = capsys.readouterr()
        return out.out + out.err + caplog.text

    return read


def test_router_outcomes_carry_no_key_reason_or_detail(
    store: ObjectStore, env: None, captured: Any
) -> None:
    handler = _load("lambdas.ingest_router.handler")
    _upload(store, FASTQ_1, FASTQ)
    _upload(store, FASTQ_2, b"not gzip")  # content contradicts the prefix: quarantined
    _upload(store, NOTE, b"Patient-ID: x\nnote text\n")
    _upload(store, "exports/moreau_aiko_1955-07-30.bin", b"\x00\x01")
    _upload(store, SHEET_KEY, _sheet(lane="lane one"))  # invalid: every problem listed
    results = [
        handler.lambda_handler(_event(key), _Context())
        for key in (FASTQ_1, FASTQ_2, NOTE, "exports/moreau_aiko_1955-07-30.bin", SHEET_KEY)
    ]
    assert [(r["kind"], r["status"]) for r in results] == [
        ("fastq", "received"),
        ("fastq", "quarantined"),
        ("note", "received"),
        ("unknown", "quarantined"),
        ("samplesheet", "quarantined"),
    ]
    assert results[-1]["reason_code"] == "invalid-samplesheet"
    assert results[0]["object"] == object_ref(SECRET, FASTQ_1)
    # A valid sheet: accepted, with opaque names for the curated table and the object.
    fixed = f"fastq/{MRN}_moreau_R2b.fastq.gz"
    _upload(store, fixed, FASTQ)
    _upload(store, "samplesheets/moreau_aiko_1955-07-30-fixed.csv", _sheet(fastq_2=fixed))
    accepted = handler.lambda_handler(
        _event("samplesheets/moreau_aiko_1955-07-30-fixed.csv"), _Context()
    )
    assert accepted["status"] == "accepted" and accepted["sample_ids"] == ["P1-T"]
    logged = captured()
    # The capture sees the Powertools lines (with their extra fields), so the check can fail.
    assert f'"object":"{object_ref(SECRET, FASTQ_1)}"' in logged.replace(" ", "")
    assert_no_phi(json.dumps([*results, accepted]), logged)
    # Each invocation wrote the ingest stage's metrics: one item each, by outcome.
    emf = [json.loads(line) for line in logged.splitlines() if line.startswith('{"_aws"')]
    ingest = [d for d in emf if d.get("Stage") == "ingest"]
    assert len(ingest) == 6
    assert sum("ItemsQuarantined" in d for d in ingest) == 3
    assert sum("ItemsSucceeded" in d for d in ingest) == 3
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Environment", "Stage"]]
               for d in ingest)  # fmt: skip
    # The readable reason stays in the quarantine zone, where it belongs.
    reason = store.get_bytes(BUCKETS.quarantine, f"ingest-20261129/{SHEET_KEY}.reason.json")
    assert b"lane" in reason and b"moreau" in reason
    # Nothing curated names the patient either (keys or bodies).
    for key in store.list_keys(BUCKETS.curated):
        if key.startswith("_manifests/"):
            continue  # manifests: the manifest protocol's own de-identification
        assert_no_phi(key, store.get_bytes(BUCKETS.curated, key).decode())


def test_router_errors_keep_their_name_and_lose_their_message(
    store: ObjectStore, env: None, captured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    handler = _load("lambdas.ingest_router.handler")
    with pytest.raises(handler.ObjectGoneError) as gone:
        handler.lambda_handler(_event(NOTE), _Context())
    _upload(store, NOTE, b"Patient-ID: x\n")

    def boom(*args: Any, **kwargs: Any) -> bytes:
        raise ClientError(
            {"Error": {"Code": "SlowDown", "Message": f"throttled on {NOTE}"}}, "GetObject"
        )

    monkeypatch.setattr(handler.STORE, "get_range", boom)
    with pytest.raises(Exception) as failed:
        handler.lambda_handler(_event(NOTE), _Context())
    # The state machine retries on "ClientError": the name survives, the key does not.
    assert type(failed.value).__name__ == "ClientError"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert object_ref(SECRET, NOTE) in str(failed.value)
    assert_no_phi(str(gone.value), str(failed.value), captured())


def test_quarantine_handler_result_and_log_hold_codes_only(
    store: ObjectStore, env: None, captured: Any
) -> None:
    _upload(store, NOTE, b"text")
    handler = _load("lambdas.ingest_quarantine.handler")
    error = {"Error": "KeyError", "Cause": f"'{MRN}' not found in {NOTE}"}
    result = handler.lambda_handler({"event": _event(NOTE), "error": error}, _Context())
    assert result["status"] == "quarantined" and result["reason_code"] == "processing-error"
    gone = handler.lambda_handler(
        {"event": _event("notes/gone_moreau_aiko.txt"), "error": error}, _Context()
    )
    assert gone["status"] == "gone"
    assert_no_phi(json.dumps([result, gone]), captured())
    reason = store.get_bytes(BUCKETS.quarantine, f"ingest-20261129/{NOTE}.reason.json")
    assert b"KeyError" in reason and MRN.encode() not in reason


def test_reconcile_handler_reports_counts_not_keys(
    store: ObjectStore, env: None, captured: Any
) -> None:
    router_handler = _load("lambdas.ingest_router.handler")
    _upload(store, FASTQ_1, FASTQ)
    router_handler.lambda_handler(_event(FASTQ_1, run_id="ingest-20261128"), _Context())
    handler = _load("lambdas.ingest_reconcile.handler")
    result = handler.lambda_handler({"run_id": "ingest-20261128"}, _Context())
    assert result == {"run_id": "ingest-20261128", "checked": 1, "quarantined": 1}
    assert_no_phi(json.dumps(result), captured())
    assert store.exists(BUCKETS.quarantine, f"ingest-20261128/{FASTQ_1}.reason.json")
