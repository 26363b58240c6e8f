"""DICOM series -> lossless Parquet volume, and back (numpy and SimpleITK), bit-exact.

Slices are grouped by series and ordered by their position along the slice normal
(ImagePositionPatient projected on the cross product of the ImageOrientationPatient
cosines), never by InstanceNumber. A series is refused with a clear error when its
slices disagree on orientation, size or pixel spacing, or when a slice is missing (a gap
in the spacing along the normal).

Parquet layout: one row per slice (``slice_index``, ``position``, ``pixels`` as the
stored little-endian values), zstd-compressed, with the geometry in the schema metadata
(``oncopipe.geometry``: dimensions, spacing, origin, direction, rescale slope/intercept,
stored dtype, series UID). Compressed transfer syntaxes are decoded by pydicom's pixel
handlers; one without an installed decoder is refused naming the transfer syntax and
what to install, and pixel data that is there but does not decode (truncated, wrong
geometry) is refused as such, never with advice to install a handler.

Files are read with :func:`oncopipe.imaging.deid.read_dicom_file`: an empty, random,
truncated or over-long file is refused naming the file, and an instance that is not an
image slice (no position, orientation, spacing or pixel data) is refused naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oncopipe.errors import InputError
from oncopipe.imaging.uids import validate_uid

GEOMETRY_KEY = b"oncopipe.geometry"
SPACING_TOLERANCE = 1e-3  # relative


class SeriesError(InputError):
    """The instances do not form one consistent volume."""

    reason_code = "inconsistent-series"


@dataclass(frozen=True)
class Geometry:
    dimensions: tuple[int, int, int]  # x (columns), y (rows), z (slices)
    spacing: tuple[float, float, float]  # mm: column, row, slice
    origin: tuple[float, float, float]  # ImagePositionPatient of the first slice
    direction: tuple[float, ...]  # row cosines, column cosines, normal (9 values)
    rescale_slope: float
    rescale_intercept: float
    dtype: str  # numpy dtype of the stored values, e.g. "<i2"
    series_uid: str
    modality: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Geometry:
        raw = json.loads(data)
        return cls(
            dimensions=tuple(raw["dimensions"]),  # type: ignore[arg-type]
            spacing=tuple(raw["spacing"]),  # type: ignore[arg-type]
            origin=tuple(raw["origin"]),  # type: ignore[arg-type]
            direction=tuple(raw["direction"]),
            rescale_slope=float(raw["rescale_slope"]),
            rescale_intercept=float(raw["rescale_intercept"]),
            dtype=raw["dtype"],
            series_uid=raw["series_uid"],
            modality=raw["modality"],
        )


def _pixels(ds: Any, source: str) -> Any:
    """Return the decoded pixels of one instance.

    Raises:
        SeriesError: no decoder is installed for the transfer syntax (naming what to
            install), pydicom has none for it, or the pixel data does not decode.
    """
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


def _slice_source(ds: Any, default: str) -> str:
    name = getattr(ds, "filename", None)
    return name if isinstance(name, str) and name else default


def _check_slice(ds: Any, source: str) -> None:
    """Refuse an instance that is not an image slice with geometry.

    Raises:
        SeriesError: naming the missing or malformed attribute (never its value).
    """
    needed = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2}
    for keyword, count in needed.items():
        value = ds.get(keyword)
        try:
            ok = value is not None and len([float(v) for v in value]) == count
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SeriesError(
                source, f"not an image slice: {keyword} is missing or not {count} numbers"
            )
    for keyword in ("Rows", "Columns", "SeriesInstanceUID"):
        if ds.get(keyword) in (None, ""):
            raise SeriesError(source, f"not an image slice: no {keyword}")
    if "PixelData" not in ds:
        raise SeriesError(source, "not an image slice: no pixel data")


def build_volume(datasets: Sequence[Any], *, source: str) -> tuple[Any, Geometry]:
    """Stack the instances of one series into a (z, y, x) array; return it and geometry.

    Raises:
        SeriesError: mixed series, orientation, size or spacing, or a missing slice.
    """
    import numpy as np

    if not datasets:
        raise SeriesError(source, "no instances")
    for ds in datasets:
        _check_slice(ds, _slice_source(ds, source))
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise SeriesError(source, f"{len(series)} series mixed: convert one series at a time")
    first = datasets[0]
    orientation = [float(v) for v in first.ImageOrientationPatient]
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    for ds in datasets:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise SeriesError(source, "slices with different ImageOrientationPatient")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise SeriesError(source, "slices with different Rows/Columns")
        if [float(v) for v in ds.PixelSpacing] != [float(v) for v in first.PixelSpacing]:
            raise SeriesError(source, "slices with different PixelSpacing")
        rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        if rescale != (float(first.get("RescaleSlope", 1) or 1),
                       float(first.get("RescaleIntercept", 0) or 0)):  # fmt: skip
            raise SeriesError(source, "slices with different RescaleSlope/RescaleIntercept")
    ordered = sorted(
        datasets, key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient]))
    )
    positions = [float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])) for d in ordered]
    gaps = np.diff(positions)
    if len(gaps) and (
        np.any(gaps <= 0) or np.ptp(gaps) > SPACING_TOLERANCE * max(abs(gaps.mean()), 1e-6) + 1e-4
    ):
        raise SeriesError(
            source,
            "slice positions are not evenly spaced (a missing or duplicate slice): spacings "
            f"from {gaps.min():.3f} to {gaps.max():.3f} mm",
        )
    volume = np.stack([_pixels(d, _slice_source(d, source)) for d in ordered])
    spacing_z = float(gaps.mean()) if len(gaps) else float(first.get("SliceThickness", 1) or 1)
    geometry = Geometry(
        dimensions=(int(first.Columns), int(first.Rows), len(ordered)),
        spacing=(float(first.PixelSpacing[1]), float(first.PixelSpacing[0]), spacing_z),
        origin=tuple(float(v) for v in ordered[0].ImagePositionPatient),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in (*row, *col, *normal)),
        rescale_slope=float(first.get("RescaleSlope", 1) or 1),
        rescale_intercept=float(first.get("RescaleIntercept", 0) or 0),
        dtype=volume.dtype.newbyteorder("<").str,
        series_uid=str(first.SeriesInstanceUID),
        modality=str(first.get("Modality", "")),
    )
    return volume.astype(geometry.dtype, copy=False), geometry


def write_volume(volume: Any, geometry: Geometry, out: Path) -> int:
    """Write the volume as zstd Parquet (one row per slice); return the file size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "slice_index": pa.array(range(volume.shape[0]), pa.int32()),
            "position": pa.array(  # along the slice normal (mm), also for oblique slices
                [_along_normal(geometry) + i * geometry.spacing[2] for i in range(volume.shape[0])],
                pa.float64(),
            ),
            "pixels": pa.array([s.tobytes() for s in volume], pa.binary()),
        }
    ).replace_schema_metadata({GEOMETRY_KEY: geometry.to_json()})
    # zstd 5: measured on a 60-slice 512x512 CT, as small as level 9 (0.38 vs 0.39 of the
    # DICOM) and about 3x faster to write; no dictionary or statistics on the pixel bytes.
    small = ["slice_index", "position"]
    return write_atomically(
        out,
        lambda path: pq.write_table(
            table, str(path), compression="zstd", compression_level=5,
            use_dictionary=small, write_statistics=small,
        ),
    )  # fmt: skip


