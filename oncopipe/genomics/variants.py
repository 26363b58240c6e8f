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

Speed (``benchmarks/profiles.md``, VCF -> Parquet): each check first asks a cheap question
of the whole column (are all bytes digits? all bases? is the column one value?), and the
masks that name the bad record are built only when the answer is no, so a bad file gets
the same error as before. The usual sample layout is read by a byte scan in blocks
(:func:`_regular_samples`); any other goes the general way.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from oncopipe import catalog
from oncopipe.errors import InputError
from oncopipe.genomics.panel import Panel

#: The variant table's columns, in order (:data:`oncopipe.catalog.VARIANTS`).
COLUMNS = tuple(c.name for c in catalog.VARIANTS.columns)
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
    """The records of a VCF (bytes after the ``#CHROM`` line) and where they start.

    ``text`` is the whole decompressed file (bytes, or a pyarrow buffer for BGZF) and
    ``start`` where the records begin in it, so the records are handed to Arrow without a
    copy; :attr:`data` (a copy of the records) is for the record-by-record scans of the
    error paths.
    """

    source: str
    text: Any
    start: int
    first_line: int  # the line number of the first byte of the records
    names: tuple[str, ...]  # positional column names: the fixed ones, FORMAT, SAMPLE_1..

    @functools.cached_property
    def data(self) -> bytes:
        """The records (bytes after the ``#CHROM`` line), copied out of ``text``."""
        return bytes(memoryview(self.text)[self.start :])

    def buffer(self) -> Any:
        """Return the records as a pyarrow buffer over ``text`` (no copy)."""
        import pyarrow as pa

        return pa.py_buffer(self.text).slice(self.start)

    def is_ascii(self) -> bool:
        """Return whether the whole text is ASCII (so also UTF-8)."""
        import numpy as np

        if isinstance(self.text, bytes):
            return self.text.isascii()
        return len(self.text) == 0 or int(np.frombuffer(self.text, np.uint8).max()) < 128

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
    """Return the pyarrow schema of the variant table (:data:`oncopipe.catalog.VARIANTS`)."""
    return catalog.arrow_schema(catalog.VARIANTS)


