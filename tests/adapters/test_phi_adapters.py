"""No PHI in what the Batch and Processing adapters print or log (CloudWatch Logs).

The genomics Batch job runs in-process (moto) on a sample whose FASTQ keys name the patient
(as hospital exports do): a quarantined sample, a FASTQ file gone before alignment, an AWS
error whose message names the key, and a good sample aligned and called. The planted
strings must appear in no stdout/stderr line, no log record and no curated object, while
the quarantine zone keeps the readable reason. The radiomics and cohort entries are held to
the same rule: codes on stdout, no error message or readable reason in the log.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from oncopipe import layout
from oncopipe.ingest import Router
from oncopipe.layout import Buckets
from oncopipe.manifest import ItemResult
from oncopipe.pseudonym import SECRET_VALUE_ENV, keyer, object_ref
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
MRN = "MRN-6433012"
FASTQ_1 = "fastq/moreau_aiko_1955-07-30_R1.fastq.gz"
FASTQ_2 = f"fastq/{MRN}_moreau_R2.fastq.gz"
SHEET = "samplesheets/moreau_aiko_1955-07-30.csv"
#: Every spelling that would betray the patient: name, birth date, MRN (with and without -).
PLANTED = ("moreau", "aiko", "1955-07-30", "19550730", MRN, "6433012")
BUCKETS = Buckets(
    ingest="a-ingest", quarantine="a-quarantine", curated="a-curated", artifacts="a-artifacts"
)
RUN = "run-phi-1"
#: Valid gzip, invalid FASTQ: read 1's quality is shorter than its sequence.
BAD_R1 = gzip.compress(b"@r1/1\nACGTACGT\n+\nIIII\n", mtime=0)
GOOD_R2 = gzip.compress(b"@r1/2\nACGTACGT\n+\nIIIIIIII\n", mtime=0)

needs_bwa = pytest.mark.skipif(shutil.which("bwa") is None, reason="installed by make setup")


def assert_no_phi(*texts: str) -> None:
    for text in texts:
        for planted in PLANTED:
            assert planted.lower() not in text.lower(), f"{planted!r} leaked: {text[:400]}"


def _curated_text(store: ObjectStore) -> str:
    """Every curated key and body, gzip members (BAM, VCF) decompressed, as one text."""
    parts = []
    for key in store.list_keys(BUCKETS.curated, ""):
        body = store.get_bytes(BUCKETS.curated, key)
        if body[:2] == b"\x1f\x8b":  # BGZF is multi-member gzip
            body = gzip.decompress(body)
        parts.append(key + "\n" + body.decode("latin-1"))
    return "\n".join(parts)


@pytest.fixture
def store(s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ObjectStore:
    """The four zones, the panel reference, and the stage environment of the job."""
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(s3, name)
    from oncopipe.genomics.simulate import make_panel, write_fasta

    sequences, panel, _ = make_panel()
    write_fasta(sequences, tmp_path / "panel.fa")
    panel.dump(tmp_path / "panel.json")
    for name in ("panel.fa", "panel.json"):
        s3.upload_file(str(tmp_path / name), BUCKETS.artifacts,
                       f"{layout.ARTIFACTS_REFERENCE}{name}")  # fmt: skip
    for name, value in {"INGEST_BUCKET": BUCKETS.ingest, "QUARANTINE_BUCKET": BUCKETS.quarantine,
                        "CURATED_BUCKET": BUCKETS.curated, "ARTIFACTS_BUCKET": BUCKETS.artifacts,
                        SECRET_VALUE_ENV: SECRET.hex(), "THREADS": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return ObjectStore(s3)


def _accept_sheet(store: ObjectStore, r1: bytes, r2: bytes) -> str:
    """Upload the FASTQ pair and the sheet, route the sheet; return the curated table key."""
    store.client.put_object(Bucket=BUCKETS.ingest, Key=FASTQ_1, Body=r1)
    store.client.put_object(Bucket=BUCKETS.ingest, Key=FASTQ_2, Body=r2)
    sheet = f"patient,sample,type,fastq_1,fastq_2\n{MRN},P1-T,tumour,{FASTQ_1},{FASTQ_2}\n"
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SHEET, Body=sheet.encode())
    router = Router(store=store, buckets=BUCKETS, patient_key=keyer(SECRET), secret=SECRET)
    ref = store.head(BUCKETS.ingest, SHEET)
    assert ref is not None
    result = router.route(ref, RUN)
    assert result.summary["status"] == "accepted", result.summary.get("reason_code")
    return str(result.summary["sample_table"])


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Any:
    """Return a function giving everything printed and logged since the last call."""
    # our loggers at every level; libraries (botocore's request dumps) at the jobs' level
    caplog.set_level(logging.INFO)
    for name in ("oncopipe", "batch_jobs", "processing"):
        caplog.set_level(logging.DEBUG, logger=name)

    def read() -> str:
        out = capsys.readouterr()
        text = out.out + out.err + caplog.text
        caplog.clear()
        return text

    return read


def _job(step: str, table: str, captured: Any) -> tuple[int, dict[str, Any], str]:
    """Run the genomics Batch job in-process; return (exit code, outcome line, all output)."""
    from batch_jobs.genomics.__main__ import main

    captured()  # what the set-up printed is not the job's
    code = main([step, "--run-id", RUN, "--sample-table", table, "--sample", "P1-T"])
    text = captured()
    # the outcome lines, not the EMF metric documents (``_aws``) the job also prints
    lines = [json.loads(line) for line in text.splitlines()
             if line.startswith("{") and '"_aws"' not in line]  # fmt: skip
    assert lines, text
    return code, lines[-1], text


@needs_bwa  # the job builds the reference's BWA index before it reads the pair
def test_quarantined_sample_prints_codes_and_the_reason_stays_in_quarantine(
    store: ObjectStore, captured: Any
) -> None:
    table = _accept_sheet(store, BAD_R1, GOOD_R2)
    code, outcome, text = _job("align", table, captured)
    assert code == 0
    assert outcome["status"] == "quarantined" and outcome["reason_code"] == "invalid-fastq"
    assert "reason" not in outcome and "details" not in outcome
    assert_no_phi(text, _curated_text(store))
    # the curated manifest keeps the code, not the readable reason (even with refs)
    manifest = json.loads(store.get_bytes(BUCKETS.curated, outcome["manifest"]))
    assert manifest["summary"]["reason_code"] == "invalid-fastq"
    assert "reason" not in manifest["summary"] and "details" not in manifest["summary"]
    # the readable reason, naming the file and the read, is in the quarantine zone
    document = json.loads(store.get_bytes(
        BUCKETS.quarantine, layout.quarantine_reason_key(RUN, FASTQ_1)))  # fmt: skip
    assert document["reason_code"] == "invalid-fastq"
    assert document["message"].startswith(f"{FASTQ_1}: read 1: quality length 4")
    assert store.exists(BUCKETS.quarantine, layout.quarantine_key(RUN, FASTQ_2))


def test_a_fastq_file_gone_fails_by_code_and_opaque_reference(
    store: ObjectStore, captured: Any
) -> None:
    table = _accept_sheet(store, BAD_R1, GOOD_R2)
    versions = store.client.list_object_versions(Bucket=BUCKETS.ingest, Prefix=FASTQ_2)
    for version in versions["Versions"]:
        store.client.delete_object(Bucket=BUCKETS.ingest, Key=FASTQ_2,
                                   VersionId=version["VersionId"])  # fmt: skip
    code, outcome, text = _job("align", table, captured)
    assert_no_phi(text, _curated_text(store))
    assert code == 1
    assert outcome["status"] == "failed" and outcome["error"] == "InputError"
    assert outcome["reason_code"] == "invalid-input"
    assert outcome["source_ref"] == object_ref(SECRET, FASTQ_2)  # findable, not readable
    assert "Traceback" not in text  # bad input is an outcome, not a crash


def test_an_aws_error_naming_the_key_is_logged_by_code_and_frames_only(
    store: ObjectStore, captured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _accept_sheet(store, BAD_R1, GOOD_R2)
    real = ObjectStore.download_file

    def refused(self: ObjectStore, bucket: str, key: str, path: str, *a: Any, **k: Any) -> Any:
        if bucket == BUCKETS.ingest:  # S3 and emulators name the key in such messages
            error = {"Code": "AccessDenied", "Message": f"Access Denied for {key}", "Key": key}
            raise ClientError({"Error": error}, "GetObject")
        return real(self, bucket, key, path, *a, **k)

    monkeypatch.setattr(ObjectStore, "download_file", refused)
    monkeypatch.setattr("oncopipe.genomics.reference.ensure_index", lambda fasta: None)
    for suffix in (".amb", ".ann", ".bwt", ".pac", ".sa", ".fai"):  # a stored index: no bwa
        store.client.put_object(Bucket=BUCKETS.artifacts, Body=b"index",
                                Key=f"{layout.ARTIFACTS_REFERENCE}panel.fa{suffix}")  # fmt: skip
    code, outcome, text = _job("align", table, captured)
    assert_no_phi(text, _curated_text(store))
    assert code == 1
    assert outcome["error"] == "ClientError"
    denial = "An error occurred (AccessDenied) when calling the GetObject operation"
    assert outcome["aws_errors"] == [denial]  # what the local IAM check reads
    # the traceback keeps where it failed (frames) and withholds the message
    assert "Traceback" in text and "download_file" in text and "withheld" in text


@needs_bwa
def test_aligned_and_called_sample_prints_and_curates_no_phi(
    store: ObjectStore, captured: Any
) -> None:
    from oncopipe.genomics.simulate import make_panel, simulate_pair

    sequences, _, _ = make_panel()
    r1, r2 = simulate_pair(sequences, [], sample="P1-T", depth=8, seed=3)
    table = _accept_sheet(store, r1, r2)
    code, aligned, text = _job("align", table, captured)
    assert code == 0 and aligned["status"] == "aligned" and aligned["reads"] > 0
    code, called, more = _job("call", table, captured)
    assert code == 0 and called["status"] == "called"
    assert_no_phi(text, more, _curated_text(store))
    # the manifest names the ingest files by opaque reference
    manifest = json.loads(store.get_bytes(BUCKETS.curated, aligned["manifest"]))
    assert {i["ref"] for i in manifest["inputs"]} == {
        object_ref(SECRET, FASTQ_1),
        object_ref(SECRET, FASTQ_2),
    }


# -- radiomics and cohort entries ------------------------------------------------------------
def test_radiomics_stage_prints_allow_listed_fields_and_logs_failures_by_type(
    store: ObjectStore, captured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processing.radiomics import main

    result = ItemResult(item="1.2.3", status="done", manifest_key="_manifests/x.json",
                        outputs=(), seconds=0.1,
                        summary={"kind": "series", "status": "no-features",
                                 "reason_code": "radiomics-failed",
                                 "reason": f"ROI 'GTV {MRN}' refused"})  # fmt: skip
    monkeypatch.setattr("oncopipe.radiomics.stage.build_series_features",
                        lambda *a, **k: [result])  # fmt: skip
    captured()
    assert main(["stage", "--run-id", RUN, "--workers", "1"]) == 0
    text = captured()
    assert_no_phi(text)
    documents = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    (line,) = [d for d in documents if "_aws" not in d]  # the other: its EMF metrics
    assert line["status"] == "no-features" and line["reason_code"] == "radiomics-failed"

    def fails(*a: Any, **k: Any) -> Any:
        raise OSError(f"cannot read /data/{FASTQ_1}")

    monkeypatch.setattr("oncopipe.radiomics.stage.build_series_features", fails)
    assert main(["stage", "--run-id", RUN, "--workers", "1"]) == 1
    text = captured()
    assert_no_phi(text)
    assert '"error": "OSError"' in text and "Traceback" in text


def test_cohort_failure_is_reported_by_type_and_code_only(
    store: ObjectStore, captured: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oncopipe.cohort.dataset import CohortError
    from processing.cohort import main

    def no_labels(*a: Any, **k: Any) -> Any:
        raise CohortError(f"s3://{BUCKETS.curated}/cohort/labels/{MRN}.parquet", "is gone")

    monkeypatch.setattr("processing.cohort.build", no_labels)
    captured()
    assert main(["stage", "--build-id", "b-1"]) == 1
    text = captured()
    assert_no_phi(text)
    (line,) = [json.loads(x) for x in text.splitlines()
               if x.startswith("{") and '"_aws"' not in x]  # fmt: skip
    assert line == {"build_id": "b-1", "status": "failed", "error": "CohortError",
                    "reason_code": "invalid-cohort"}  # fmt: skip
    assert "Traceback" not in text
