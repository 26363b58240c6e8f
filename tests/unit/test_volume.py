"""DICOM series -> Parquet volume -> numpy / SimpleITK, bit-exact; bad series refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from oncopipe.imaging.deid import read_dicom_file
from oncopipe.imaging.sample import write_ct_series
from oncopipe.imaging.volume import (
    BYTE_PLANES,
    INTERLEAVED,
    Geometry,
    SeriesError,
    _native_pixels,
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


def _saved(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    ("allocated", "stored", "signed"),
    [(16, 12, 1), (16, 12, 0), (16, 16, 1), (16, 16, 0), (8, 8, 0), (8, 6, 1), (32, 20, 1)],
)
def test_pixels_read_straight_from_the_bytes_are_what_pydicom_decodes(
    series: list[Path], tmp_path: Path, syntax: str, allocated: int, stored: int, signed: int
) -> None:
    ds = pydicom.dcmread(series[0])
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    info = np.iinfo(dtype)
    # every bit set at random: the unused high bits hold garbage that must be ignored
    raw = np.random.default_rng(allocated + stored + signed).integers(
        info.min, info.max, size=(ds.Rows, ds.Columns), dtype=dtype, endpoint=True
    )
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = signed
    ds.PixelData = raw.tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    path = _saved(ds, tmp_path / "slice.dcm")
    checked = read_dicom_file(path)
    assert _native_pixels(checked) is not None  # the bytes path, not pydicom's decoder
    volume, geometry = build_volume([checked], source="ct")
    expected = pydicom.dcmread(path).pixel_array
    assert volume.dtype == expected.dtype and np.array_equal(volume[0], expected)
    write_volume(volume, geometry, tmp_path / "v.parquet")
    assert np.array_equal(read_volume(tmp_path / "v.parquet")[0], volume)


def test_colour_multi_frame_short_and_bit_packed_pixels_go_through_pydicom(
    series: list[Path],
) -> None:
    def variant(**changes: object) -> pydicom.Dataset:
        ds = pydicom.dcmread(series[0])
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        return ds

    assert _native_pixels(variant()) is not None
    pixels = pydicom.dcmread(series[0]).PixelData
    for ds in (
        variant(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0),
        variant(NumberOfFrames=2, PixelData=pixels * 2),
        variant(PixelData=pixels[:-2]),  # short: pydicom's handler names the problem
        variant(BitsAllocated=1, BitsStored=1, HighBit=0),
    ):
        assert _native_pixels(ds) is None
    with pytest.raises(SeriesError, match="pixel data does not decode"):
        build_volume([variant(PixelData=pixels[:-2])], source="ct")


def _geometry(dtype: str, slices: int, layout: str = BYTE_PLANES) -> Geometry:
    return Geometry(
        dimensions=(7, 5, slices), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), rescale_slope=1.0,
        rescale_intercept=0.0, dtype=dtype, series_uid="1.2.3", modality="CT",
        pixel_layout=layout,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["<i2", "<u2", "|u1", "|i1", "<i4", "<u4", "<f4", "<f8"])
def test_byte_planes_round_trip_every_stored_dtype(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    volume = (rng.standard_normal((3, 5, 7)) * 1000).astype(dtype)
    geometry = _geometry(dtype, 3)
    write_volume(volume, geometry, tmp_path / "v.parquet")
    read, read_geometry = read_volume(tmp_path / "v.parquet")
    assert read.dtype == volume.dtype and np.array_equal(read, volume)
    assert read_geometry == geometry
    stored = pq.ParquetFile(tmp_path / "v.parquet").read().column("pixels")[1].as_py()
    size = volume.dtype.itemsize
    # slice 1 as stored: every value's first byte, then every value's second byte, ...
    as_bytes = volume[1].reshape(-1).view(np.uint8).reshape(-1, size)
    assert stored == b"".join(as_bytes[:, k].tobytes() for k in range(size))


def test_a_volume_written_before_byte_planes_reads_as_it_was(tmp_path: Path) -> None:
    volume = np.arange(3 * 5 * 7, dtype="<i2").reshape(3, 5, 7) - 50
    raw = json.loads(_geometry("<i2", 3).to_json())
    del raw["pixel_layout"]  # the geometry of files written before the layout was named
    table = pa.table({"slice_index": pa.array(range(3), pa.int32()),
                      "pixels": pa.array([s.tobytes() for s in volume], pa.binary())})  # fmt: skip
    table = table.replace_schema_metadata({b"oncopipe.geometry": json.dumps(raw).encode()})
    pq.write_table(table, tmp_path / "old.parquet")
    read, geometry = read_volume(tmp_path / "old.parquet")
    assert np.array_equal(read, volume) and geometry.pixel_layout == INTERLEAVED
    with pytest.raises(ValueError, match="unknown pixel layout 'planes-v9'"):
        write_volume(volume, _geometry("<i2", 3, "planes-v9"), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(
    "value",
    [
        b"1.0\\0.z\\0.0\\0.0\\1.0\\0.0 ",  # not a number
        b"1.0\\nan\\0.0\\0.0\\1.0\\0.0 ",  # not finite
        b"1.0\\0.0\\0.0\\0.0\\1.000000",  # five numbers
        b"1.0\\0.0\\0.0\\0.0\\1.0\\\xe90.0",  # not ASCII
    ],
)
def test_a_malformed_orientation_in_the_file_is_refused_naming_only_the_attribute(
    series: list[Path], tmp_path: Path, value: bytes
) -> None:
    data = series[0].read_bytes()
    original = b"1.0\\0.0\\0.0\\0.0\\1.0\\0.0 "
    assert data.count(original) == 1 and len(value) == len(original)
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / series[0].name
    bad.write_bytes(data.replace(original, value))
    with pytest.raises(SeriesError) as err:
        series_to_parquet([bad, *series[1:]], tmp_path / "v.parquet")
    message = str(err.value)
    assert "ImageOrientationPatient is missing or not 6 numbers" in message
    assert str(bad) in message and "0.z" not in message and "nan" not in message
    assert not (tmp_path / "v.parquet").exists()


def test_a_series_is_written_a_row_group_at_a_time_and_reads_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer holds a few slices at a time; the file reads back as one volume."""
    from oncopipe.imaging import volume_file

    paths = write_ct_series(tmp_path / "ct", random.Random(8), mrn="MRN-8", name="A B",
                            slices=9, size=16)  # fmt: skip
    monkeypatch.setattr(volume_file, "ROW_GROUP_BYTES", 2 * 16 * 16 * 2)  # two slices a group
    geometry, _ = series_to_parquet(paths, tmp_path / "v.parquet")
    assert pq.ParquetFile(tmp_path / "v.parquet").num_row_groups == 5
    volume, read_geometry = read_volume(tmp_path / "v.parquet")
    expected, built = build_volume([pydicom.dcmread(p) for p in paths], source="ct")
    assert read_geometry == geometry == built
    assert volume.dtype == expected.dtype and np.array_equal(volume, expected)
    positions = pq.ParquetFile(tmp_path / "v.parquet").read().column("position").to_pylist()
    assert positions == pytest.approx([geometry.origin[2] + 2.5 * i for i in range(9)])


