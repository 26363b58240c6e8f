"""Drift baselines and day windows of the model's other inputs and of its output.

Monitors beside ``vaf/...``, each a :class:`Histogram` the drift job compares unchanged:

- ``radiomics/<feature>``: each radiomic feature the model reads (``preprocess.json``
  ``radiomic_features``), over each patient's largest ROI as the cohort picks it. The
  baseline's ``cuts`` are the training deciles (deduplicated: no bin is empty); a window
  value counts in the bin of the cuts it falls in, outside them in the end bins. The
  ``edges`` are the training CDF at the cuts (0 ... 1), so Wasserstein-1 reads in baseline
  quantiles whatever the unit (``original_firstorder_Energy`` ~1e7, ``Sphericity`` ~1): a
  window moved from the median to the 70th percentile reads ~0.2.
- ``notes/concepts``: concept-token frequencies (``"<concept>=<value>"``, as the model's
  vocabulary spells them), a bin per baseline ``categories`` entry, the last
  :data:`OTHER`; edges are the bin numbers 0 ... K. Its alarm distance is Jensen-Shannon.
- ``predictions/probability``: the predicted response probability, 20 bins of 0.05.

Day windows. The radiomics and note-concept tables are not partitioned by day (keys are
``<prefix><patient_key>/<item>.parquet``): a window is the data files named by the table's
*symlink files* (:mod:`oncopipe.catalog`, written when an item commits) whose S3
LastModified is on that UTC day: committed outputs only, by commit day (a rerun that
commits again counts again). Predictions come from the endpoint's data capture, which
SageMaker partitions by UTC hour (``data-capture/<endpoint>/<variant>/yyyy/mm/dd/hh/``):
only that day's folders are listed.

Errors name the S3 key (and a capture file's line), never a record's content: a request
is patient data.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any

import numpy as np

from oncopipe import catalog, layout
from oncopipe.cohort.dataset import PAD, UNK
from oncopipe.cohort.preprocess import VOLUME_FEATURE, note_token
from oncopipe.monitor.histogram import Histogram, HistogramError

RADIOMICS, NOTES, PREDICTIONS = "radiomics", "notes", "predictions"
NOTES_MONITOR = "notes/concepts"
PREDICTIONS_MONITOR = "predictions/probability"
#: Quantile bins of a radiomic feature (fewer where training values tie).
RADIOMICS_BINS = 10
#: Categories of the notes baseline when no vocabulary is given (the most frequent).
NOTES_MAX_CATEGORIES = 50
#: The label of the notes bin every token outside the baseline's categories goes to.
OTHER = "(other)"
#: Bins of the predicted probability: 20 of 0.05 (the last includes 1.0).
PROBABILITY_EDGES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(21))
RADIOMICS_COLUMNS = ("patient_key", "series_key", "roi", "feature", "value")
NOTES_COLUMNS = ("patient_key", "note_id", "concept", "value")


class WindowError(HistogramError):
    """A window's input cannot be read; the message names the S3 key (and line), not data."""


def _doc(h: Histogram, **extra: Any) -> dict[str, Any]:
    return {"edges": list(h.edges), "counts": list(h.counts), "samples": h.samples, **extra}


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def monitors_of(baseline: Mapping[str, Any], kind: str) -> dict[str, Mapping[str, Any]]:
    """Return the baseline's monitor documents of ``kind`` (``radiomics``, ...), by name."""
    monitors: Mapping[str, Any] = baseline.get("monitors") or {}
    return {n: d for n, d in monitors.items() if n.split("/", 1)[0] == kind}


# -- radiomics ----------------------------------------------------------------------------


def radiomics_values(
    rows: Iterable[Mapping[str, Any]], features: Sequence[str]
) -> dict[str, list[float]]:
    """Return each feature's values (one per patient) from long-format radiomics rows.

    Each patient counts once, with the ROI the cohort uses: the largest
    ``original_shape_VoxelVolume``, ties and ROIs without it by series key then ROI name.
    Missing and non-finite values are left out.
    """
    rois: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if not r.get("patient_key"):
            continue
        at = (str(r["patient_key"]), str(r.get("series_key") or ""), str(r.get("roi") or ""))
        values = rois.setdefault(at, {})
        x = _finite(r.get("value"))
        if x is not None:
            values[str(r.get("feature"))] = x
    best: dict[str, tuple[tuple[float, str, str], dict[str, float]]] = {}
    for (patient, series, roi), values in rois.items():
        rank = (-values.get(VOLUME_FEATURE, -math.inf), series, roi)
        if patient not in best or rank < best[patient][0]:
            best[patient] = (rank, values)
    out: dict[str, list[float]] = {f: [] for f in features}
    for patient in sorted(best):
        values = best[patient][1]
        for f in features:
            if f in values:
                out[f].append(values[f])
    return out


