"""Glue table definitions of the curated datasets, as data, and their committed files.

The data lake stack turns them into ``AWS::Glue::Table`` resources and the local mode
creates the same tables in the emulated catalog, so a dataset is described once. Later
stages add their tables here.

Readers see committed outputs only. A table does not read its data prefix (where a failed
or killed item may have left a file no manifest names): it is a Hive *symlink* table
(``SymlinkTextInputFormat``, the mechanism Athena reads Delta Lake manifests and S3
Inventory reports with). Its location, ``<data prefix>_symlinks/`` in the curated bucket
(like Delta's ``_symlink_format_manifest/``), holds one small text file per committed
item, listing the ``s3://`` URIs of that item's data files in the table; the data keep
their own format (``serde``: Parquet, or JSON for ``samples``). Beside the data, so the
stage that writes a table's files may write its symlink files with the same grant.
:func:`oncopipe.manifest.process_item` writes an item's symlink
files right after its manifest and removes them when the item is retracted, and our own
readers list a table through the same files (:func:`committed_files`), so Athena and the
local mode see the same rows. No crawler, no partitions: a new commit is query-able as
soon as its symlink file is written.

Why not Iceberg: an Iceberg commit is atomic too, but needs a catalog write per item
(pyiceberg and a Glue ``UpdateTable`` with optimistic retries: items of one run commit
concurrently, so they would contend on one table pointer) and rewrites metadata and
manifest-list files per commit; a symlink file is one extra PUT per item and table,
written only by the item that owns it (``benchmarks/commit.py`` measures it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from oncopipe import layout
from oncopipe.catalog_types import Column

JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
HIVE_TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
#: What every table reads: text files listing the data files (one ``s3://`` URI a line).
SYMLINK_INPUT = "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
#: The folder of a table's symlink files, in its data prefix (no data file is named so:
#: data keys start with a patient key, a run id or a build id, never with "_").
SYMLINK_DIR = "_symlinks/"
#: The data files a table takes from its prefix, by classification (others there, such as
#: an index or a sidecar JSON, are not rows of the table).
DATA_SUFFIXES = {"parquet": (".parquet",), "json": (".jsonl", ".json")}


@dataclass(frozen=True)
class TableSpec:
    """One curated dataset: its prefix in the curated bucket, format and columns."""

    name: str
    prefix: str
    description: str
    columns: tuple[Column, ...]
    serde: str
    input_format: str
    output_format: str
    classification: str


SAMPLES = TableSpec(
    name="samples",
    prefix=layout.CURATED_SAMPLES,
    description=(
        "De-identified rows of every accepted sample sheet (JSON Lines): pseudonymous keys, "
        "shifted dates and opaque object references, never an ingest key."
    ),
    columns=(
        Column("patient_key", "string", "pseudonymous patient key (HMAC of the source id)"),
        Column("sample", "string", "sample id from the sample sheet"),
        Column("type", "string", "tumour or normal"),
        Column("lane", "string", "sequencing lane"),
        Column("library", "string", "library id (read group LB)"),
        Column("platform", "string", "sequencing platform (read group PL)"),
        Column("note_date", "string", "ISO date of the note, shifted like the patient's images"),
        Column("fastq_1_ref", "string", "opaque reference (HMAC) of read 1's ingest object"),
        Column("fastq_2_ref", "string", "opaque reference (HMAC) of read 2's ingest object"),
        Column("dicom_ref", "string", "opaque reference of the DICOM series prefix, if any"),
        Column("notes_ref", "string", "opaque reference of the clinical note, if any"),
        Column("samplesheet_ref", "string", "opaque reference of the sample sheet"),
        Column("source_line", "int", "line of the row in the sample sheet"),
        Column("run_id", "string", "run that accepted the sample sheet"),
    ),
    serde=JSON_SERDE,
    input_format=TEXT_INPUT,
    output_format=HIVE_TEXT_OUTPUT,
    classification="json",
)

VARIANTS = TableSpec(
    name="variants",
    prefix=layout.CURATED_GENOMICS_VARIANTS,
    description="Somatic and germline-filtered variant calls per sample (Parquet, zstd).",
    columns=(
        Column("patient_key", "string", "pseudonymous patient key"),
        Column("sample", "string", "tumour sample id"),
        Column("chrom", "string", "contig"),
        Column("pos", "bigint", "1-based position (left-aligned)"),
        Column("ref", "string", "reference allele"),
        Column("alt", "string", "alternative allele (one per row)"),
        Column("qual", "double", "phred-scaled probability the alt reads are errors"),
        Column("filter", "string", "PASS or the failed filters (germline)"),
        Column("depth", "int", "read depth in the tumour"),
        Column("alt_depth", "int", "alt-supporting reads in the tumour"),
        Column("vaf", "double", "variant allele fraction in the tumour"),
        Column("genotype", "string", "tumour genotype"),
        Column("gene", "string", "gene of the panel annotation"),
        Column("protein_change", "string", "protein change of coding SNVs, e.g. G12C"),
        Column("run_id", "string", "run that called it"),
    ),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)

IMAGING_VOLUMES = TableSpec(
    name="imaging_volumes",
    prefix=layout.CURATED_IMAGING_VOLUMES,
    description="De-identified image volumes, one row per slice (geometry in file metadata).",
    columns=(
        Column("slice_index", "int", "slice number along the slice normal"),
        Column("position", "double", "slice position along the normal (mm)"),
        Column(
            "pixels",
            "binary",
            "stored values of the slice (rows x columns, little-endian) as byte planes: "
            "every value's first byte, then every value's second byte, ...",
        ),
    ),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)

RADIOMICS = TableSpec(
    name="radiomics",
    prefix=layout.CURATED_IMAGING_RADIOMICS,
    description="PyRadiomics features per series and ROI, long format (Parquet, zstd).",
    columns=(
        Column("patient_key", "string", "pseudonymous patient key"),
        Column("series_key", "string", "de-identified SeriesInstanceUID"),
        Column("roi", "string", "ROI name (de-identified: ROI n)"),
        Column("feature", "string", "PyRadiomics feature, e.g. original_glcm_Contrast"),
        Column("value", "double", "feature value"),
        Column("params_hash", "string", "hash of the parameter file and PyRadiomics version"),
        Column("run_id", "string", "ingest run of the series"),
    ),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)

NOTE_CONCEPTS = TableSpec(
    name="note_concepts",
    prefix=f"{layout.CURATED_NOTES}concepts/",
    description="Concepts of scrubbed clinical notes with their context (Parquet, zstd).",
    columns=(
        Column("patient_key", "string", "pseudonymous patient key", nullable=False),
        Column(
            "note_id", "string", "note id (hash of the ingest key, never the key)", nullable=False
        ),
        Column(
            "concept",
            "string",
            "histology, stage, ecog, biomarker, smoking, metastasis, therapy",
            nullable=False,
        ),
        Column("value", "string", "normalised value, e.g. KRAS G12C, IIIA, adenocarcinoma"),
        Column("numeric_value", "double", "ECOG, PD-L1 percent, pack-years"),
        Column("negated", "boolean", "negated in the note (ConText)", nullable=False),
        Column("certainty", "string", "certain or uncertain", nullable=False),
        Column("temporality", "string", "current, historical or hypothetical", nullable=False),
        Column("experiencer", "string", "patient or family", nullable=False),
        Column("section", "string", "note section, e.g. assessment_plan"),
        Column("start", "int", "character offset in the scrubbed note", nullable=False),
        Column("end", "int", "end offset (exclusive) in the scrubbed note", nullable=False),
    ),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)

NOTE_TOKENS = TableSpec(
    name="note_tokens",
    prefix=f"{layout.CURATED_NOTES}tokens/",
    description="Token ids of scrubbed notes for the model (Parquet, zstd).",
    columns=(
        Column("patient_key", "string", "pseudonymous patient key"),
        Column("note_id", "string", "note id"),
        Column("token_ids", "array<int>", "ids of the notes tokenizer, [CLS] ... [SEP]"),
        Column("tokenizer", "string", "hash of the tokenizer.json that produced them"),
    ),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)


#: The labels table (``cohort/labels/``, Parquet): not a Glue table, the cohort step's input.
LABEL_COLUMNS = (
    Column("patient_key", "string", "pseudonymous patient key"),
    Column("response", "int", "therapy response label (0/1)"),
    Column("eligible", "int", "trial eligibility label (0/1), null when unknown"),
)


def _cohort_columns() -> tuple[Column, ...]:
    from oncopipe.cohort.columns import COHORT_COLUMNS

    return tuple(COHORT_COLUMNS)


#: Every curated table, by name.
TABLES: dict[str, TableSpec] = {
    t.name: t for t in (SAMPLES, VARIANTS, IMAGING_VOLUMES, RADIOMICS, NOTE_CONCEPTS, NOTE_TOKENS)
}
TABLES["cohort_dataset"] = TableSpec(
    name="cohort_dataset",
    prefix=layout.CURATED_COHORT_DATASET,
    description="The model's training dataset, one row per labelled patient (Parquet); one "
    "folder per build.",
    columns=_cohort_columns(),
    serde=PARQUET_SERDE,
    input_format=PARQUET_INPUT,
    output_format=PARQUET_OUTPUT,
    classification="parquet",
)


def database_name(project: str, env: str) -> str:
    """Return the Glue database of the curated zone (Glue names allow only a-z0-9_)."""
    return f"{project}_{env}_curated".replace("-", "_")


def glue_table_input(spec: TableSpec, bucket: str) -> dict[str, object]:
    """Return the Glue ``TableInput`` of a dataset in the API's shape (boto3 / CFN)."""
    return {
        "Name": spec.name,
        "Description": spec.description,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"classification": spec.classification, "EXTERNAL": "TRUE"},
        "StorageDescriptor": {
            "Columns": [
                {"Name": c.name, "Type": c.type, "Comment": c.comment} for c in spec.columns
            ],
            # committed files only: the symlink files of the items' commits (module doc)
            "Location": f"s3://{bucket}/{symlink_prefix(spec.name)}",
            "InputFormat": SYMLINK_INPUT,
            "OutputFormat": HIVE_TEXT_OUTPUT,
            "SerdeInfo": {"SerializationLibrary": spec.serde},
        },
    }


