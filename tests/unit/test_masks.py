"""RTSTRUCT and SEG -> voxel masks on the volume grid, through de-identified UIDs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from oncopipe.imaging.deid import Deidentifier
from oncopipe.imaging.masks import read_masks, rtstruct_masks, seg_masks, write_masks
from oncopipe.imaging.sample import write_ct_series
from oncopipe.imaging.volume import SeriesError, build_volume

SECRET = bytes(range(32))


@pytest.fixture
def series(tmp_path: Path) -> tuple[list[Path], Path]:
    paths = write_ct_series(tmp_path / "ct", random.Random(8), mrn="MRN-5", name="C D",
                            slices=8, with_rtstruct=True)  # fmt: skip
    return paths[:-1], paths[-1]


def test_rtstruct_mask_matches_the_lesion_after_deidentification(
    series: tuple[list[Path], Path],
) -> None:
    images, rtstruct_path = series
    deid = Deidentifier(SECRET)
    datasets = [deid.deidentify(pydicom.dcmread(p), source=p.name)[0] for p in images]
    rtstruct = deid.deidentify(pydicom.dcmread(rtstruct_path), source="rtstruct.dcm")[0]
    volume, geometry = build_volume(datasets, source="ct")
    masks = rtstruct_masks(rtstruct, geometry, source="rtstruct.dcm")  # via de-identified UIDs
    assert list(masks) == ["ROI 1"]  # ROI Name is emptied by the Basic Profile
    gtv = masks["ROI 1"]
    assert gtv.shape == volume.shape and gtv.sum() > 10
    hu = volume.astype(float) * geometry.rescale_slope + geometry.rescale_intercept
    inside, outside = hu[gtv == 1], hu[gtv == 0]
    assert abs(inside.mean() - 60) < 15 and abs(outside.mean() - 40) < 5  # lesion vs tissue


def test_rtstruct_of_another_series_is_refused(series: tuple[list[Path], Path]) -> None:
    images, rtstruct_path = series
    _, geometry = build_volume([pydicom.dcmread(p) for p in images], source="ct")
    rtstruct = Deidentifier(SECRET).deidentify(pydicom.dcmread(rtstruct_path), source="rt")[0]
    with pytest.raises(SeriesError, match="does not reference this series"):
        rtstruct_masks(rtstruct, geometry, source="rt")  # UIDs de-identified on one side only


def test_seg_frames_land_on_their_slices(series: tuple[list[Path], Path]) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    images, _ = series
    datasets = [pydicom.dcmread(p) for p in images]
    _, geometry = build_volume(datasets, source="ct")
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.Rows, seg.Columns = 32, 32
    seg.SamplesPerPixel, seg.PhotometricInterpretation = 1, "MONOCHROME2"
    seg.BitsAllocated, seg.BitsStored, seg.HighBit, seg.PixelRepresentation = 8, 8, 7, 0
    segment = Dataset()
    segment.SegmentNumber, segment.SegmentLabel = 1, "Tumour"
    seg.SegmentSequence = [segment]
    frames, groups = [], []
    for k in (2, 5):
        frame = np.zeros((32, 32), np.uint8)
        frame[10:14, 12:20] = 1
        frames.append(frame)
        group = Dataset()
        ident = Dataset()
        ident.ReferencedSegmentNumber = 1
        group.SegmentIdentificationSequence = [ident]
        plane = Dataset()
        plane.ImagePositionPatient = [-12.8, -12.8, k * 2.5]
        group.PlanePositionSequence = [plane]
        groups.append(group)
    referenced = Dataset()
    referenced.SeriesInstanceUID = geometry.series_uid
    seg.NumberOfFrames = 2
    seg.PerFrameFunctionalGroupsSequence = groups
    seg.PixelData = np.stack(frames).tobytes()
    with pytest.raises(SeriesError, match="does not reference this series"):
        seg_masks(seg, geometry, source="seg.dcm")  # no reference: not placed on any series
    seg.ReferencedSeriesSequence = [referenced]
    masks = seg_masks(seg, geometry, source="seg.dcm")
    tumour = masks["Tumour"]
    assert tumour.sum() == 2 * 32 and tumour[2].sum() == 32 and tumour[5].sum() == 32
    assert tumour[[0, 1, 3, 4, 6, 7]].sum() == 0


def test_masks_round_trip(series: tuple[list[Path], Path], tmp_path: Path) -> None:
    images, rtstruct_path = series
    _, geometry = build_volume([pydicom.dcmread(p) for p in images], source="ct")
    masks = rtstruct_masks(pydicom.dcmread(rtstruct_path), geometry, source="rt")
    write_masks(masks, geometry, tmp_path / "m.parquet")
    back, back_geometry = read_masks(tmp_path / "m.parquet")
    assert back_geometry == geometry and np.array_equal(back["GTV"], masks["GTV"])


def test_cli_dicom_to_parquet_with_rtstruct(
    series: tuple[list[Path], Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from oncopipe.cli import main

    images, rtstruct_path = series
    out = tmp_path / "vol.parquet"
    result = CliRunner().invoke(main, ["dicom-to-parquet", str(images[0].parent), "--out",
                                       str(out), "--rtstruct", str(rtstruct_path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    masks, _ = read_masks(tmp_path / "vol.masks.parquet")
    assert masks["GTV"].sum() > 10


def test_contours_fill_the_pixels_whose_centres_are_inside() -> None:
    from oncopipe.imaging.masks import _fill

    square = _fill([0.6, 3.4, 3.4, 0.6], [0.6, 0.6, 3.4, 3.4], rows=6, columns=6)
    assert square[1:4, 1:4].all() and square.sum() == 9
    ring = _fill([0, 5, 5, 0], [0, 0, 5, 5], 6, 6) ^ _fill(
        [1.5, 3.5, 3.5, 1.5], [1.5, 1.5, 3.5, 3.5], 6, 6
    )
    assert ring[2, 2] == 0 and ring[1, 1] == 1  # an inner contour is a hole
