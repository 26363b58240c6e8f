"""DICOM series -> Parquet volume -> numpy / SimpleITK, bit-exact; bad series refused."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from oncopipe.imaging.sample import write_ct_series
from oncopipe.imaging.volume import (
    SeriesError,
    build_volume,
    read_volume,
    series_to_parquet,
    to_sitk,
    write_volume,
)


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_ct_series(tmp_path / "ct", random.Random(4), mrn="MRN-1", name="A B", slices=6)


def test_round_trip_is_bit_exact_and_ordered_by_position(
    series: list[Path], tmp_path: Path
) -> None:
    datasets = [pydicom.dcmread(p) for p in series]
    geometry, size = series_to_parquet(list(reversed(series)), tmp_path / "v.parquet")
    volume, read_geometry = read_volume(tmp_path / "v.parquet")
    by_position = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    assert np.array_equal(volume, np.stack([d.pixel_array for d in by_position]))
    assert volume.dtype == np.int16 and read_geometry == geometry
    assert geometry.dimensions == (32, 32, 6) and geometry.spacing == (0.8, 0.8, 2.5)
    assert geometry.origin == (-12.8, -12.8, 0.0) and geometry.rescale_intercept == -1024
    assert size < sum(p.stat().st_size for p in series)  # the ratio is measured by the benchmark


def test_simpleitk_image_has_the_geometry(series: list[Path]) -> None:
    volume, geometry = build_volume([pydicom.dcmread(p) for p in series], source="ct")
    image = to_sitk(volume, geometry)
    assert image.GetSize() == (32, 32, 6)
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    assert image.GetOrigin() == pytest.approx((-12.8, -12.8, 0.0))
    import SimpleITK as sitk

    assert np.array_equal(sitk.GetArrayFromImage(image), volume)


def test_missing_slice_mixed_orientation_and_sizes_are_refused(series: list[Path]) -> None:
    datasets = [pydicom.dcmread(p) for p in series]
    with pytest.raises(SeriesError, match="not evenly spaced"):
        build_volume(datasets[:2] + datasets[3:], source="dicom/p1/ct")
    tilted = [pydicom.dcmread(p) for p in series]
    tilted[1].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.1]
    with pytest.raises(SeriesError, match="ImageOrientationPatient"):
        build_volume(tilted, source="dicom/p1/ct")
    resized = [pydicom.dcmread(p) for p in series]
    resized[2].Rows = 16
    with pytest.raises(SeriesError, match="Rows/Columns") as err:
        build_volume(resized, source="dicom/p1/ct")
    assert str(err.value).startswith("dicom/p1/ct: ")


def test_rle_is_decoded_and_jpeg2000_without_a_decoder_is_refused(tmp_path: Path) -> None:
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False))
    plain = pydicom.dcmread(get_testdata_file("MR_small.dcm", download=False))
    volume, geometry = build_volume([rle], source="mr")
    assert np.array_equal(volume[0], plain.pixel_array)
    write_volume(volume, geometry, tmp_path / "mr.parquet")
    assert np.array_equal(read_volume(tmp_path / "mr.parquet")[0], volume)
    j2k = get_testdata_file("MR_small_jp2klossless.dcm", download=False)
    if j2k is None:
        pytest.skip("pydicom ships no JPEG 2000 file here")
    try:
        decoded, _ = build_volume([pydicom.dcmread(j2k)], source="mr-j2k")
    except SeriesError as e:  # no decoder installed: a clear refusal
        assert "JPEG 2000" in str(e) and "pylibjpeg" in str(e)
    else:  # a decoder is installed: lossless, so the same pixels as the plain file
        assert np.array_equal(decoded[0], plain.pixel_array)
