"""The embedded local mode end to end: moto server, S3 -> EventBridge -> SQS, the worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from oncopipe.sample_people import LAST_NAMES
from tests.conftest import REPO

pytestmark = pytest.mark.slow
#: The generated patients' surnames: planted in DICOM headers and notes as PHI.
NAMES = tuple(name.encode() for name in LAST_NAMES)


def oncopipe(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update({"ONCOPIPE_HOME": str(home), "COLUMNS": "160"})
    result = subprocess.run(
        [sys.executable, "-m", "oncopipe", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"oncopipe {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def local_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    home = tmp_path_factory.mktemp("oncopipe-home")
    oncopipe(home, "local", "up")
    state = json.loads((home / "local" / "state.json").read_text())
    try:
        yield home, state
    finally:
        oncopipe(home, "local", "down", check=False)


def client(state: dict[str, Any], service: str) -> Any:
    """A client of the embedded endpoint as the local worker (its own IAM principal)."""
    return boto3.client(
        service, endpoint_url=state["endpoint_url"], region_name=state["region"],
        **state["credentials"],
    )  # fmt: skip


def s3_client(state: dict[str, Any]) -> Any:
    return client(state, "s3")


# -- the series settle ---------------------------------------------------------------------
_SETTLED = re.compile(
    r"(\d+) DICOM series converted when they settled \(no instance for 1s\), before the "
    r"daily jobs; the daily imaging sweep had (\d+) series left to do"
)


def _volumes(s3: Any, bucket: str) -> dict[str, str]:
    from oncopipe import layout

    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=layout.CURATED_IMAGING_VOLUMES
    )
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _late_instance(cohort: Path) -> bytes:
    """A new CT instance of the first patient's series, one slice beyond its last."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    slices = [pydicom.dcmread(p) for p in sorted(cohort.rglob("dicom/patient001/ct/*.dcm"))]
    images = sorted((d for d in slices if d.Modality == "CT"),
                    key=lambda d: float(d.ImagePositionPatient[2]))  # fmt: skip
    last, before = images[-1], images[-2]
    spacing = float(last.ImagePositionPatient[2]) - float(before.ImagePositionPatient[2])
    late = last.copy()
    late.SOPInstanceUID = generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late.InstanceNumber = int(last.InstanceNumber) + 1
    late.ImagePositionPatient = [*last.ImagePositionPatient[:2],
                                 float(last.ImagePositionPatient[2]) + spacing]  # fmt: skip
    out = io.BytesIO()
    late.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _denied(out: str) -> list[str]:
    """The refusals of the stages the series settle runs (de-id, imaging, radiomics)."""
    stages = ("deid (role", "imaging (role", "radiomics (role")
    return [line for line in out.splitlines() if line.strip().startswith(stages)]


