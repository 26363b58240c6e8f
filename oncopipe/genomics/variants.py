"""VCF -> Parquet variant table, annotated with gene and hotspot protein change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from oncopipe.genomics.panel import Panel

COLUMNS = (
    "patient_key", "sample", "chrom", "pos", "ref", "alt", "qual", "filter", "depth",
    "alt_depth", "vaf", "genotype", "gene", "protein_change", "run_id",
)  # fmt: skip


def schema() -> Any:
    """Return the pyarrow schema of the variant table (:data:`COLUMNS`)."""

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


def _inflate_bgzf(raw: bytes) -> bytes:
    """Decompress a BGZF (or plain gzip) file, BGZF blocks in parallel threads.

    BGZF is a series of independent gzip members whose header's ``BC`` extra field gives
    the block size; zlib releases the GIL, so threads use every core.
    """
    import gzip
    import os
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    blocks: list[tuple[int, int]] = []
    offset = 0
    while offset < len(raw):
        if (
            raw[offset : offset + 4] != b"\x1f\x8b\x08\x04"
            or raw[offset + 12 : offset + 14] != b"BC"
        ):
            return gzip.decompress(raw)  # not BGZF: one stream
        size = struct.unpack_from("<H", raw, offset + 16)[0] + 1
        blocks.append((offset, size))
        offset += size

    def inflate(block: tuple[int, int]) -> bytes:
        start, size = block
        return zlib.decompress(raw[start + 18 : start + size - 8], -15)

    batches = [blocks[i : i + 256] for i in range(0, len(blocks), 256)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        parts = pool.map(lambda batch: b"".join(map(inflate, batch)), batches)
        return b"".join(parts)


def _vcf_body(vcf: Path) -> tuple[list[str], bytes]:
    """Return the column names of the ``#CHROM`` line and the records as bytes."""
    raw = vcf.read_bytes()
    data = _inflate_bgzf(raw) if raw[:2] == b"\x1f\x8b" else raw
    marker = data.find(b"#CHROM")
    if marker < 0:
        raise ValueError(f"{vcf}: no #CHROM header line")
    end = data.find(b"\n", marker)
    header = data[marker + 1 : end if end >= 0 else len(data)].decode().split("\t")
    return header, data[end + 1 :] if end >= 0 else b""


