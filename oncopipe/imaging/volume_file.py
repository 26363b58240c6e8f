"""The Parquet file of a volume: layout, write (atomic), read, and SimpleITK, bit-exact.

One row per slice (``slice_index``, ``position``, ``pixels``: the stored little-endian
values of the slice as byte planes, see :data:`BYTE_PLANES`), zstd level 1, with the
geometry in the schema metadata (``oncopipe.geometry``: dimensions, spacing, origin,
direction, rescale slope/intercept, stored dtype, pixel layout, series UID). Files
written before the byte-plane layout (no ``pixel_layout`` in the geometry) hold the
values interleaved and still read. :mod:`oncopipe.imaging.volume` builds volumes from
DICOM series and re-exports these names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GEOMETRY_KEY = b"oncopipe.geometry"

#: Pixel layout of the ``pixels`` column: each slice's values split into byte planes
#: (every value's first byte, then every value's second byte, ...), as Parquet's
#: BYTE_STREAM_SPLIT encoding does for fixed-width columns. The high bytes of CT and MR
#: values are nearly constant, so the planes compress to 0.31 of the DICOM at zstd level 1
#: (interleaved values: 0.38 at level 5, 9x slower to write; benchmarks/profiles.md §3).
#: The column stays one binary value per slice, so one Glue type holds every stored dtype.
BYTE_PLANES = "byte-planes"
INTERLEAVED = "interleaved"  # files written before BYTE_PLANES


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
    pixel_layout: str = BYTE_PLANES

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
            pixel_layout=raw.get("pixel_layout", INTERLEAVED),
        )


#: Slices gathered into one Parquet row group (by their bytes): the writer holds one
#: group at a time, so a series' peak memory does not grow with a copy of the volume.
ROW_GROUP_BYTES = 8 * 2**20


def write_volume(volume: Any, geometry: Geometry, out: Path) -> int:
    """Write the volume as zstd Parquet (one row per slice); return the file size."""
    return write_volume_slices(iter(volume), geometry, out, count=int(volume.shape[0]))


def write_volume_slices(slices: Iterator[Any], geometry: Geometry, out: Path, *, count: int) -> int:
    """Write ``count`` (rows, columns) slices, in order, as the Parquet volume; return
    the file size.

    Slices are taken from the iterator a row group at a time (:data:`ROW_GROUP_BYTES`),
    so a caller that decodes them as they are asked for holds one group, not the volume.

    Raises:
        ValueError: the iterator gives another number of slices, or a slice of another
            shape or dtype than the geometry's (nothing is left at ``out``).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, rows, _ = geometry.dimensions
    dtype = np.dtype(geometry.dtype)
    slice_bytes = rows * columns * dtype.itemsize
    large = count * slice_bytes > np.iinfo(np.int32).max
    schema = pa.schema(
        [("slice_index", pa.int32()), ("position", pa.float64()),
         ("pixels", pa.large_binary() if large else pa.binary())],
        metadata={GEOMETRY_KEY: geometry.to_json()},
    )  # fmt: skip
    per_group = max(1, ROW_GROUP_BYTES // max(slice_bytes, 1))
    start = _along_normal(geometry)

    def group(first: int, block: list[Any]) -> Any:
        volume = np.stack(block)
        if volume.shape[1:] != (rows, columns) or volume.dtype != dtype:
            raise ValueError(f"{out}: slices {first}..{first + len(block) - 1} are "
                             f"{volume.dtype} {volume.shape[1:]}, the geometry says "
                             f"{dtype} {(rows, columns)}")  # fmt: skip
        indices = range(first, first + len(block))
        # positions along the slice normal (mm), also for oblique slices
        positions = [start + i * geometry.spacing[2] for i in indices]
        return pa.table(
            {
                "slice_index": pa.array(indices, pa.int32()),
                "position": pa.array(positions, pa.float64()),
                "pixels": _slice_bytes(volume, geometry.pixel_layout, large=large),
            },
            schema=schema,
        )

    def write(path: Path) -> None:
        # zstd 1 on byte planes: 0.31 of the DICOM, against 0.38 for interleaved values at
        # level 5 (9x slower); higher levels gain nothing on the planes (profiles.md §3).
        # No dictionary or statistics on the pixel bytes.
        small = ["slice_index", "position"]
        level = 1 if geometry.pixel_layout == BYTE_PLANES else 5
        written = 0
        with pq.ParquetWriter(str(path), schema, compression="zstd", compression_level=level,
                              use_dictionary=small, write_statistics=small) as writer:  # fmt: skip
            block: list[Any] = []
            for pixels in slices:
                block.append(pixels)
                if len(block) == per_group:
                    writer.write_table(group(written, block))
                    written += len(block)
                    block = []
            if block:
                writer.write_table(group(written, block))
                written += len(block)
            if written != count:
                raise ValueError(f"{out}: {written} slices written, {count} expected")

    return write_atomically(out, write)


def _slice_bytes(volume: Any, layout: str, *, large: bool) -> Any:
    """Return a binary Arrow array (``large_binary`` if ``large``): each slice's values
    as stored bytes in ``layout``.

    One copy of the slices (the planes, or the interleaved values as they are), wrapped
    without another: the offsets are multiples of the slice size.
    """
    import numpy as np
    import pyarrow as pa

    slices = volume.shape[0]
    if layout not in (INTERLEAVED, BYTE_PLANES):
        raise ValueError(f"unknown pixel layout {layout!r}")
    data: Any = np.ascontiguousarray(volume).reshape(slices, -1).view(np.uint8)
    if layout == BYTE_PLANES and volume.dtype.itemsize > 1:
        data = data.reshape(slices, -1, volume.dtype.itemsize).transpose(0, 2, 1)
        data = np.ascontiguousarray(data)
    step = data.size // slices if slices else 0
    offsets = np.arange(slices + 1, dtype=np.int64 if large else np.int32) * step
    return pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(), slices,
        [None, pa.py_buffer(offsets), pa.py_buffer(data)],
    )  # fmt: skip


def _slice_values(data: bytes, geometry: Geometry) -> Any:
    """Return one slice's (rows, columns) values from its stored bytes."""
    import numpy as np

    columns, rows, _ = geometry.dimensions
    dtype = np.dtype(geometry.dtype)
    if geometry.pixel_layout == INTERLEAVED or dtype.itemsize == 1:
        return np.frombuffer(data, dtype=dtype).reshape(rows, columns)
    if geometry.pixel_layout != BYTE_PLANES:
        raise ValueError(f"unknown pixel layout {geometry.pixel_layout!r}")
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, rows * columns)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(rows, columns)


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
    slices = [_slice_values(b, geometry) for b in table.column("pixels").to_pylist()]
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
