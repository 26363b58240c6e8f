"""Radiomic features of a de-identified volume and its masks, with PyRadiomics.

One core for every runtime (CLI, local worker, SageMaker Processing): a Parquet volume
(:mod:`oncopipe.imaging.volume`) and its masks (:mod:`oncopipe.imaging.masks`) in, one
long-format Parquet table out (patient key, series key, ROI, feature, value, parameters
hash, run ID). The parameter file is versioned in the repository
(``params/radiomics-v1.yaml``); its hash, with the PyRadiomics version, is recorded on
every row.

Memory stays bounded per ROI: before PyRadiomics sees an ROI, the volume is cropped to
the ROI's bounding box plus a margin that covers PyRadiomics' own crop (``padDistance``
voxels of the resampled grid) and the B-spline support, starting a whole number of
resampled voxels from the image corner (PyRadiomics lays its grid from there). PyRadiomics
then resamples and filters only that block, so the features equal those of the uncropped
volume (a test checks it) while a 512x512x300 CT series with a 2 cm lesion costs megabytes, not a
gigabyte per filter.

Series are processed in parallel by processes (:func:`extract_many`); PyRadiomics'
C extensions hold the GIL, so threads would not help.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

from oncopipe.errors import InputError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

PARAMS_DIR = Path(__file__).parent / "params"
DEFAULT_PARAMS = PARAMS_DIR / "radiomics-v1.yaml"

COLUMNS = ("patient_key", "series_key", "roi", "feature", "value", "params_hash", "run_id")


class RadiomicsError(InputError):
    """A volume or mask cannot be used for feature extraction."""

    reason_code = "radiomics-failed"


@dataclass(frozen=True)
class Params:
    """A PyRadiomics parameter file and the hash recorded with its features."""

    path: Path
    text: str
    hash: str


def _yaml() -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True)


@cache
def _parse(text: str) -> Any:
    """The parameter file's YAML, parsed once per process per text (pure ruamel: ~30 ms)."""
    return _yaml().load(text)


def load_params(path: Path | str | None = None) -> Params:
    """Return the parameter file (the repository's v1 by default) with its hash.

    The hash covers the file's bytes and the PyRadiomics version, so a new PyRadiomics
    release yields new hashes for the same file.

    Raises:
        ConfigError: the file is missing or PyRadiomics rejects it.
    """
    from oncopipe.errors import ConfigError

    p = Path(path) if path else DEFAULT_PARAMS
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the radiomics parameter file ({e.strerror})") from e
    try:
        parsed = _parse(text)
    except Exception as e:  # ruamel raises many types; all mean "not YAML"
        raise ConfigError(f"{p}: not a YAML parameter file ({type(e).__name__})") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"{p}: a parameter file is a mapping (setting, imageType, ...)")
    version = _pyradiomics_version()
    digest = hashlib.sha256(text.encode("utf-8") + b"\0pyradiomics " + version.encode())
    return Params(path=p, text=text, hash=f"sha256:{digest.hexdigest()[:16]}")