def variant_rows(
    vcf: Path,
    *,
    patient_key: str,
    sample: str,
    run_id: str,
    panel: Panel | None = None,
    reference: Path | None = None,
) -> Any:
    """Return the variant table (a ``pyarrow.Table``) of the first sample of a VCF.

    One row per ALT allele (multi-allelic records are split). Depths come from the
    sample's ``AD`` and ``DP``; ``gene`` and ``protein_change`` from the panel annotation
    and the reference sequence. Records are parsed column-wise by Arrow's C++ CSV reader
    and compute kernels, not record by record.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    names, body = _vcf_body(vcf)
    if body.find(b"\t") < 0:  # no record
        return schema().empty_table()
    keep = names[: min(len(names), 10)]  # the fixed columns, FORMAT and the first sample
    table = pcsv.read_csv(
        pa.BufferReader(body),
        read_options=pcsv.ReadOptions(column_names=names, use_threads=True),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(
            include_columns=keep,
            column_types={n: pa.int64() if n == "POS" else pa.string() for n in keep},
        ),
    ).combine_chunks()
    alts = pc.split_pattern(table["ALT"].chunk(0), ",")
    parents = pc.list_parent_indices(alts)
    if len(parents) == len(alts):  # no multi-allelic record: every ALT is the first
        alt_index = pa.repeat(pa.scalar(0, pa.int64()), len(parents))
    else:
        starts = pc.take(alts.offsets.slice(0, len(alts)).cast(pa.int64()), parents)
        positions = pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()),
                                                            len(parents))), 1)  # fmt: skip
        alt_index = pc.subtract(positions, starts)
    rows = table.take(parents)
    n = rows.num_rows
    null_int = pa.nulls(n, pa.int64())
    depth, alt_depth, genotype = null_int, null_int, pa.nulls(n, pa.string())
    if len(keep) >= 10:
        # Vectorised per FORMAT layout (a VCF usually has one or two), then put back in
        # row order.
        parts_out: list[tuple[Any, Any, Any, Any]] = []
        formats = rows["FORMAT"].combine_chunks()
        samples = rows[keep[9]].combine_chunks()
        for layout_text in pc.unique(formats).to_pylist():
            if layout_text is None:
                where = pc.indices_nonzero(pc.is_null(formats))
            else:
                where = pc.indices_nonzero(pc.fill_null(pc.equal(formats, layout_text), False))
            gt, ad_alt_part, dp_part = _sample_fields(
                pc.take(samples, where), pc.take(alt_index, where), layout_text or ""
            )
            parts_out.append((where, gt, ad_alt_part, dp_part))
        order = pc.sort_indices(pa.concat_arrays([p[0] for p in parts_out]))
        genotype = pc.take(pa.concat_arrays([p[1] for p in parts_out]), order)
        alt_depth = pc.take(pa.concat_arrays([p[2] for p in parts_out]), order)
        depth = pc.take(pa.concat_arrays([p[3] for p in parts_out]), order)
    quals = pc.cast(pc.if_else(pc.equal(rows["QUAL"], "."), None, rows["QUAL"]), pa.float64())
    vaf = pc.round(pc.divide(pc.cast(alt_depth, pa.float64()),
                             pc.if_else(pc.equal(depth, 0), None, depth)), 4)  # fmt: skip
    genes: list[str | None] = [None] * n
    changes: list[str | None] = [None] * n
    alt_column = pc.list_flatten(alts)
    if panel is not None:
        sequences: dict[str, str] = {}
        if reference is not None:
            import pysam

            with pysam.FastaFile(str(reference)) as fasta:
                sequences = {name: fasta.fetch(name) for name in fasta.references}
        contigs = pa.array(sorted({g.contig for g in panel.genes}))
        candidates = pc.indices_nonzero(pc.is_in(rows["CHROM"], value_set=contigs)).to_pylist()
        chroms, positions = rows["CHROM"], rows["POS"]
        for i in candidates:
            contig, pos = chroms[i].as_py(), positions[i].as_py()
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
            "pos": rows["POS"],
            "ref": rows["REF"],
            "alt": alt_column,
            "qual": quals,
            "filter": rows["FILTER"],
            "depth": pc.cast(depth, pa.int32()),
            "alt_depth": pc.cast(alt_depth, pa.int32()),
            "vaf": vaf,
            "genotype": genotype,
            "gene": pa.array(genes, pa.string()),
            "protein_change": pa.array(changes, pa.string()),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        },
        schema=schema(),
    )


def _sample_fields(values: Any, alt_index: Any, layout_text: str) -> tuple[Any, Any, Any]:
    """Return (GT, alt depth, depth) of sample values sharing one FORMAT layout."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    layout = {k: j for j, k in enumerate(layout_text.split(":"))} if layout_text else {}
    fields = pc.split_pattern(values, ":")

    def field(name: str) -> Any:
        if name not in layout:
            return None
        # a sample may carry fewer fields than FORMAT names (trailing fields dropped)
        short = pc.less_equal(pc.list_value_length(fields), layout[name])
        padded = pc.if_else(short, pa.scalar(["."] * (layout[name] + 1), fields.type), fields)
        return pc.list_element(padded, layout[name])

    genotype = field("GT")
    genotype = pa.nulls(n, pa.string()) if genotype is None else genotype
    alt_depth, depth = pa.nulls(n, pa.int64()), pa.nulls(n, pa.int64())
    if (ad := field("AD")) is not None:
        parts = pc.split_pattern(ad, ",")
        flat_text = parts.flatten()
        flat = pc.cast(pc.if_else(pc.equal(flat_text, "."), "0", flat_text), pa.int64())
        base = parts.offsets.slice(0, n).cast(pa.int64())
        wanted = pc.add(alt_index, 1)
        inside = pc.less(wanted, pc.list_value_length(parts))
        picked = pc.take(flat, pc.if_else(inside, pc.add(base, wanted), base))
        alt_depth = pc.if_else(inside, picked, pa.scalar(None, pa.int64()))
    dp = field("DP")
    known = pc.not_equal(dp, ".") if dp is not None else None
    if dp is not None and pc.all(known).as_py():  # DP everywhere: no need to sum AD
        return genotype, alt_depth, pc.cast(dp, pa.int64())
    if ad is not None:
        depth = _sum_lists(parts, flat)
    if dp is not None:
        depth = pc.if_else(known, pc.cast(pc.if_else(known, dp, "0"), pa.int64()), depth)
    return genotype, alt_depth, depth


def _sum_lists(parts: Any, flat: Any) -> Any:
    """Return the per-row sum of integer lists (AD -> depth when DP is absent)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    grouped = (
        pa.table({"row": pc.list_parent_indices(parts), "value": flat})
        .group_by("row", use_threads=False)
        .aggregate([("value", "sum")])
    )
    if grouped.num_rows == len(parts):  # every row has a list (AD always has the ref)
        return grouped["value_sum"].combine_chunks()
    sums = dict(zip(grouped["row"].to_pylist(), grouped["value_sum"].to_pylist(), strict=True))
    return pa.array([sums.get(i) for i in range(len(parts))], pa.int64())


def write_parquet(table: Any, out: Path) -> int:
    """Write the variant table as zstd Parquet; return the number of rows."""
    import pyarrow.parquet as pq

    # zstd level 1: within a few % of level 3's size here, at about half the time
    pq.write_table(table, str(out), compression="zstd", compression_level=1)
    return int(table.num_rows)
