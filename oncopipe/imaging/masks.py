"""Segmentations -> voxel masks on a volume's grid: RTSTRUCT contours and DICOM SEG.

RTSTRUCT: each ROI's CLOSED_PLANAR contours (patient coordinates, mm) are mapped to voxel
indices through the volume's origin, direction and spacing and filled per slice with
Pillow's polygon rasteriser; contours on the same slice combine even-odd, so an inner
contour makes a hole. SEG: each frame is placed on the slice its PlanePositionSequence
names, under the segment its SegmentIdentificationSequence names. The segmentation must
reference the volume's series (UIDs are compared after de-identification, which maps
them consistently).

Masks are stored beside the volume as Parquet: one row per (ROI, slice) with the slice's
bits packed, and the ROI names and geometry in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oncopipe.imaging.volume import Geometry, SeriesError, write_atomically


class OtherSeriesError(SeriesError):
    """The segmentation references another series (of the same patient)."""


def _referenced_series(rtstruct: Any) -> set[str]:
    found = set()
    for frame in rtstruct.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                found.add(str(series.SeriesInstanceUID))
    return found


def _to_voxel(points: Any, geometry: Geometry) -> Any:
    import numpy as np

    direction = np.array(geometry.direction).reshape(3, 3)  # rows: row, col, normal cosines
    relative = points - np.array(geometry.origin)
    return (relative @ direction.T) / np.array(geometry.spacing)  # (i, j, k) per point


#: What a structure set or SEG missing an attribute, or with one of the wrong shape, raises.
_MALFORMED = (AttributeError, KeyError, ValueError, TypeError, IndexError)


def rtstruct_masks(rtstruct: Any, geometry: Geometry, *, source: str) -> dict[str, Any]:
    """Return ROI name -> uint8 mask (z, y, x) on the volume's grid.

    Raises:
        OtherSeriesError: the structure set references another series.
        SeriesError: a contour lies off the volume's slices, or the structure set lacks
            what it needs (StructureSetROISequence, contour data of whole points).
    """
    try:
        return _rtstruct_masks(rtstruct, geometry, source=source)
    except _MALFORMED as e:
        raise SeriesError(
            source, f"malformed RTSTRUCT ({type(e).__name__}): missing or malformed attributes"
        ) from e


def _rtstruct_masks(rtstruct: Any, geometry: Geometry, *, source: str) -> dict[str, Any]:
    import numpy as np

    if geometry.series_uid not in _referenced_series(rtstruct):
        raise OtherSeriesError(source, "the RTSTRUCT does not reference this series")
    columns, rows, slices = geometry.dimensions
    # ROI Name is emptied by the Basic Profile (kept, cleaned, with Clean Descriptors):
    # unnamed ROIs are keyed "ROI <number>".
    names = {
        int(r.ROINumber): str(r.get("ROIName", "") or "") or f"ROI {r.ROINumber}"
        for r in rtstruct.StructureSetROISequence
    }
    masks: dict[str, Any] = {}
    for roi in rtstruct.get("ROIContourSequence", []):
        name = names.get(int(roi.ReferencedROINumber), f"ROI {roi.ReferencedROINumber}")
        mask = np.zeros((slices, rows, columns), dtype=np.uint8)
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            voxels = _to_voxel(points, geometry)
            k = round(float(voxels[:, 2].mean()))
            if not 0 <= k < slices:
                raise SeriesError(source, f"ROI {name}: a contour lies off the volume (slice {k})")
            mask[k] ^= _fill(voxels[:, 0], voxels[:, 1], rows, columns)
        masks[name] = mask
    return masks


def _fill(xs: Any, ys: Any, rows: int, columns: int) -> Any:
    """Return the pixels whose centres lie inside the polygon (even-odd rule).

    Pixel (j, i) has its centre at (i, j) in voxel coordinates, so a contour from 0.6 to
    3.4 covers pixels 1 to 3. Written with numpy (crossing number per pixel row) because
    Pillow's rasteriser truncates vertices and shifts masks by up to a voxel.
    """
    import numpy as np

    inside = np.zeros((rows, columns), dtype=bool)
    x0, y0 = np.asarray(xs, float), np.asarray(ys, float)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centres = np.arange(columns, dtype=float)
    for j in range(max(0, int(np.floor(y0.min()))), min(rows, int(np.ceil(y0.max())) + 1)):
        crosses = (y0 <= j) != (y1 <= j)  # edges spanning this row's centre line
        if not crosses.any():
            continue
        xa, ya, xb, yb = x0[crosses], y0[crosses], x1[crosses], y1[crosses]
        at = xa + (j - ya) * (xb - xa) / (yb - ya)
        inside[j] = (centres[:, None] < at[None, :]).sum(axis=1) % 2 == 1
    return inside.astype(np.uint8)


def seg_masks(seg: Any, geometry: Geometry, *, source: str) -> dict[str, Any]:
    """Return segment label -> uint8 mask (z, y, x) from a DICOM SEG on the volume's grid.

    Raises:
        OtherSeriesError: the SEG references another series.
        SeriesError: frame size differs from the volume, a frame lies off it, or the SEG
            lacks what it needs (segments, per-frame positions, decodable frames).
    """
    try:
        return _seg_masks(seg, geometry, source=source)
    except _MALFORMED as e:
        raise SeriesError(
            source, f"malformed SEG ({type(e).__name__}): missing or malformed attributes"
        ) from e


def _seg_masks(seg: Any, geometry: Geometry, *, source: str) -> dict[str, Any]:
    import numpy as np

    columns, rows, slices = geometry.dimensions
    referenced = {str(r.SeriesInstanceUID) for r in seg.get("ReferencedSeriesSequence", [])}
    if geometry.series_uid not in referenced:
        raise OtherSeriesError(source, "the SEG does not reference this series")
    if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
        raise SeriesError(source, "SEG frames have another size than the volume's slices")
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(-1, rows, columns)
    masks = {label: np.zeros((slices, rows, columns), dtype=np.uint8) for label in labels.values()}
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array(
            [float(v) for v in groups.PlanePositionSequence[0].ImagePositionPatient]
        )
        k = round(float(_to_voxel(position[None, :], geometry)[0, 2]))
        if not 0 <= k < slices:
            raise SeriesError(source, f"SEG segment {labels[number]}: a frame lies off the volume")
        masks[labels[number]][k] |= (frame > 0).astype(np.uint8)
    return masks


def write_masks(masks: dict[str, Any], geometry: Geometry, out: Path) -> int:
    """Write masks as Parquet (one row per ROI and slice, bits packed); return the size."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    names, slice_index, bits = [], [], []
    for name, mask in masks.items():
        for k in range(mask.shape[0]):
            names.append(name)
            slice_index.append(k)
            bits.append(np.packbits(mask[k].astype(bool)).tobytes())
    table = pa.table({"roi": pa.array(names, pa.string()),
                      "slice_index": pa.array(slice_index, pa.int32()),
                      "bits": pa.array(bits, pa.binary())})  # fmt: skip
    table = table.replace_schema_metadata(
        {
            b"oncopipe.geometry": geometry.to_json(),
            b"oncopipe.rois": json.dumps(list(masks)).encode(),
        }
    )
    return write_atomically(out, lambda path: pq.write_table(table, str(path), compression="zstd"))


def read_masks(path: Path) -> tuple[dict[str, Any], Geometry]:
    """Return ROI name -> uint8 mask (z, y, x) and the geometry, as written."""
    import numpy as np
    import pyarrow.parquet as pq

    # ParquetFile, not read_table: read_table imports pandas (0.3 s of every job's start)
    table = pq.ParquetFile(str(path)).read()
    metadata = table.schema.metadata or {}
    geometry = Geometry.from_json(metadata[b"oncopipe.geometry"])
    columns, rows, slices = geometry.dimensions
    masks = {name: np.zeros((slices, rows, columns), dtype=np.uint8)
             for name in json.loads(metadata[b"oncopipe.rois"])}  # fmt: skip
    rows_ = zip(
        table.column("roi").to_pylist(),
        table.column("slice_index").to_pylist(),
        table.column("bits").to_pylist(),
        strict=True,
    )
    for name, k, bits in rows_:
        plane = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))[: rows * columns]
        masks[name][k] = plane.reshape(rows, columns)
    return masks, geometry
