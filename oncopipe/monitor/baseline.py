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
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

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


def training_baseline(
    histograms_dir: Path | str | None,
    patients: Collection[str],
    *,
    features: Mapping[str, Histogram | Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the baseline document of a model trained on ``patients``.

    ``features`` are further monitors by name (:mod:`oncopipe.monitor.modalities`: the
    predictions' histogram, radiomics features, note concepts).

    ``model_package_arn`` is left empty: the package does not exist yet; deployment fills
    it in when it publishes the baseline.
    """
    vaf = training_vaf(histograms_dir, patients) if histograms_dir is not None else {}
    return baseline_document(vaf, model_package_arn="", features=features)
