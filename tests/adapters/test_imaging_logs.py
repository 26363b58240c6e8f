"""The DICOM Lambdas name objects by opaque reference: no ingest key in logs or results."""

from __future__ import annotations

import importlib
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from oncopipe.imaging.sample import write_burned_in_ultrasound, write_ct_series
from oncopipe.layout import Buckets
from oncopipe.pseudonym import object_ref
from oncopipe.storage import ObjectStore

SECRET = bytes(range(32))
BUCKETS = Buckets(ingest="l-ingest", quarantine="l-quarantine", curated="l-curated",
                  artifacts="l-artifacts")  # fmt: skip
#: Keys named after the patient, as exports are: none of these may leave the PHI zone.
PLANTED = ("moreau", "aiko", "1955-07-30", "MRN-6433012")
CT_KEY = "dicom/moreau_aiko_1955-07-30/MRN-6433012_ct.dcm"
US_KEY = "dicom/moreau_aiko_1955-07-30/MRN-6433012_us.dcm"
BAD_KEY = "dicom/moreau_aiko_1955-07-30/MRN-6433012_cut.dcm"


class _CurrentStdout:
    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class _Context:
    function_name = "dicom-deid"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:dicom-deid"
    aws_request_id = "req-1"


def _assert_no_phi(text: str) -> None:
    for planted in PLANTED:
        assert planted.lower() not in text.lower(), f"{planted!r} leaked: {text[:300]}"


def test_deid_handler_logs_and_returns_no_ingest_key(
    s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.conftest import make_bucket

    for bucket in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(s3, bucket)
    env = {"INGEST_BUCKET": BUCKETS.ingest, "QUARANTINE_BUCKET": BUCKETS.quarantine,
           "CURATED_BUCKET": BUCKETS.curated, "ARTIFACTS_BUCKET": BUCKETS.artifacts,
           "ONCOPIPE_PSEUDONYM_SECRET": SECRET.hex(), "POWERTOOLS_TRACE_DISABLED": "true",
           "POWERTOOLS_LOG_LEVEL": "DEBUG"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    rng = random.Random(9)
    ct = write_ct_series(tmp_path / "ct", rng, mrn="MRN-6433012", name="Aiko Moreau", slices=1)[0]
    us = tmp_path / "us.dcm"
    write_burned_in_ultrasound(us, rng, mrn="MRN-6433012", name="Aiko Moreau")
    with open(get_testdata_file("CT_small.dcm", download=False), "rb") as handle:
        cut = handle.read()[:3000]
    for key, body in ((CT_KEY, ct.read_bytes()), (US_KEY, us.read_bytes()), (BAD_KEY, cut)):
        s3.put_object(Bucket=BUCKETS.ingest, Key=key, Body=body)
    sys.modules.pop("lambdas.dicom_deid.handler", None)
    handler = importlib.import_module("lambdas.dicom_deid.handler")
    for bound in logging.getLogger("dicom-deid").handlers:
        if isinstance(bound, logging.StreamHandler):
            bound.stream = _CurrentStdout()  # type: ignore[assignment]
    caplog.set_level(logging.DEBUG, logger="oncopipe")
    results = {}
    for key in (CT_KEY, US_KEY, BAD_KEY):
        detail = {"bucket": {"name": BUCKETS.ingest}, "object": {"key": key}}
        event = {"source": "aws.s3", "detail-type": "Object Created", "run_id": "run-1",
                 "time": "2026-11-29T10:00:00Z", "detail": detail}  # fmt: skip
        results[key] = handler.lambda_handler(event, _Context())
    captured = capsys.readouterr()
    _assert_no_phi(captured.out + captured.err)
    _assert_no_phi(json.dumps(list(results.values())))
    assert results[CT_KEY]["status"] == "deidentified"
    assert results[CT_KEY]["object"] == object_ref(SECRET, CT_KEY)
    assert results[US_KEY]["status"] == "quarantined"
    assert results[BAD_KEY]["reason_code"] == "invalid-dicom"
    assert object_ref(SECRET, BAD_KEY) in results[BAD_KEY]["reason"]  # readable, keyless
    store = ObjectStore(s3)
    assert store.exists(BUCKETS.quarantine, f"run-1/{US_KEY}.reason.json")  # the PHI zone


def test_object_lambda_status_names_the_object_by_reference(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from oncopipe.imaging.on_read import handle_get_object

    event = {"getObjectContext": {"inputS3Url": "https://x", "outputRoute": "r",
                                  "outputToken": "t"},
             "userRequest": {"url": f"https://ap/{CT_KEY}", "headers": {}}}  # fmt: skip
    caplog.set_level(logging.DEBUG)

    def broken(url: str) -> bytes:
        raise RuntimeError(f"cannot fetch {CT_KEY}")

    calls: list[dict[str, Any]] = []
    for fetch in (broken, lambda url: b"", lambda url: b"x" * 300):
        result = handle_get_object(event, fetch=fetch, respond=lambda **kw: calls.append(kw),
                                   secret=SECRET)  # fmt: skip
        _assert_no_phi(json.dumps(result))
        assert result["object"] == object_ref(SECRET, CT_KEY)
    _assert_no_phi(caplog.text)
    assert [c["StatusCode"] for c in calls] == [500, 403, 403]