@cache
def _pyradiomics_version() -> str:
    """``radiomics.__version__``, read without importing PyRadiomics.

    ``import radiomics`` loads SimpleITK, NumPy and PyWavelets (~0.3-0.5 s); the hash is
    needed before any extraction (and alone, when a rerun skips finished series). The
    package keeps its version in ``radiomics/_version.py`` (versioneer), so that one small
    file is executed on its own; the string is the one ``__version__`` holds, so hashes do
    not change. Any other layout falls back to the import.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("radiomics")  # locates, does not import
        locations = list(spec.submodule_search_locations or []) if spec else []
        if locations:
            path = Path(locations[0]) / "_version.py"
            version_spec = importlib.util.spec_from_file_location("_oncopipe_radiomics_v", path)
            if version_spec and version_spec.loader and path.is_file():
                module = importlib.util.module_from_spec(version_spec)
                version_spec.loader.exec_module(module)
                return str(module.get_versions()["version"])
    except Exception:  # noqa: BLE001 - any surprise in the layout: ask the package itself
        log.debug("radiomics/_version.py not readable on its own; importing radiomics")
    import radiomics

    return str(radiomics.__version__)


def _settings(params: Params) -> dict[str, Any]:
    return dict(_parse(params.text).get("setting") or {})


def _array_min(*args: Any, **kwargs: Any) -> Any:
    return _array_extreme(builtins.min, "min", args, kwargs)


def _array_max(*args: Any, **kwargs: Any) -> Any:
    return _array_extreme(builtins.max, "max", args, kwargs)


def _array_extreme(builtin: Callable[..., Any], method: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:  # fmt: skip
    """``builtin(*args, **kwargs)``, in numpy for one non-empty 1-D array of numbers.

    The same value and type as the built-in (the element, a numpy scalar); an array with
    NaN, and every other call, goes to the built-in itself, whose answer then depends on
    the order of the values as it always did.
    """
    import numpy as np

    if len(args) == 1 and not kwargs:
        values = args[0]
        if (type(values) is np.ndarray and values.ndim == 1 and values.size
                and values.dtype.kind in "biuf"):  # fmt: skip
            extreme = getattr(values, method)()
            if extreme == extreme:  # not NaN
                return extreme
    return builtin(*args, **kwargs)


@cache
def _numpy_extremes_in_pyradiomics() -> None:
    """Give PyRadiomics' ``imageoperations`` a numpy ``min``/``max`` (once per process).

    ``getBinEdges`` takes the minimum and maximum of the ROI's values with Python's
    built-in ``min``/``max``, which walk a numpy array one boxed element at a time: 84
    calls per ROI with the v1 parameters, 0.16-0.28 s of a 0.95 s extraction on the
    benchmark's small scan (``benchmarks/profiles.md`` §1). Module globals shadow the
    built-ins for that module only, and the wrappers hand every call that is not one
    plain numeric array back to the built-ins, so the bin edges, and so the features, are
    identical (``tests/unit/test_radiomics.py`` compares every feature with and without).
    An upstream fix would be ``numpy.min``/``numpy.max`` in ``getBinEdges``.
    """
    from radiomics import imageoperations

    imageoperations.min = _array_min  # type: ignore[attr-defined]
    imageoperations.max = _array_max  # type: ignore[attr-defined]


@cache
def _extractor(path: str, text: str) -> Any:
    """A configured extractor per parameter file (cached per process).

    It gets the file's mapping as :func:`load_params` parsed it (a copy: PyRadiomics keeps
    parts of it), which PyRadiomics validates like a file without reading it again.
    """
    import copy

    from radiomics import featureextractor

    _numpy_extremes_in_pyradiomics()

    # PyRadiomics warns once per image that symmetric GLCMs make SumAverage redundant
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(_parse(text)))


def _margin_voxels(settings: Mapping[str, Any], spacing: Sequence[float]) -> list[int]:
    """Voxels to keep around the ROI per axis (x, y, z) so cropping changes nothing."""
    pad = float(settings.get("padDistance", 5))
    new = settings.get("resampledPixelSpacing") or spacing
    # PyRadiomics pads `pad` voxels of the resampled grid; B-spline needs 2 more of ours
    return [math.ceil(pad * float(n or s) / s) + 3 for n, s in zip(new, spacing, strict=True)]


def _grid_step(old: float, new: float, limit: int) -> int:
    """Smallest voxel count q with q * old a whole multiple of new (0 if none up to limit).

    PyRadiomics lays its resampled grid from the image's corner; a crop that starts a
    whole number of new voxels from that corner keeps every resampled point in place.
    """
    for q in range(1, limit + 1):
        ratio = q * old / new
        if abs(ratio - round(ratio)) < 1e-6:
            return q
    return 0


def crop_to_roi(
    volume: Any, mask: Any, margin_xyz: Sequence[int], step_xyz: Sequence[int] = (1, 1, 1)
) -> tuple[Any, Any, Any]:
    """Return (volume block, mask block, z/y/x start index) around the mask's bounding box.

    Each start is rounded down to a multiple of ``step_xyz`` (0 = do not crop that axis).

    Raises:
        ValueError: the mask is empty.
    """
    import numpy as np

    nz = np.nonzero(mask)
    if not nz[0].size:
        raise ValueError("empty mask")
    start, stop = [], []
    for axis, m, q in zip(range(3), margin_xyz[::-1], step_xyz[::-1], strict=True):
        if q == 0:
            start.append(0)
            stop.append(volume.shape[axis])
            continue
        first = max(0, int(nz[axis].min()) - m)
        start.append(first - first % q)
        stop.append(min(volume.shape[axis], int(nz[axis].max()) + 1 + m))
    block = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    return volume[block], mask[block], start


def _image(array: Any, geometry: Any, start_zyx: Sequence[int]) -> Any:
    """SimpleITK image of a block of the volume, placed where it lies in patient space."""
    from oncopipe.imaging.volume import to_sitk

    image = to_sitk(array, geometry)
    # shift the origin to the block's first voxel: index (x, y, z) -> physical point
    z, y, x = start_zyx
    image.SetOrigin(image.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
    return image


def extract_roi(
    volume_hu: Any, mask: Any, geometry: Any, params: Params, *, crop: bool = True
) -> dict[str, float]:
    """Return feature name -> value for one ROI of a volume in Hounsfield units.

    ``volume_hu`` and ``mask`` are (z, y, x) numpy arrays on ``geometry``'s grid. With
    ``crop`` (the default) only the ROI's neighbourhood is handed to PyRadiomics.

    Raises:
        RadiomicsError: the ROI is empty or too small for the parameter file's minimum.
    """
    import numpy as np

    settings = _settings(params)
    mask = (np.asarray(mask) > 0).astype(np.uint8)
    if not mask.any():
        raise RadiomicsError(geometry.series_uid, "the ROI's mask is empty")
    start = [0, 0, 0]
    if crop:
        new_spacing = settings.get("resampledPixelSpacing") or geometry.spacing
        steps = [_grid_step(float(o), float(n or o), size)
                 for o, n, size in zip(geometry.spacing, new_spacing, geometry.dimensions,
                                       strict=True)]  # fmt: skip
        volume_hu, mask, start = crop_to_roi(
            volume_hu, mask, _margin_voxels(settings, geometry.spacing), steps
        )
    image = _image(np.ascontiguousarray(volume_hu, dtype=np.float32), geometry, start)
    label = _image(np.ascontiguousarray(mask), geometry, start)
    extractor = _extractor(str(params.path), params.text)
    try:
        result = extractor.execute(image, label, label=int(settings.get("label", 1)))
    except (ValueError, RuntimeError) as e:
        # PyRadiomics raises ValueError for ROIs under minimumROISize/Dimensions
        raise RadiomicsError(geometry.series_uid, f"PyRadiomics refused the ROI: {e}") from e
    return {
        name: float(value) for name, value in result.items() if not name.startswith("diagnostics_")
    }


def to_hounsfield(volume: Any, geometry: Any) -> Any:
    """Return the stored values rescaled to modality units (float32)."""
    import numpy as np

    return volume.astype(np.float32) * float(geometry.rescale_slope) + float(
        geometry.rescale_intercept
    )


@dataclass(frozen=True)
class SeriesFeatures:
    """Features of every ROI of one series, as long-format rows."""

    patient_key: str
    series_key: str
    rows: list[dict[str, Any]]
    rois: list[str]
    skipped: dict[str, str]  # ROI -> why it has no features

    @property
    def feature_count(self) -> int:
        return len(self.rows)


def extract_series(
    volume_path: Path,
    masks_path: Path | None,
    params: Params,
    *,
    patient_key: str = "",
    run_id: str = "",
) -> SeriesFeatures:
    """Extract every ROI's features from a volume file and its masks file.

    Without ``masks_path`` the masks file beside the volume in the curated layout
    (``.../volumes/<pk>/<series>.parquet`` -> ``.../masks/<pk>/<series>.parquet``) is used.
    An ROI PyRadiomics refuses (too small) is skipped with the reason; a series with no
    usable ROI raises.

    Raises:
        RadiomicsError: no masks file, masks on another grid, or no ROI with features.
    """
    from oncopipe.imaging.masks import read_masks
    from oncopipe.imaging.volume import read_volume

    masks_path = masks_path or sibling_masks(volume_path)
    if masks_path is None or not masks_path.exists():
        raise RadiomicsError(
            str(volume_path), "no masks file for this volume (give --mask FILE.parquet)"
        )
    volume, geometry = read_volume(volume_path)
    masks, mask_geometry = read_masks(masks_path)
    if mask_geometry.series_uid != geometry.series_uid or (
        mask_geometry.dimensions != geometry.dimensions
    ):
        raise RadiomicsError(str(masks_path), "the masks are not on this volume's grid")
    hu = to_hounsfield(volume, geometry)
    series_key = geometry.series_uid
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for roi in sorted(masks):
        try:
            features = extract_roi(hu, masks[roi], geometry, params)
        except RadiomicsError as e:
            skipped[roi] = str(e).split(": ", 1)[-1]
            continue
        rows.extend(
            {"patient_key": patient_key, "series_key": series_key, "roi": roi,
             "feature": name, "value": value, "params_hash": params.hash, "run_id": run_id}
            for name, value in sorted(features.items())
        )  # fmt: skip
    if not rows:
        raise RadiomicsError(str(volume_path), f"no ROI has features: {skipped}")
    rois = sorted({r["roi"] for r in rows})
    return SeriesFeatures(patient_key, series_key, rows, rois, skipped)


def sibling_masks(volume_path: Path) -> Path | None:
    """The masks file that belongs to a volume file, if there is one.

    ``X.masks.parquet`` beside ``X.parquet`` (what ``oncopipe dicom-to-parquet`` writes),
    else the curated layout's ``.../masks/<pk>/<series>.parquet`` for
    ``.../volumes/<pk>/<series>.parquet``.
    """
    beside = volume_path.with_name(volume_path.stem + ".masks.parquet")
    if beside.exists():
        return beside
    parts = list(volume_path.parts)
    if "volumes" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("volumes")
    parts[i] = "masks"
    return Path(*parts)


def schema() -> Any:
    """Return the pyarrow schema of the radiomics table (:data:`oncopipe.catalog.RADIOMICS`)."""
    from oncopipe import catalog

    return catalog.arrow_schema(catalog.RADIOMICS)


def _column(values: list[Any], type_: Any) -> Any:
    """A pyarrow array of str or float values, built from its buffers.

    ``pa.array`` (and ``Table.from_pylist``) import pandas on first use, 0.2-0.3 s of a
    one-scan job (``benchmarks/profiles.md``); ``from_buffers`` does not. Anything else
    (None, other types, over 2 GiB of text) goes through ``pa.array``.
    """
    import numpy as np
    import pyarrow as pa

    if type_ == pa.float64() and all(type(v) is float for v in values):
        data = pa.py_buffer(np.array(values, np.float64))
        return pa.Array.from_buffers(type_, len(values), [None, data])
    if type_ == pa.string() and all(type(v) is str for v in values):
        encoded = [v.encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        if offsets[-1] < 2**31:
            bounds, text = pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))
            return pa.StringArray.from_buffers(len(encoded), bounds, text)
    return pa.array(values, type_)


def write_features(rows: Iterable[Mapping[str, Any]], out: Path) -> int:
    """Write feature rows as zstd Parquet; return the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    table = pa.Table.from_arrays(
        [_column([r.get(f.name) for r in rows], f.type) for f in schema()], schema=schema()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(out), compression="zstd")
    return len(rows)


