"""VCF -> Parquet variant table, annotated with gene and hotspot protein change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oncopipe.genomics.panel import Panel

COLUMNS = (
    "patient_key", "sample", "chrom", "pos", "ref", "alt", "qual", "filter", "depth",
    "alt_depth", "vaf", "genotype", "gene", "protein_change", "run_id",
)  # fmt: skip


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("patient_key", pa.string()),
            ("sample", pa.string()),
            ("chrom", pa.string()),
            ("pos", pa.int64()),
            ("ref", pa.string()),
            ("alt", pa.string()),
            ("qual", pa.float64()),
            ("filter", pa.string()),
            ("depth", pa.int32()),
            ("alt_depth", pa.int32()),
            ("vaf", pa.float64()),
            ("genotype", pa.string()),
            ("gene", pa.string()),
            ("protein_change", pa.string()),
            ("run_id", pa.string()),
        ]
    )


def variant_rows(
    vcf: Path,
    *,
    patient_key: str,
    sample: str,
    run_id: str,
    panel: Panel | None = None,
    reference: Path | None = None,
) -> dict[str, list[Any]]:
    """Return the variant table of the first (tumour) sample of a VCF, column-wise.

    One row per ALT allele (multi-allelic records are split). ``gene`` and
    ``protein_change`` come from the panel annotation and the reference sequence.
    """
    import pysam

    sequences: dict[str, str] = {}
    if panel is not None and reference is not None:
        with pysam.FastaFile(str(reference)) as fasta:
            sequences = {name: fasta.fetch(name) for name in fasta.references}
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    with pysam.VariantFile(str(vcf)) as source:
        first = next(iter(source.header.samples), None)
        for record in source:
            call = record.samples[first] if first is not None else None
            ad = list(call.get("AD") or ()) if call is not None else []
            depth = call.get("DP") if call is not None else None
            gt = call.get("GT") if call is not None else None
            genotype = "/".join("." if a is None else str(a) for a in gt) if gt else None
            for index, alt in enumerate(record.alts or (), start=1):
                alt_depth = ad[index] if index < len(ad) else None
                total = depth if depth is not None else (sum(a or 0 for a in ad) or None)
                gene = panel.gene_at(record.contig, record.pos) if panel else None
                change = (
                    panel.protein_change(
                        record.contig, record.pos, record.ref or "", alt, sequences[record.contig]
                    )
                    if panel and record.contig in sequences
                    else None
                )
                row = {
                    "patient_key": patient_key,
                    "sample": sample,
                    "chrom": record.contig,
                    "pos": record.pos,
                    "ref": record.ref,
                    "alt": alt,
                    "qual": record.qual,
                    "filter": ";".join(str(f) for f in record.filter.keys()) or "PASS",
                    "depth": total,
                    "alt_depth": alt_depth,
                    "vaf": round(alt_depth / total, 4) if alt_depth is not None and total else None,
                    "genotype": genotype,
                    "gene": gene.gene if gene else None,
                    "protein_change": change,
                    "run_id": run_id,
                }
                for name in COLUMNS:
                    columns[name].append(row[name])
    return columns


def write_parquet(columns: dict[str, list[Any]], out: Path) -> int:
    """Write the table as zstd Parquet; return the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(columns, schema=_schema())
    pq.write_table(table, str(out), compression="zstd")
    return table.num_rows