def test_demo_run_routes_validates_and_quarantines(local_mode: tuple[Path, dict[str, Any]]) -> None:
    home, state = local_mode
    # Every stage runs as its synthesized role, with the endpoint's IAM enforcement on.
    from oncopipe.local.iam import STAGE_ROLES

    assert set(state["stage_roles"]) == set(STAGE_ROLES)
    result = oncopipe(home, "local", "run", "--run-id", "e2e-1", "--patients", "2",
                      "--settle-seconds", "1")  # fmt: skip
    out = result.stdout
    assert "access denied" not in out  # no stage was refused a request
    # every series converted when it settled; the daily job (the sweeper) found nothing to do
    settled = _SETTLED.search(" ".join(out.split()))
    assert settled, out
    assert int(settled.group(1)) >= 2 and settled.group(2) == "0"
    assert "routing ingest objects" in out and "run e2e-1" in out
    assert "exports/scanner-dump.bin: no stage takes objects under this prefix" in out
    assert "notes/empty.txt: the object is empty (0 bytes)" in out
    assert "samplesheets/broken.csv: 7 problems in the sample sheet" in out
    assert "line 3, column sample: sample P001-T already appears on line 2" in out
    assert "reconcile: fastq/UNLISTED-T_R1.fastq.gz: no accepted sample sheet names" in out
    assert "MRN-" not in out + result.stderr  # no source patient id on screen
    # Genomics through the Batch adapter: the planted hotspots are found.
    assert "P001-T: KRAS G12C, TP53 R273H" in out and "P002-T: EGFR L858R" in out

    s3 = s3_client(state)
    buckets = state["buckets"]

    def keys(bucket: str, prefix: str = "") -> list[str]:
        response = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in response.get("Contents", []))

    # Quarantine: each rejected object with its reason, including the FASTQ with no patient.
    quarantined = keys(buckets["quarantine"], "e2e-1/")
    for key in ("exports/scanner-dump.bin", "notes/empty.txt", "samplesheets/broken.csv",
                "fastq/UNLISTED-T_R1.fastq.gz", "dicom/exports/us_capture.dcm"):  # fmt: skip
        assert f"e2e-1/{key}" in quarantined and f"e2e-1/{key}.reason.json" in quarantined
    reason = json.loads(
        s3.get_object(
            Bucket=buckets["quarantine"], Key="e2e-1/fastq/UNLISTED-T_R1.fastq.gz.reason.json"
        )["Body"].read()
    )
    assert reason["reason_code"] == "no-patient"

    # Curated: the pseudonymised sample table and the genomics outputs, tagged with the run.
    curated = keys(buckets["curated"])
    assert len([k for k in curated if k.startswith("genomics/bam/") and k.endswith(".bam")]) == 4
    assert len([k for k in curated if k.startswith("genomics/variants/pk-")]) == 2
    tables = [k for k in curated if k.startswith("cohort/samples/e2e-1/")]
    assert len(tables) == 1
    rows = [
        json.loads(line)
        for line in s3.get_object(Bucket=buckets["curated"], Key=tables[0])["Body"]
        .read()
        .splitlines()
    ]
    assert len(rows) == 4 and all(r["patient_key"].startswith("pk-") for r in rows)
    assert len({r["patient_key"] for r in rows}) == 2
    # Leakage: no planted identifier in any curated object (DICOM headers included).
    dicom = [k for k in curated if k.startswith("imaging/dicom/pk-") and k.endswith(".dcm")]
    assert len(dicom) == 14  # 2 x (6 CT slices + RTSTRUCT); the burned-in capture is refused
    volumes = [k for k in curated if k.startswith("imaging/volumes/pk-")]
    assert len(volumes) == 2  # one lossless Parquet volume per de-identified CT series
    masks = [k for k in curated if k.startswith("imaging/masks/pk-")]
    assert len(masks) == 2  # the RTSTRUCT of each series, as voxel masks on its grid
    # Radiomics from DICOM end to end: every ROI's 1,316 features, keyed like the volume.
    features = [k for k in curated if k.startswith("imaging/radiomics/pk-")]
    assert [k.replace("radiomics", "volumes") for k in features] == volumes
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(
        s3.get_object(Bucket=buckets["curated"], Key=features[0])["Body"].read()))  # fmt: skip
    assert table.num_rows == 1316 and set(table.column("roi").to_pylist()) == {"ROI 1"}
    assert set(table.column("run_id").to_pylist()) == {"e2e-1"}
    assert features[0].split("/")[2] == table.column("patient_key")[0].as_py()
    # Clinical notes: scrubbed text, concepts and tokens per note; PHI gone (checked below)
    for kind, suffix in (("scrubbed", ".txt"), ("concepts", ".parquet"), ("tokens", ".parquet")):
        found = [k for k in curated if k.startswith(f"notes/{kind}/pk-") and k.endswith(suffix)]
        assert len(found) == 2, (kind, found)
    concept_key = next(k for k in curated if k.startswith("notes/concepts/pk-"))
    concepts = pq.read_table(io.BytesIO(
        s3.get_object(Bucket=buckets["curated"], Key=concept_key)["Body"].read()))  # fmt: skip
    assert {"ecog", "histology"} <= set(concepts.column("concept").to_pylist())
    for key in curated:
        body = s3.get_object(Bucket=buckets["curated"], Key=key)["Body"].read()
        for planted in (b"MRN-", b"Riverside", b"Okafor", b"Harbour Road", b"ALT-", *NAMES):
            assert planted not in body, (key, planted)
        tags = s3.get_object_tagging(Bucket=buckets["curated"], Key=key)["TagSet"]
        assert {"Key": "run-id", "Value": "e2e-1"} in tags
    assert not any(k.startswith("_manifests/e2e-1/route/") for k in curated)
    # Routing manifests name ingest keys: they stay in the PHI zone, one per object.
    routed = keys(buckets["quarantine"], "_manifests/e2e-1/route/")
    assert len(routed) == len(keys(buckets["ingest"]))  # one per object
    deid_items = keys(buckets["curated"], "_manifests/e2e-1/deid/")
    assert len(deid_items) == 15  # 12 CT slices + 2 RTSTRUCT + 1 US
    assert len(keys(buckets["curated"], "_manifests/e2e-1/radiomics/")) == 2
    assert "radiomics" in out and "1316 features of ROI 1" in out

    # Glue catalog: the same database and table the stack defines.
    glue = client(state, "glue")
    table = glue.get_table(DatabaseName=state["database"], Name="samples")["Table"]
    # a symlink table: it reads the committed items' files only (oncopipe.catalog)
    location = f"s3://{buckets['curated']}/cohort/samples/_symlinks/"
    assert table["StorageDescriptor"]["Location"] == location
    assert table["StorageDescriptor"]["InputFormat"].endswith("SymlinkTextInputFormat")