def _inflate_bgzf(raw: bytes, source: str) -> Any:
    """Decompress a BGZF (or plain gzip) file, the BGZF blocks of a large one in threads.

    BGZF is a series of independent gzip members whose header's ``BC`` extra field gives
    the block size; zlib releases the GIL, so threads use every core. Each block is
    inflated with its gzip wrapper, so zlib checks its CRC-32 and length; a BGZF file
    must end with the empty end-of-file block (else it was cut at a block boundary).

    Returns:
        The text: bytes for plain gzip; for BGZF a pyarrow buffer (Arrow's allocator
        keeps its memory for the next file, where fresh memory costs a page fault per
        4 KiB), each block inflated into its place.

    Raises:
        InvalidVcfError: the stream is truncated or corrupt (naming the block).
    """
    import gzip
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa

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
    # where each block's text goes: its gzip trailer gives the length (ISIZE, at most 64
    # KiB in BGZF), which zlib checks
    sizes = [struct.unpack_from("<I", raw, a + n - 4)[0] for a, n in blocks]
    if max(sizes) > 1 << 16:  # not BGZF as written by htslib: inflate it as one stream
        return _inflate_members(view, blocks, source)
    places = np.zeros(len(blocks) + 1, np.int64)
    np.cumsum(sizes, out=places[1:])
    out = pa.allocate_buffer(int(places[-1]))
    text = np.frombuffer(out, np.uint8)
    workers = os.cpu_count() or 1
    # A few batches per thread. Below 128 blocks (8 MiB of text) the file is inflated in
    # this thread: starting threads and handing work over costs about as much as that.
    small = len(blocks) < 128 or workers == 1
    batch = len(blocks) if small else max(8, -(-len(blocks) // (4 * workers)))

    def inflate_batch(first: int) -> None:
        for number in range(first, min(first + batch, len(blocks))):
            start, size = blocks[number]
            try:
                piece = zlib.decompress(view[start : start + size], 31)
            except zlib.error:
                piece = None
            if piece is None or len(piece) != sizes[number]:  # zlib checks the length
                raise InvalidVcfError(
                    source,
                    f"BGZF block {number + 1} (byte {start}) is corrupt "
                    "(bad compressed data, CRC or length)",
                )
            text[places[number] : places[number + 1]] = np.frombuffer(piece, np.uint8)

    if small:
        inflate_batch(0)
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(inflate_batch, range(0, len(blocks), batch)):
            pass  # in order: the first corrupt block is the one reported
    return out


def _inflate_members(view: memoryview, blocks: list[tuple[int, int]], source: str) -> bytes:
    """Inflate gzip members one after the other (see :func:`_inflate_bgzf`)."""
    import zlib

    out = []
    for number, (start, size) in enumerate(blocks):
        try:
            out.append(zlib.decompress(view[start : start + size], 31))
        except zlib.error:
            raise InvalidVcfError(
                source,
                f"BGZF block {number + 1} (byte {start}) is corrupt "
                "(bad compressed data, CRC or length)",
            ) from None
    return b"".join(out)


def _vcf_body(vcf: Path, source: str) -> _Body:
    """Return the records of a VCF after checking it is VCF text with a valid header.

    Raises:
        InvalidVcfError: empty, not VCF (random bytes, BCF), truncated or corrupt gzip,
            a bad meta line or ``#CHROM`` line.
    """
    raw = vcf.read_bytes()
    if not raw:
        raise InvalidVcfError(source, "not a VCF: the file is empty")
    text = _inflate_bgzf(raw, source) if raw[:2] == b"\x1f\x8b" else raw
    data = _head(text)
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
    return _Body(
        source=source, text=text, start=min(end + 1, len(text)), first_line=line + 1, names=names
    )


def _head(text: Any) -> bytes:
    """Return ``text`` as bytes, or for a pyarrow buffer enough of its start to hold the
    whole ``#CHROM`` line (all of it when there is none)."""
    if isinstance(text, bytes):
        return text
    size = 1 << 16
    while True:
        head = bytes(memoryview(text)[:size])
        if size >= len(text):
            return head
        marker = head.find(b"\n#CHROM")
        if marker >= 0 and head.find(b"\n", marker + 1) >= 0:
            return head
        size *= 4


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

    # ASCII text is UTF-8: the per-value check is skipped (the file is scanned once).
    utf8 = not body.is_ascii()
    # Blocks of ~1/8 of the text, 256 KiB to 1 MiB (the default), parsed in parallel: a
    # small file is cut into more than one block. A line longer than a block fails the
    # parse; then the records are read again in 1 MiB blocks, as before.
    workers = os.cpu_count() or 1
    size = len(body.text) - body.start
    block = min(1 << 20, max(1 << 18, size // (4 * workers)))
    try:
        return _parse_records(body, block, check_utf8=utf8)
    except pa.ArrowInvalid:  # its message quotes the record: never pass it on
        pass
    if block != 1 << 20 or not utf8:
        try:
            return _parse_records(body, 1 << 20, check_utf8=True)
        except pa.ArrowInvalid:
            pass
    _diagnose_parse_error(body)


def _parse_records(body: _Body, block: int, *, check_utf8: bool) -> Any:
    """Arrow's CSV reader on the records, ``block`` bytes per block (see _read_records).

    The columns stay in Arrow's blocks (parsed in parallel): the checks take chunked
    arrays; the first sample is scanned as one array.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    keep = list(body.names[:10])  # the fixed columns, FORMAT and the first sample
    return pcsv.read_csv(
        pa.BufferReader(body.buffer()),
        read_options=pcsv.ReadOptions(
            column_names=list(body.names), use_threads=True, block_size=block
        ),
        parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pcsv.ConvertOptions(
            include_columns=keep,
            column_types={n: pa.string() for n in keep},
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=check_utf8,
        ),
    )


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
        if len(values) and _min_length(values) > 0:  # the usual case: no mask needed
            continue
        _check(body, values, pc.greater(pc.binary_length(values), 0), f"the {_label(column)} "
               "column is empty (use '.' for a missing value)", show=False)  # fmt: skip
    chrom = table["CHROM"]
    _check(body, chrom, _matches_sorted(chrom, _CHROM), "CHROM is not a valid contig name")
    text = table["POS"]
    what = "POS must be a positive integer"
    # Values are not empty (checked above): digits only and at most 18 of them is what
    # ascii_is_decimal and the length test accept; the masks are built only otherwise.
    if not (_only_bytes(text, _DIGITS) and _max_length(text) <= 18):
        _check(body, text, pc.and_(pc.ascii_is_decimal(text),
                                   pc.less_equal(pc.binary_length(text), 18)), what)  # fmt: skip
    pos = pc.cast(text, pa.int64())
    if not (len(pos) and pc.min(pos).as_py() > 0):
        _check(body, text, pc.greater(pos, 0), what)
    ref = table["REF"]
    if not _only_bytes(ref, _BASE_BYTES):  # non-empty bases: what _REF matches
        _check(body, ref, _matches(ref, _REF), "REF must be bases (A, C, G, T, N)")
    if not (_only_bytes(flat, _BASE_BYTES) and _min_length(flat) > 0):  # bases: _ALT's first
        _check(body, flat, _matches(flat, _ALT),
               "an ALT allele must be bases, '*', '.', a <symbolic> allele or a breakend",
               records=parents)  # fmt: skip
    text = table["QUAL"]
    what = "QUAL must be a non-negative number or '.'"
    missing = pc.equal(text, ".")
    some_missing = pc.any(missing).as_py()
    try:
        qual = pc.cast(pc.if_else(missing, "0", text) if some_missing else text, pa.float64())
    except pa.ArrowInvalid:
        qual = None
    if qual is None:
        _check(body, text, pc.match_substring_regex(text, _QUAL), what)
        raise InvalidVcfError(body.source, f"{what}: a record's QUAL cannot be read")
    good = pc.and_(pc.is_finite(qual), pc.greater_equal(qual, 0))
    if not some_missing:
        _check(body, text, good, what)
        return pos, qual
    _check(body, text, pc.or_(missing, good), what)
    return pos, pc.if_else(missing, pa.scalar(None, pa.float64()), qual)


_DIGITS = b"0123456789"
_NON_SPACE = re.compile(rb"\S")
_BASE_BYTES = b"ACGTNacgtn"


def _chunks(values: Any) -> list[Any]:
    """Return the arrays of an array or chunked array."""
    return list(values.chunks) if hasattr(values, "chunks") else [values]


def _offsets(values: Any) -> Any:
    """Return the value offsets of a string array (numpy int32, no copy)."""
    import numpy as np

    return np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)


def _value_bytes(values: Any) -> Any:
    """Return the bytes of the values of a string array (numpy uint8, no copy)."""
    import numpy as np

    offsets = _offsets(values)
    data = np.frombuffer(values.buffers()[2] or b"", np.uint8)
    return data[offsets[0] : offsets[-1]]


def _only_bytes(values: Any, characters: bytes) -> bool:
    """Return whether every byte of every value of a string (chunked) array is one of
    ``characters`` (ASCII), and no value is null."""
    import pyarrow as pa

    for chunk in _chunks(values):
        if chunk.type != pa.string() or chunk.null_count:
            return False
        if _value_bytes(chunk).tobytes().translate(None, characters):  # a byte not in the set
            return False
    return True


def _max_length(values: Any) -> int:
    """Return the longest value's length in bytes (0 for no value)."""
    import pyarrow.compute as pc

    return int(pc.max(pc.binary_length(values)).as_py() or 0)


def _min_length(values: Any) -> int:
    """Return the shortest value's length in bytes (0 for no value)."""
    import pyarrow.compute as pc

    return int(pc.min(pc.binary_length(values)).as_py() or 0)


def _matches_sorted(values: Any, pattern: str) -> Any:
    """:func:`_matches` for a column of long runs of one value (CHROM of a sorted VCF).

    The regex runs once per run (no hashing); when some run fails, or the runs are
    short, :func:`_matches` decides (so a failure yields the same mask).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = [c for c in _chunks(values) if len(c)]
    if chunks and not any(c.null_count for c in chunks):
        runs = pa.concat_arrays([pc.run_end_encode(c).values for c in chunks])
        if len(runs) * 4 <= len(values) and pc.all(pc.match_substring_regex(runs, pattern)).as_py():
            return None
    return _matches(values, pattern)


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

    if _NON_SPACE.search(body.text, body.start) is None:  # no record
        return schema().empty_table()
    table = _read_records(body)
    keep = table.column_names
    alt_text = table["ALT"]
    # Most VCFs have no multi-allelic record: then rows are records and ALT needs no split.
    single = not _has_byte(alt_text, ",")
    if not single:
        alt_text = _array(alt_text)
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
        if alts is None and not _has_byte(alt_text, "."):  # one ALT per record, none '.'
            alleles = pa.repeat(pa.scalar(2, pa.int64()), n)
        else:
            n_alt = pc.if_else(pc.equal(alt_text, "."), 0,
                               1 if alts is None else pc.list_value_length(alts))  # fmt: skip
            alleles = per_row(pc.add(pc.cast(n_alt, pa.int64()), 1))
        # Vectorised per FORMAT layout (a VCF usually has one or two), then put back in
        # row order.
        parts_out: list[tuple[Any, Any, Any, Any]] = []
        formats = rows["FORMAT"]
        samples = _array(rows["SAMPLE_1"])
        only = _constant(formats)
        layouts = [only] if only is not None else pc.unique(formats).to_pylist()
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


def _array(values: Any) -> Any:
    """Return a chunked array's data as one array (its only chunk needs no copy)."""
    if not hasattr(values, "chunks"):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


def _has_byte(values: Any, character: str) -> bool:
    """Return whether some value of a string (chunked) array contains the ASCII byte."""
    return any(character.encode() in _value_bytes(c).tobytes() for c in _chunks(values))


def _constant(values: Any) -> str | None:
    """Return the value of a string (chunked) array whose values are all one, else None
    (also when some value is null)."""
    value = None
    for chunk in _chunks(values):
        if not len(chunk):
            continue
        found = _constant_chunk(chunk)
        if found is None or (value is not None and found != value):
            return None
        value = found
    return value


def _constant_chunk(values: Any) -> str | None:
    import pyarrow as pa

    n = len(values)
    if n == 0 or values.null_count or values.type != pa.string():
        return None
    first = values[0].as_py()
    if values[n - 1].as_py() != first:  # the quick test for most columns
        return None
    width = _width(values)
    if width is None:
        return None
    if width and n > 1:  # n values of one width: all alike if the bytes repeat every width
        start = int(_offsets(values)[0])
        text = values.buffers()[2].slice(start, n * width)
        if not text.slice(width).equals(text.slice(0, (n - 1) * width)):  # memcmp
            return None
    return str(first)


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
    if keys and alt_index is None:  # the usual file: one scan, or None when it is not
        regular = _regular_samples(body, values, len(keys), layout, alleles, records=records)
        if regular is not None:
            return regular
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


def _regular_samples(
    body: _Body, values: Any, names: int, layout: dict[str, int], alleles: Any, *, records: Any
) -> tuple[Any, Any, Any] | None:
    """Return (GT, alt depth, depth) for the usual file, found in one byte scan; else None.

    The usual file: every record has the same allele count, every sample value has the
    same sequence of ':' and ',' separators, one ':' field per FORMAT name, AD holds one
    value per allele, and every AD and DP value is 1-9 digits. Then the results are
    :func:`_sample_fields`' (which handles, checks and reports everything else: on None
    it runs as before, so errors name the same record either way). Only a bad GT is
    reported here, as :func:`_sample_fields` reports it.

    The values are scanned :data:`_ROWS` at a time, so the scan's temporary arrays stay
    small and are reused (fresh memory costs a page fault per 4 KiB).

    Raises:
        InvalidVcfError: a bad GT.
    """
    import itertools

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    if n == 0 or values.null_count or values.type != pa.string():
        return None
    low, high = pc.min_max(alleles).values()
    count = low.as_py()
    if count is None or count != high.as_py() or count < 1:
        return None
    offsets = _offsets(values)
    data = np.frombuffer(values.buffers()[2] or b"", np.uint8)
    first_cuts = _separators(data, offsets, 0, min(n, _ROWS))
    if first_cuts is None:
        return None
    kinds = data[first_cuts[0]]
    per = len(kinds)
    colons = np.flatnonzero(kinds == ord(":")).tolist()
    if len(colons) + 1 != names:  # one ':' field per FORMAT name
        return None
    marks = [-1, *colons, per]  # field j lies between cut marks[j] and cut marks[j + 1]

    def commas(name: str) -> list[int]:
        return list(range(marks[layout[name]] + 1, marks[layout[name] + 1]))

    if any(commas(name) for name in ("GT", "DP") if name in layout):
        return None  # a GT or DP with a ',' is bad: the general path reports it
    spans: list[tuple[int, int]] = []  # (left cut, right cut) of every number: AD..., DP
    if "AD" in layout:
        inside = commas("AD")
        if len(inside) != count - 1:
            return None
        edges = [marks[layout["AD"]], *inside, marks[layout["AD"] + 1]]
        spans += list(itertools.pairwise(edges))
    if "DP" in layout:
        spans.append((marks[layout["DP"]], marks[layout["DP"] + 1]))
    gt_span = (marks[layout["GT"]], marks[layout["GT"] + 1]) if "GT" in layout else None
    # Kept: the first ALT's depth, DP, and the sum of AD when there is no DP; the other
    # numbers are only checked (parsed into a scratch block).
    kept = {1: "alt"} if "AD" in layout and count > 1 else {}
    if "DP" in layout:
        kept[len(spans) - 1] = "depth"
    results = {name: np.empty(n, np.int64) for name in kept.values()}
    total = np.zeros(n, np.int64) if "AD" in layout and "DP" not in layout else None
    scratch = np.empty(min(n, _ROWS), np.int64)
    gt_first, gt_length = np.empty(n, np.int64), np.empty(n, np.int64)
    for r0 in range(0, n, _ROWS):
        r1 = min(n, r0 + _ROWS)
        cuts = first_cuts if r0 == 0 else _separators(data, offsets, r0, r1)
        if cuts is None or cuts.shape[1] != per or not np.all(data[cuts] == kinds):
            return None
        bounds = _Bounds(cuts, offsets[r0 : r1 + 1].astype(np.int64))
        for j, span in enumerate(spans):
            out = results[kept[j]][r0:r1] if j in kept else scratch[: r1 - r0]
            if not _parse_numbers(data, *bounds.of(*span), out=out):
                return None  # a '.', an empty or a bad value: the general path decides
            if total is not None:
                total[r0:r1] += out
        if gt_span is not None:
            first, last = bounds.of(*gt_span)
            gt_first[r0:r1] = first
            np.subtract(last, first, out=gt_length[r0:r1])
    genotype = pa.nulls(n, pa.string())
    if gt_span is not None:
        genotype = _genotypes(body, data, gt_first, gt_length, records=records)
    alt_depth = pa.array(results["alt"]) if "alt" in results else pa.nulls(n, pa.int64())
    depth = pa.nulls(n, pa.int64())
    if "depth" in results:
        depth = pa.array(results["depth"])
    elif total is not None:
        depth = pa.array(total)
    return genotype, alt_depth, depth


#: Sample values scanned at a time by :func:`_regular_samples`.
_ROWS = 16384


@dataclass(frozen=True)
class _Bounds:
    """Where the fields of a block of sample values lie (see :func:`_regular_samples`)."""

    cuts: Any  # (values, separators) positions of the ':' and ',' of each value
    offsets: Any  # int64 value offsets, one more than values

    def of(self, left: int, right: int) -> tuple[Any, Any]:
        """(first, last) positions of the text between cut ``left`` and cut ``right``
        (-1: the value's start; the separator count: its end)."""
        per = self.cuts.shape[1]
        first = self.offsets[:-1] if left < 0 else self.cuts[:, left] + 1
        last = self.offsets[1:] if right >= per else self.cuts[:, right]
        return first, last


def _separators(data: Any, offsets: Any, r0: int, r1: int) -> Any:
    """Return the positions of the ':' and ',' in values r0..r1-1, one row per value,
    or None unless every value has as many."""
    import numpy as np

    start = int(offsets[r0])
    text = data[start : int(offsets[r1])]
    found = text == ord(":")
    found |= text == ord(",")
    where = np.flatnonzero(found)
    rows = r1 - r0
    per = len(where) // rows
    if len(where) != per * rows:
        return None
    where += start
    cuts = where.reshape(rows, per)
    # sorted cuts, rows * per of them: if group i lies inside value i, each value has per
    if per and not (
        np.all(cuts[:, 0] >= offsets[r0:r1]) and np.all(cuts[:, -1] < offsets[r0 + 1 : r1 + 1])
    ):
        return None
    return cuts


def _parse_numbers(data: Any, first: Any, last: Any, *, out: Any) -> bool:
    """Parse ``data[first[i]:last[i]]`` (numpy bytes and positions) as integers into
    ``out``; return False unless every value is 1-9 ASCII digits (then :func:`_is_count`
    accepts it and it is not '.')."""
    import numpy as np

    lengths = last - first
    shortest, longest = int(lengths.min()), int(lengths.max())
    if shortest < 1 or longest > 9:
        return False
    out[:] = 0
    for k in range(longest):  # byte k of the values right-aligned to the longest
        where = last - (longest - k)
        if k < longest - shortest:  # a shorter value has no byte here: it counts as 0
            inside = where >= first
            np.maximum(where, first, out=where)
            digit = data[where]
            digit -= ord("0")
            digit *= inside
        else:
            digit = data[where]
            digit -= ord("0")
        if int(digit.max()) >= 10:  # not a digit (the subtraction wraps below '0')
            return False
        out *= 10
        out += digit
    return True


def _genotypes(body: _Body, data: Any, first: Any, lengths: Any, *, records: Any) -> Any:
    """Return the GT values ``data[first[i]:first[i] + lengths[i]]``, checked as
    :func:`_sample_fields` checks them.

    When every GT has one width of at most 8 bytes (``0/1``), the distinct ones are
    found from 8-byte words, not by hashing strings; the regex runs on those alone.

    Raises:
        InvalidVcfError: a bad GT (the same error :func:`_sample_fields` raises).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    what = "the first sample's GT must be allele numbers separated by / or |"
    width = int(lengths.max()) if len(lengths) else 0
    if not (0 < width <= 8 and int(lengths.min()) == width):
        genotype = _gather(data, first, first + lengths)
        _check(body, genotype, _matches(genotype, _GT), what, records=records)
        return genotype
    if int(first[-1]) + 8 > len(data):  # the last GT is too near the end for a word
        data = np.concatenate([data, np.zeros(8, np.uint8)])
    # word i: the 8 bytes from data[i] (unaligned loads, overlapping)
    words = np.ndarray((len(data) - 7,), np.uint64, data, 0, (1,))[first]
    grid = words.view(np.uint8).reshape(len(first), 8)[:, :width]
    n = len(first)
    genotype = pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32)),
        pa.py_buffer(np.ascontiguousarray(grid)),
    )  # fmt: skip
    if width < 8:
        words &= np.uint64((1 << (8 * width)) - 1)
    distinct = pc.unique(pa.array(words)).to_numpy()
    texts = pa.array([int(w).to_bytes(8, "little")[:width] for w in distinct], pa.binary())
    if pc.all(pc.match_substring_regex(texts.cast(pa.string()), _GT)).as_py():
        return genotype
    _check(body, genotype, _matches(genotype, _GT), what, records=records)
    return genotype


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
            value = _constant(column)
            if value is not None:
                zeros = pa.array(np.zeros(len(column), np.int32)) if zeros is None else zeros
                column = pa.DictionaryArray.from_arrays(zeros, pa.array([value], pa.string()))
        columns.append(column)
    if all(f.type == c.type for f, c in zip(fields, columns, strict=True)):
        return table, False
    types = [pa.field(f.name, c.type, f.nullable) for f, c in zip(fields, columns, strict=True)]
    return pa.table(columns, schema=pa.schema(types)), True


def _width(values: Any) -> int | None:
    """Return the length in bytes every value of a string array has, or None."""
    import numpy as np

    offsets = _offsets(values)
    width = int(offsets[1] - offsets[0])
    if int(offsets[-1] - offsets[0]) != len(values) * width or np.any(np.diff(offsets) != width):
        return None
    return width
