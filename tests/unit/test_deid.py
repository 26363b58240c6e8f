"""DICOM de-identification against PS3.15 Table E.1-1: every action, nested, consistent."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from oncopipe.errors import InputError
from oncopipe.imaging.deid import (
    DeidentificationError,
    Deidentifier,
    DeidOptions,
    date_shift_days,
    deidentify_bytes,
    deterministic_uid,
    read_dicom,
    write_dicom,
)
from oncopipe.imaging.profile import load_rules
from oncopipe.pseudonym import patient_key

SECRET = bytes(range(32))
SOURCE = "dicom/P1/1.dcm"


def dataset(patient_id: str = "MRN-000777", **values: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.100"
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7.200"
    ds.FrameOfReferenceUID = "1.2.3.4.5.6.7.300"
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = "Keller^Maria"
    ds.PatientBirthDate = "19600214"
    ds.PatientAge = "064Y"
    ds.PatientSex = "F"
    ds.StudyDate = "20260301"
    ds.AccessionNumber = "ACC-99"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.AdditionalPatientHistory = "lives at 12 Elm Street"
    ds.ClinicalTrialProtocolID = "TRIAL-7"
    ds.AcquisitionDeviceProcessingDescription = "Keller kernel B30"
    ds.StudyDescription = "CT chest for Keller"
    ds.DeviceSerialNumber = "SN-1234"
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def run(ds: Dataset, options: DeidOptions | None = None) -> tuple[Dataset, str]:
    return Deidentifier(SECRET, options).deidentify(ds, source=SOURCE)


def test_table_is_complete_data_with_every_action_code() -> None:
    exact, patterns = load_rules()
    assert len(exact) > 450  # the whole of Table E.1-1 (460 rows with 3 patterns)
    codes = {rule.basic for rule in exact.values()}
    for code in ("D", "Z", "X", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"):
        assert code in codes, code
    assert {p.tag for p in patterns} >= {"60XX3000", "50XXXXXX"}


def test_every_action_code_applied() -> None:
    ds, key = run(dataset())
    assert ds.PatientID == key == patient_key(SECRET, "MRN-000777")  # the shared key
    assert ds.PatientName == ""  # Z
    assert ds.AccessionNumber == ""  # Z
    assert "AdditionalPatientHistory" not in ds  # X
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""  # Z
    assert ds.ClinicalTrialProtocolID == "ANONYMIZED"  # D
    assert ds.AcquisitionDeviceProcessingDescription == "ANONYMIZED"  # X/D -> D
    assert "StudyDescription" not in ds  # X (clean descriptors off)
    assert ds.InstitutionName == ""  # X/Z/D -> Z
    assert "DeviceSerialNumber" in ds and ds.DeviceSerialNumber == ""  # X/Z/D -> Z
    assert ds.SOPInstanceUID == deterministic_uid(SECRET, "1.2.3.4.5.6.7.1")  # U
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientAge == "064Y" and ds.PatientSex == "F"  # K: patient characteristics
    assert ds.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and "113107" in codes and "113108" in codes


def test_options_change_actions() -> None:
    plain = DeidOptions(retain_long_modified_dates=False, retain_patient_characteristics=False)
    ds, _ = run(dataset(), plain)
    assert ds.StudyDate == ""  # Z without the dates option
    assert "PatientAge" not in ds  # X without patient characteristics
    assert "LongitudinalTemporalInformationModified" not in ds
    cleaned, _ = run(dataset(), DeidOptions(clean_descriptors=True, retain_device_identity=True))
    assert cleaned.StudyDescription == "CT chest for"  # C: the patient's name is cleaned out
    assert cleaned.DeviceSerialNumber == "SN-1234"  # K: device identity retained


def test_dates_shift_per_patient_consistently() -> None:
    first, _ = run(dataset(StudyDate="20260301"))
    second, _ = run(dataset(StudyDate="20260311", SOPInstanceUID="1.2.3.9"))
    other, _ = run(dataset(patient_id="MRN-000888", StudyDate="20260301"))
    days = date_shift_days(SECRET, "MRN-000777")
    assert -3650 <= days <= -1
    from datetime import date

    shifted = date(int(first.StudyDate[:4]), int(first.StudyDate[4:6]), int(first.StudyDate[6:]))
    assert (date(2026, 3, 1) - shifted).days == -days
    later = date(int(second.StudyDate[:4]), int(second.StudyDate[4:6]), int(second.StudyDate[6:]))
    assert (later - shifted).days == 10  # intervals between a patient's dates are kept
    assert other.StudyDate != first.StudyDate
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"


def test_nested_sequences_and_references_stay_consistent() -> None:
    ct = dataset()
    rt = dataset(SOPInstanceUID="1.2.3.4.5.6.7.900", Modality="RTSTRUCT")
    series = Dataset()
    series.SeriesInstanceUID = ct.SeriesInstanceUID
    image = Dataset()
    image.ReferencedSOPClassUID = ct.SOPClassUID
    image.ReferencedSOPInstanceUID = ct.SOPInstanceUID
    series.ContourImageSequence = Sequence([image])
    study = Dataset()
    study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    rt.ReferencedFrameOfReferenceSequence = Sequence([frame])
    observer = Dataset()
    observer.PersonName = "Dr^Who"  # (0040,A123) D, nested
    rt.ContentSequence = Sequence([observer])
    ct_out, _ = run(ct)
    rt_out, _ = run(rt)
    frame_out = rt_out.ReferencedFrameOfReferenceSequence[0]
    series_out = frame_out.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert frame_out.FrameOfReferenceUID == ct_out.FrameOfReferenceUID
    assert series_out.SeriesInstanceUID == ct_out.SeriesInstanceUID
    assert series_out.ContourImageSequence[0].ReferencedSOPInstanceUID == ct_out.SOPInstanceUID
    assert rt_out.StudyInstanceUID == ct_out.StudyInstanceUID
    assert rt_out.ContentSequence[0].PersonName == "ANONYMIZED"


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_a_read_object_is_released_as_the_same_bytes_as_one_built_in_memory(syntax: Any) -> None:
    # The values an object read from bytes gets anew are stored encoded as it is encoded and
    # written as they are; built in memory they are pydicom elements. The files must agree.
    built = dataset(StudyTime="101500", AcquisitionDateTime="20260301101500.5",
                    SliceThickness="2.5", InstanceNumber="7")  # fmt: skip
    built.file_meta.TransferSyntaxUID = syntax
    image = Dataset()
    image.ReferencedSOPClassUID = built.SOPClassUID  # kept (DICOM's own UID)
    image.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.1\\1.2.3.4.5.6.7.2"  # replaced, VM 2
    image.PersonName = "Dr^Who"  # D, nested
    built.ReferencedImageSequence = Sequence([image])
    read = read_dicom(write_dicom(copy.deepcopy(built)), source=SOURCE)
    assert write_dicom(run(read)[0]) == write_dicom(run(built)[0])


def test_private_tags_overlays_and_curves_removed_safelist_kept() -> None:
    ds = dataset()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "Keller private note")
    block.add_new(0x11, "LO", "kernel-sharp")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x50000010, "US", 1)  # curve
    out, _ = run(copy.deepcopy(ds))
    assert not any(e.tag.is_private for e in out)
    assert not any(0x5000 <= e.tag.group <= 0x60FF for e in out)
    kept, _ = run(ds, DeidOptions(safe_private=(("ACME 1.0", 0x11),)))
    values = [str(e.value) for e in kept if e.tag.is_private]
    assert "kernel-sharp" in values and "Keller private note" not in values


def test_uids_are_deterministic_across_runs() -> None:
    assert deterministic_uid(SECRET, "1.2.3") == deterministic_uid(SECRET, "1.2.3")
    assert deterministic_uid(SECRET, "1.2.3") != deterministic_uid(bytes(32), "1.2.3")
    assert len(deterministic_uid(SECRET, generate_uid())) <= 64


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
     "MR_small_RLE.dcm"],
)  # fmt: skip
def test_real_files_pixel_data_unchanged_and_no_phi_left(name: str) -> None:
    path = get_testdata_file(name, download=False)
    with open(path, "rb") as handle:
        raw = handle.read()
    before = dcmread(path)
    out, key, _ = deidentify_bytes(raw, source=name, secret=SECRET)
    after = dcmread(__import__("io").BytesIO(out))
    assert after.PatientID == key
    if "PixelData" in before:
        assert after.PixelData == before.PixelData  # bit-identical
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    for keyword in ("PatientName", "PatientID", "ReferringPhysicianName", "OtherPatientIDs"):
        value = str(before.get(keyword, "") or "")
        if len(value) >= 3:
            assert value.encode() not in out, keyword  # nowhere in the file
    for keyword in ("InstitutionName", "StudyID", "AccessionNumber"):
        assert str(after.get(keyword, "") or "") == "", keyword


def test_burned_in_and_risky_modalities_are_refused() -> None:
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation is YES"):
        run(dataset(BurnedInAnnotation="YES"))
    with pytest.raises(DeidentificationError, match="modality US"):
        run(dataset(Modality="US"))
    with pytest.raises(DeidentificationError, match="no PatientID") as err:
        run(dataset(patient_id=""))
    assert err.value.reason_code == "not-deidentifiable"


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("Modality", ["CT", "US"], "modality US"),  # multi-valued: any value counts
        ("Modality", "us", "modality US"),
        ("Modality", "SC ", "modality SC"),
        ("BurnedInAnnotation", "yes", "BurnedInAnnotation is YES"),
        ("BurnedInAnnotation", ["NO", "YES"], "BurnedInAnnotation is YES"),
    ],
)  # fmt: skip
def test_every_spelling_of_burned_in_text_is_refused(keyword: str, value: Any,
                                                      message: str) -> None:  # fmt: skip
    ds = dataset(**{keyword: value})
    with pytest.raises(DeidentificationError, match=message):
        run(copy.deepcopy(ds))
    # and from the file's bytes (the raw element path of the Lambda and the stage)
    with pytest.raises(DeidentificationError, match=message):
        deidentify_bytes(write_dicom(ds), source=SOURCE, secret=SECRET)


def test_malformed_input_gets_a_clear_error_naming_the_file() -> None:
    with open(get_testdata_file("CT_small.dcm", download=False), "rb") as handle:
        ct = handle.read()
    with open(get_testdata_file("no_meta.dcm", download=False), "rb") as handle:
        broken_raw = handle.read()  # starts one byte off: no data set pydicom can find
    cases = {
        b"": "empty file",
        b"hello, not dicom at all" * 10: "not a DICOM Part 10 file",
        broken_raw: "not a DICOM Part 10 file",
        ct[: len(ct) - 5000]: "truncated or malformed",
        ct[:200]: "truncated or malformed|not a DICOM",
    }
    for data, message in cases.items():
        with pytest.raises(InputError, match=message) as err:
            read_dicom(data, source="dicom/P1/bad.dcm")
        assert str(err.value).startswith("dicom/P1/bad.dcm: ")
        assert "Keller" not in str(err.value)


def test_cli_deid_writes_released_files_and_lists_refused(tmp_path: Any, monkeypatch: Any) -> None:
    from click.testing import CliRunner

    from oncopipe.cli import main

    monkeypatch.setenv("ONCOPIPE_PSEUDONYM_SECRET", SECRET.hex())
    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    (inputs / "nested" / "ct.dcm").write_bytes(
        open(get_testdata_file("CT_small.dcm", download=False), "rb").read()
    )
    (inputs / "us.dcm").write_bytes(write_dicom(dataset(Modality="US")))
    result = CliRunner().invoke(main, ["deid", str(inputs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "1 de-identified" in result.output and "1 refused" in result.output
    released = list((tmp_path / "out").rglob("*.dcm"))
    assert len(released) == 1 and released[0].parts[-4].startswith("pk-")


def test_on_write_stage_curates_deidentified_and_quarantines_refused(s3: Any) -> None:
    import random

    from oncopipe.imaging.sample import write_burned_in_ultrasound, write_ct_series
    from oncopipe.imaging.stage import deidentify_object
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_buckets

    buckets = make_buckets(s3, "d")
    store = ObjectStore(s3)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(3)
        ct = write_ct_series(Path(tmp) / "ct", rng, mrn="MRN-123", name="Ana Silva", slices=2)[0]
        us = Path(tmp) / "us.dcm"
        write_burned_in_ultrasound(us, rng, mrn="MRN-123", name="Ana Silva")
        for key, path in (("dicom/p1/ct.dcm", ct), ("dicom/p1/us.dcm", us)):
            s3.put_object(Bucket=buckets.ingest, Key=key, Body=path.read_bytes())
    done = deidentify_object(store, buckets, store.head(buckets.ingest, "dicom/p1/ct.dcm"),
                             "run-1", secret=SECRET)  # fmt: skip
    assert done.summary["status"] == "deidentified"
    body = store.get_bytes(buckets.curated, done.summary["output"])
    assert b"MRN-123" not in body and b"Silva" not in body and b"Riverside" not in body
    assert store.get_tags(buckets.curated, done.summary["output"])["step"] == "deid"
    refused = deidentify_object(store, buckets, store.head(buckets.ingest, "dicom/p1/us.dcm"),
                                "run-1", secret=SECRET)  # fmt: skip
    assert refused.summary["status"] == "quarantined"
    assert store.exists(buckets.quarantine, "run-1/dicom/p1/us.dcm.reason.json")
    assert [k for k in store.list_keys(buckets.curated) if "us" in k.split("/")[-1]] == []


def _object_lambda_event(headers: dict[str, str] | None = None, url: str = "") -> dict[str, Any]:
    return {
        "getObjectContext": {
            "inputS3Url": "https://example/presigned",
            "outputRoute": "route-1",
            "outputToken": "token-1",
        },
        "userRequest": {
            "url": url or "https://ap.s3-object-lambda/dicom/p1/ct.dcm",
            "headers": headers or {},
        },
    }


def test_object_lambda_returns_the_deidentified_object() -> None:
    from oncopipe.imaging.on_read import handle_get_object

    with open(get_testdata_file("CT_small.dcm", download=False), "rb") as handle:
        original = handle.read()
    calls: list[dict[str, Any]] = []
    result = handle_get_object(_object_lambda_event(), fetch=lambda url: original,
                               respond=lambda **kw: calls.append(kw), secret=SECRET)  # fmt: skip
    assert result["status"] == 200 and calls[0]["StatusCode"] == 200
    assert calls[0]["RequestRoute"] == "route-1" and calls[0]["RequestToken"] == "token-1"
    served = dcmread(__import__("io").BytesIO(calls[0]["Body"]))
    assert served.PatientID == result["patient_key"] and served.PatientIdentityRemoved == "YES"


def test_object_lambda_errors_are_proper_error_responses() -> None:
    from oncopipe.imaging.on_read import handle_get_object

    calls: list[dict[str, Any]] = []

    def respond(**kw: Any) -> None:
        calls.append(kw)

    burned = write_dicom(dataset(BurnedInAnnotation="YES"))
    cases = [
        (_object_lambda_event({"Range": "bytes=0-99"}), 416, "RangeNotSupported"),
        (_object_lambda_event(url="https://ap/dicom/x.dcm?partNumber=2"), 400,
         "PartNumberNotSupported"),
        (_object_lambda_event(), 403, "NotReleasable"),
    ]  # fmt: skip
    for event, status, code in cases:
        calls.clear()
        handle_get_object(event, fetch=lambda url: burned, respond=respond, secret=SECRET)
        assert calls == [calls[0]] and calls[0]["StatusCode"] == status
        assert calls[0]["ErrorCode"] == code and "Body" not in calls[0]
        assert "Keller" not in calls[0]["ErrorMessage"] and "MRN" not in calls[0]["ErrorMessage"]
    calls.clear()

    def broken(url: str) -> bytes:
        raise ConnectionError("network")

    handle_get_object(_object_lambda_event(), fetch=broken, respond=respond, secret=SECRET)
    assert calls[0]["StatusCode"] == 500 and calls[0]["ErrorCode"] == "DeidentificationFailed"


def test_identity_outside_the_table_does_not_survive() -> None:
    ds = dataset()
    ds.InstanceCreationDate = "20260301"  # a date the table does not list
    ds.SOPInstanceUIDOfConcatenationSource = "1.2.3.4.5.6.7.1"  # a UID it does not list
    nested = Dataset()
    nested.PatientID = "MRN-000777"  # PatientID inside a sequence item
    ds.SourcePatientGroupIdentificationSequence = Sequence([nested])
    text = Dataset()
    text.ValueType = "TEXT"
    text.TextValue = "Maria Keller, MRN-000777, seen at St Elsewhere"
    ds.ContentSequence = Sequence([text])
    qualifier = Dataset()
    qualifier.UniversalEntityID = "hospital.example.org"
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifier])
    ds.file_meta.SourceApplicationEntityTitle = "RIVERSIDE_PACS"
    out, _ = run(ds)
    data = write_dicom(out)
    for planted in (b"MRN-000777", b"Keller", b"RIVERSIDE_PACS", b"hospital.example.org"):
        assert planted not in data, planted
    assert out.InstanceCreationDate == out.StudyDate  # shifted with the patient's dates
    assert out.SOPInstanceUIDOfConcatenationSource == out.SOPInstanceUID  # consistent UID
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # DICOM's own UIDs are kept
