"""Bad DICOM files (empty, random, truncated, over-long) and raw data sets without preamble."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from oncopipe.cli import main
from oncopipe.errors import InputError
from oncopipe.imaging import dicom_read
from oncopipe.imaging.deid import (
    InvalidDicomError,
    deidentify_bytes,
    deidentify_file,
    read_dicom,
    read_dicom_file,
    write_dicom,
)
from oncopipe.imaging.sample import write_ct_series

SECRET = bytes(range(32))


def _testdata(name: str) -> bytes:
    with open(get_testdata_file(name, download=False), "rb") as handle:
        return handle.read()


def _claims_4gb(data: bytes) -> bytes:
    """CT_small with its pixel data element claiming 0xFFFFFFF0 bytes (about 4 GB)."""
    at = data.find(b"\xe0\x7f\x10\x00OW\x00\x00")
    assert at > 0
    return data[: at + 8] + struct.pack("<I", 0xFFFFFFF0) + data[at + 12 :]


def _implicit_claims_4gb() -> bytes:
    """A raw implicit VR data set whose second element claims 0xFFFFFFF0 bytes."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    data = buffer.getvalue()
    at = data.find(b"\x08\x00\x18\x00")
    return data[: at + 4] + struct.pack("<I", 0xFFFFFFF0) + data[at + 8 :]


def bad_files() -> dict[str, bytes]:
    ct = _testdata("CT_small.dcm")
    return {
        "zero-byte": b"",
        "random": random.Random(11).randbytes(8192),
        "random-after-dicm": b"\x00" * 128 + b"DICM" + random.Random(12).randbytes(4096),
        "random-raw-start": b"\x08\x00\x05\x00" + random.Random(13).randbytes(4096),
        "truncated": ct[: len(ct) // 2],
        "cut-in-element-header": ct[: ct.find(b"\x10\x00\x10\x00PN") + 4],
        "truncated-meta": ct[:200],
        "claims-4gb": _claims_4gb(ct),
        "zero-filled-tail": ct + bytes(4 << 20),  # how a sparse 4 GB file ends
        "raw-claims-4gb": _implicit_claims_4gb(),
    }


BAD = bad_files()


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_are_refused_naming_the_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidDicomError) as err:
        read_dicom(BAD[name], source=f"dicom/p1/{name}.dcm")
    assert str(err.value).startswith(f"dicom/p1/{name}.dcm: ")
    assert err.value.reason_code == "invalid-dicom"
    assert "pixel handler" not in str(err.value) and "install" not in str(err.value)
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(BAD[name])
    with pytest.raises(InvalidDicomError, match=str(path)):
        read_dicom_file(path)  # read whole, then parsed from memory
    with monkeypatch.context() as patch:  # a file over the whole-read size: through the file
        patch.setattr(dicom_read, "_READ_WHOLE_BYTES", 0)
        with pytest.raises(InvalidDicomError, match=str(path)):
            read_dicom_file(path)


