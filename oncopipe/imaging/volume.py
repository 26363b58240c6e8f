"""DICOM series -> lossless Parquet volume, and back (numpy and SimpleITK), bit-exact.

Slices are grouped by series and ordered by their position along the slice normal
(ImagePositionPatient projected on the cross product of the ImageOrientationPatient
cosines), never by InstanceNumber. A series is refused with a clear error when its
slices disagree on orientation, size or pixel spacing, or when a slice is missing (a gap
in the spacing along the normal).

The Parquet file (layout, write, read, SimpleITK) is :mod:`oncopipe.imaging.volume_file`;
its names are re-exported here.

Uncompressed little-endian pixel data of one sample per pixel is taken straight from the
element's bytes (``numpy.frombuffer``, with pydicom's correction of unused high bits);
everything else goes through pydicom's pixel handlers. A compressed transfer syntax
without an installed decoder is refused naming the transfer syntax and what to install,
and pixel data that is there but does not decode (truncated, wrong geometry) is refused
as such, never with advice to install a handler.

Files are read with :func:`oncopipe.imaging.dicom_read.read_dicom_file`: an empty, random,
truncated or over-long file is refused naming the file, and an instance that is not an
image slice (no position, orientation, spacing or pixel data) is refused naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oncopipe.errors import InputError
from oncopipe.imaging.uids import validate_uid
from oncopipe.imaging.volume_file import (
    BYTE_PLANES,
    GEOMETRY_KEY,
    INTERLEAVED,
    Geometry,
    read_volume,
    to_sitk,
    write_atomically,
    write_volume,
    write_volume_slices,
)

__all__ = [
    "BYTE_PLANES",
    "GEOMETRY_KEY",
    "INTERLEAVED",
    "Geometry",
    "SeriesError",
    "build_volume",
    "read_volume",
    "series_to_parquet",
    "to_sitk",
    "write_atomically",
    "write_volume",
    "write_volume_slices",
]

SPACING_TOLERANCE = 1e-3  # relative
#: pydicom's UIDs of uncompressed little-endian transfer syntaxes (pixel bytes as stored)
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


class SeriesError(InputError):
    """The instances do not form one consistent volume."""

    reason_code = "inconsistent-series"


def _pixels(ds: Any, source: str) -> Any:
    """Return the decoded pixels of one instance.

    Raises:
        SeriesError: no decoder is installed for the transfer syntax (naming what to
            install), pydicom has none for it, or the pixel data does not decode.
    """
    native = _native_pixels(ds)
    if native is not None:
        return native
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as e:
        raise SeriesError(
            source, f"pydicom cannot decode pixel data in transfer syntax {syntax}"
        ) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a pixel data plugin"
        raise SeriesError(
            source,
            f"cannot decode pixel data in transfer syntax {syntax.name} ({syntax}): install "
            f"its pydicom pixel handler ({missing}; e.g. pylibjpeg, pylibjpeg-openjpeg, "
            "pylibjpeg-rle)",
        )
    try:
        return ds.pixel_array
    except Exception as e:  # any decoder failure means pixel data that is not right
        raise SeriesError(
            source,
            f"pixel data does not decode ({type(e).__name__}): truncated or malformed, or "
            "Rows/Columns/BitsAllocated do not match it",
        ) from e


def _native_pixels(ds: Any) -> Any:
    """Return the pixels of uncompressed little-endian, one-sample data; None otherwise.

    The same values as ``ds.pixel_array`` (the unit tests compare them), without its
    decoder set-up, which was a third of a slice's read: a (rows, columns) view on the
    element's bytes, copied and shifted only when Bits Stored < Bits Allocated (pydicom
    then ignores the unused high bits, sign-extending signed values). Anything else
    (another transfer syntax, colour, several frames, short or odd pixel data) returns
    None and takes pydicom's handlers, with their checks and errors.
    """
    import numpy as np

    try:
        if str(ds.file_meta.TransferSyntaxUID) not in _NATIVE_LITTLE_ENDIAN:
            return None
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed, rows, columns = int(ds.PixelRepresentation), int(ds.Rows), int(ds.Columns)
        if (
            int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1
            or allocated not in (8, 16, 32)
            or not 0 < stored <= allocated
            or signed not in (0, 1)
            or rows <= 0
            or columns <= 0
        ):
            return None
        data = ds.PixelData
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # pydicom's handlers name what is wrong
    if not isinstance(data, bytes) or len(data) < rows * columns * allocated // 8:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    pixels = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    if stored < allocated:
        shift = allocated - stored
        pixels = np.right_shift(np.left_shift(pixels, shift), shift)
    return pixels


def _slice_source(ds: Any, default: str) -> str:
    name = getattr(ds, "filename", None)
    return name if isinstance(name, str) and name else default


@dataclass(frozen=True)
class _Slice:
    """What the volume needs of one instance, each attribute read once."""

    ds: Any
    source: str
    orientation: tuple[float, ...]
    position: tuple[float, float, float]
    spacing: tuple[float, float]
    size: tuple[int, int]  # rows, columns
    series_uid: str
    rescale: tuple[float, float]  # slope, intercept


_TAGS = {
    "ImageOrientationPatient": 0x00200037,
    "ImagePositionPatient": 0x00200032,
    "PixelSpacing": 0x00280030,
}


def _numbers(ds: Any, keyword: str, count: int, source: str) -> tuple[float, ...]:
    """Return the ``count`` finite numbers of a decimal-string (DS) attribute.

    A value still raw from the file is parsed from its bytes: DS is ASCII numbers split by
    backslashes, padded with spaces (PS3.5 §6.2), and pydicom's conversion of three such
    attributes was a fifth of a slice's time. A value set in code is read through pydicom.
    """
    from pydicom.dataelem import RawDataElement

    tag = _TAGS[keyword]
    item = ds.get_item(tag) if tag in ds else None
    try:
        if isinstance(item, RawDataElement) and item.VR in ("DS", None):
            text = (item.value or b"").decode("ascii")
            numbers = tuple(float(v) for v in text.split("\\")) if text.strip() else ()
        else:
            value = ds.get(keyword)
            numbers = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError, UnicodeDecodeError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise SeriesError(
            source, f"not an image slice: {keyword} is missing or not {count} numbers"
        )
    return numbers


def _rescale(ds: Any, keyword: str, default: float, source: str) -> float:
    try:
        return float(ds.get(keyword, default) or default)
    except (TypeError, ValueError) as e:
        raise SeriesError(source, f"{keyword} is not a number") from e


def _slice(ds: Any, source: str) -> _Slice:
    """Read the geometry of an instance; refuse one that is not an image slice.

    Raises:
        SeriesError: naming the missing or malformed attribute (never its value).
    """
    orientation = _numbers(ds, "ImageOrientationPatient", 6, source)
    position = _numbers(ds, "ImagePositionPatient", 3, source)
    spacing = _numbers(ds, "PixelSpacing", 2, source)
    values = {}
    for keyword in ("Rows", "Columns", "SeriesInstanceUID"):
        values[keyword] = ds.get(keyword)
        if values[keyword] in (None, ""):
            raise SeriesError(source, f"not an image slice: no {keyword}")
    if "PixelData" not in ds:
        raise SeriesError(source, "not an image slice: no pixel data")
    return _Slice(
        ds=ds,
        source=source,
        orientation=orientation,
        position=position,  # type: ignore[arg-type]
        spacing=spacing,  # type: ignore[arg-type]
        size=(values["Rows"], values["Columns"]),
        series_uid=str(values["SeriesInstanceUID"]),
        rescale=(
            _rescale(ds, "RescaleSlope", 1, source),
            _rescale(ds, "RescaleIntercept", 0, source),
        ),
    )


def build_volume(datasets: Sequence[Any], *, source: str) -> tuple[Any, Geometry]:
    """Stack the instances of one series into a (z, y, x) array; return it and geometry.

    Raises:
        SeriesError: mixed series, orientation, size or spacing, or a missing slice.
    """
    import numpy as np

    ordered, geometry_for = _ordered(datasets, source=source)
    volume = np.stack([_pixels(s.ds, s.source) for s in ordered])
    geometry = geometry_for(volume.dtype)
    return volume.astype(geometry.dtype, copy=False), geometry


def _ordered(datasets: Sequence[Any], *, source: str) -> tuple[list[_Slice], Any]:
    """Check that the instances form one volume; return its slices in order along the
    normal and ``geometry_for(dtype)``, the volume's geometry once its pixels' dtype is
    known.

    Raises:
        SeriesError: mixed series, orientation, size or spacing, or a missing slice.
    """
    import numpy as np

    if not datasets:
        raise SeriesError(source, "no instances")
    slices = [_slice(ds, _slice_source(ds, source)) for ds in datasets]
    series = {s.series_uid for s in slices}
    if len(series) != 1:
        raise SeriesError(source, f"{len(series)} series mixed: convert one series at a time")
    first = slices[0]
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    orientations = np.array([s.orientation for s in slices])
    if not np.allclose(orientations, first.orientation, atol=1e-4):
        raise SeriesError(source, "slices with different ImageOrientationPatient")
    for s in slices:
        if s.size != first.size:
            raise SeriesError(source, "slices with different Rows/Columns")
        if s.spacing != first.spacing:
            raise SeriesError(source, "slices with different PixelSpacing")
        if s.rescale != first.rescale:
            raise SeriesError(source, "slices with different RescaleSlope/RescaleIntercept")
    along = np.array([s.position for s in slices]) @ normal
    order = sorted(range(len(slices)), key=lambda i: float(along[i]))
    ordered = [slices[i] for i in order]
    positions = [float(along[i]) for i in order]
    gaps = np.diff(positions)
    if len(gaps) and (
        np.any(gaps <= 0) or np.ptp(gaps) > SPACING_TOLERANCE * max(abs(gaps.mean()), 1e-6) + 1e-4
    ):
        raise SeriesError(
            source,
            "slice positions are not evenly spaced (a missing or duplicate slice): spacings "
            f"from {gaps.min():.3f} to {gaps.max():.3f} mm",
        )
    ds = first.ds
    spacing_z = float(gaps.mean()) if len(gaps) else float(ds.get("SliceThickness", 1) or 1)

    def geometry_for(dtype: Any) -> Geometry:
        return Geometry(
            dimensions=(int(first.size[1]), int(first.size[0]), len(ordered)),
            spacing=(first.spacing[1], first.spacing[0], spacing_z),
            origin=ordered[0].position,
            direction=tuple(float(v) for v in (*row, *col, *normal)),
            rescale_slope=first.rescale[0],
            rescale_intercept=first.rescale[1],
            dtype=np.dtype(dtype).newbyteorder("<").str,
            series_uid=first.series_uid,
            modality=str(ds.get("Modality", "")),
        )

    return ordered, geometry_for


#: What decides the dtype pydicom decodes a slice to: slices that agree on all of these
#: decode alike, so a series can be written a row group at a time.
_PIXEL_FORMAT = ("BitsAllocated", "PixelRepresentation", "SamplesPerPixel",
                 "PhotometricInterpretation", "NumberOfFrames")  # fmt: skip


def _pixel_format(s: _Slice) -> tuple[Any, ...]:
    return (str(s.ds.file_meta.TransferSyntaxUID),
            *(str(s.ds.get(keyword, "")) for keyword in _PIXEL_FORMAT))  # fmt: skip


def series_to_parquet(
    paths: Sequence[Path],
    out: Path,
    *,
    source: str | None = None,
    names: Sequence[str] | None = None,
) -> tuple[Geometry, int]:
    """Read DICOM files of one series and write the Parquet volume; return geometry, size.

    ``source`` names the series in errors (default: the folder of the first file);
    ``names`` names each file (default: its path), e.g. the object keys they came from.

    Raises:
        InputError: a file is not readable DICOM (naming it).
        SeriesError: the files do not form one volume, or one is not an image slice.
    """
    from oncopipe.imaging.dicom_read import read_dicom_file

    if names is not None and len(names) != len(paths):
        raise ValueError("names must name every path")
    label = source if source is not None else (str(paths[0].parent) if paths else "series")
    pairs = sorted(zip(paths, names or [str(p) for p in paths], strict=True))
    datasets = []
    for path, name in pairs:
        ds = read_dicom_file(path, source=name)
        ds.filename = name  # errors about a slice name it
        datasets.append(ds)
    ordered, geometry_for = _ordered(datasets, source=label)
    del datasets
    slices: Any
    if len({_pixel_format(s) for s in ordered}) > 1:  # mixed: numpy promotes, as it did
        import numpy as np

        stacked = np.stack([_pixels(s.ds, s.source) for s in ordered])
        _check_greyscale(stacked[0], label)
        geometry = geometry_for(stacked.dtype)
        slices = iter(stacked.astype(geometry.dtype, copy=False))
    else:
        first = _pixels(ordered[0].ds, ordered[0].source)
        geometry = geometry_for(first.dtype)
        slices = _decoded(ordered, first, geometry.dtype)
    validate_uid(geometry.series_uid, source=label, attribute="SeriesInstanceUID")
    return geometry, write_volume_slices(slices, geometry, out, count=len(ordered))


def _check_greyscale(pixels: Any, source: str) -> None:
    """Refuse a slice that is not one (rows, columns) plane of one sample per pixel.

    Raises:
        SeriesError: colour (several samples per pixel) or several frames.
    """
    if pixels.ndim != 2:
        raise SeriesError(source, f"the pixel data decodes to {pixels.ndim} dimensions "
                          f"{tuple(pixels.shape)}: colour or several frames are not a "
                          "greyscale slice of a volume")  # fmt: skip


def _decoded(ordered: list[_Slice], first: Any, dtype: str) -> Any:
    """Yield each slice's pixels as ``dtype``, in order, dropping each instance's pixel
    data once it is taken (the writer holds one row group, not the volume twice)."""
    for index, s in enumerate(ordered):
        pixels = first if index == 0 else _pixels(s.ds, s.source)
        _check_greyscale(pixels, s.source)
        if pixels.dtype != first.dtype or pixels.shape != first.shape:
            raise SeriesError(s.source, f"slice decodes to {pixels.dtype} {pixels.shape}, the "
                              f"first slice to {first.dtype} {first.shape}")  # fmt: skip
        if "PixelData" in s.ds:
            del s.ds.PixelData
        yield pixels.astype(dtype, copy=False)