@dataclass(frozen=True)
class Job:
    """One series to extract (paths are local files)."""

    volume: Path
    masks: Path | None
    patient_key: str = ""
    run_id: str = ""


def _run(job: Job, params: Params) -> SeriesFeatures | RadiomicsError:
    # the loaded Params travel to the worker (a few KB pickled): no re-read, re-parse, re-hash
    try:
        return extract_series(job.volume, job.masks, params,
                              patient_key=job.patient_key, run_id=job.run_id)  # fmt: skip
    except RadiomicsError as e:
        return e


def _limit_threads(threads: int) -> None:
    """Share the CPUs between worker processes (SimpleITK filters use every core)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def in_processes(work: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[tuple[T, R]]:
    """Run ``work`` on each item, ``workers`` processes at a time; yield in order.

    The one process pool of the radiomics stage (files and object storage alike): spawned
    processes (PyRadiomics and SimpleITK hold threads a fork would copy half-initialised),
    each with its share of the CPUs for SimpleITK's filters. ``work`` must be picklable (a
    module-level function or a :func:`functools.partial` of one). One item, or one worker,
    runs here without a pool.
    """
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, work(item)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_limit_threads, initargs=(threads,)) as pool:  # fmt: skip
        futures = [pool.submit(work, item) for item in items]
        for item, future in zip(items, futures, strict=True):
            yield item, future.result()


def extract_many(
    jobs: Sequence[Job],
    params: Params,
    *,
    workers: int = 1,
    progress: Callable[[Job, SeriesFeatures | RadiomicsError], None] | None = None,
) -> Iterator[tuple[Job, SeriesFeatures | RadiomicsError]]:
    """Extract several series, ``workers`` processes at a time; yield results in order.

    A series that fails yields its :class:`RadiomicsError` instead of stopping the rest.
    """
    for job, result in in_processes(partial(_run, params=params), jobs, workers):
        if progress:
            progress(job, result)
        yield job, result
