"""Every UID is validated before it is written or used in a path; nothing escapes --out."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydicom import dcmwrite
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from oncopipe.cli import main
from oncopipe.imaging.deid import deidentify_bytes
from oncopipe.imaging.stage import curated_key, masks_key, volume_key
from oncopipe.imaging.uids import InvalidUIDError, is_valid_uid, validate_uid
from oncopipe.pseudonym import patient_key

SECRET = bytes(range(32))
HOSTILE = {
    "dicom-root-traversal": "1.2.840.10008.../../../x",
    "dicom-root-slash": "1.2.840.10008.1/../../../../tmp/x",
    "slash": "1.2.3/4",
    "dotdot": "..",
    "dot-segments": "1.2/../../3",
    "nul": "1.2.3\x004.5",
    "too-long": "1." + "2" * 70,
    "letters": "1.2.abc",
    "space-inside": "1.2 3.4",
    "leading-dot": ".1.2.3",
    "double-dot": "1..2",
    "trailing-dot": "1.2.",
    "windows-separator": "1.2\\..\\x",
    "absolute": "/etc/passwd",
}
ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _dataset(**uids: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.100"
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7.200"
    ds.Modality = "CT"
    ds.PatientID = "MRN-000777"
    ds.PatientName = "Keller^Maria"
    with disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values planted here
        for keyword, value in uids.items():
            if keyword.startswith("meta:"):
                setattr(ds.file_meta, keyword[5:], value)
            else:
                setattr(ds, keyword, value)
    return ds


def _bytes(ds: Dataset) -> bytes:
    """Part 10 bytes with the file meta exactly as set (pydicom would correct it)."""
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    with disable_value_validation():
        dcmwrite(buffer, ds, enforce_file_format=False)
    return buffer.getvalue()


@pytest.mark.parametrize("attribute", [*ATTRIBUTES, "meta:MediaStorageSOPInstanceUID"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uids_are_refused_naming_the_file_and_attribute(attribute: str, case: str) -> None:
    data = _bytes(_dataset(**{attribute: HOSTILE[case]}))
    with pytest.raises(InvalidUIDError) as err:
        deidentify_bytes(data, source="dicom/p1/x.dcm", secret=SECRET)
    message = str(err.value)
    assert message.startswith("dicom/p1/x.dcm: ") and err.value.reason_code == "invalid-uid"
    assert attribute.removeprefix("meta:") in message
    assert HOSTILE[case] not in message and "Keller" not in message


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_missing_or_empty_instance_uids_are_refused(attribute: str) -> None:
    with pytest.raises(InvalidUIDError, match="is empty"):
        deidentify_bytes(_bytes(_dataset(**{attribute: ""})), source="x.dcm", secret=SECRET)
    ds = _dataset()
    delattr(ds, attribute)
    with pytest.raises(InvalidUIDError, match=attribute):
        deidentify_bytes(_bytes(ds), source="x.dcm", secret=SECRET)


def test_an_empty_media_storage_uid_is_set_from_the_data_set() -> None:
    ds = _dataset(**{"meta:MediaStorageSOPInstanceUID": "", "meta:MediaStorageSOPClassUID": ""})
    out, _, released = deidentify_bytes(_bytes(ds), source="x.dcm", secret=SECRET)
    assert released.file_meta.MediaStorageSOPInstanceUID == released.SOPInstanceUID
    assert released.file_meta.MediaStorageSOPClassUID == released.SOPClassUID
    assert b"1.2.3.4.5.6.7.1" not in out


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uids_nested_in_sequences_are_refused(case: str) -> None:
    ds = _dataset()
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with disable_value_validation():
        item.ReferencedSOPInstanceUID = HOSTILE[case]
    ds.ReferencedImageSequence = Sequence([item])
    with pytest.raises(InvalidUIDError, match="ReferencedSOPInstanceUID"):
        deidentify_bytes(_bytes(ds), source="x.dcm", secret=SECRET)


def test_kept_dicom_uids_must_be_strict_replaced_ones_may_have_leading_zeros() -> None:
    with pytest.raises(InvalidUIDError, match="SOPClassUID"):
        deidentify_bytes(_bytes(_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.02")),
                         source="x.dcm", secret=SECRET)  # fmt: skip
    out, _, ds = deidentify_bytes(_bytes(_dataset(SeriesInstanceUID="1.2.0123.4")),
                                  source="x.dcm", secret=SECRET)  # fmt: skip
    assert ds.SeriesInstanceUID.startswith("2.25.") and is_valid_uid(ds.SeriesInstanceUID)
    assert b"0123" not in out


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_deid_cli_never_writes_outside_out(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCOPIPE_PSEUDONYM_SECRET", SECRET.hex())
    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    box = tmp_path / "a" / "b" / "c"
    (box / "in").mkdir(parents=True)
    for n, attribute in enumerate(ATTRIBUTES):
        (box / "in" / f"{n}.dcm").write_bytes(_bytes(_dataset(**{attribute: HOSTILE[case]})))
    (box / "in" / "ok.dcm").write_bytes(_bytes(_dataset()))
    before = {p for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(main, ["deid", str(box / "in"), "--out", str(box / "out")])
    output = " ".join(result.output.split())  # rich wraps lines
    assert result.exit_code == 1 and "Traceback" not in output
    assert "1 de-identified" in output and "3 refused" in output
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p.is_relative_to(box / "out") for p in created)
    (released,) = [p for p in created if p.is_file()]
    assert all(is_valid_uid(part) for part in released.relative_to(box / "out").parts[1:-1])


def test_stage_quarantines_hostile_uids_and_keys_stay_in_their_prefix(s3: Any) -> None:
    from oncopipe.imaging.stage import deidentify_object
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_buckets

    buckets = make_buckets(s3, "u")
    store = ObjectStore(s3)
    for n, attribute in enumerate(ATTRIBUTES):
        key = f"dicom/p1/{n}.dcm"
        data = _bytes(_dataset(**{attribute: HOSTILE["dicom-root-traversal"]}))
        s3.put_object(Bucket=buckets.ingest, Key=key, Body=data)
        ref = store.head(buckets.ingest, key)
        assert ref is not None
        result = deidentify_object(store, buckets, ref, "run-1", secret=SECRET)
        assert result.summary["status"] == "quarantined"
        assert result.summary["reason_code"] == "invalid-uid"
    assert list(store.list_keys(buckets.curated, "imaging/")) == []


def test_key_builders_refuse_what_is_not_a_uid_or_a_patient_key() -> None:
    key = patient_key(SECRET, "MRN-1")
    assert volume_key(key, "2.25.1234") == f"imaging/volumes/{key}/2.25.1234.parquet"
    for bad in HOSTILE.values():
        with pytest.raises(InvalidUIDError):
            volume_key(key, bad)
        with pytest.raises(InvalidUIDError):
            masks_key(key, bad)
    with pytest.raises(InvalidUIDError):
        volume_key("../pk-x", "2.25.1")
    ds = _dataset()
    with pytest.raises(InvalidUIDError):
        curated_key("pk-../../x", ds)
    with disable_value_validation():
        ds.SeriesInstanceUID = "1.2/../x"
    with pytest.raises(InvalidUIDError):
        curated_key(key, ds)


def test_validator_rules() -> None:
    for good in ("1", "0", "1.2.840.10008.1.2.1", "2.25." + "9" * 38, "1." + "2" * 62):
        assert is_valid_uid(good) and validate_uid(good, source="s", attribute="a") == good
    for bad in ("", "01.2", "1.02", *HOSTILE.values(), "1." + "2" * 63):
        assert not is_valid_uid(bad)
    assert is_valid_uid("1.02", strict=False) and not is_valid_uid("1.2/3", strict=False)
    assert validate_uid("1.2.3\x00", source="s", attribute="a", strict=False) == "1.2.3"
    assert not is_valid_uid(None) and not is_valid_uid(123)


def test_uids_kept_unchanged_are_checked_too() -> None:
    from oncopipe.imaging.deid import Deidentifier, DeidOptions

    ds = _dataset()
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    with disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block.add_new(0x12, "UI", "1.2.840.10008/../../x")  # safelisted: written as it is
    options = DeidOptions(safe_private=(("ACME 1.0", 0x12),))
    with pytest.raises(InvalidUIDError):
        Deidentifier(SECRET, options).deidentify(ds, source="x.dcm")
