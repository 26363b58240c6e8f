"""Glue table definitions of the curated datasets, as data.

The data lake stack turns them into ``AWS::Glue::Table`` resources and the local mode
creates the same tables in the emulated catalog, so a dataset is described once. Later
stages add their tables here.
"""

from __future__ import annotations

from dataclasses import dataclass

from oncopipe import layout
from oncopipe.catalog_types import Column

JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
HIVE_TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
PARQUET_INPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
PARQUET_OUTPUT = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"


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
    description="Pseudonymised sample sheet rows of every accepted sample sheet (JSON Lines).",
    columns=(
        Column("patient_key", "string", "pseudonymous patient key (HMAC of the source id)"),
        Column("sample", "string", "sample id from the sample sheet"),
        Column("type", "string", "tumour or normal"),
        Column("fastq_1", "string", "ingest key of read 1"),
        Column("fastq_2", "string", "ingest key of read 2"),
        Column("lane", "string", "sequencing lane"),
        Column("library", "string", "library id (read group LB)"),
        Column("platform", "string", "sequencing platform (read group PL)"),
        Column("dicom", "string", "ingest prefix of the patient's DICOM series, if any"),
        Column("notes", "string", "ingest key of the patient's clinical note, if any"),
        Column("note_date", "string", "ISO date of the note, if any"),
        Column("source_line", "int", "line of the row in the sample sheet"),
        Column("samplesheet", "string", "ingest key of the sample sheet"),
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
        Column("pixels", "binary", "stored pixel values, little-endian, rows x columns"),
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
        Column("patient_key", "string", "pseudonymous patient key"),
        Column("note_id", "string", "note id (hash of the ingest key, never the key)"),
        Column(
            "concept", "string", "histology, stage, ecog, biomarker, smoking, metastasis, therapy"
        ),
        Column("value", "string", "normalised value, e.g. KRAS G12C, IIIA, adenocarcinoma"),
        Column("numeric_value", "double", "ECOG, PD-L1 percent, pack-years"),
        Column("negated", "boolean", "negated in the note (ConText)"),
        Column("certainty", "string", "certain or uncertain"),
        Column("temporality", "string", "current, historical or hypothetical"),
        Column("experiencer", "string", "patient or family"),
        Column("section", "string", "note section, e.g. assessment_plan"),
        Column("start", "int", "character offset in the scrubbed note"),
        Column("end", "int", "end offset (exclusive) in the scrubbed note"),
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
            "Location": f"s3://{bucket}/{spec.prefix}",
            "InputFormat": spec.input_format,
            "OutputFormat": spec.output_format,
            "SerdeInfo": {"SerializationLibrary": spec.serde},
        },
    }
