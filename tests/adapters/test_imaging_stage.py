"""The imaging run: one bad series is reported and kept out, the others land."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pydicom
import pytest

from oncopipe.imaging import stage
from oncopipe.imaging.deid import write_dicom
from oncopipe.imaging.sample import write_ct_series
from oncopipe.layout import Buckets
from oncopipe.storage import ObjectStore

SECRET = bytes(range(32))
RUN = "run-7"


def _ingest(s3: Any, tmp_path: Path) -> tuple[ObjectStore, Buckets, dict[str, list[str]]]:
    """Upload and de-identify four patients' series; return the curated keys by patient."""
    from tests.conftest import make_buckets

    buckets = make_buckets(s3, "s")
    store = ObjectStore(s3)
    files: dict[str, list[Path]] = {}
    for n, patient in enumerate(("good", "no-position", "corrupted", "crashes")):
        files[patient] = write_ct_series(
            tmp_path / patient, random.Random(20 + n), mrn=f"MRN-{n}", name="Ana Silva",
            slices=4, with_rtstruct=patient == "good",
        )  # fmt: skip
    # "good" also gets a second structure set whose contour lies far off its volume
    off = pydicom.dcmread(files["good"][-1])
    off.SOPInstanceUID = off.SOPInstanceUID + ".9"
    for roi in off.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = [float(v) for v in contour.ContourData]
            contour.ContourData = [v + 1000.0 if i % 3 == 2 else v for i, v in enumerate(points)]
    off_path = tmp_path / "good-off.dcm"
    off_path.write_bytes(write_dicom(off))
    files["good"].append(off_path)
    # "no-position": one slice is not an image slice with geometry
    broken = pydicom.dcmread(files["no-position"][1])
    del broken.ImagePositionPatient
    files["no-position"][1].write_bytes(write_dicom(broken))
    curated: dict[str, list[str]] = {}
    for patient, paths in files.items():
        for m, path in enumerate(paths):
            key = f"dicom/{patient}/{m}.dcm"
            s3.put_object(Bucket=buckets.ingest, Key=key, Body=path.read_bytes())
            ref = store.head(buckets.ingest, key)
            assert ref is not None
            result = stage.deidentify_object(store, buckets, ref, RUN, secret=SECRET)
            assert result.summary["status"] == "deidentified", (patient, result.summary)
            curated.setdefault(patient, []).append(result.summary["output"])
    # "corrupted": a curated instance is cut short after it was written
    victim = curated["corrupted"][2]
    body = store.get_bytes(buckets.curated, victim)
    s3.put_object(Bucket=buckets.curated, Key=victim, Body=body[: len(body) // 2])
    return store, buckets, curated


def _series_of(key: str) -> str:
    return key.split("/")[-2]


def test_one_bad_series_does_not_stop_the_others(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oncopipe.imaging import volume

    store, buckets, curated = _ingest(s3, tmp_path)
    for n, body in enumerate((b"{not json", b'{"summary": {"status": "deidentified"}}')):
        s3.put_object(Bucket=buckets.curated, Key=f"_manifests/{RUN}/deid/broken-{n}.json",
                      Body=body)  # fmt: skip
    crashing = _series_of(curated["crashes"][0])
    original = volume.series_to_parquet

    def flaky(paths: Any, out: Any, **kwargs: Any) -> Any:
        if crashing in str(kwargs.get("source")):
            raise RuntimeError("disk on fire")  # a bug or an infrastructure failure
        return original(paths, out, **kwargs)

    monkeypatch.setattr(volume, "series_to_parquet", flaky)
    by_series = {r.item: r for r in stage.build_series_volumes(store, buckets, RUN)}
    assert len(by_series) == 4
    good = by_series[_series_of(curated["good"][0])]
    assert good.summary["status"] == "converted"
    assert good.summary["rois"]  # the usable structure set gave its masks
    (skipped,) = good.summary["skipped_structures"]
    assert skipped["object"] == curated["good"][-1] and "off the volume" in skipped["reason"]
    no_position = by_series[_series_of(curated["no-position"][0])]
    assert no_position.summary["status"] == "inconsistent"
    assert "ImagePositionPatient" in no_position.summary["reason"]
    assert curated["no-position"][1] in no_position.summary["reason"]  # names the object
    corrupted = by_series[_series_of(curated["corrupted"][0])]
    assert corrupted.summary["status"] == "quarantined"
    assert corrupted.summary["reason_code"] == "invalid-dicom"
    assert curated["corrupted"][2] in corrupted.summary["reason"]
    failed = by_series[crashing]
    assert failed.status == "failed" and failed.summary["status"] == "failed"
    assert "RuntimeError" in failed.summary["reason"] and "fire" not in failed.summary["reason"]
    volumes = [k for k in store.list_keys(buckets.curated, "imaging/volumes/")
               if k.endswith(".parquet")]  # fmt: skip
    assert volumes == [stage.volume_key(good.summary["patient_key"], good.item)]
    # the failed series has no manifest: the next run redoes it, and only it
    assert store.head(buckets.curated, failed.manifest_key) is None
    monkeypatch.setattr(volume, "series_to_parquet", original)
    again = {r.item: r for r in stage.build_series_volumes(store, buckets, RUN)}
    assert again[crashing].status == "done" and again[crashing].summary["status"] == "converted"
    assert {again[s].status for s in by_series if s != crashing} == {"skipped"}
    manifest = json.loads(store.get_bytes(buckets.curated, corrupted.manifest_key))
    assert manifest["summary"]["status"] == "quarantined"


def test_batch_job_reports_every_series_and_fails_only_on_unexpected_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import batch_jobs.imaging.__main__ as job
    from oncopipe.manifest import ItemResult

    for name in ("INGEST_BUCKET", "QUARANTINE_BUCKET", "CURATED_BUCKET", "ARTIFACTS_BUCKET"):
        monkeypatch.setenv(name, name.lower().replace("_", "-"))
    monkeypatch.setattr(job, "make_client", lambda: None)

    def result(item: str, status: str, summary_status: str) -> ItemResult:
        return ItemResult(item=item, status=status, manifest_key=f"m/{item}", outputs=(),
                          summary={"status": summary_status}, seconds=0.0)  # fmt: skip

    data_problems = [result("2.25.1", "done", "converted"), result("2.25.2", "done", "quarantined")]
    monkeypatch.setattr(job, "build_series_volumes", lambda *a, **k: data_problems)
    assert job.main(["volumes", "--run-id", RUN]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["status"] for line in lines] == ["converted", "quarantined"]
    crashed = [*data_problems, result("2.25.3", "failed", "failed")]
    monkeypatch.setattr(job, "build_series_volumes", lambda *a, **k: crashed)
    assert job.main(["volumes", "--run-id", RUN]) == 1
    assert len(capsys.readouterr().out.splitlines()) == 3