def _bins(values: Sequence[float] | np.ndarray, cuts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the counts of ``values`` in the bins of ``cuts`` (outer bins open)."""
    cut = np.asarray(cuts, dtype=float)
    index = np.clip(np.searchsorted(cut, np.asarray(values, dtype=float), side="right") - 1,
                    0, len(cut) - 2)  # fmt: skip
    return np.bincount(index, minlength=len(cut) - 1)


def quantile_monitor(
    values: Sequence[float], *, bins: int = RADIOMICS_BINS
) -> dict[str, Any] | None:
    """Return the baseline document of one numeric feature, or None (fewer than 2 values).

    ``cuts`` are the ``bins``-quantiles of ``values`` (training values themselves,
    deduplicated), ``edges`` the share of ``values`` below each cut (see the module doc).
    """
    x = np.asarray([v for v in values if _finite(v) is not None], dtype=float)
    if len(np.unique(x)) < 2:
        return None
    cuts = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1), method="inverted_cdf"))
    counts = _bins(x, cuts)  # each bin holds its lower cut, a training value: none is empty
    edges = np.concatenate([[0.0], np.cumsum(counts) / len(x)])
    edges[-1] = 1.0
    h = Histogram(tuple(float(e) for e in edges), tuple(int(c) for c in counts), len(x))
    return _doc(h, binning="quantile", cuts=[float(c) for c in cuts])


def radiomics_baseline(
    rows: Iterable[Mapping[str, Any]], *, features: Sequence[str], bins: int = RADIOMICS_BINS
) -> dict[str, dict[str, Any]]:
    """Return the radiomics monitors (``radiomics/<feature>`` -> document) of training rows.

    ``rows`` are the radiomics table's rows (``patient_key``, ``series_key``, ``roi``,
    ``feature``, ``value``) of the training patients; ``features`` are the model's
    (``Preprocessing.radiomic_features``). A feature with fewer than two distinct values
    is not monitored (nothing to bin). Pass the result as ``features`` of
    :func:`oncopipe.monitor.job.baseline_document`.
    """
    return radiomics_monitors(radiomics_values(rows, features), bins=bins)


def radiomics_monitors(
    values: Mapping[str, Sequence[float] | np.ndarray], *, bins: int = RADIOMICS_BINS
) -> dict[str, dict[str, Any]]:
    """Return the radiomics monitors of each feature's training values (one per patient).

    ``values`` maps a feature (as the radiomics table names it) to its values, in the
    table's units; a feature with fewer than two distinct finite values is not monitored.
    """
    monitors = {}
    for feature, xs in values.items():
        doc = quantile_monitor(list(xs), bins=bins)
        if doc is not None:
            monitors[f"{RADIOMICS}/{feature}"] = doc
    return monitors


def radiomics_window(
    rows: Iterable[Mapping[str, Any]], baseline: Mapping[str, Any]
) -> dict[str, Histogram]:
    """Return the window of each radiomics monitor of ``baseline``, counted on its cuts.

    Raises:
        HistogramError: a radiomics monitor of the baseline has no valid ``cuts``.
    """
    monitors = monitors_of(baseline, RADIOMICS)
    features = [name.split("/", 1)[1] for name in monitors]
    values = radiomics_values(rows, features)
    windows = {}
    for name, doc in monitors.items():
        cuts = doc.get("cuts")
        if not isinstance(cuts, list) or len(cuts) != len(doc.get("edges", ())):
            raise HistogramError(f"baseline monitor {name}: no cuts matching its edges")
        xs = values[name.split("/", 1)[1]]
        counts = _bins(xs, cuts)
        windows[name] = Histogram(tuple(float(e) for e in doc["edges"]),
                                  tuple(int(c) for c in counts), len(xs))  # fmt: skip
    return windows


# -- note concepts ------------------------------------------------------------------------


def concept_token(row: Mapping[str, Any]) -> str:
    """Return a concept mention's category: ``"<concept>=<value>"`` or ``"<concept>"``."""
    return note_token(str(row.get("concept")), row.get("value"))


def categorical(tokens: Iterable[str], categories: Sequence[str], samples: int) -> Histogram:
    """Return the histogram of ``tokens`` on ``categories`` plus a last bin for the rest."""
    index = {c: i for i, c in enumerate(categories)}
    counts = [0] * (len(categories) + 1)
    for t in tokens:
        counts[index.get(t, len(categories))] += 1
    return Histogram(tuple(float(i) for i in range(len(counts) + 1)), tuple(counts), samples)


def _notes(rows: Iterable[Mapping[str, Any]]) -> tuple[list[str], int]:
    tokens, notes = [], set()
    for r in rows:
        if r.get("concept") is None:
            continue
        tokens.append(concept_token(r))
        notes.add((r.get("patient_key"), r.get("note_id")))
    return tokens, len(notes)