def test_a_slice_count_that_does_not_match_leaves_no_file(tmp_path: Path) -> None:
    from oncopipe.imaging.volume import write_volume_slices

    geometry = Geometry((4, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                        (1, 0, 0, 0, 1, 0, 0, 0, 1), 1.0, 0.0, "<i2", "1.2.3", "CT")  # fmt: skip
    slices = iter([np.zeros((4, 4), np.int16)] * 2)
    with pytest.raises(ValueError, match="2 slices written, 3 expected"):
        write_volume_slices(slices, geometry, tmp_path / "v.parquet", count=3)
    with pytest.raises(ValueError, match="the geometry says int16"):
        write_volume_slices(iter([np.zeros((4, 4), np.uint8)] * 3), geometry,
                            tmp_path / "v.parquet", count=3)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_slices_of_different_pixel_formats_are_promoted_as_numpy_stacks_them(
    series: list[Path], tmp_path: Path
) -> None:
    """A series whose slices disagree on the pixel format keeps the stacked dtype."""
    datasets = [pydicom.dcmread(p) for p in series]
    datasets[2].PixelRepresentation = 0  # this slice's values read as unsigned
    for i, ds in enumerate(datasets):
        ds.save_as(tmp_path / f"s{i}.dcm")
    paths = sorted(tmp_path.glob("s*.dcm"))
    expected, _ = build_volume([pydicom.dcmread(p) for p in paths], source="ct")
    geometry, _ = series_to_parquet(paths, tmp_path / "v.parquet")
    volume, _ = read_volume(tmp_path / "v.parquet")
    assert expected.dtype == np.int32 and geometry.dtype == "<i4"
    assert np.array_equal(volume, expected)


def test_a_colour_series_is_refused_as_not_greyscale(series: list[Path], tmp_path: Path) -> None:
    """An RGB instance is not a slice of a volume: refused as an input error, no file."""
    datasets = [pydicom.dcmread(p) for p in series]
    for i, ds in enumerate(datasets):
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * 3)
        ds.save_as(tmp_path / f"c{i}.dcm")
    with pytest.raises(SeriesError, match="not a greyscale slice"):
        series_to_parquet(sorted(tmp_path.glob("c*.dcm")), tmp_path / "v.parquet")
    assert not (tmp_path / "v.parquet").exists()
