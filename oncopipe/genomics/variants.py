"""VCF -> Parquet variant table, annotated with gene and hotspot protein change.

The reader parses column-wise with Arrow (its C++ CSV reader and compute kernels) and
validates the same way, column by column: a bad input is rejected with
:class:`InvalidVcfError` naming the file and the record (1-based record number and line
number), never quoting the record (a record can carry sample identifiers): at most the
column name and a short description of the offending value ("an empty value", "NaN",
"text of 3 characters").

The reading is in :mod:`~oncopipe.genomics.vcf_body`, the column checks in
:mod:`~oncopipe.genomics.vcf_checks`, the sample fields in
:mod:`~oncopipe.genomics.vcf_samples`; this module builds the table and writes it.

What is checked: gzip / BGZF integrity (every block's CRC and length, and the BGZF
end-of-file marker, whose absence means a truncated file), that the file is VCF text
(``##fileformat=VCF`` first, ``##`` meta lines, the ``#CHROM`` header with the fixed
columns), the column count of every record, UTF-8, no empty field, CHROM, POS (a positive
integer), REF and ALT alleles, QUAL, and per sample: no more fields than FORMAT names,
GT, AD (integers, one per allele: Number=R) and DP (an integer).

Speed (``benchmarks/profiles.md``, VCF -> Parquet): each check first asks a cheap question
of the whole column (are all bytes digits? all bases? is the column one value?), and the
masks that name the bad record are built only when the answer is no, so a bad file gets
the same error as before. The usual sample layout is read by a byte scan in blocks
(:mod:`oncopipe.genomics.vcf_samples`); any other goes the general way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from oncopipe import catalog
from oncopipe.genomics.panel import Panel
from oncopipe.genomics.vcf_body import (
    BGZF_EOF,
    Body,
    InvalidVcfError,
    describe,
    read_body,
    read_records,
)
from oncopipe.genomics.vcf_checks import (
    NON_SPACE,
    as_array,
    constant_value,
    has_byte,
    validate_records,
)
from oncopipe.genomics.vcf_samples import sample_fields

__all__ = [
    "BGZF_EOF",
    "COLUMNS",
    "InvalidVcfError",
    "describe",
    "schema",
    "variant_rows",
    "write_parquet",
]


#: The variant table's columns, in order (:data:`oncopipe.catalog.VARIANTS`).
COLUMNS = tuple(c.name for c in catalog.VARIANTS.columns)


def schema() -> Any:
    """Return the pyarrow schema of the variant table (:data:`oncopipe.catalog.VARIANTS`)."""
    return catalog.arrow_schema(catalog.VARIANTS)


def variant_rows(
    vcf: Path,
    *,
    patient_key: str,
    sample: str,
    run_id: str,
    panel: Panel | None = None,
    reference: Path | None = None,
    source: str | None = None,
) -> Any:
    """Return the variant table (a ``pyarrow.Table``) of the first sample of a VCF.

    One row per ALT allele (multi-allelic records are split). Depths come from the
    sample's ``AD`` and ``DP``; ``gene`` and ``protein_change`` from the panel annotation
    and the reference sequence. Records are parsed and validated column-wise by Arrow's
    C++ CSV reader and compute kernels, not record by record. ``source`` names the file
    in errors (default: the path).

    Raises:
        InvalidVcfError: the file is not a readable VCF; the message names the file and
            the record and never quotes it.
    """
    import pyarrow as pa

    name = str(vcf) if source is None else source
    body = read_body(vcf, name)
    try:
        return _variant_table(body, patient_key=patient_key, sample=sample, run_id=run_id,
                              panel=panel, reference=reference)  # fmt: skip
    except pa.ArrowException as e:  # a case the checks missed; Arrow's text may quote it
        failure = type(e).__name__
    raise InvalidVcfError(name, f"the records cannot be converted to the variant table ({failure})")


def _variant_table(
    body: Body,
    *,
    patient_key: str,
    sample: str,
    run_id: str,
    panel: Panel | None,
    reference: Path | None,
) -> Any:
    """Return the variant table of validated records (see :func:`variant_rows`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if NON_SPACE.search(body.text, body.start) is None:  # no record
        return schema().empty_table()
    table = read_records(body)
    keep = table.column_names
    alt_text = table["ALT"]
    # Most VCFs have no multi-allelic record: then rows are records and ALT needs no split.
    single = not has_byte(alt_text, ",")
    if not single:
        alt_text = as_array(alt_text)
    if single:
        alts: Any = None
        parents: Any = None
        alt_column = alt_text
    else:
        alts = pc.split_pattern(alt_text, ",")
        parents = pc.list_parent_indices(alts)
        alt_column = pc.list_flatten(alts)
    record_pos, record_qual = validate_records(body, table, alt_column, parents)

    def per_row(values: Any) -> Any:
        return values if parents is None else pc.take(values, parents)

    alt_index = None  # every ALT is the first
    if parents is not None:
        starts = pc.take(alts.offsets.slice(0, len(alts)).cast(pa.int64()), parents)
        positions = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()),
                                                            len(parents))), 1)  # fmt: skip
        alt_index = pc.subtract(positions, starts)
    rows = table if parents is None else table.take(parents)
    n = rows.num_rows
    positions_1 = per_row(record_pos)
    null_int = pa.nulls(n, pa.int64())
    depth, alt_depth, genotype = null_int, null_int, pa.nulls(n, pa.string())
    if len(keep) >= 10:
        # AD has one value per allele (Number=R): REF plus the ALTs ('.' is no ALT)
        if alts is None and not has_byte(alt_text, "."):  # one ALT per record, none '.'
            alleles = pa.repeat(pa.scalar(2, pa.int64()), n)
        else:
            n_alt = pc.if_else(pc.equal(alt_text, "."), 0,
                               1 if alts is None else pc.list_value_length(alts))  # fmt: skip
            alleles = per_row(pc.add(pc.cast(n_alt, pa.int64()), 1))
        # Vectorised per FORMAT layout (a VCF usually has one or two), then put back in
        # row order.
        parts_out: list[tuple[Any, Any, Any, Any]] = []
        formats = rows["FORMAT"]
        samples = as_array(rows["SAMPLE_1"])
        only = constant_value(formats)
        layouts = [only] if only is not None else pc.unique(formats).to_pylist()
        if len(layouts) == 1:  # one layout (the usual case): rows stay in order
            genotype, alt_depth, depth = sample_fields(
                body, samples, alt_index, layouts[0], records=parents, alleles=alleles
            )
        else:
            for layout_text in layouts:
                where = pc.indices_nonzero(pc.fill_null(pc.equal(formats, layout_text), False))
                gt, ad_alt_part, dp_part = sample_fields(
                    body, pc.take(samples, where),
                    None if alt_index is None else pc.take(alt_index, where), layout_text,
                    records=where if parents is None else pc.take(parents, where),
                    alleles=pc.take(alleles, where),
                )  # fmt: skip
                parts_out.append((where, gt, ad_alt_part, dp_part))
            order = pc.sort_indices(pa.concat_arrays([p[0] for p in parts_out]))
            genotype = pc.take(pa.concat_arrays([p[1] for p in parts_out]), order)
            alt_depth = pc.take(pa.concat_arrays([p[2] for p in parts_out]), order)
            depth = pc.take(pa.concat_arrays([p[3] for p in parts_out]), order)
    quals = per_row(record_qual)
    vaf = _vaf(alt_depth, depth)
    genes: list[str | None] = [None] * n if panel is not None else []
    changes: list[str | None] = [None] * n if panel is not None else []
    if panel is not None:
        sequences: dict[str, str] = {}
        if reference is not None:
            import pysam

            with pysam.FastaFile(str(reference)) as fasta:
                sequences = {name: fasta.fetch(name) for name in fasta.references}
        contigs = pa.array(sorted({g.contig for g in panel.genes}))
        candidates = pc.indices_nonzero(pc.is_in(rows["CHROM"], value_set=contigs)).to_pylist()
        chroms = rows["CHROM"]
        for i in candidates:
            contig, pos = chroms[i].as_py(), positions_1[i].as_py()
            gene = panel.gene_at(contig, pos)
            genes[i] = gene.gene if gene else None
            if contig in sequences:
                changes[i] = panel.protein_change(
                    contig, pos, rows["REF"][i].as_py(), alt_column[i].as_py(), sequences[contig]
                )
    return pa.table(
        {
            "patient_key": pa.repeat(pa.scalar(patient_key, pa.string()), n),
            "sample": pa.repeat(pa.scalar(sample, pa.string()), n),
            "chrom": rows["CHROM"],
            "pos": positions_1,
            "ref": rows["REF"],
            "alt": alt_column,
            "qual": quals,
            "filter": rows["FILTER"],
            "depth": pc.cast(depth, pa.int32()),
            "alt_depth": pc.cast(alt_depth, pa.int32()),
            "vaf": vaf,
            "genotype": genotype,
            "gene": pa.array(genes, pa.string()) if panel is not None else pa.nulls(n, pa.string()),
            "protein_change": pa.array(changes, pa.string())
            if panel is not None
            else pa.nulls(n, pa.string()),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        },
        schema=schema(),
    )