def notes_baseline(
    rows: Iterable[Mapping[str, Any]],
    *,
    vocabulary: Sequence[str] | None = None,
    max_categories: int = NOTES_MAX_CATEGORIES,
) -> dict[str, dict[str, Any]]:
    """Return the ``notes/concepts`` monitor of the training patients' concept rows.

    The categories are ``vocabulary`` (the model's ``Preprocessing.note_tokens``; ``[PAD]``
    and ``[UNK]`` are dropped) or else the ``max_categories`` most frequent tokens of
    ``rows``; the document's ``categories`` ends with :data:`OTHER`. Samples are notes.
    Pass the result as ``features`` of :func:`oncopipe.monitor.job.baseline_document`.
    """
    tokens, notes = _notes(rows)
    return notes_monitor(tokens, notes=notes, vocabulary=vocabulary,
                         max_categories=max_categories)  # fmt: skip


def notes_monitor(
    tokens: Sequence[str],
    *,
    notes: int,
    vocabulary: Sequence[str] | None = None,
    max_categories: int = NOTES_MAX_CATEGORIES,
) -> dict[str, dict[str, Any]]:
    """Return the ``notes/concepts`` monitor of concept tokens (as :func:`concept_token`).

    ``notes`` is the number of notes the tokens come from (the samples); the categories are
    chosen as by :func:`notes_baseline`.
    """
    if vocabulary is None:
        ranked = sorted(Counter(tokens).items(), key=lambda item: (-item[1], item[0]))
        categories = [t for t, _ in ranked[:max_categories]]
    else:
        categories = list(dict.fromkeys(t for t in vocabulary if t not in (PAD, UNK, OTHER)))
    h = categorical(tokens, categories, notes)
    return {NOTES_MONITOR: _doc(h, binning="categorical", categories=[*categories, OTHER])}


def notes_window(
    rows: Iterable[Mapping[str, Any]], baseline: Mapping[str, Any]
) -> dict[str, Histogram]:
    """Return the ``notes/concepts`` window on the baseline's categories ({} if it has none).

    Raises:
        HistogramError: the baseline's monitor has no ``categories`` matching its bins.
    """
    doc = monitors_of(baseline, NOTES).get(NOTES_MONITOR)
    if doc is None:
        return {}
    labels = doc.get("categories")
    if not isinstance(labels, list) or len(labels) != len(doc.get("counts", ())):
        raise HistogramError(f"baseline monitor {NOTES_MONITOR}: no categories for its bins")
    tokens, notes = _notes(rows)
    return {NOTES_MONITOR: categorical(tokens, [str(c) for c in labels[:-1]], notes)}


# -- predictions --------------------------------------------------------------------------


def predictions_histogram(probabilities: Iterable[float]) -> Histogram:
    """Return the histogram of predicted probabilities (one sample per prediction)."""
    values = list(probabilities)
    return Histogram.of(values, PROBABILITY_EDGES, samples=len(values))


def predictions_baseline(probabilities: Iterable[float]) -> dict[str, dict[str, Any]]:
    """Return the ``predictions/probability`` monitor of the model's training predictions.

    Pass the result as ``features`` of :func:`oncopipe.monitor.job.baseline_document`.
    """
    return {PREDICTIONS_MONITOR: _doc(predictions_histogram(probabilities))}


def capture_probabilities(body: bytes, *, where: str) -> list[float]:
    """Return the ``response_probability`` of every prediction in a data-capture file.

    ``body`` is SageMaker data capture (JSON Lines); each record's
    ``captureData.endpointOutput`` holds the response (:func:`training.inference.output_fn`:
    one object or a list), its ``data`` encoded as ``encoding`` says (``BASE64``, the
    default, or ``JSON``). ``where`` names the file in errors.

    Raises:
        WindowError: a record that is not such a capture; names ``where`` and the line.
    """
    out: list[float] = []
    for n, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        # "from None": a decoder's own message may quote the record, which is patient data
        try:
            record = json.loads(line)
            output = record["captureData"]["endpointOutput"]
            data, encoding = output["data"], str(output.get("encoding", "BASE64")).upper()
        except (ValueError, KeyError, TypeError):
            raise WindowError(f"{where}, line {n}: not a data-capture record with "
                              "captureData.endpointOutput.data") from None  # fmt: skip
        if encoding not in ("BASE64", "JSON"):
            raise WindowError(f"{where}, line {n}: the output encoding is not BASE64 or JSON")
        try:
            if encoding == "BASE64":
                response = json.loads(base64.b64decode(data, validate=True))
            else:
                response = json.loads(data) if isinstance(data, str | bytes) else data
        except (ValueError, TypeError, binascii.Error):
            raise WindowError(f"{where}, line {n}: the {encoding} output is not JSON") from None
        for i, result in enumerate(response if isinstance(response, list) else [response]):
            p = _finite(result.get("response_probability")) if isinstance(result, dict) else None
            if p is None or not 0.0 <= p <= 1.0:
                raise WindowError(f"{where}, line {n}: result {i} has no response_probability "
                                  "in [0, 1]")  # fmt: skip
            out.append(p)
    return out


