"""The drift baseline of a trained model: the histograms of the samples it was trained on.

The pipeline's evaluation step (:func:`training.evaluate.score`) writes the baseline beside
``evaluation.json``; the register step attaches it to the model package as its data-quality
statistics, and deployment on approval copies it to the key the drift job reads
(:func:`oncopipe.monitor.job.baseline_key`). So the baseline always belongs to the model
version that serves, and a rollback brings its own baseline back.

The VAF part comes from the per-sample histogram documents of the variants stage
(``genomics/vaf-histograms/day=<day>/<patient key>/<sample>.json``): those of the
training split's patients, summed per stratum. The patient key is read from the document's
path (the documents themselves name no sample).

The radiomics and note-concept parts (:func:`cohort_monitors`) come from the training
split of the cohort dataset the model was trained on, on the features and the token
spelling the drift job's window readers use (:mod:`oncopipe.monitor.modalities`), so a day
of patients like the training ones scores about 0.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from oncopipe.monitor import modalities
from oncopipe.monitor.histogram import VAF_EDGES, Histogram, HistogramError, Stratum, from_document
from oncopipe.monitor.job import baseline_document
from oncopipe.monitor.window import merge_by_stratum

BASELINE_FILE = "baseline.json"


def _patient_of(path: Path, root: Path) -> str | None:
    """The patient key of ``.../day=<day>/<patient>/<sample>.json`` (None: another layout)."""
    parts = path.relative_to(root).parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("day=") and i + 3 == len(parts):
            return parts[i + 1]
    return None


def _documents(root: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(root.rglob("*.json")):
        patient = _patient_of(path, root)
        if patient is not None:
            yield path, patient


def training_vaf(histograms_dir: Path | str, patients: Collection[str]) -> dict[Stratum, Histogram]:
    """Return the summed VAF histogram per stratum of ``patients``' samples.

    ``histograms_dir`` holds the documents under their curated layout (what a Processing
    input of ``genomics/vaf-histograms/`` downloads). Files in another layout are skipped;
    a missing folder gives no strata.

    Raises:
        HistogramError: a document that is not a histogram (names the file, not its data).
    """
    root = Path(histograms_dir)
    if not root.is_dir():
        return {}
    wanted = set(patients)
    items: list[tuple[Stratum, Histogram]] = []
    for path, patient in _documents(root):
        if patient not in wanted:
            continue
        try:
            items.append(from_document(json.loads(path.read_text(encoding="utf-8"))))
        except (ValueError, HistogramError) as e:
            reason = e if isinstance(e, HistogramError) else "not JSON"
            raise HistogramError(f"{path.relative_to(root)}: {reason}") from e
    return merge_by_stratum(items, VAF_EDGES)


def training_radiomics(train: Any, preprocessing: Any) -> dict[str, list[float]]:
    """Return each radiomic feature's values (one per patient) of cohort rows, in table units.

    ``train`` holds cohort rows (:data:`oncopipe.cohort.columns.COHORT_COLUMNS`, a pyarrow
    table); ``preprocessing`` is the dataset's :class:`~oncopipe.cohort.dataset.Preprocessing`.
    The cohort keeps each patient's largest ROI (the rule the window reader applies) as
    z-scores, ``(x - mean) / std`` clipped to +-10, in float32, and a missing value as 0
    (the mean); the drift job reads the curated table's raw values. So a value is
    ``z * std + mean``, and a z-score of exactly 0 is taken as missing, as the reader leaves
    missing values out (a float32 z-score is exactly 0 only for a value equal to the
    training mean). A clipped value comes back as mean +- 10 std: still in the outer bin.
    """
    features = list(preprocessing.radiomic_features)
    values: dict[str, list[float]] = {f: [] for f in features}
    rows = [v for v, has in zip(train.column("radiomic_values").to_pylist(),
                                train.column("has_radiomics").to_pylist(), strict=True)
            if has and v is not None and len(v) == len(features)]  # fmt: skip
    if not rows or not features:
        return values
    z = np.asarray(rows, dtype=np.float64)
    raw = z * np.asarray(preprocessing.radiomic_std) + np.asarray(preprocessing.radiomic_mean)
    raw[(z == 0.0) | ~np.isfinite(z)] = np.nan
    for j, feature in enumerate(features):
        column = raw[:, j]
        values[feature] = column[np.isfinite(column)].tolist()
    return values


def training_note_tokens(train: Any) -> tuple[list[str], int]:
    """Return the concept tokens of cohort rows and the number of notes they come from.

    The cohort's ``note_tokens`` are spelled as the window reader spells a concept row
    (:func:`oncopipe.cohort.dataset.note_token`: ``"<concept>=<value>"``); a note is a
    (patient, ``note_ids`` entry) pair, as the reader counts (patient key, note id).
    """
    tokens: list[str] = []
    notes: set[tuple[str, str]] = set()
    for patient, row_tokens, note_ids in zip(
        train.column("patient_key").to_pylist(),
        train.column("note_tokens").to_pylist(),
        train.column("note_ids").to_pylist(),
        strict=True,
    ):
        tokens += row_tokens or []
        notes.update((str(patient), str(n)) for n in note_ids or [])
    return tokens, len(notes)


def cohort_monitors(dataset: Any, *, split: str = "train") -> dict[str, dict[str, Any]]:
    """Return the radiomics and notes monitors of one split of a cohort dataset.

    ``dataset`` is a :class:`~oncopipe.cohort.dataset.CohortDataset`; ``split`` is the
    training split unless told otherwise. Radiomics: ``radiomics/<feature>`` for each of
    the dataset's ``radiomic_features`` (the model's) that has two distinct values
    (:func:`training_radiomics`). Notes: ``notes/concepts`` on the model's token vocabulary
    (``note_tokens``; tokens outside it count as :data:`~oncopipe.monitor.modalities.OTHER`).

    A split without note concepts gets no notes monitor: an empty baseline histogram has no
    distribution to compare a window with.

    Raises:
        ValueError: an unknown split name.
    """
    rows, prep = dataset.split(split), dataset.preprocessing
    monitors = modalities.radiomics_monitors(training_radiomics(rows, prep))
    tokens, notes = training_note_tokens(rows)
    if tokens:
        monitors.update(modalities.notes_monitor(tokens, notes=notes, vocabulary=prep.note_tokens))
    return monitors


def training_baseline(
    histograms_dir: Path | str | None,
    patients: Collection[str],
    *,
    features: Mapping[str, Histogram | Mapping[str, Any]] | None = None,
    dataset: Any = None,
) -> dict[str, Any]:
    """Return the baseline document of a model trained on ``patients``.

    ``dataset`` (a :class:`~oncopipe.cohort.dataset.CohortDataset`) adds the radiomics and
    notes monitors of its training split (:func:`cohort_monitors`). ``features`` are further
    monitors by name (:mod:`oncopipe.monitor.modalities`: the predictions' histogram).

    ``model_package_arn`` is left empty: the package does not exist yet; deployment fills
    it in when it publishes the baseline.
    """
    vaf = training_vaf(histograms_dir, patients) if histograms_dir is not None else {}
    monitors = {**(cohort_monitors(dataset) if dataset is not None else {}), **(features or {})}
    return baseline_document(vaf, model_package_arn="", features=monitors)
