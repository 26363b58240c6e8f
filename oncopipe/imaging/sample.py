"""Synthetic CT series for the sample cohort: real DICOM headers carrying fake PHI.

Each series is a stack of axial CT slices (CT Image Storage, explicit VR little endian)
with a lesion whose size and texture vary by patient, realistic geometry (position,
orientation, spacing, rescale) and identifying attributes filled with invented values, so
that de-identification has something to remove. No numpy needed: pixels are packed with
``array``.
"""

from __future__ import annotations

import array
import random
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_ROOT = "1.2.826.0.1.3680043.10.1457."  # an example UID root for synthetic data


def _uid(rng: random.Random) -> UID:
    return UID(_ROOT + ".".join(str(rng.randrange(1, 10**9)) for _ in range(3)))


def _base(rng: random.Random, mrn: str, name: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.PatientName = name.replace(" ", "^")
    ds.PatientID = mrn
    ds.PatientBirthDate = f"19{rng.randrange(40, 75)}0{rng.randrange(1, 9)}1{rng.randrange(0, 9)}"
    ds.PatientSex = rng.choice(("F", "M"))
    ds.PatientAge = f"0{rng.randrange(50, 80)}Y"
    ds.PatientWeight = str(rng.randrange(50, 100))
    ds.OtherPatientIDs = f"ALT-{rng.randrange(10**5, 10**6)}"
    ds.InstitutionName = "Riverside Cancer Centre"
    ds.InstitutionAddress = "1 Harbour Road, Springfield"
    ds.ReferringPhysicianName = "Okafor^John"
    ds.OperatorsName = "Tech^Lee"
    ds.AccessionNumber = f"A{rng.randrange(10**6, 10**7)}"
    ds.StudyID = f"S{rng.randrange(1000, 9999)}"
    ds.StudyDate = f"2026{rng.randrange(1, 12):02d}{rng.randrange(1, 28):02d}"
    ds.StudyTime = "101500"
    ds.StudyDescription = f"CT chest staging {name}"
    ds.StationName = "CT-SCANNER-3"
    ds.DeviceSerialNumber = f"SN{rng.randrange(10**5, 10**6)}"
    ds.Manufacturer = "SyntheticCT"
    block = ds.private_block(0x0029, "SYNTH PRIVATE", create=True)
    block.add_new(0x10, "LO", f"scanned for {name}")
    return ds


def write_ct_series(
    out: Path,
    rng: random.Random,
    *,
    mrn: str,
    name: str,
    slices: int = 6,
    size: int = 32,
    with_rtstruct: bool = False,
) -> list[Path]:
    """Write one CT series (``slices`` files) under ``out``; return the paths.

    ``with_rtstruct`` also writes ``rtstruct.dcm`` beside the series folder, contouring
    the lesion (its path is the last one returned).
    """
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = _uid(rng), _uid(rng), _uid(rng)
    centre = (size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3), slices / 2)
    radius = rng.uniform(3.0, 7.0)  # lesion size varies by patient
    texture = rng.uniform(10, 80)  # and its heterogeneity
    spacing, thickness = 0.8, 2.5
    paths = []
    for k in range(slices):
        ds = _base(rng, mrn, name, CT_IMAGE_STORAGE)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid(rng)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = slices - k  # deliberately not in position order
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-12.8, -12.8, round(k * thickness, 2)]
        ds.SliceThickness = thickness
        ds.PixelSpacing = [spacing, spacing]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.BurnedInAnnotation = "NO"
        pixels = array.array("h")
        for y in range(size):
            for x in range(size):
                d2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + ((k - centre[2]) * 3) ** 2
                value = 1024 + 40 + int(rng.gauss(0, 8))  # soft tissue
                if d2 <= radius**2:
                    value = 1024 + 60 + int(rng.gauss(0, texture))
                pixels.append(value)
        ds.PixelData = pixels.tobytes()
        path = out / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    if with_rtstruct:
        paths.append(
            _write_rtstruct(out.parent / "rtstruct.dcm", rng, ds, centre, radius, mrn=mrn,
                            name=name, slices=slices, spacing=spacing, thickness=thickness)
        )  # fmt: skip
    return paths


def _write_rtstruct(path: Path, rng: random.Random, image: Dataset, centre: tuple[float, ...],
                    radius: float, *, mrn: str, name: str, slices: int, spacing: float,
                    thickness: float) -> Path:  # fmt: skip
    """Write an RTSTRUCT with the lesion contoured on each slice it crosses."""
    import math

    ds = _base(rng, mrn, name, RT_STRUCTURE_SET_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid(rng)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = image.StudyInstanceUID, _uid(rng)
    ds.FrameOfReferenceUID = image.FrameOfReferenceUID
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "Lesion"
    ds.StructureSetDate = image.StudyDate
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = image.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = image.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = image.FrameOfReferenceUID
    roi.ROIName = "GTV"
    ds.StructureSetROISequence = [roi]
    contours = []
    for k in range(slices):
        half = radius**2 - ((k - centre[2]) * 3) ** 2
        if half <= 1.0:
            continue
        r = math.sqrt(half)
        points: list[float] = []
        for n in range(24):
            angle = 2 * math.pi * n / 24
            i, j = centre[0] + r * math.cos(angle), centre[1] + r * math.sin(angle)
            points += [round(-12.8 + i * spacing, 3), round(-12.8 + j * spacing, 3),
                       round(k * thickness, 3)]  # fmt: skip
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = 24
        contour.ContourData = points
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = contours
    ds.ROIContourSequence = [roi_contour]
    ds.save_as(path, enforce_file_format=True)
    return path


def write_burned_in_ultrasound(path: Path, rng: random.Random, *, mrn: str, name: str) -> None:
    """Write an ultrasound capture with burned-in annotation (it must be refused)."""
    ds = _base(rng, mrn, name, US_IMAGE_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = _uid(rng)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.Modality = "US"
    ds.BurnedInAnnotation = "YES"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