def test_rerunning_a_finished_run_changes_nothing(local_mode: tuple[Path, dict[str, Any]]) -> None:
    home, state = local_mode
    s3 = s3_client(state)

    def versions() -> list[tuple[str, str]]:
        found = []
        for zone in ("curated", "quarantine"):
            response = s3.list_object_versions(Bucket=state["buckets"][zone])
            found += [(v["Key"], v["VersionId"]) for v in response.get("Versions", [])]
        return sorted(found)

    before = versions()
    oncopipe(home, "local", "run", "--run-id", "e2e-1", "--patients", "2")
    # no object rewritten: every item skipped on its manifest (the message lists rewrites)
    after = versions()
    assert sorted(set(after) - set(before)) == [] and len(after) == len(before)


def test_a_late_instance_reconverts_its_series(local_mode: tuple[Path, dict[str, Any]]) -> None:
    """A late instance of a series converted on settle: its own timer reconverts the series."""
    home, state = local_mode
    s3 = s3_client(state)
    before = _volumes(s3, state["buckets"]["curated"])
    assert before  # the demo run converted its series
    s3.put_object(Bucket=state["buckets"]["ingest"], Key="dicom/patient001/ct/late.dcm",
                  Body=_late_instance(home))  # fmt: skip
    drained = oncopipe(home, "local", "run", "--drain", "--run-id", "e2e-1",
                       "--settle-seconds", "1", "--idle-timeout", "8", check=False)  # fmt: skip
    assert not _denied(drained.stdout)
    again = _SETTLED.search(" ".join(drained.stdout.split()))
    assert again, drained.stdout
    assert again.group(1) == "1" and again.group(2) == "0"
    after = _volumes(s3, state["buckets"]["curated"])
    assert set(after) == set(before)
    assert [k for k in after if after[k] != before[k]], "the series' volume was not rewritten"


def test_a_deployed_model_predicts_the_complete_patients_and_the_report_shows_it(
    local_mode: tuple[Path, dict[str, Any]],
) -> None:
    """`local model` deploys the model locally: the run's complete patients are predicted
    (what the patient-ready function does on its next event) with their time to insight."""
    home, state = local_mode
    result = oncopipe(home, "local", "model", "--patients", "120")
    out = result.stdout
    text = " ".join(out.split())
    # a line for every phase, every training epoch and every ablation model; no library
    # warnings (MLflow's serving advice) in what the user reads
    for phase in (
        "synthetic cohort: 120 patients",
        "training the multimodal model: epoch 1/",
        "ablations: model 1/",
        "ablations: model 7/",
        "explanations:",
        "pruning",
    ):
        assert phase in text, out
    assert "WARNING" not in out + result.stderr, result.stderr
    predicted = re.findall(r"patient (pk-[a-z0-9]+) predicted: time to insight ([0-9.]+)s", text)
    assert len(predicted) == 2, out  # both sheet patients of the 2-patient cohort
    assert all(float(seconds) > 0 for _, seconds in predicted)
    s3 = s3_client(state)
    curated = state["buckets"]["curated"]
    for patient, _ in predicted:
        key = f"cohort/predictions/e2e-1/{patient}.json"
        document = json.loads(s3.get_object(Bucket=curated, Key=key)["Body"].read())
        assert 0.0 <= document["prediction"]["response_probability"] <= 1.0
    # the metric goes to the local metrics log, not the terminal
    assert '"_aws"' not in out
    emf = [json.loads(line) for line in (home / "local" / "metrics.emf.jsonl").read_text()
           .splitlines()]  # fmt: skip
    assert sum(len(d.get("TimeToInsight", [])) for d in emf) >= 2
    # the run report lists each predicted patient's time to insight
    report = home / "report.html"
    oncopipe(home, "report", "e2e-1", "--out", str(report), "--no-actual")
    page = report.read_text(encoding="utf-8")
    section = page[page.index('id="time-to-insight"') :]
    assert all(patient in section for patient, _ in predicted)
    assert "no model deployed" not in section.split("</section>")[0]


