"""The ingest router core and its Lambda adapters, against moto in-process."""

from __future__ import annotations

import gzip
import importlib
import json
import sys
from typing import Any

import pytest

from oncopipe.errors import ConfigError, InputError, UnknownObjectError
from oncopipe.genomics.stage import load_samples
from oncopipe.ingest import Router, classify
from oncopipe.layout import Buckets, sample_inputs_key
from oncopipe.pseudonym import keyer, object_ref, patient_key
from oncopipe.stage_inputs import load_sample_inputs
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
MRN = "MRN-4471902"
BUCKETS = Buckets(
    ingest="t-ingest", quarantine="t-quarantine", curated="t-curated", artifacts="t-artifacts"
)
FASTQ = gzip.compress(b"@r1\nACGT\n+\nIIII\n", mtime=0)
SHEET = (
    "patient,sample,type,fastq_1,fastq_2\n"
    f"{MRN},P1-T,tumour,fastq/P1-T_R1.fastq.gz,fastq/P1-T_R2.fastq.gz\n"
).encode()


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(s3, name)
    return ObjectStore(s3)


@pytest.fixture
def router(store: ObjectStore) -> Router:
    return Router(store=store, buckets=BUCKETS, patient_key=keyer(SECRET), secret=SECRET)


def upload(store: ObjectStore, key: str, body: bytes) -> Any:
    store.client.put_object(Bucket=BUCKETS.ingest, Key=key, Body=body)
    ref = store.head(BUCKETS.ingest, key)
    assert ref is not None
    return ref


def curated_keys(store: ObjectStore) -> list[str]:
    return sorted(store.list_keys(BUCKETS.curated))


@pytest.mark.parametrize(
    ("key", "head", "kind"),
    [
        ("samplesheets/a.csv", b"patient,sample", "samplesheet"),
        ("fastq/S_R1.fastq.gz", b"\x1f\x8b\x08", "fastq"),
        ("dicom/p/1.dcm", b"\0" * 128 + b"DICM", "dicom"),
        ("notes/p.txt", b"Patient-ID: x", "note"),
    ],
)
def test_classify_known_kinds(key: str, head: bytes, kind: str) -> None:
    assert classify(key, head, len(head)) == kind