def write_atomically(out: Path, write: Callable[[Path], object]) -> int:
    """Run ``write(path)`` on a file beside ``out``, then rename it to ``out``; return the size.

    A failed or interrupted write leaves no ``out`` (and no partial file behind).
    """
    partial = out.with_name(f".{out.name}.part")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out.stat().st_size


def _along_normal(geometry: Geometry) -> float:
    normal = geometry.direction[6:9]
    return float(sum(o * n for o, n in zip(geometry.origin, normal, strict=True)))


def read_volume(path: Path) -> tuple[Any, Geometry]:
    """Return the (z, y, x) numpy volume and its geometry, bit-exact as written."""
    import numpy as np
    import pyarrow.parquet as pq

    # ParquetFile, not read_table: read_table imports pandas (0.3 s of every job's start)
    table = pq.ParquetFile(str(path)).read()
    metadata = table.schema.metadata or {}
    if GEOMETRY_KEY not in metadata:
        raise ValueError(f"{path}: not an oncopipe volume (no {GEOMETRY_KEY.decode()} metadata)")
    geometry = Geometry.from_json(metadata[GEOMETRY_KEY])
    columns, rows, _ = geometry.dimensions
    slices = [np.frombuffer(b, dtype=geometry.dtype).reshape(rows, columns)
              for b in table.column("pixels").to_pylist()]  # fmt: skip
    return np.stack(slices), geometry


def to_sitk(volume: Any, geometry: Geometry) -> Any:
    """Return a SimpleITK image with the volume's spacing, origin and direction."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    row, col, normal = geometry.direction[:3], geometry.direction[3:6], geometry.direction[6:]
    # ITK's direction matrix has the axis vectors as columns
    image.SetDirection([row[0], col[0], normal[0], row[1], col[1], normal[1],
                        row[2], col[2], normal[2]])  # fmt: skip
    return image


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
    from oncopipe.imaging.deid import read_dicom_file

    if names is not None and len(names) != len(paths):
        raise ValueError("names must name every path")
    label = source if source is not None else (str(paths[0].parent) if paths else "series")
    pairs = sorted(zip(paths, names or [str(p) for p in paths], strict=True))
    datasets = []
    for path, name in pairs:
        ds = read_dicom_file(path, source=name)
        ds.filename = name  # errors about a slice name it
        datasets.append(ds)
    volume, geometry = build_volume(datasets, source=label)
    validate_uid(geometry.series_uid, source=label, attribute="SeriesInstanceUID")
    return geometry, write_volume(volume, geometry, out)