def symlink_prefix(table: str) -> str:
    """Return the location (key prefix in the curated bucket) of a table's symlink files.

    Raises:
        KeyError: no such table.
    """
    return f"{TABLES[table].prefix}{SYMLINK_DIR}"


def symlink_key(table: str, commit_key: str) -> str:
    """Return the key of the symlink file one commit (a manifest's key) owns in a table.

    Flat in the table's location (Athena lists a symlink table's location without
    recursion): the run id, then 128 bits of the commit key's hash. Nothing else of the
    commit key is kept: an item's name can be an ingest key (PHI).
    """
    parts = commit_key.split("/")
    run = parts[1] if len(parts) > 2 and parts[0] == "_manifests" else "item"
    digest = hashlib.sha256(commit_key.encode("utf-8")).hexdigest()[:32]
    return f"{symlink_prefix(table)}{run}.{digest}.txt"


def table_for_key(key: str) -> TableSpec | None:
    """Return the table whose rows a curated object holds, or None (not table data).

    The longest matching prefix wins; the suffix must be one of the table's data files.
    """
    found = [t for t in TABLES.values() if key.startswith(t.prefix)
             and not key.startswith(f"{t.prefix}{SYMLINK_DIR}")
             and key.endswith(DATA_SUFFIXES.get(t.classification, ()))]  # fmt: skip
    return max(found, key=lambda t: len(t.prefix)) if found else None