@pytest.mark.parametrize("name", sorted(BAD))
def test_dicom_to_parquet_refuses_bad_files_without_a_traceback(name: str, tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", random.Random(2), mrn="MRN-9", name="A B", slices=3)
    bad = series[0].parent / f"{name}.dcm"
    bad.write_bytes(BAD[name])
    out = tmp_path / "volume.parquet"
    result = CliRunner().invoke(
        main, ["dicom-to-parquet", str(series[0].parent), "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(bad) in result.output.replace("\n", "")  # the error names the file
    assert "install" not in result.output and "pixel handler" not in result.output
    assert not out.exists() and list(tmp_path.glob("*.part")) == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_deid_cli_refuses_bad_files_and_writes_nothing(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONCOPIPE_PSEUDONYM_SECRET", SECRET.hex())
    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / f"{name}.dcm").write_bytes(BAD[name])
    result = CliRunner().invoke(main, ["deid", str(inputs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    output = result.output.replace("\n", "")  # rich wraps long paths
    assert f"{name}.dcm" in output and "1 refused" in output
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []


def test_a_4gb_length_claim_is_refused_without_allocating_it(tmp_path: Path) -> None:
    path = tmp_path / "claims-4gb.dcm"
    path.write_bytes(BAD["claims-4gb"])
    tracemalloc.start()
    try:
        with pytest.raises(InvalidDicomError, match="claims 4294967280 bytes"):
            read_dicom_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20  # bytes the file has, not bytes its header claims


def test_a_zero_filled_tail_is_refused_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidDicomError, match="zero bytes where DICOM elements should be"):
        read_dicom(_testdata("CT_small.dcm") + bytes(64 << 20), source="sparse.dcm")
    assert time.perf_counter() - start < 5  # not one element per 8 zero bytes


def test_pixel_data_shorter_than_its_geometry_is_not_blamed_on_a_missing_handler(
    tmp_path: Path,
) -> None:
    series = write_ct_series(tmp_path / "ct", random.Random(5), mrn="MRN-5", name="A B", slices=3)
    ds = pydicom.dcmread(series[1])
    ds.Rows = int(ds.Rows) * 2  # the file is whole, its geometry says more pixels than it has
    series[1].write_bytes(write_dicom(ds))
    result = CliRunner().invoke(
        main, ["dicom-to-parquet", str(series[0].parent), "--out", str(tmp_path / "v.parquet")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    output = result.output.replace("\n", "")
    assert str(series[1]) in output and "truncated or malformed" in output
    assert "install" not in result.output


def test_an_instance_that_is_not_a_slice_is_named(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", random.Random(6), mrn="MRN-6", name="A B", slices=3)
    ds = pydicom.dcmread(series[2])
    del ds.ImagePositionPatient
    series[2].write_bytes(write_dicom(ds))
    result = CliRunner().invoke(
        main, ["dicom-to-parquet", str(series[0].parent), "--out", str(tmp_path / "v.parquet")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    output = result.output.replace("\n", "")
    assert str(series[2]) in output and "ImagePositionPatient" in output


def test_an_empty_series_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        main, ["dicom-to-parquet", str(tmp_path / "empty"), "--out", str(tmp_path / "v.parquet")]
    )
    output = result.output.replace("\n", "")
    assert result.exit_code == 1 and f"{tmp_path / 'empty'}: no instances" in output


def test_raw_data_set_without_preamble_is_released_as_a_part10_file() -> None:
    raw = _testdata("rtstruct.dcm")  # pydicom's own: no preamble, no file meta
    assert raw[128:132] != b"DICM"
    original = pydicom.dcmread(io.BytesIO(raw), force=True)
    out, key, _ = deidentify_bytes(raw, source="dicom/p1/rtstruct.dcm", secret=SECRET)
    assert out[:128] == b"\x00" * 128 and out[128:132] == b"DICM"
    written = pydicom.dcmread(io.BytesIO(out))  # no force: a proper Part 10 file
    assert written.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert written.file_meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert written.file_meta.MediaStorageSOPInstanceUID == written.SOPInstanceUID
    assert written.SOPInstanceUID != original.SOPInstanceUID  # de-identified like the rest
    assert written.PatientID == key and str(original.PatientName).encode() not in out
    assert len(written.ROIContourSequence) == len(original.ROIContourSequence)


def test_raw_data_set_through_the_deid_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCOPIPE_PSEUDONYM_SECRET", SECRET.hex())
    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    source = Path(get_testdata_file("rtstruct.dcm", download=False))
    result = CliRunner().invoke(main, ["deid", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (written,) = list((tmp_path / "out").rglob("*.dcm"))
    assert written.read_bytes()[128:132] == b"DICM"
    _, key, _ = deidentify_file(source, secret=SECRET)
    assert written.parts[-4] == key


def test_raw_data_set_with_encapsulated_pixel_data_is_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
    del ds.file_meta  # written as a bare data set: nothing says it is JPEG 2000
    ds.preamble = None
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with pytest.raises(InvalidDicomError, match="encapsulated pixel data"):
        read_dicom(buffer.getvalue(), source="old-export.dcm")


def test_errors_from_the_stage_quarantine_bad_files(s3: Any) -> None:
    from oncopipe.imaging.stage import deidentify_object
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_buckets

    buckets = make_buckets(s3, "b")
    store = ObjectStore(s3)
    for name, data in BAD.items():
        s3.put_object(Bucket=buckets.ingest, Key=f"dicom/p1/{name}.dcm", Body=data)
        ref = store.head(buckets.ingest, f"dicom/p1/{name}.dcm")
        assert ref is not None
        result = deidentify_object(store, buckets, ref, "run-1", secret=SECRET)
        assert result.summary["status"] == "quarantined", name
        assert result.summary["reason_code"] == "invalid-dicom", name
    assert list(store.list_keys(buckets.curated, "imaging/")) == []


def test_input_error_is_an_input_error() -> None:
    assert issubclass(InvalidDicomError, InputError)