def test_status_reports_zones_and_runs(local_mode: tuple[Path, dict[str, Any]]) -> None:
    home, _ = local_mode
    out = oncopipe(home, "local", "status").stdout
    assert "running" in out and "run e2e-1" in out and "quarantine" in out


def test_run_without_up_explains_what_to_do(tmp_path: Path) -> None:
    result = oncopipe(tmp_path, "local", "run", check=False)
    assert result.returncode == 1
    assert "run `oncopipe local up` first" in result.stderr


def test_local_run_against_the_endpoint_of_the_aws_configuration(tmp_path: Path) -> None:
    """`local up --external` + `local run` on another S3-compatible endpoint."""
    from moto.server import ThreadedMotoServer

    from oncopipe.local.server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "someone",
        "AWS_SECRET_ACCESS_KEY": "else",
        "AWS_REGION": "us-west-2",
        "ONCOPIPE_HOME": str(tmp_path),
        "COLUMNS": "160",
    }
    # one synthetic note: the ingest flow end to end (events, routing, quarantine, manifests)
    # on the other endpoint, without the genomics and imaging stages
    cohort = tmp_path / "cohort"
    (cohort / "notes").mkdir(parents=True)
    (cohort / "notes" / "N-0001.txt").write_text("ECOG 1. Adenocarcinoma of the lung.\n")
    try:
        for args in (["local", "up", "--external"], ["local", "run", "--cohort", str(cohort),
                                                     "--run-id", "ext-1"]):  # fmt: skip
            result = subprocess.run(
                [sys.executable, "-m", "oncopipe", *args],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
        assert "run ext-1" in result.stdout
        s3 = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-west-2",
            aws_access_key_id="someone", aws_secret_access_key="else",
        )  # fmt: skip
        # a note no sample sheet names has no patient: routed, then quarantined with its reason
        listed = s3.list_objects_v2(Bucket="oncopipe-dev-quarantine", Prefix="ext-1/notes/")
        assert sorted(o["Key"] for o in listed.get("Contents", [])) == [
            "ext-1/notes/N-0001.txt", "ext-1/notes/N-0001.txt.reason.json"]  # fmt: skip
        manifests = s3.list_objects_v2(Bucket="oncopipe-dev-quarantine",
                                       Prefix="_manifests/ext-1/")  # fmt: skip
        assert manifests["KeyCount"] >= 1
    finally:
        server.stop()


def test_a_missing_grant_fails_the_run_with_access_denied(
    local_mode: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Enforcement is real: revoke the router's access to the quarantine bucket."""
    home, state = local_mode
    iam = client(state, "iam")
    role = state["stage_roles"]["router"].rsplit("/", 1)[-1]
    original = iam.get_role_policy(RoleName=role, PolicyName="synthesized")["PolicyDocument"]
    quarantine = f"arn:aws:s3:::{state['buckets']['quarantine']}"
    kept = []
    for statement in original["Statement"]:
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        remaining = [r for r in resources if not r.startswith(quarantine)]
        if remaining:
            kept.append({**statement, "Resource": remaining})
    assert kept != original["Statement"]  # the router had a quarantine grant to lose
    cohort = tmp_path / "cohort"
    (cohort / "notes").mkdir(parents=True)
    (cohort / "notes" / "N-0001.txt").write_text("ECOG 1. Adenocarcinoma.\n")  # synthetic
    iam.put_role_policy(RoleName=role, PolicyName="synthesized",
                        PolicyDocument=json.dumps({**original, "Statement": kept}))  # fmt: skip
    try:
        result = oncopipe(home, "local", "run", "--run-id", "deny-1", "--cohort", str(cohort),
                          check=False)  # fmt: skip
    finally:
        iam.put_role_policy(RoleName=role, PolicyName="synthesized",
                            PolicyDocument=json.dumps(original))  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "RoutingFailed: " in out  # the ingest flow failed (then quarantined) as in AWS
    denied = out.split("access denied")[1]
    # the router's first request there: does the item's manifest exist (HeadObject)?
    assert f"router (role {role}): s3:GetObject on {quarantine}/_manifests/…" in denied
    assert "quarantine (role" not in denied  # the other functions kept their grants
    # ...and ran as their own roles: the quarantine-on-error function stored the object.
    listed = s3_client(state).list_objects_v2(
        Bucket=state["buckets"]["quarantine"], Prefix="deny-1/notes/N-0001.txt"
    )
    assert listed["KeyCount"] == 2  # the copy and its reason