def _vaf(alt_depth: Any, depth: Any) -> Any:
    """Return alt depth / depth rounded to 4 places; null where either is null or depth 0."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if alt_depth.null_count or depth.null_count or not len(depth):
        return pc.round(pc.divide(pc.cast(alt_depth, pa.float64()),
                                  pc.if_else(pc.equal(depth, 0), None, depth)), 4)  # fmt: skip
    alt, total = alt_depth.to_numpy(), depth.to_numpy()
    zero = total == 0
    ratio = alt / np.where(zero, 1, total)  # float64 division, as Arrow's divide
    return pc.round(pa.array(ratio, mask=zero if zero.any() else None), 4)


def write_parquet(table: Any, out: Path) -> int:
    """Write the variant table as zstd Parquet; return the number of rows.

    The file is written under a temporary name beside ``out`` and renamed when complete,
    so a failure never leaves a partial Parquet file at ``out``.

    String columns of one value (patient key, sample, run id, often FILTER, CHROM or GT)
    reach the writer dictionary-encoded (:func:`_for_writer`), so it does not hash every
    value again: the file holds the same dictionary pages, indices and statistics. The
    Arrow schema is then not stored in the file (it would name the dictionary type): the
    columns are plain Parquet strings, integers and doubles, which every reader, pyarrow
    included, reads back as the same table.
    """
    import pyarrow.parquet as pq

    columns, encoded = _for_writer(table)
    handle, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(handle)
    try:
        # zstd level 1: within a few % of level 3's size here, at about half the time.
        # Positions are sorted and nearly all distinct: delta encoding stores them in
        # ~20 % less space than a dictionary, and skips building one that is discarded.
        pq.write_table(
            columns, partial, compression="zstd", compression_level=1,
            use_dictionary=[name for name in table.column_names if name != "pos"],
            column_encoding={"pos": "DELTA_BINARY_PACKED"} if "pos" in table.column_names
            else None,
            store_schema=not encoded,
        )  # fmt: skip
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return int(table.num_rows)


def _for_writer(table: Any) -> tuple[Any, bool]:
    """Return ``table`` with its string columns of one value as dictionary arrays (one
    value, indices all 0), and whether there is one.

    Only for a table of string, int32, int64 and float64 columns without schema
    metadata, which Parquet alone describes completely (so no stored Arrow schema is
    needed to read it back as it was); any other table is returned as it is.
    """
    import numpy as np
    import pyarrow as pa

    plain = (pa.string(), pa.int32(), pa.int64(), pa.float64())
    fields = list(table.schema)
    if table.schema.metadata or any(f.type not in plain or f.metadata for f in fields):
        return table, False
    zeros = None
    columns = []
    for i, field in enumerate(fields):
        column = table.column(i)
        if field.type == pa.string() and len(column) and not column.null_count:
            value = constant_value(column)
            if value is not None:
                zeros = pa.array(np.zeros(len(column), np.int32)) if zeros is None else zeros
                column = pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string()))
        columns.append(column)
    if all(f.type == c.type for f, c in zip(fields, columns, strict=True)):
        return table, False
    types = [pa.field(f.name, c.type, f.nullable) for f, c in zip(fields, columns, strict=True)]
    return pa.table(columns, schema=pa.schema(types)), True
