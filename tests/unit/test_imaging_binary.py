"""What Table E.1-1 does not list: binary and unknown elements, encapsulated documents."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from oncopipe.imaging.deid import (
    DeidentificationError,
    EncapsulatedDocumentError,
    deidentify_bytes,
    write_dicom,
)
from oncopipe.imaging.profile import BINARY_VRS, load_binary_safelist

SECRET = bytes(range(32))
NAME, MRN, BIRTH = b"Keller^Maria", b"MRN-000777", b"19600214"
PLANTED = (b"Keller", MRN, BIRTH)
PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n"
    b"BT (Patient: " + NAME + b" MRN " + MRN + b" born " + BIRTH + b") Tj ET\n%%EOF\n"
)
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA_STORAGE = "1.2.840.10008.5.1.4.1.1.104.2"
UNKNOWN_PUBLIC_TAG = 0x0008FFF0  # even group, not in the data dictionary nor the table


def _base(sop_class: str = "1.2.840.10008.5.1.4.1.1.2", implicit: bool = False) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.100"
    ds.SeriesInstanceUID = "1.2.3.4.5.6.7.200"
    ds.Modality = "CT"
    ds.PatientID = MRN.decode()
    ds.PatientName = NAME.decode()
    ds.PatientBirthDate = BIRTH.decode()
    return ds


def _assert_no_planted(data: bytes) -> None:
    for planted in PLANTED:
        assert planted not in data, planted


@pytest.mark.parametrize("sop_class", [ENCAPSULATED_PDF_STORAGE, ENCAPSULATED_CDA_STORAGE])
def test_encapsulated_documents_are_refused_with_their_reason(sop_class: str) -> None:
    ds = _base(sop_class)
    ds.Modality = "DOC"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.add_new(0x00420011, "OB", PDF)  # Encapsulated Document
    with pytest.raises(EncapsulatedDocumentError) as err:
        deidentify_bytes(write_dicom(ds), source="dicom/p1/report.dcm", secret=SECRET)
    assert err.value.reason_code == "encapsulated-document"
    assert str(err.value).startswith("dicom/p1/report.dcm: ")
    _assert_no_planted(str(err.value).encode())


def test_encapsulated_document_in_an_image_object_is_refused_and_nested_one_removed() -> None:
    carrier = _base()  # a CT object that carries a PDF at the top level: a document
    carrier.add_new(0x00420011, "OB", PDF)
    with pytest.raises(EncapsulatedDocumentError):
        deidentify_bytes(write_dicom(carrier), source="ct.dcm", secret=SECRET)
    nested = _base()
    item = Dataset()
    item.add_new(0x00420011, "OB", PDF)
    item.MIMETypeOfEncapsulatedDocument = "application/pdf"
    nested.ReferencedImageSequence = Sequence([item])  # X/Z/U*: kept, its items walked
    out, _, ds = deidentify_bytes(write_dicom(nested), source="ct.dcm", secret=SECRET)
    _assert_no_planted(out)
    assert b"%PDF" not in out
    assert all(0x00420011 not in i for i in ds.ReferencedImageSequence)


@pytest.mark.parametrize("implicit", [False, True])
def test_unlisted_binary_and_unknown_elements_are_removed_at_every_level(implicit: bool) -> None:
    ds = _base(implicit=implicit)
    blob = b"note on " + NAME + b" " + MRN + b" " + BIRTH + b"\x00"
    ds.add_new(UNKNOWN_PUBLIC_TAG, "UN", blob)  # unknown public element, unknown VR
    ds.add_new(0x00700256, "OB", blob + b"\x00" * 7)  # Fill Pattern: known, unlisted, OB
    ds.add_new(0x0008041B, "OB", blob)  # Record Key: known, unlisted, OB
    ds.add_new(0x00180FF0, "LO", "text of " + MRN.decode())  # unknown public text element
    item = Dataset()
    item.add_new(UNKNOWN_PUBLIC_TAG, "UN", blob)
    item.add_new(0x00700256, "OB", blob + b"\x00" * 7)
    deeper = Dataset()
    deeper.add_new(UNKNOWN_PUBLIC_TAG, "UN", blob)
    item.ReferencedSeriesSequence = Sequence([deeper])
    ds.ReferencedImageSequence = Sequence([item])
    # A LUT the IOD needs (binary safelist): numbers, kept
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.ModalityLUTType = "HU"
    lut.add_new(0x00283006, "OW", b"\x01\x00\x02\x00\x03\x00\x04\x00")
    ds.ModalityLUTSequence = Sequence([lut])
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = b"\x10\x00\x20\x00\x30\x00\x40\x00"
    out, _, _ = deidentify_bytes(write_dicom(ds), source="ct.dcm", secret=SECRET)
    _assert_no_planted(out)
    assert b"note on" not in out and b"text of" not in out
    after = dcmread(io.BytesIO(out))
    assert after.PixelData == ds.PixelData  # the safelist keeps what the IOD needs
    assert after.ModalityLUTSequence[0][0x00283006].value == b"\x01\x00\x02\x00\x03\x00\x04\x00"
    for element in after.iterall():
        assert int(element.tag) not in (UNKNOWN_PUBLIC_TAG, 0x00700256, 0x0008041B, 0x00180FF0)


def test_a_known_attribute_written_as_un_is_judged_by_what_it_is() -> None:
    ds = _base()
    del ds.PatientName
    ds.add_new(0x00100010, "UN", NAME)  # Patient Name written with VR UN: Z in the table
    ds.add_new(0x00200032, "UN", b"0\\0\\0 ")  # Image Position (Patient) as UN: kept
    out, _, _ = deidentify_bytes(write_dicom(ds), source="ct.dcm", secret=SECRET)
    assert b"Keller" not in out
    after = dcmread(io.BytesIO(out))
    assert [float(v) for v in after.ImagePositionPatient] == [0.0, 0.0, 0.0]


def test_unlisted_person_names_are_removed() -> None:
    ds = _base()
    ds.SecondaryReviewerName = "Keller^Maria"  # (0014,0104) PN, not in the table
    item = Dataset()
    item.EvaluatorName = "Keller^Maria"  # (0014,2006) PN, not in the table, nested
    ds.ReferencedImageSequence = Sequence([item])
    out, _, released = deidentify_bytes(write_dicom(ds), source="ct.dcm", secret=SECRET)
    assert b"Keller" not in out
    assert "SecondaryReviewerName" not in released


def test_binary_safelist_is_data_with_reasons_and_pixel_data_on_it() -> None:
    safelist = load_binary_safelist()
    assert 0x7FE00010 in safelist and 0x00283006 in safelist
    assert 0x00420011 not in safelist  # Encapsulated Document never survives
    assert {"OB", "OD", "OF", "OL", "OV", "OW", "UN"} <= BINARY_VRS


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm"])
def test_real_objects_keep_what_their_iod_needs(name: str) -> None:
    path = get_testdata_file(name, download=False)
    before = dcmread(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        out, _, _ = deidentify_bytes(raw, source=name, secret=SECRET)
    except DeidentificationError as e:  # pragma: no cover - would be a regression
        raise AssertionError(f"{name} refused: {e}") from e
    after = dcmread(io.BytesIO(out))
    for keyword in ("PixelData", "Rows", "Columns", "ImagePositionPatient", "PixelSpacing"):
        if keyword in before:
            assert after.get(keyword) == before.get(keyword), keyword