def symlink_body(bucket: str, keys: Iterable[str]) -> bytes:
    """Return a symlink file: the data files' ``s3://`` URIs, one a line, sorted."""
    return "".join(f"s3://{bucket}/{k}\n" for k in sorted(set(keys))).encode("utf-8")


class CatalogError(ValueError):
    """A symlink file cannot be read as a list of data files of its table."""


def committed_files(store: Any, bucket: str, table: str) -> list[str]:
    """Return the keys of a table's committed data files (what Athena reads), sorted.

    ``store`` is an :class:`oncopipe.storage.ObjectStore`. Reads the table's symlink files;
    a data file no committed item names (a failed or killed item's leftover, a retracted
    item's output) is not among them.

    Raises:
        KeyError: no such table.
        CatalogError: a symlink file names a file outside this bucket or table (the
            message names the symlink file).
    """
    spec = TABLES[table]
    keys: set[str] = set()
    for link in store.list_keys(bucket, symlink_prefix(table)):
        text = store.get_bytes(bucket, link).decode("utf-8")
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            target_bucket, _, key = line.strip().removeprefix("s3://").partition("/")
            if (
                not line.startswith("s3://")
                or target_bucket != bucket
                or (table_for_key(key) is not spec)
            ):
                raise CatalogError(
                    f"s3://{bucket}/{link}, line {n}: not a data file of table {table}"
                )
            keys.add(key)
    return sorted(keys)


#: Glue type -> the pyarrow type the stages write it as.
_ARROW_TYPES = {
    "string": "string",
    "int": "int32",
    "bigint": "int64",
    "double": "float64",
    "float": "float32",
    "boolean": "bool_",
    "binary": "binary",
}


def _arrow_type(glue: str) -> Any:
    import pyarrow as pa

    if glue.startswith("array<") and glue.endswith(">"):
        return pa.list_(_arrow_type(glue[len("array<") : -1]))
    return getattr(pa, _ARROW_TYPES[glue])()


def arrow_schema(spec: TableSpec | Iterable[Column]) -> Any:
    """Return the pyarrow schema of a table (its columns, types and nullability, in order).

    The one source of a table's schema: the stage that writes the table, the readers that
    open it empty and the synthetic cohort all take it from here, and the Glue table from
    the same :class:`TableSpec`.

    Raises:
        KeyError: a column's Glue type has no pyarrow equivalent here.
    """
    import pyarrow as pa

    columns = spec.columns if isinstance(spec, TableSpec) else tuple(spec)
    return pa.schema([pa.field(c.name, _arrow_type(c.type), nullable=c.nullable) for c in columns])
