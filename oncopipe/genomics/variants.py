"""VCF -> Parquet variant table, annotated with gene and hotspot protein change.

The reader parses column-wise with Arrow (its C++ CSV reader and compute kernels) and
validates the same way, column by column: a bad input is rejected with
:class:`InvalidVcfError` naming the file and the record (1-based record number and line
number), never quoting the record (a record can carry sample identifiers): at most the
column name and a short description of the offending value ("an empty value", "NaN",
"text of 3 characters").

What is checked: gzip / BGZF integrity (every block's CRC and length, and the BGZF
end-of-file marker, whose absence means a truncated file), that the file is VCF text
(``##fileformat=VCF`` first, ``##`` meta lines, the ``#CHROM`` header with the fixed
columns), the column count of every record, UTF-8, no empty field, CHROM, POS (a positive
integer), REF and ALT alleles, QUAL, and per sample: no more fields than FORMAT names,
GT, AD (integers, one per allele: Number=R) and DP (an integer).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from oncopipe.errors import InputError
from oncopipe.genomics.panel import Panel

COLUMNS = (
    "patient_key", "sample", "chrom", "pos", "ref", "alt", "qual", "filter", "depth",
    "alt_depth", "vaf", "genotype", "gene", "protein_change", "run_id",
)  # fmt: skip
FIXED = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
#: The empty BGZF block that ends every BGZF file (SAM specification, section 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")

# Value patterns, VCF 4.3 section 1.6 (AD and DP: see _is_count, at most 9 digits: int32).
_CHROM = r"^[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*$"
_REF = r"^[ACGTNacgtn]+$"
_BASES = "[ACGTNacgtn]"
_ALT = (
    rf"^(?:{_BASES}+|\*|\.|<[^<>,\s]+>|{_BASES}*[\[\]][^\[\]\s]+[\[\]]{_BASES}*"
    rf"|\.{_BASES}+|{_BASES}+\.)$"
)
_QUAL = r"^(?:\.|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)$"
_GT = r"^(?:\.|[0-9]+)(?:[/|](?:\.|[0-9]+))*$"


class InvalidVcfError(InputError, ValueError):
    """A VCF cannot be read into the variant table; the message names file and record.

    Also a ``ValueError``, which is what this module raised for a bad VCF before.
    """

    reason_code = "invalid-vcf"


def describe(value: str | None) -> str:
    """Return a short description of a bad value that does not quote it.

    ``"an empty value"``, ``"NaN"``, ``"a negative number"``, ``"a decimal number"``,
    ``"text of 7 characters"``...
    """
    if value is None or value == "":
        return "an empty value"
    if value == ".":
        return "'.' (missing)"
    if value.strip() != value:
        return "a value with surrounding whitespace"
    lowered = value.lower().lstrip("+-")
    if lowered == "nan":
        return "NaN"
    if lowered in {"inf", "infinity"}:
        return "infinity"
    if re.fullmatch(r"[-+]?0+", value):
        return "zero"
    if re.fullmatch(r"-[0-9]+", value):
        return "a negative number"
    if re.fullmatch(
        r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+", value
    ):
        return "a decimal number"
    if re.fullmatch(r"[0-9]+", value):
        return f"a number of {len(value)} digits"
    return f"text of {len(value)} character{'s' if len(value) > 1 else ''}"


@dataclass(frozen=True)
class _Body:
    """The records of a VCF (bytes after the ``#CHROM`` line) and where they start."""

    source: str
    data: bytes
    first_line: int  # the line number of the first byte of ``data``
    names: tuple[str, ...]  # positional column names: the fixed ones, FORMAT, SAMPLE_1..

    def line_of(self, record: int) -> int:
        """Return the line number of 0-based ``record`` (blank lines are not records)."""
        data, start, line, seen = self.data, 0, self.first_line, -1
        while start < len(data):
            end = data.find(b"\n", start)
            end = len(data) if end < 0 else end
            if data[start:end].strip(b"\r"):
                seen += 1
                if seen == record:
                    return line
            start, line = end + 1, line + 1
        return line

    def fail(self, record: int, message: str) -> NoReturn:
        """Raise InvalidVcfError naming ``record`` (0-based) by number and line."""
        raise InvalidVcfError(
            self.source, f"record {record + 1} (line {self.line_of(record)}): {message}"
        )


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


def _inflate_bgzf(raw: bytes, source: str) -> bytes:
    """Decompress a BGZF (or plain gzip) file, BGZF blocks in parallel threads.

    BGZF is a series of independent gzip members whose header's ``BC`` extra field gives
    the block size; zlib releases the GIL, so threads use every core. Each block is
    inflated with its gzip wrapper, so zlib checks its CRC-32 and length; a BGZF file
    must end with the empty end-of-file block (else it was cut at a block boundary).

    Raises:
        InvalidVcfError: the stream is truncated or corrupt (naming the block).
    """
    import gzip
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    from oncopipe.genomics.fastq import describe_gzip_error

    def is_bgzf_header(offset: int) -> bool:
        return (
            raw[offset : offset + 4] == b"\x1f\x8b\x08\x04"
            and raw[offset + 12 : offset + 14] == b"BC"
        )

    if not is_bgzf_header(0):  # plain gzip: one stream
        try:
            return gzip.decompress(raw)
        except (EOFError, zlib.error, OSError) as e:  # BadGzipFile is an OSError
            raise InvalidVcfError(
                source, f"the gzip stream is truncated or corrupt ({describe_gzip_error(e)})"
            ) from None
    blocks: list[tuple[int, int]] = []
    offset = 0
    while offset < len(raw):
        number = len(blocks) + 1
        if len(raw) - offset < 18:
            raise InvalidVcfError(
                source, f"the BGZF stream is truncated: block {number} is cut short"
            )
        if not is_bgzf_header(offset):
            raise InvalidVcfError(
                source, f"BGZF block {number} (byte {offset}) has no BGZF header: corrupt file"
            )
        size = struct.unpack_from("<H", raw, offset + 16)[0] + 1
        if offset + size > len(raw):
            raise InvalidVcfError(
                source, f"the BGZF stream is truncated: block {number} is cut short"
            )
        blocks.append((offset, size))
        offset += size
    if not raw.endswith(BGZF_EOF):
        raise InvalidVcfError(
            source, "the BGZF end-of-file marker is missing: the file is truncated"
        )
    view = memoryview(raw)

    def inflate_batch(first: int) -> bytes:
        out = []
        for number in range(first, min(first + 256, len(blocks))):
            start, size = blocks[number]
            try:
                out.append(zlib.decompress(view[start : start + size], 31))
            except zlib.error:
                raise InvalidVcfError(
                    source,
                    f"BGZF block {number + 1} (byte {start}) is corrupt "
                    "(bad compressed data, CRC or length)",
                ) from None
        return b"".join(out)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return b"".join(pool.map(inflate_batch, range(0, len(blocks), 256)))


def _vcf_body(vcf: Path, source: str) -> _Body:
    """Return the records of a VCF after checking it is VCF text with a valid header.

    Raises:
        InvalidVcfError: empty, not VCF (random bytes, BCF), truncated or corrupt gzip,
            a bad meta line or ``#CHROM`` line.
    """
    raw = vcf.read_bytes()
    if not raw:
        raise InvalidVcfError(source, "not a VCF: the file is empty")
    data = _inflate_bgzf(raw, source) if raw[:2] == b"\x1f\x8b" else raw
    if data.startswith(b"BCF\x02"):
        raise InvalidVcfError(
            source, "is BCF (binary VCF), not VCF text: convert it with `bcftools view -Oz`"
        )
    if not data.startswith(b"##fileformat=VCF"):
        head = data[:4096]
        binary = b"\x00" in head or not _is_utf8(head)
        raise InvalidVcfError(
            source,
            "not a VCF: "
            + ("binary data" if binary else "the first line is not ##fileformat=VCFv4.x"),
        )
    marker = data.find(b"\n#CHROM")
    if marker < 0:
        raise InvalidVcfError(source, "not a VCF: no #CHROM header line")
    line = 1
    start = data.find(b"\n") + 1
    while start <= marker:  # the meta lines between ##fileformat and #CHROM
        line += 1
        end = data.find(b"\n", start)
        if not data.startswith(b"##", start) and data[start:end].strip(b"\r"):
            raise InvalidVcfError(
                source, f"line {line}: a meta line before #CHROM does not start with '##'"
            )
        start = end + 1
    line += 1  # the #CHROM line
    end = data.find(b"\n", marker + 1)
    end = len(data) if end < 0 else end
    try:
        header = data[marker + 2 : end].rstrip(b"\r").decode("utf-8").split("\t")
    except UnicodeDecodeError:
        raise InvalidVcfError(source, f"line {line}: the #CHROM line is not UTF-8") from None
    fixed = ("CHROM", *header[1:8])
    if tuple(fixed) != FIXED or (len(header) > 8 and header[8] != "FORMAT"):
        raise InvalidVcfError(
            source,
            f"line {line}: the #CHROM header line must name the columns "
            f"{', '.join(FIXED)} (then FORMAT and the samples), tab-separated",
        )
    samples = tuple(f"SAMPLE_{i}" for i in range(1, len(header) - 8))
    names = (*FIXED, *(("FORMAT",) if len(header) > 8 else ()), *samples)
    return _Body(source=source, data=data[end + 1 :], first_line=line + 1, names=names)


def _is_utf8(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut by the 4 KiB slice is fine
    return True


def _diagnose_parse_error(body: _Body) -> NoReturn:
    """Find the record Arrow could not parse (wrong column count, not UTF-8) and raise.

    Runs only after a parse error, so a record-by-record scan is acceptable here.

    Raises:
        InvalidVcfError: always; naming the record.
    """
    data, expected = body.data, len(body.names)
    start, line, record = 0, body.first_line, -1
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        text = data[start:end].rstrip(b"\r")
        if text:
            record += 1
            columns = text.count(b"\t") + 1
            if columns != expected:
                raise InvalidVcfError(
                    body.source,
                    f"record {record + 1} (line {line}): {columns} columns, "
                    f"the #CHROM header has {expected}",
                )
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidVcfError(
                    body.source, f"record {record + 1} (line {line}): not UTF-8 text"
                ) from None
        start, line = end + 1, line + 1
    raise InvalidVcfError(body.source, "the records cannot be parsed as tab-separated VCF text")


def _read_records(body: _Body) -> Any:
    """Parse the records' fixed columns, FORMAT and the first sample as strings.

    Raises:
        InvalidVcfError: a record has the wrong column count or is not UTF-8.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    keep = list(body.names[:10])  # the fixed columns, FORMAT and the first sample
    try:
        table = pcsv.read_csv(
            pa.BufferReader(body.data),
            read_options=pcsv.ReadOptions(column_names=list(body.names), use_threads=True),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                include_columns=keep,
                column_types={n: pa.string() for n in keep},
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        ).combine_chunks()
    except pa.ArrowInvalid:  # its message quotes the record: never pass it on
        table = None
    if table is None:
        _diagnose_parse_error(body)
    return table


def _check(
    body: _Body, values: Any, ok: Any, what: str, records: Any = None, *, show: bool = True
) -> None:
    """Raise naming the first value where ``ok`` is false.

    ``ok`` None means all are good. ``records`` maps the values' positions to record
    indices (default: the identity); ``show`` adds a description of the bad value
    (:func:`describe`, never the value).

    Raises:
        InvalidVcfError: some ``ok`` is false (or null).
    """
    import pyarrow.compute as pc

    if ok is None:  # known good (see _matches)
        return
    ok = pc.fill_null(ok, False)
    if len(ok) == 0 or pc.all(ok).as_py():
        return
    i = pc.index(ok, False).as_py()
    record = i if records is None else records[i].as_py()
    body.fail(record, f"{what} (got {describe(values[i].as_py())})" if show else what)


def _matches(values: Any, pattern: str) -> Any:
    """Return whether each value matches ``pattern``, or None when all do.

    When values repeat (contigs, genotypes, SNV alleles: most of them) the regex runs
    once per distinct value, and the per-value mask is built only if one fails.
    """
    import pyarrow.compute as pc

    distinct = pc.unique(values)
    if len(distinct) * 4 > len(values):
        return pc.match_substring_regex(values, pattern)
    good = pc.match_substring_regex(distinct, pattern)
    if pc.all(good).as_py():
        return None
    return pc.is_in(values, value_set=pc.filter(distinct, good))


def _is_count(values: Any) -> Any:
    """Return whether each value is '.' or a non-negative integer of at most 9 digits."""
    import pyarrow.compute as pc

    digits = pc.and_(pc.ascii_is_decimal(values), pc.less_equal(pc.binary_length(values), 9))
    return pc.or_(pc.equal(values, "."), digits)


def _validate_records(body: _Body, table: Any, flat: Any, parents: Any) -> tuple[Any, Any]:
    """Check the fixed columns of every record, column-wise.

    ``flat`` holds the ALT alleles, ``parents`` their record indices (None: one allele
    per record, in record order).

    Returns:
        (POS as int64, QUAL as float64 with null for '.'), one value per record.

    Raises:
        InvalidVcfError: the first bad value, naming record and column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in table.column_names:
        values = table[column]
        lengths = pc.binary_length(values)
        if len(values) and pc.min(lengths).as_py() > 0:  # the usual case: no mask needed
            continue
        _check(body, values, pc.greater(lengths, 0), f"the {_label(column)} "
               "column is empty (use '.' for a missing value)", show=False)  # fmt: skip
    chrom = table["CHROM"]
    _check(body, chrom, _matches(chrom, _CHROM), "CHROM is not a valid contig name")
    text = table["POS"]
    what = "POS must be a positive integer"
    _check(body, text, pc.and_(pc.ascii_is_decimal(text),
                               pc.less_equal(pc.binary_length(text), 18)), what)  # fmt: skip
    pos = pc.cast(text, pa.int64())
    _check(body, text, pc.greater(pos, 0), what)
    ref = table["REF"]
    _check(body, ref, _matches(ref, _REF), "REF must be bases (A, C, G, T, N)")
    _check(body, flat, _matches(flat, _ALT),
           "an ALT allele must be bases, '*', '.', a <symbolic> allele or a breakend",
           records=parents)  # fmt: skip
    text = table["QUAL"]
    what = "QUAL must be a non-negative number or '.'"
    missing = pc.equal(text, ".")
    try:
        qual = pc.cast(pc.if_else(missing, "0", text), pa.float64())
    except pa.ArrowInvalid:
        qual = None
    if qual is None:
        _check(body, text, pc.match_substring_regex(text, _QUAL), what)
        raise InvalidVcfError(body.source, f"{what}: a record's QUAL cannot be read")
    _check(body, text, pc.or_(missing, pc.and_(pc.is_finite(qual),
                                               pc.greater_equal(qual, 0))), what)  # fmt: skip
    return pos, pc.if_else(missing, pa.scalar(None, pa.float64()), qual)


def _label(column: str) -> str:
    """Return the user-facing name of a positional column (never a sample ID)."""
    return "first sample" if column == "SAMPLE_1" else column


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
    body = _vcf_body(vcf, name)
    try:
        return _variant_table(body, patient_key=patient_key, sample=sample, run_id=run_id,
                              panel=panel, reference=reference)  # fmt: skip
    except pa.ArrowException as e:  # a case the checks missed; Arrow's text may quote it
        failure = type(e).__name__
    raise InvalidVcfError(name, f"the records cannot be converted to the variant table ({failure})")


def _variant_table(
    body: _Body,
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

    if re.search(rb"\S", body.data) is None:  # no record
        return schema().empty_table()
    table = _read_records(body)
    keep = table.column_names
    alt_text = table["ALT"].combine_chunks()
    # Most VCFs have no multi-allelic record: then rows are records and ALT needs no split.
    single = not pc.any(pc.match_substring(alt_text, ",")).as_py()
    if single:
        alts: Any = None
        parents: Any = None
        alt_column = alt_text
    else:
        alts = pc.split_pattern(alt_text, ",")
        parents = pc.list_parent_indices(alts)
        alt_column = pc.list_flatten(alts)
    record_pos, record_qual = _validate_records(body, table, alt_column, parents)

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
        n_alt = pc.if_else(pc.equal(alt_text, "."), 0,
                           1 if alts is None else pc.list_value_length(alts))  # fmt: skip
        alleles = per_row(pc.add(pc.cast(n_alt, pa.int64()), 1))
        # Vectorised per FORMAT layout (a VCF usually has one or two), then put back in
        # row order.
        parts_out: list[tuple[Any, Any, Any, Any]] = []
        formats = rows["FORMAT"].combine_chunks()
        samples = rows["SAMPLE_1"].combine_chunks()
        layouts = pc.unique(formats).to_pylist()
        if len(layouts) == 1:  # one layout (the usual case): rows stay in order
            genotype, alt_depth, depth = _sample_fields(
                body, samples, alt_index, layouts[0], records=parents, alleles=alleles
            )
        else:
            for layout_text in layouts:
                where = pc.indices_nonzero(pc.fill_null(pc.equal(formats, layout_text), False))
                gt, ad_alt_part, dp_part = _sample_fields(
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
    vaf = pc.round(pc.divide(pc.cast(alt_depth, pa.float64()),
                             pc.if_else(pc.equal(depth, 0), None, depth)), 4)  # fmt: skip
    genes: list[str | None] = [None] * n
    changes: list[str | None] = [None] * n
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
            "gene": pa.array(genes, pa.string()),
            "protein_change": pa.array(changes, pa.string()),
            "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        },
        schema=schema(),
    )


def _sample_fields(
    body: _Body, values: Any, alt_index: Any, layout_text: str, *, records: Any, alleles: Any
) -> tuple[Any, Any, Any]:
    """Return (GT, alt depth, depth) of sample values sharing one FORMAT layout.

    ``records`` gives each value's record index (for errors; None: the values are the
    records, in order), ``alleles`` its record's allele count (REF + ALTs, the length AD
    must have); ``alt_index`` which ALT of its record a value's row is (None: the first).

    Raises:
        InvalidVcfError: more fields than FORMAT names, or a bad GT, AD or DP.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    keys = layout_text.split(":") if layout_text and layout_text != "." else []
    layout = {k: j for j, k in enumerate(keys)}
    # Usually every sample carries every FORMAT field: then one byte scan finds them all
    # (the general split below builds a list per sample and is several times slower).
    even = _cut_fields(values, ":", len(keys)) if keys else None
    if even is None:
        fields = pc.split_pattern(values, ":")
        counts = pc.list_value_length(fields)
        _check(body, values, pc.less_equal(counts, max(len(keys), 1)),
               f"the first sample has more fields than FORMAT names ({len(keys)})",
               records=records)  # fmt: skip
        min_count = pc.min(counts).as_py() if n else 0

    def field(name: str) -> Any:
        if name not in layout:
            return None
        if even is not None:
            return _gather(even[0], *even[1][layout[name]])
        # a sample may carry fewer fields than FORMAT names (trailing fields dropped);
        # padding is costly (a copy of every list), so only when some sample is short
        if min_count > layout[name]:
            return pc.list_element(fields, layout[name])
        short = pc.less_equal(counts, layout[name])
        padded = pc.if_else(short, pa.scalar(["."] * (layout[name] + 1), fields.type), fields)
        return pc.list_element(padded, layout[name])

    def quick_counts(name: str) -> Any:
        """The field's integers when every value is one (the byte-scan path), else None."""
        if even is None or name not in layout:
            return None
        numbers, good, missing = _parse_counts(even[0], *even[1][layout[name]])
        return pa.array(numbers) if good and not missing.any() else None

    genotype = field("GT")
    if genotype is not None:
        _check(body, genotype, _matches(genotype, _GT),
               "the first sample's GT must be allele numbers separated by / or |",
               records=records)  # fmt: skip
    genotype = pa.nulls(n, pa.string()) if genotype is None else genotype
    alt_depth, depth = pa.nulls(n, pa.int64()), pa.nulls(n, pa.int64())
    ad_sum = None
    quick = None
    if even is not None and "AD" in layout and alt_index is None:
        ad_first, ad_last = even[1][layout["AD"]]
        quick = _even_ad(even[0], ad_first, ad_last, alleles)
    if quick is not None:  # every AD valid and complete: (alt depth, sum of AD)
        alt_depth, ad_sum = quick
        ad = True
    elif (ad := field("AD")) is not None:
        parts = pc.split_pattern(ad, ",")
        flat_text = parts.flatten()
        _check(body, flat_text, _is_count(flat_text),
               "the first sample's AD values must be non-negative integers or '.'",
               records=pc.list_parent_indices(parts) if records is None
               else pc.take(records, pc.list_parent_indices(parts)))  # fmt: skip
        lengths = pc.list_value_length(parts)
        _check(body, ad, pc.or_(pc.equal(ad, "."), pc.equal(lengths, alleles)),
               "the first sample's AD must have one value per allele (REF and each ALT)",
               records=records)  # fmt: skip
        flat = pc.cast(pc.if_else(pc.equal(flat_text, "."), "0", flat_text), pa.int64())
        base = parts.offsets.slice(0, n).cast(pa.int64())
        wanted = 1 if alt_index is None else pc.add(alt_index, 1)
        inside = pc.less(wanted, lengths)
        picked = pc.take(flat, pc.if_else(inside, pc.add(base, wanted), base))
        alt_depth = pc.if_else(inside, picked, pa.scalar(None, pa.int64()))
    if (known_depth := quick_counts("DP")) is not None:  # DP everywhere and valid
        return genotype, alt_depth, known_depth
    dp = field("DP")
    if dp is not None:
        _check(body, dp, _is_count(dp),
               "the first sample's DP must be a non-negative integer or '.'",
               records=records)  # fmt: skip
    known = pc.not_equal(dp, ".") if dp is not None else None
    if dp is not None and pc.all(known).as_py():  # DP everywhere: no need to sum AD
        return genotype, alt_depth, pc.cast(dp, pa.int64())
    if ad is not None:
        depth = ad_sum if ad_sum is not None else _sum_lists(parts, flat)
    if dp is not None:
        depth = pc.if_else(known, pc.cast(pc.if_else(known, dp, "0"), pa.int64()), depth)
    return genotype, alt_depth, depth


def _cut_fields(values: Any, separator: str, count: int) -> Any:
    """Find the ``count`` fields of every value (``separator``-separated) by a byte scan.

    Returns:
        (bytes as a numpy array, [(first, last) byte positions of field j, per value]),
        or None when some value does not have exactly ``count`` fields (or a value is
        null): the caller then takes the general path, which also reports what is wrong.
    """
    import numpy as np
    import pyarrow as pa

    n = len(values)
    if n == 0 or values.null_count or count < 1 or values.type != pa.string():
        return None
    offsets = np.frombuffer(values.buffers()[1], np.int32, n + 1, values.offset * 4)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(values.buffers()[2] or b"", np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    cuts = np.flatnonzero(data[offsets[0] : offsets[-1]] == ord(separator)) + offsets[0]
    if len(cuts) != n * (count - 1):
        return None
    # The cuts are sorted: if the (count - 1) cuts of group i all lie inside value i,
    # every value holds exactly count - 1 of them (their total is n * (count - 1)).
    cuts = cuts.reshape(n, count - 1)
    if count > 1 and not (np.all(cuts[:, 0] >= starts) and np.all(cuts[:, -1] < ends)):
        return None
    bounds = [
        (starts if j == 0 else cuts[:, j - 1] + 1, ends if j == count - 1 else cuts[:, j])
        for j in range(count)
    ]
    return data, bounds


def _gather(data: Any, first: Any, last: Any) -> Any:
    """Return the string array of ``data[first[i]:last[i]]`` for every i (numpy arrays)."""
    import numpy as np
    import pyarrow as pa

    lengths = last - first
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(lengths) and int(lengths.min()) == int(lengths.max()):  # fixed width (GT "0/1")
        width = int(lengths[0])
        index = (first[:, None] + np.arange(width)).ravel()
    else:
        index = np.repeat(first - offsets[:-1], lengths)
        index += np.arange(int(offsets[-1]), dtype=np.int64)
    # cut at an ASCII separator, valid UTF-8 stays valid UTF-8
    return pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data[index])
    )


def _parse_counts(data: Any, first: Any, last: Any) -> tuple[Any, bool, Any]:
    """Parse ``data[first[i]:last[i]]`` as counts, as :func:`_is_count` accepts them.

    Returns:
        (int64 values with 0 for '.', whether every value is '.' or 1-9 ASCII digits,
        the mask of '.' values).
    """
    import numpy as np

    lengths = last - first
    top = len(data) - 1
    if top < 0:
        return np.zeros(len(first), np.int64), False, np.zeros(len(first), bool)
    missing = (lengths == 1) & (data[np.minimum(first, top)] == ord("."))
    good = missing | ((lengths >= 1) & (lengths <= 9))
    numbers = np.zeros(len(first), np.int64)
    for k in range(9):
        inside = (k < lengths) & ~missing
        if not inside.any():
            break
        digit = data[np.minimum(first + k, top)].astype(np.int64) - ord("0")
        good &= ~inside | ((digit >= 0) & (digit <= 9))
        numbers = np.where(inside, numbers * 10 + digit, numbers)
    return numbers, bool(good.all()), missing


def _even_ad(data: Any, first: Any, last: Any, alleles: Any) -> tuple[Any, Any] | None:
    """Return (alt depth of the first ALT, sum of AD) when every AD is complete and valid.

    ``data[first[i]:last[i]]`` is the AD text of value i. The fast path for the usual
    file: every record has the same allele count and every AD one valid value per
    allele. None otherwise, and the caller's general path checks and reports (so errors
    name the same record either way).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(first) == 0:
        return None
    low, high = pc.min_max(alleles).values()
    count = low.as_py()
    if count is None or count != high.as_py() or count < 1:
        return None
    commas = np.flatnonzero(data == ord(","))
    index = np.searchsorted(commas, first)
    # exactly count - 1 commas inside each AD: the (count-1)th from the first is inside,
    # the next one is not
    if count > 1:
        if int(index.max()) + count - 2 >= len(commas):
            return None
        if not np.all(commas[index + count - 2] < last):
            return None
    following = index + count - 1
    beyond = following >= len(commas)
    if not np.all(beyond | (commas[np.minimum(following, max(len(commas) - 1, 0))] >= last)
                  if len(commas) else beyond):  # fmt: skip
        return None
    total = np.zeros(len(first), np.int64)
    alt = None
    for j in range(count):
        lo = first if j == 0 else commas[index + j - 1] + 1
        hi = last if j == count - 1 else commas[index + j]
        numbers, good, _ = _parse_counts(data, lo, hi)
        if not good:
            return None
        total += numbers
        if j == 1:
            alt = numbers
    return (pa.nulls(len(first), pa.int64()) if alt is None else pa.array(alt)), pa.array(total)


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
    """Write the variant table as zstd Parquet; return the number of rows.

    The file is written under a temporary name beside ``out`` and renamed when complete,
    so a failure never leaves a partial Parquet file at ``out``.
    """
    import pyarrow.parquet as pq

    handle, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(handle)
    try:
        # zstd level 1: within a few % of level 3's size here, at about half the time.
        # Positions are sorted and nearly all distinct: delta encoding stores them in
        # ~20 % less space than a dictionary, and skips building one that is discarded.
        pq.write_table(
            table, partial, compression="zstd", compression_level=1,
            use_dictionary=[name for name in table.column_names if name != "pos"],
            column_encoding={"pos": "DELTA_BINARY_PACKED"} if "pos" in table.column_names
            else None,
        )  # fmt: skip
        os.replace(partial, out)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return int(table.num_rows)