@pytest.mark.parametrize(
    ("key", "head", "error", "message"),
    [
        ("misc/x.bin", b"abc", UnknownObjectError, "no stage takes objects under this prefix"),
        ("fastq/S_R1.fastq", b"@r1", UnknownObjectError, "gzip-compressed"),
        ("fastq/S_R1.fastq.gz", b"@r1", InputError, "no gzip magic"),
        ("dicom/p/1.dcm", b"not dicom", InputError, "not a DICOM Part 10 file"),
        ("notes/p.txt", b"a\x00b", InputError, "NUL bytes"),
        ("samplesheets/a.xlsx", b"PK", UnknownObjectError, ".csv"),
    ],
)
def test_classify_refuses_with_the_key_in_the_message(
    key: str, head: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as err:
        classify(key, head, len(head))
    assert str(err.value).startswith(key)


def test_empty_object_is_refused() -> None:
    with pytest.raises(InputError, match="empty"):
        classify("notes/p.txt", b"", 0)


def test_unknown_object_goes_to_quarantine_with_reason_and_nothing_curated(
    store: ObjectStore, router: Router
) -> None:
    ref = upload(store, "exports/dump.bin", b"\x00\x01binary")
    result = router.route(ref, "run-1")
    assert result.summary["status"] == "quarantined"
    assert result.summary["reason_code"] == "unknown-type"
    assert store.get_bytes(BUCKETS.quarantine, "run-1/exports/dump.bin") == b"\x00\x01binary"
    reason = json.loads(store.get_bytes(BUCKETS.quarantine, "run-1/exports/dump.bin.reason.json"))
    assert reason["reason_code"] == "unknown-type"
    assert reason["source"]["key"] == "exports/dump.bin"
    assert store.get_tags(BUCKETS.quarantine, "run-1/exports/dump.bin")["run-id"] == "run-1"
    assert [k for k in curated_keys(store) if not k.startswith("_manifests/")] == []
    assert store.exists(BUCKETS.ingest, "exports/dump.bin")  # nothing is lost


def test_valid_samplesheet_becomes_a_pseudonymised_sample_table(
    store: ObjectStore, router: Router
) -> None:
    upload(store, "fastq/P1-T_R1.fastq.gz", FASTQ)
    upload(store, "fastq/P1-T_R2.fastq.gz", FASTQ)
    result = router.route(upload(store, "samplesheets/cohort.csv", SHEET), "run-1")
    assert result.summary["status"] == "accepted"
    assert result.summary["samples"][0]["patient_key"] == patient_key(SECRET, MRN)
    table = store.get_bytes(BUCKETS.curated, result.summary["sample_table"]).decode()
    record = json.loads(table.splitlines()[0])
    assert record["patient_key"] == patient_key(SECRET, MRN)
    assert record["sample"] == "P1-T"
    assert record["fastq_1_ref"] == object_ref(SECRET, "fastq/P1-T_R1.fastq.gz")
    for key in curated_keys(store):
        body = store.get_bytes(BUCKETS.curated, key)
        assert MRN.encode() not in body, key
        assert b"cohort.csv" not in body and "cohort.csv" not in key, key
    # The stages read the ingest keys from the PHI zone, through the one reader.
    assert result.summary["sample_inputs"].startswith("_sample-inputs/run-1/")
    inputs = load_sample_inputs(store, BUCKETS, result.summary["sample_table"])
    assert [(r["sample"], r["fastq_1"], r["fastq_2"]) for r in inputs] == [
        ("P1-T", "fastq/P1-T_R1.fastq.gz", "fastq/P1-T_R2.fastq.gz")
    ]
    assert load_samples(store, BUCKETS, result.summary["sample_table"]) == inputs


def test_invalid_samplesheet_is_quarantined_with_every_problem(
    store: ObjectStore, router: Router
) -> None:
    result = router.route(upload(store, "samplesheets/cohort.csv", SHEET), "run-1")
    assert result.summary["status"] == "quarantined"
    assert result.summary["reason_code"] == "invalid-samplesheet"
    reason = json.loads(
        store.get_bytes(BUCKETS.quarantine, "run-1/samplesheets/cohort.csv.reason.json")
    )
    assert reason["details"] == [
        "line 2, column fastq_1: file fastq/P1-T_R1.fastq.gz does not exist in the ingest bucket",
        "line 2, column fastq_2: file fastq/P1-T_R2.fastq.gz does not exist in the ingest bucket",
    ]
    assert MRN not in json.dumps(reason)
    assert not any(k.startswith("cohort/") for k in curated_keys(store))


def test_duplicate_event_changes_nothing(store: ObjectStore, router: Router) -> None:
    ref = upload(store, "notes/p1.txt", b"Patient-ID: x\n")
    first = router.route(ref, "run-1")
    keys = curated_keys(store)
    again = router.route(ref, "run-1")
    assert (first.status, again.status) == ("done", "skipped")
    assert again.summary == first.summary
    assert curated_keys(store) == keys


def test_unlisted_fastq_has_no_patient_and_is_quarantined_by_reconcile(
    store: ObjectStore, router: Router
) -> None:
    for key in ("fastq/P1-T_R1.fastq.gz", "fastq/P1-T_R2.fastq.gz", "fastq/X_R1.fastq.gz"):
        router.route(upload(store, key, FASTQ), "run-1")
    router.route(upload(store, "samplesheets/cohort.csv", SHEET), "run-1")
    results = router.reconcile("run-1")
    assert [r.item for r in results] == ["fastq/X_R1.fastq.gz"]
    assert results[0].summary["reason_code"] == "no-patient"
    assert store.exists(BUCKETS.quarantine, "run-1/fastq/X_R1.fastq.gz.reason.json")
    assert [r.status for r in router.reconcile("run-1")] == ["skipped"]


# -- Lambda adapters ------------------------------------------------------------------------
def _event(key: str, bucket: str = BUCKETS.ingest) -> dict[str, Any]:
    return {
        "version": "0",
        "source": "aws.s3",
        "detail-type": "Object Created",
        "time": "2026-11-29T10:00:00Z",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": 1, "etag": "x"}},
    }


@pytest.fixture
def handler_env(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import boto3

    arn = boto3.client("secretsmanager").create_secret(
        Name="oncopipe/test", SecretString=SECRET.hex()
    )["ARN"]
    env = {
        "INGEST_BUCKET": BUCKETS.ingest,
        "QUARANTINE_BUCKET": BUCKETS.quarantine,
        "CURATED_BUCKET": BUCKETS.curated,
        "ARTIFACTS_BUCKET": BUCKETS.artifacts,
        "PSEUDONYM_SECRET_ARN": arn,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _load(module: str) -> Any:
    sys.modules.pop(module, None)
    return importlib.import_module(module)


class _Context:
    function_name = "ingest-router"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ingest-router"
    aws_request_id = "req-1"


def test_router_handler_routes_the_event_and_logs_no_phi(
    store: ObjectStore, handler_env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    upload(store, "fastq/P1-T_R1.fastq.gz", FASTQ)
    upload(store, "fastq/P1-T_R2.fastq.gz", FASTQ)
    upload(store, "samplesheets/cohort.csv", SHEET)
    handler = _load("lambdas.ingest_router.handler")
    result = handler.lambda_handler(_event("samplesheets/cohort.csv"), _Context())
    assert result["status"] == "accepted"
    assert result["run_id"] == "ingest-20261129"
    assert result["object"] == object_ref(SECRET, "samplesheets/cohort.csv")
    assert result["sample_ids"] == ["P1-T"] and result["tumour_ids"] == ["P1-T"]
    # what the genomics Maps iterate: each id with its pseudonymous cost-tag key
    from oncopipe.ops.cost import cost_tags, sample_key

    tag = sample_key(SECRET, "P1-T")
    assert result["sample_tags"] == [{"sample": "P1-T", "tag": tag}]
    assert result["tumour_tags"] == result["sample_tags"]
    assert "P1" not in tag and cost_tags("r", "align", tag)["oncopipe:sample"] == tag
    assert result["sample_table"].startswith("cohort/samples/ingest-20261129/obj-")
    assert MRN not in capsys.readouterr().out
    again = handler.lambda_handler(_event("samplesheets/cohort.csv"), _Context())
    assert again["skipped"] is True


def test_router_handler_refuses_other_events(handler_env: dict[str, Any]) -> None:
    handler = _load("lambdas.ingest_router.handler")
    from oncopipe.events import EventError

    with pytest.raises(EventError, match="Object Created"):
        handler.lambda_handler({"source": "aws.ec2"}, _Context())


def test_quarantine_handler_records_only_the_error_type(
    store: ObjectStore, handler_env: dict[str, Any]
) -> None:
    upload(store, "notes/p1.txt", b"text")
    handler = _load("lambdas.ingest_quarantine.handler")
    error = {"Error": "KeyError", "Cause": f"'{MRN}' in some traceback"}
    result = handler.lambda_handler({"event": _event("notes/p1.txt"), "error": error}, _Context())
    assert result["status"] == "quarantined"
    assert result["reason_code"] == "processing-error" and result["error"] == "KeyError"
    reason = store.get_bytes(BUCKETS.quarantine, "ingest-20261129/notes/p1.txt.reason.json")
    assert b"KeyError" in reason and MRN.encode() not in reason


def test_handler_fails_at_cold_start_when_misconfigured(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oncopipe.errors import ConfigError

    for name in ("INGEST_BUCKET", "CURATED_BUCKET", "QUARANTINE_BUCKET", "ARTIFACTS_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="INGEST_BUCKET"):
        _load("lambdas.ingest_router.handler")


def test_reconcile_counts_sheets_routed_the_next_day(store: ObjectStore, router: Router) -> None:
    for key in ("fastq/P1-T_R1.fastq.gz", "fastq/P1-T_R2.fastq.gz"):
        router.route(upload(store, key, FASTQ), "ingest-20261128")  # before midnight
    router.route(upload(store, "samplesheets/cohort.csv", SHEET), "ingest-20261129")
    assert router.reconcile("ingest-20261128", also_named_by=["ingest-20261129"]) == []
    orphaned = router.reconcile("ingest-20261128")  # without the next day: no patient
    assert [r.summary["reason_code"] for r in orphaned] == ["no-patient"] * 2


def test_reconcile_handler_checks_the_previous_day(
    store: ObjectStore, handler_env: dict[str, Any]
) -> None:
    router = Router(store=store, buckets=BUCKETS, patient_key=keyer(SECRET))
    router.route(upload(store, "fastq/X_R1.fastq.gz", FASTQ), "ingest-20261128")
    handler = _load("lambdas.ingest_reconcile.handler")
    assert handler.runs_for({"time": "2026-11-29T02:30:00Z"}) == (
        "ingest-20261128",
        ["ingest-20261129"],
    )
    result = handler.lambda_handler({"time": "2026-11-29T02:30:00Z"}, _Context())
    assert result == {"run_id": "ingest-20261128", "checked": 1, "quarantined": 1}


def test_prefixes_are_exact_lower_case() -> None:
    with pytest.raises(UnknownObjectError, match="no stage takes objects under this prefix"):
        classify("DICOM/p1/1.dcm", b"\0" * 128 + b"DICM", 132)
    assert classify("fastq/S_R1.FASTQ.GZ", b"\x1f\x8b\x08", 3) == "fastq"


def test_a_sheet_needs_the_secret_and_leaves_nothing_when_it_is_missing(
    store: ObjectStore,
) -> None:
    upload(store, "fastq/P1-T_R1.fastq.gz", FASTQ)
    upload(store, "fastq/P1-T_R2.fastq.gz", FASTQ)
    keyless = Router(store=store, buckets=BUCKETS, patient_key=keyer(SECRET))
    with pytest.raises(ConfigError, match="secret"):
        keyless.route(upload(store, "samplesheets/cohort.csv", SHEET), "run-1")
    assert curated_keys(store) == []
    assert list(store.list_keys(BUCKETS.quarantine, "_sample-inputs/")) == []


def test_sample_inputs_key_refuses_what_is_not_a_sample_table() -> None:
    assert sample_inputs_key("cohort/samples/r/obj-x.jsonl") == "_sample-inputs/r/obj-x.jsonl"
    for bad in ("genomics/bam/x.jsonl", "cohort/samples/r/x.csv", "cohort/samples/../x.jsonl"):
        with pytest.raises(ValueError, match="not a sample table key"):
            sample_inputs_key(bad)


def test_s3_uris_of_the_ingest_bucket_are_routed_as_its_keys(
    store: ObjectStore, router: Router
) -> None:
    upload(store, "fastq/P1-T_R1.fastq.gz", FASTQ)
    upload(store, "fastq/P1-T_R2.fastq.gz", FASTQ)
    sheet = (
        "patient,sample,type,fastq_1,fastq_2\n"
        f"{MRN},P1-T,tumour,s3://{BUCKETS.ingest}/fastq/P1-T_R1.fastq.gz,fastq/P1-T_R2.fastq.gz\n"
    ).encode()
    result = router.route(upload(store, "samplesheets/uri.csv", sheet), "run-1")
    assert result.summary["status"] == "accepted"
    inputs = load_sample_inputs(store, BUCKETS, result.summary["sample_table"])
    assert inputs[0]["fastq_1"] == "fastq/P1-T_R1.fastq.gz"
    other = sheet.replace(BUCKETS.ingest.encode(), BUCKETS.curated.encode())
    refused = router.route(upload(store, "samplesheets/other.csv", other), "run-1")
    assert refused.summary["status"] == "quarantined"
    assert "another bucket than the ingest bucket" in refused.summary["details"][0]
