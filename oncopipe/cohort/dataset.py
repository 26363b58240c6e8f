"""The cohort table: one row per labelled patient, joined from the three modalities.

:func:`build_dataset` joins the curated tables (variants, long-format radiomics, note
concepts) with the labels and returns a :class:`CohortDataset`: a pyarrow table with the
columns of :data:`COHORT_COLUMNS` and the :class:`Preprocessing` fitted on the training
split, which :func:`write_dataset` saves as ``dataset.parquet`` and ``preprocess.json``.
Serving applies the same :meth:`Preprocessing.encode_patient` to raw features, so a model
sees the same numbers in training and in production.

Rules (each is a decision a reader of the model's outputs may need):

* Splits are per patient, from ``sha256(f"{seed}:{patient_key}")``: a patient's split
  does not depend on who else is in the cohort, and no patient is in two splits.
* Only somatic calls count: variant rows with ``filter != "PASS"`` are dropped. A
  patient with any variant row (even only filtered ones) has ``has_genomics`` true.
  Alteration tokens are ``"<gene> <protein_change>"`` or ``"<gene> non-coding"``.
* Radiomics: when a patient has several series or ROIs, the ROI with the largest
  ``original_shape_VoxelVolume`` is used (the primary tumour is the largest lesion in
  the usual case; ties and ROIs without the volume feature go by series key then ROI
  name). Values are z-scored with the training split's per-feature mean and standard
  deviation (1 when constant), clipped to +-10; a missing feature becomes 0 (the mean).
* Note concepts become tokens ``"<concept>=<value>"`` (``"<concept>"`` without a value).
  Numeric values are z-scored per concept with the training split's statistics. Context
  is kept as bit flags (:data:`NOTE_FLAG_BITS`) rather than dropping negated or family
  mentions, so the model can learn that they do not count.
* Vocabularies (genes, alterations, note tokens) come from the training split only;
  rarer tokens than ``min_count`` map to ``[UNK]`` at training time.
* Patients without a label (null ``response``) are left out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oncopipe.cohort.columns import COHORT_COLUMNS
from oncopipe.cohort.preprocess import (
    VOLUME_FEATURE,
    Preprocessing,
    _number,
    alteration,
    note_token,
)
from oncopipe.errors import InputError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
PAD, UNK = "[PAD]", "[UNK]"
REQUIRED = {
    "variants": ("patient_key", "filter", "gene", "protein_change", "vaf"),
    "radiomics": ("patient_key", "series_key", "roi", "feature", "value"),
    "notes": (
        "patient_key",
        "note_id",
        "concept",
        "value",
        "numeric_value",
        "negated",
        "certainty",
        "temporality",
        "experiencer",
        "start",
        "end",
    ),
    "labels": ("patient_key", "response"),
}


class CohortError(InputError):
    """A table cannot be joined into the cohort (missing columns, no labelled patient)."""

    reason_code = "invalid-cohort"


def cohort_schema() -> Any:
    """Return the pyarrow schema of ``dataset.parquet`` (:data:`COHORT_COLUMNS`)."""
    from oncopipe import catalog

    return catalog.arrow_schema(COHORT_COLUMNS)


def split_of(
    patient_key: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> str:
    """Return the split of a patient: a pure function of key, seed and fractions."""
    digest = hashlib.sha256(f"{seed}:{patient_key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    total = float(sum(fractions))
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction / total
        if u < edge:
            return name
    return SPLITS[-1]


@dataclass(frozen=True)
class CohortDataset:
    """The cohort table (:data:`COHORT_COLUMNS`) and its fitted :class:`Preprocessing`."""

    table: Any  # pyarrow.Table
    preprocessing: Preprocessing

    def split(self, name: str) -> Any:
        """Return the rows of one split (``train``, ``validation`` or ``test``).

        Raises:
            ValueError: an unknown split name.
        """
        import pyarrow.compute as pc

        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
        return self.table.filter(pc.equal(self.table["split"], name))

    def counts(self) -> dict[str, int]:
        """Return patients per split."""
        splits = self.table["split"].to_pylist()
        return {s: splits.count(s) for s in SPLITS}


def _check(table: Any, name: str) -> None:
    missing = [c for c in REQUIRED[name] if c not in table.column_names]
    if missing:
        raise CohortError(f"{name} table", f"missing columns: {', '.join(missing)}")


def _largest_rois(radiomics: Any, keys: Sequence[str]) -> tuple[Any, list[str], list[Any]]:
    """Pick each patient's largest ROI; return (matrix, feature names, [(series, roi)]).

    The matrix is (len(keys), features) raw values, NaN where a feature is missing or the
    patient has no radiomics; the names are in the v1 order, unknown names sorted after.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from oncopipe.cohort.columns import radiomic_feature_names

    n = len(keys)
    key_array = pa.array(list(keys), pa.string())
    known = radiomic_feature_names()
    seen = set(pc.unique(radiomics["feature"]).to_pylist()) if radiomics.num_rows else set()
    names = [f for f in known if f in seen] + sorted(seen - set(known))
    chosen: list[Any] = [None] * n
    if not radiomics.num_rows:
        return np.full((n, len(names)), np.nan), names, chosen

    def codes(column: Any) -> tuple[Any, list[str]]:
        encoded = pc.dictionary_encode(pc.fill_null(column, "")).combine_chunks()
        return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_pylist()

    # an ROI is identified by integer codes (string joins over millions of rows are slow)
    patient = pc.fill_null(pc.index_in(radiomics["patient_key"], value_set=key_array), -1)
    patient = patient.to_numpy(zero_copy_only=False).astype(np.int64)
    series, series_names = codes(radiomics["series_key"])
    roi, roi_names = codes(radiomics["roi"])
    roi_code = (patient * len(series_names) + series) * len(roi_names) + roi
    column = pc.index_in(radiomics["feature"], value_set=pa.array(names, pa.string()))
    column = pc.fill_null(column, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.fill_null(radiomics["value"].cast(pa.float64()), float("nan")).to_numpy(
        zero_copy_only=False
    )
    volume_of: dict[int, float] = {}
    if VOLUME_FEATURE in names:
        is_volume = column == names.index(VOLUME_FEATURE)
        for code, v in zip(roi_code[is_volume].tolist(), values[is_volume].tolist(), strict=True):
            volume_of[code] = v if np.isfinite(v) else float("-inf")
    best: dict[int, tuple[float, str, str, int]] = {}
    for code in np.unique(roi_code[patient >= 0]).tolist():
        p, rest = divmod(code, len(series_names) * len(roi_names))
        s, r = divmod(rest, len(roi_names))
        # largest volume first; ties (and ROIs without a volume) by series key, ROI name
        rank = (-volume_of.get(code, float("-inf")), series_names[s], roi_names[r], code)
        if p not in best or rank < best[p]:
            best[p] = rank
    winners = np.array([rank[3] for rank in best.values()], dtype=np.int64)
    keep = np.isin(roi_code, winners) & (patient >= 0) & (column >= 0)
    matrix = np.full((n, len(names)), np.nan)
    matrix[patient[keep], column[keep]] = values[keep]
    for p, (_, series_key, roi_name, _) in best.items():
        chosen[p] = (series_key, roi_name)
    return matrix, names, chosen


def _group_rows(table: Any, keys: set[str]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table.to_pylist():
        if row["patient_key"] in keys:
            groups[row["patient_key"]].append(row)
    return groups


def _vocabulary(counts: Counter[str]) -> list[str]:
    return [PAD, UNK, *sorted(counts)]


def build_dataset(
    variants: Any,
    radiomics: Any,
    notes: Any,
    labels: Any,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    min_count: Mapping[str, int] | None = None,
) -> CohortDataset:
    """Join the modality tables with the labels into the cohort (see the module docstring).

    ``min_count`` (``genes``, ``alterations``, ``note_tokens``; defaults 2, 3, 2) is stored
    in the preprocessing for the model's vocabulary; the saved vocabularies hold every
    training token with its count threshold applied.

    Returns: the cohort table (one row per labelled patient, sorted by key) and the
    preprocessing fitted on the training split.

    Raises:
        CohortError: a table lacks a required column, or no patient is labelled.
        ValueError: ``fractions`` are not three non-negative numbers with a positive sum.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    for table, name in (
        (variants, "variants"),
        (radiomics, "radiomics"),
        (notes, "notes"),
        (labels, "labels"),
    ):
        _check(table, name)
    thresholds = {"genes": 2, "alterations": 3, "note_tokens": 2, **(min_count or {})}

    labelled = labels.filter(pc.is_valid(labels["response"]))
    eligible_col = (
        labelled["eligible"].to_pylist()
        if "eligible" in labelled.column_names
        else [None] * labelled.num_rows
    )
    label_of: dict[str, tuple[int, int | None]] = {}
    for pk, resp, elig in zip(
        labelled["patient_key"].to_pylist(),
        labelled["response"].to_pylist(),
        eligible_col,
        strict=True,
    ):
        label_of[pk] = (int(resp), None if elig is None else int(elig))
    keys = sorted(label_of)
    if not keys:
        raise CohortError("labels table", "no patient has a response label")
    key_set = set(keys)
    split = [split_of(k, seed, fractions) for k in keys]
    train = {k for k, s in zip(keys, split, strict=True) if s == "train"}

    variant_rows = _group_rows(variants.select(list(REQUIRED["variants"])), key_set)
    note_rows = _group_rows(notes.select(list(REQUIRED["notes"])), key_set)
    matrix, names, chosen = _largest_rois(radiomics, keys)

    # statistics of the training split only
    is_train = np.array([k in train for k in keys])
    has_rad = np.array([c is not None for c in chosen])
    train_matrix = matrix[is_train & has_rad]
    with warnings.catch_warnings():
        # a feature no training patient has gives an all-NaN column: mean 0, std 1 below
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(train_matrix, axis=0) if len(train_matrix) else np.zeros(len(names))
        std = np.nanstd(train_matrix, axis=0) if len(train_matrix) else np.ones(len(names))
    mean = np.nan_to_num(mean, nan=0.0)
    std = np.where(~np.isfinite(std) | (std <= 1e-12 * np.maximum(np.abs(mean), 1.0)), 1.0, std)
    numeric: dict[str, list[float]] = defaultdict(list)
    gene_counts: Counter[str] = Counter()
    alt_counts: Counter[str] = Counter()
    token_counts: Counter[str] = Counter()
    for k in sorted(train):
        for r in variant_rows.get(k, []):
            if r["filter"] == "PASS" and r["gene"]:
                gene_counts[str(r["gene"])] += 1
                alt_counts[alteration(str(r["gene"]), r["protein_change"])] += 1
        for m in note_rows.get(k, []):
            token_counts[note_token(str(m["concept"]), m["value"])] += 1
            x = _number(m["numeric_value"])
            if x is not None:
                numeric[str(m["concept"])].append(x)
    stats = {}
    for concept, xs in numeric.items():
        s = float(np.std(xs))
        stats[concept] = (float(np.mean(xs)), s if s > 1e-12 else 1.0)

    def frequent(counts: Counter[str], name: str) -> list[str]:
        return _vocabulary(Counter({t: c for t, c in counts.items() if c >= thresholds[name]}))

    prep = Preprocessing(
        radiomic_features=names,
        radiomic_mean=[float(x) for x in mean],
        radiomic_std=[float(x) for x in std],
        numeric_stats=stats,
        genes=frequent(gene_counts, "genes"),
        alterations=frequent(alt_counts, "alterations"),
        note_tokens=frequent(token_counts, "note_tokens"),
        seed=seed,
        fractions=(float(fractions[0]), float(fractions[1]), float(fractions[2])),
        min_count=dict(thresholds),
    )
    normalised = prep.normalise_radiomics(matrix) if len(names) else np.zeros((len(keys), 0))

    rows: list[dict[str, Any]] = []
    for i, k in enumerate(keys):
        calls = variant_rows.get(k)
        mentions = note_rows.get(k)
        row: dict[str, Any] = {
            "patient_key": k,
            "split": split[i],
            "response": label_of[k][0],
            "eligible": label_of[k][1],
        }
        row["has_genomics"] = calls is not None
        row["has_radiomics"] = chosen[i] is not None
        row["has_notes"] = mentions is not None
        row.update(prep.encode_variants(calls or []))
        row["radiomic_series"], row["radiomic_roi"] = chosen[i] or (None, None)
        row["radiomic_values"] = None  # filled column-wise below
        row.update(prep.encode_notes(mentions or []))
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=cohort_schema())
    # radiomic values as one list column built from the matrix (fast for 1,316 features)
    lengths = np.where(has_rad, len(names), 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = normalised[has_rad].reshape(-1).astype(np.float32)
    values = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float32()))
    table = table.set_column(
        table.schema.get_field_index("radiomic_values"), "radiomic_values", values
    )
    log.info(
        "cohort: %d patients (%s), %d radiomic features",
        len(keys),
        {s: split.count(s) for s in SPLITS},
        len(names),
    )
    return CohortDataset(table, prep)


def _read(path: Path, name: str) -> Any:
    import pyarrow.parquet as pq

    from oncopipe import catalog

    if path.exists():
        return pq.read_table(str(path))
    # a modality with no file yet is a modality every patient lacks
    empty = {"variants": catalog.VARIANTS, "radiomics": catalog.RADIOMICS,
             "notes": catalog.NOTE_CONCEPTS}  # fmt: skip
    if name not in empty:
        raise CohortError(str(path), f"no {name} file")
    return catalog.arrow_schema(empty[name]).empty_table()


NOTE_FIELDS = ("concept", "value", "numeric_value", "negated", "certainty", "temporality",
               "experiencer", "note_id", "start", "end")  # fmt: skip


def patient_payloads(
    variants: Any, radiomics: Any, notes: Any, *, keys: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Return each patient's raw features in the serving request's shape.

    The shape is what :mod:`training.inference` accepts (``patient_key``, ``variants``,
    ``radiomics``, ``notes``); a modality the patient lacks is left out. Every variant row
    is included (the server drops non-PASS calls itself); radiomics are the largest ROI's,
    chosen as in :func:`build_dataset`. ``keys`` limits and orders the patients (default:
    everyone in any table, sorted).
    """
    import pyarrow.compute as pc

    if keys is None:
        found: set[str] = set()
        for table in (variants, radiomics, notes):
            found.update(pc.unique(table["patient_key"]).to_pylist())
        keys = sorted(k for k in found if k)
    wanted = set(keys)
    out: dict[str, dict[str, Any]] = {k: {"patient_key": k} for k in keys}
    variant_cols = ["patient_key", "gene", "protein_change", "vaf", "filter"]
    for k, rows in _group_rows(variants.select(variant_cols), wanted).items():
        out[k]["variants"] = [{c: r[c] for c in variant_cols[1:]} for r in rows]
    matrix, names, chosen = _largest_rois(radiomics, keys)
    for i, k in enumerate(keys):
        if chosen[i] is not None:
            row = matrix[i]
            out[k]["radiomics"] = {
                n: float(v) for n, v in zip(names, row.tolist(), strict=True) if v == v
            }
    for k, rows in _group_rows(notes.select(["patient_key", *NOTE_FIELDS]), wanted).items():
        out[k]["notes"] = [{c: r[c] for c in NOTE_FIELDS} for r in rows]
    return out


#: The cohort's sources: local folder name -> curated Glue table (read through its commits).
SOURCE_TABLES = {"variants": "variants", "radiomics": "radiomics", "notes": "note_concepts"}


def fetch_committed_sources(store: Any, bucket: str, root: Path | str) -> list[Any]:
    """Download the committed files of the source tables and the labels under ``root``.

    ``store`` is an :class:`oncopipe.storage.ObjectStore`. Each table's files are the ones
    its committed items name (:func:`oncopipe.catalog.committed_files`): a failed or killed
    item's leftover, or a retracted item's output, is never read. Labels
    (``cohort/labels/``) are uploaded by people, not written by a stage, so every Parquet
    file there counts. Files land as ``root/<name>/<n>.parquet``, the layout
    :func:`build_dataset_from_dir` reads.

    Returns:
        The :class:`~oncopipe.storage.ObjectRef` of every file read (the build's inputs).

    Raises:
        oncopipe.catalog.CatalogError: a symlink file names a file outside its table.
        CohortError: a committed file is gone (the message names the table).
    """
    from oncopipe import catalog, layout

    sources: list[tuple[str, str, list[str]]] = [
        (name, table, catalog.committed_files(store, bucket, table))
        for name, table in SOURCE_TABLES.items()
    ]
    labels = [k for k in store.list_keys(bucket, layout.CURATED_LABELS) if k.endswith(".parquet")]
    sources.append(("labels", layout.CURATED_LABELS, labels))
    refs = []
    for name, table, keys in sources:
        for n, key in enumerate(keys):
            ref = store.head(bucket, key)
            if ref is None:
                raise CohortError(f"s3://{bucket}/{key}", f"committed file of {table} is gone")
            target = Path(root) / name / f"{n:06d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(bucket, key, str(target))
            refs.append(ref)
    return refs


def build_dataset_from_dir(
    in_dir: Path | str,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> CohortDataset:
    """Build the cohort from ``variants``, ``radiomics``, ``notes`` and ``labels`` Parquet.

    Each may be a file ``<name>.parquet`` or a folder of Parquet files of that name; a
    missing modality file means no patient has that modality.

    Raises:
        CohortError: no labels file, or a table lacks a required column.
    """
    import pyarrow.parquet as pq

    root = Path(in_dir)
    tables = {}
    for name in ("variants", "radiomics", "notes", "labels"):
        folder = root / name
        if folder.is_dir():
            tables[name] = pq.read_table(str(folder))
        else:
            tables[name] = _read(root / f"{name}.parquet", name)
    return build_dataset(
        tables["variants"],
        tables["radiomics"],
        tables["notes"],
        tables["labels"],
        seed=seed,
        fractions=fractions,
    )


def write_dataset(ds: CohortDataset, out_dir: Path | str) -> dict[str, Path]:
    """Write ``dataset.parquet`` (zstd) and ``preprocess.json`` into ``out_dir``.

    Returns: ``{"dataset": path, "preprocess": path}``.
    """
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "dataset.parquet"
    pq.write_table(ds.table, str(data), compression="zstd")
    prep = ds.preprocessing.save(out / "preprocess.json")
    return {"dataset": data, "preprocess": prep}


def read_dataset(in_dir: Path | str) -> CohortDataset:
    """Read a folder written by :func:`write_dataset`.

    Raises:
        CohortError: ``dataset.parquet`` or ``preprocess.json`` is missing.
    """
    import pyarrow.parquet as pq

    root = Path(in_dir)
    for name in ("dataset.parquet", preprocess_path(root).name):
        if not (root / name).exists():
            raise CohortError(str(root), f"no {name} (write it with build_dataset)")
    table = pq.read_table(str(root / "dataset.parquet"), schema=cohort_schema())
    return CohortDataset(table, Preprocessing.load(preprocess_path(root)))


def preprocess_path(root: Path | str) -> Path:
    """``preprocess.json`` of a dataset folder, or ``_preprocess.json`` as the cohort step
    uploads it (Athena skips files starting with "_", so the folder stays a Parquet table).
    """
    root = Path(root)
    hidden = root / "_preprocess.json"
    return (
        hidden
        if hidden.exists() and not (root / "preprocess.json").exists()
        else (root / "preprocess.json")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m oncopipe.cohort.dataset --input DIR --out DIR [--seed N]``."""
    parser = argparse.ArgumentParser(prog="python -m oncopipe.cohort.dataset")
    parser.add_argument(
        "--input",
        type=Path,
        required=True,
        help="folder with variants/radiomics/notes/labels Parquet",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ds = build_dataset_from_dir(args.input, seed=args.seed)
    paths = write_dataset(ds, args.out)
    print(json.dumps({"patients": ds.counts(), **{k: str(v) for k, v in paths.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
