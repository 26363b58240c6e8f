"""Time to insight from manifests, and the HTML run report (sections, escaping, Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from oncopipe.layout import Buckets
from oncopipe.manifest import manifest_key
from oncopipe.ops import insight as insight_mod
from oncopipe.ops.cost import job_cost_fields, sample_key
from oncopipe.ops.insight import time_to_insight
from oncopipe.ops.report import SECTION_IDS, collect, drift_rows, render, write_report
from oncopipe.pseudonym import patient_key
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32, 64))
RUN = "ingest-20261201"
T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
SOURCE_ID = "MRN-0042"
PK = patient_key(SECRET, SOURCE_ID)
PK2 = patient_key(SECRET, "MRN-0077")
FASTQ_1 = f"fastq/{SOURCE_ID}_T_R1.fastq.gz"
FASTQ_2 = f"fastq/{SOURCE_ID}_T_R2.fastq.gz"
DICOM = f"dicom/{SOURCE_ID}/ct-001.dcm"
NOTE = f"notes/{SOURCE_ID}_2026-11-30.txt"
NOTE2 = "notes/MRN-0077_2026-11-30.txt"
SHEET = "samplesheets/cohort.csv"
BROKEN = f"dicom/{SOURCE_ID}/broken.dcm"


def _ref(bucket: str, key: str) -> dict[str, Any]:
    return {"bucket": bucket, "key": key, "etag": '"e"', "size": 10, "version_id": "v1",
            "sha256": "0" * 64}  # fmt: skip


def _doc(step: str, item: str, start_s: float, end_s: float, summary: dict[str, Any], *,
         inputs: list[dict[str, Any]] | None = None, outputs: list[dict[str, Any]] | None = None,
         status: str = "committed", **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"schema": 2, "status": status, "run_id": RUN, "step": step, "item": item,
            "inputs": inputs or [], "outputs": outputs or [],
            "started_at": (T0 + timedelta(seconds=start_s)).isoformat(),
            "finished_at": (T0 + timedelta(seconds=end_s)).isoformat(),
            "seconds": float(end_s - start_s), "summary": summary, **extra}  # fmt: skip


def _put(store: ObjectStore, bucket: str, document: dict[str, Any]) -> None:
    key = manifest_key(RUN, document["step"], document["item"])
    store.put_bytes(bucket, key, json.dumps(document).encode(), tags={})


@pytest.fixture
def run(s3: Any) -> tuple[ObjectStore, Buckets]:
    """A run of two patients, its manifests in both zones (moto S3)."""
    buckets = Buckets(ingest="r-ingest", quarantine="r-quarantine", curated="r-curated",
                      artifacts="r-artifacts")  # fmt: skip
    for name in (buckets.quarantine, buckets.curated):
        make_bucket(s3, name)
    store = ObjectStore(s3)
    q, c, i = buckets.quarantine, buckets.curated, buckets.ingest
    received = {"kind": "fastq", "status": "received"}
    phi = [
        _doc("route", FASTQ_1, 0, 1, received, inputs=[_ref(i, FASTQ_1)]),
        _doc("route", FASTQ_2, 5, 6, received, inputs=[_ref(i, FASTQ_2)]),
        _doc("route", DICOM, 60, 61, {"kind": "dicom", "status": "received"},
             inputs=[_ref(i, DICOM)]),
        _doc("route", NOTE, 120, 121, {"kind": "note", "status": "received"},
             inputs=[_ref(i, NOTE)]),
        _doc("route", NOTE2, 130, 131, {"kind": "note", "status": "received"},
             inputs=[_ref(i, NOTE2)]),
        _doc("route", SHEET, 180, 182, {"kind": "samplesheet", "status": "accepted", "samples": [
            {"sample": "S1-T", "type": "tumour", "patient_key": PK, "fastq_1": FASTQ_1,
             "fastq_2": FASTQ_2}]}, inputs=[_ref(i, SHEET)]),
        # a quarantined DICOM: the readable reason names the file (PHI)
        _doc("route", BROKEN, 62, 63, {"kind": "dicom", "status": "quarantined",
             "reason_code": "unreadable-dicom", "reason": f"{BROKEN}: not DICOM"},
             inputs=[_ref(i, BROKEN)], status="retracted", reason_code="unreadable-dicom"),
        _doc("deid", DICOM, 61, 90, {"kind": "dicom", "status": "deidentified",
             "patient_key": PK}, inputs=[_ref(i, DICOM)]),
        _doc("notes", NOTE, 121, 160, {"kind": "note", "status": "extracted", "patient_key": PK},
             inputs=[_ref(i, NOTE)]),
        _doc("notes", NOTE2, 131, 150, {"kind": "note", "status": "extracted",
             "patient_key": PK2}, inputs=[_ref(i, NOTE2)]),
    ]  # fmt: skip
    align_cost = job_cost_fields(2, 7000 / 1024, 300, region="us-east-1",
                                 instance_type="m6i.2xlarge", lifecycle="spot",
                                 sample=sample_key(SECRET, "S1-T"))  # fmt: skip
    call_cost = job_cost_fields(2, 7000 / 1024, 240, region="us-east-1",
                                instance_type="m6i.2xlarge", lifecycle="on-demand",
                                sample=sample_key(SECRET, "S1-T"))  # fmt: skip
    curated = [
        _doc("align", "S1-T", 200, 500, {"kind": "sample", "status": "aligned", **align_cost}),
        _doc("call", "S1-T", 500, 600, {"kind": "sample", "status": "called", **call_cost},
             outputs=[_ref(c, f"genomics/variants/{PK}/S1-T.parquet")]),
        _doc("radiomics", "1.2.3", 400, 480, {"kind": "series", "status": "extracted",
             "patient_key": PK}),
        _doc("radiomics", "1.2.4", 400, 410, {"kind": "series", "status": "no-features",
             "reason_code": "inputs-missing", "reason": "volume or masks missing"}),
    ]  # fmt: skip
    for document in phi:
        _put(store, q, document)
    for document in curated:
        _put(store, c, document)
    return store, buckets


def test_time_to_insight_per_patient(run: Any) -> None:
    store, buckets = run
    rows = {r.patient_key: r for r in time_to_insight(store, buckets, RUN)}
    assert set(rows) == {PK, PK2}
    first = rows[PK]
    assert first.first_ingest_at == T0  # the first FASTQ's route manifest
    assert first.seconds_to(first.features_at["genomics"]) == 600
    assert first.seconds_to(first.features_at["imaging"]) == 480
    assert first.seconds_to(first.features_at["notes"]) == 160
    assert first.seconds_to(first.all_features_at) == 600
    assert first.prediction_at is None and first.prediction_note == "no model deployed"
    second = rows[PK2]
    assert second.first_ingest_at == T0 + timedelta(seconds=130)
    assert second.features_at["genomics"] is None and second.features_at["imaging"] is None
    assert second.seconds_to(second.features_at["notes"]) == 20
    data = insight_mod.insight_metrics(list(rows.values()))
    assert {d["MetricName"] for d in data} == {"TimeToInsight"}
    milestones = sorted(d["Dimensions"][0]["Value"] for d in data if d["Value"] == 600)
    assert milestones == ["all-features", "genomics"]
    assert "prediction" not in {d["Dimensions"][0]["Value"] for d in data}


def test_prediction_closes_time_to_insight(run: Any) -> None:
    store, buckets = run
    _put(store, buckets.curated, _doc("predict", PK, 700, 720, {"status": "scored",
                                                                 "patient_key": PK}))  # fmt: skip
    rows = {r.patient_key: r for r in time_to_insight(store, buckets, RUN)}
    assert rows[PK].time_to_insight_seconds == 720
    assert rows[PK2].prediction_note == "no prediction yet"  # a model is deployed


def test_no_source_id_in_insight_rows(run: Any) -> None:
    store, buckets = run
    rows = time_to_insight(store, buckets, RUN)
    assert SOURCE_ID not in repr(rows) and "fastq/" not in repr(rows)


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)  # fmt: skip

    header = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00\x00\xff\x00" * 2)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))  # fmt: skip


def _report(run: Any, tmp_path: Path) -> tuple[str, Path]:
    store, buckets = run
    (tmp_path / "roc.png").write_bytes(_png())
    (tmp_path / "notes.txt").write_text("not a plot")
    drift_doc = {"environment": "dev", "generated_at": "2026-12-01T11:00:00Z", "stacks": [
        {"name": "Oncopipe-Data<script>alert(1)</script>", "status": "DRIFTED", "coverage": 0.9,
         "drifted_resources": 1, "drifts": [{"severity": "critical", "allowed": False,
                                             "expected": "secret-value"}]}]}  # fmt: skip
    rows, note = drift_rows(drift_doc)
    data = collect(store, buckets, RUN, drift=rows, drift_note=note,
                   plots=[tmp_path / "roc.png", tmp_path / "notes.txt"])  # fmt: skip
    out = write_report(data, tmp_path / "out" / "report.html")
    return out.read_text(encoding="utf-8"), out


def test_report_sections_counts_and_privacy(run: Any, tmp_path: Path) -> None:
    page, _ = _report(run, tmp_path)
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in page
    # quarantines: the code and its count, never the readable reason or the file
    assert '<td>route</td><td>unreadable-dicom</td><td class="n">1</td>' in page
    assert "not DICOM" not in page and SOURCE_ID not in page and "fastq/" not in page
    assert "S1-T" not in page  # sample ids are sheet values: the cost rows use obj- keys
    assert sample_key(SECRET, "S1-T") in page
    # items per stage: route has 7 items, one retracted
    assert '<td>route</td><td>phi</td><td class="n">7</td>' in page
    assert "retracted 1" in page
    # time to insight of the first patient: genomics query-able 10 min after the first FASTQ
    assert f"<td>{PK}</td>" in page and "10m00.0s" in page and "no model deployed" in page
    # drift values escaped, property values not shown
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "secret-value" not in page and "DRIFTED" in page
    # self-contained: the plot inline, no external URL, one plot only (the PNG)
    assert page.count("data:image/png;base64,") == 1
    assert "http://" not in page and "https://" not in page and "<script" not in page
    # cost: per-stage estimate from the manifests, estimates-only note
    assert "<td>align</td>" in page and "estimates only" in page


def test_empty_run_still_has_every_section(s3: Any) -> None:
    buckets = Buckets("e-i", "e-q", "e-c", "e-a")
    for name in (buckets.quarantine, buckets.curated):
        make_bucket(s3, name)
    page = render(collect(ObjectStore(s3), buckets, "run-empty"))
    assert all(f'id="{s}"' in page for s in SECTION_IDS)
    assert "no manifests for this run" in page and "no drift check has reported" in page


def test_report_command_writes_the_page(run: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from click.testing import CliRunner

    from oncopipe.cli import main

    _, buckets = run
    monkeypatch.setenv("CURATED_BUCKET", buckets.curated)
    monkeypatch.setenv("QUARANTINE_BUCKET", buckets.quarantine)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", RUN, "--out", str(out), "--no-actual"])
    assert result.exit_code == 0, result.output
    assert "run report" in result.output and out.exists()
    assert 'id="time-to-insight"' in out.read_text()
    drift = tmp_path / "drift.json"
    drift.write_text(json.dumps({"environment": "prod", "generated_at": "2026-12-01T12:00:00Z",
                                 "stacks": [{"name": "Oncopipe-Data", "status": "IN_SYNC",
                                             "coverage": 1.0, "drifted_resources": 0,
                                             "drifts": []}]}))  # fmt: skip
    latest = CliRunner().invoke(
        main, ["report", "latest", "--out", str(out), "--no-actual", "--drift", str(drift)]
    )
    assert latest.exit_code == 0, latest.output
    page = out.read_text()
    assert f"oncopipe run {RUN}" in page
    assert "<td>Oncopipe-Data</td><td>IN_SYNC</td><td>100%</td>" in page
    assert "CloudFormation drift of environment prod" in page
    drift.write_text("[1, 2]")
    bad = CliRunner().invoke(main, ["report", RUN, "--out", str(out), "--drift", str(drift),
                                    "--no-actual"])  # fmt: skip
    assert bad.exit_code == 1 and "not the JSON of `oncopipe ops drift`" in bad.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(run: Any, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("ONCOPIPE_ALLOW_NO_CHROMIUM") == "1":
            pytest.skip("chromium is not installed and ONCOPIPE_ALLOW_NO_CHROMIUM=1 allows it")
        pytest.fail("chromium is not installed: `make tools` (apt-get install chromium), or set "
                    "ONCOPIPE_ALLOW_NO_CHROMIUM=1 where a browser cannot be installed")  # fmt: skip
    _, out = _report(run, tmp_path)
    profile = tmp_path / "profile"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
         "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in dom, section
    assert f"<td>{PK}</td>" in dom
    assert 'src="data:image/png;base64,' in dom