# -- reading a day from S3 ----------------------------------------------------------------


def _keys(s3: Any, bucket: str, prefix: str) -> Iterable[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def committed_on(s3: Any, bucket: str, table: str, day: str) -> list[str]:
    """Return the keys of ``table``'s data files committed on ``day`` (UTC), sorted.

    A data file counts when a symlink file naming it was last modified that day.

    Raises:
        WindowError: a symlink file names a file outside the table (names it and the line).
    """
    spec, keys = catalog.TABLES[table], set()
    for item in _keys(s3, bucket, catalog.symlink_prefix(table)):
        if item["LastModified"].astimezone(UTC).strftime("%Y-%m-%d") != day:
            continue
        body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for n, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            target, _, key = line.strip().removeprefix("s3://").partition("/")
            if (
                not line.startswith("s3://")
                or target != bucket
                or catalog.table_for_key(key) is not spec
            ):
                raise WindowError(f"s3://{bucket}/{item['Key']}, line {n}: not a data file of "
                                  f"table {table}")  # fmt: skip
            keys.add(key)
    return sorted(keys)


def _committed_rows(s3: Any, bucket: str, table: str, day: str,
                    columns: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Return the rows (``columns`` only) of ``table``'s files committed on ``day``.

    Raises:
        ImportError: pyarrow is not installed (before anything is read).
        WindowError: a bad symlink file, or a file that is not Parquet with the columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for key in committed_on(s3, bucket, table, day):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            data = pq.read_table(io.BytesIO(body), columns=list(columns))
        except (pa.ArrowException, KeyError, OSError) as e:
            raise WindowError(f"s3://{bucket}/{key}: not Parquet with columns "
                              f"{', '.join(columns)} ({type(e).__name__})") from None  # fmt: skip
        rows.extend(data.to_pylist())
    return rows


def read_radiomics_window(s3: Any, *, bucket: str, day: str,
                          baseline: Mapping[str, Any]) -> dict[str, Histogram]:  # fmt: skip
    """Return the radiomics windows of ``day`` (curated ``imaging/radiomics/``, by commit day).

    Raises:
        WindowError: an unreadable symlink or Parquet file.
        HistogramError: the baseline's radiomics monitors lack their cuts.
        ImportError: pyarrow is not installed.
    """
    if not monitors_of(baseline, RADIOMICS):
        return {}
    rows = _committed_rows(s3, bucket, catalog.RADIOMICS.name, day, RADIOMICS_COLUMNS)
    return radiomics_window(rows, baseline)


def read_notes_window(s3: Any, *, bucket: str, day: str,
                      baseline: Mapping[str, Any]) -> dict[str, Histogram]:  # fmt: skip
    """Return the ``notes/concepts`` window of ``day`` (curated ``notes/concepts/``).

    Raises: as :func:`read_radiomics_window` (the monitor lacks its categories).
    """
    if not monitors_of(baseline, NOTES):
        return {}
    rows = _committed_rows(s3, bucket, catalog.NOTE_CONCEPTS.name, day, NOTES_COLUMNS)
    return notes_window(rows, baseline)


def capture_day_keys(s3: Any, *, bucket: str, endpoint_name: str, day: str) -> list[str]:
    """Return the data-capture files of ``endpoint_name`` (every variant) of ``day``."""
    root = f"{layout.ARTIFACTS_DATA_CAPTURE}{endpoint_name}/"
    folder = day.replace("-", "/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root, Delimiter="/")
    variants = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    return sorted(item["Key"] for v in variants for item in _keys(s3, bucket, f"{v}{folder}/")
                  if item["Key"].endswith(".jsonl"))  # fmt: skip


def read_predictions_window(s3: Any, *, bucket: str, endpoint_name: str,
                            day: str) -> dict[str, Histogram]:  # fmt: skip
    """Return the ``predictions/probability`` window of ``day`` from the endpoint's capture.

    Raises:
        ValueError: an empty ``endpoint_name``.
        WindowError: a malformed capture record (names the key and line).
    """
    if not endpoint_name or "/" in endpoint_name:
        raise ValueError("read_predictions_window needs an endpoint name without '/'")
    probabilities: list[float] = []
    for key in capture_day_keys(s3, bucket=bucket, endpoint_name=endpoint_name, day=day):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        probabilities += capture_probabilities(body, where=f"s3://{bucket}/{key}")
    return {PREDICTIONS_MONITOR: predictions_histogram(probabilities)}
