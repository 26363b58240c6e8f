"""Column checks of the variant table's records (:mod:`oncopipe.genomics.variants`).

Each check first asks a cheap question of the whole column (are all bytes digits? all
bases? is the column one value?), and the masks that name the bad record are built only
when the answer is no (``benchmarks/profiles.md``, VCF -> Parquet). Value patterns are
VCF 4.3's (section 1.6). :func:`validate_records` checks the fixed columns: the column
count, no empty field, CHROM, POS, REF, ALT and QUAL.
"""

from __future__ import annotations

import re
from typing import Any

from oncopipe.genomics.vcf_body import Body, InvalidVcfError, describe

# Value patterns, VCF 4.3 section 1.6 (AD and DP: see is_count, at most 9 digits: int32).
_CHROM = r"^[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*$"
_REF = r"^[ACGTNacgtn]+$"
_BASES = "[ACGTNacgtn]"
_ALT = (
    rf"^(?:{_BASES}+|\*|\.|<[^<>,\s]+>|{_BASES}*[\[\]][^\[\]\s]+[\[\]]{_BASES}*"
    rf"|\.{_BASES}+|{_BASES}+\.)$"
)


_QUAL = r"^(?:\.|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)$"
GT = r"^(?:\.|[0-9]+)(?:[/|](?:\.|[0-9]+))*$"


def check_column(
    body: Body, values: Any, ok: Any, what: str, records: Any = None, *, show: bool = True
) -> None:
    """Raise naming the first value where ``ok`` is false.

    ``ok`` None means all are good. ``records`` maps the values' positions to record
    indices (default: the identity); ``show`` adds a description of the bad value
    (:func:`describe`, never the value).

    Raises:
        InvalidVcfError: some ``ok`` is false (or null).
    """
    import pyarrow.compute as pc

    if ok is None:  # known good (see matches)
        return
    ok = pc.fill_null(ok, False)
    if len(ok) == 0 or pc.all(ok).as_py():
        return
    i = pc.index(ok, False).as_py()
    record = i if records is None else records[i].as_py()
    body.fail(record, f"{what} (got {describe(values[i].as_py())})" if show else what)


def matches(values: Any, pattern: str) -> Any:
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


def is_count(values: Any) -> Any:
    """Return whether each value is '.' or a non-negative integer of at most 9 digits."""
    import pyarrow.compute as pc

    digits = pc.and_(pc.ascii_is_decimal(values), pc.less_equal(pc.binary_length(values), 9))
    return pc.or_(pc.equal(values, "."), digits)


def validate_records(body: Body, table: Any, flat: Any, parents: Any) -> tuple[Any, Any]:
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
        check_column(body, values, pc.greater(pc.binary_length(values), 0), f"the {_label(column)} "
               "column is empty (use '.' for a missing value)", show=False)  # fmt: skip
    chrom = table["CHROM"]
    check_column(body, chrom, _matches_sorted(chrom, _CHROM), "CHROM is not a valid contig name")
    text = table["POS"]
    what = "POS must be a positive integer"
    # Values are not empty (checked above): digits only and at most 18 of them is what
    # ascii_is_decimal and the length test accept; the masks are built only otherwise.
    if not (_only_bytes(text, _DIGITS) and _max_length(text) <= 18):
        check_column(body, text, pc.and_(pc.ascii_is_decimal(text),
                                   pc.less_equal(pc.binary_length(text), 18)), what)  # fmt: skip
    pos = pc.cast(text, pa.int64())
    if not (len(pos) and pc.min(pos).as_py() > 0):
        check_column(body, text, pc.greater(pos, 0), what)
    ref = table["REF"]
    if not _only_bytes(ref, _BASE_BYTES):  # non-empty bases: what _REF matches
        check_column(body, ref, matches(ref, _REF), "REF must be bases (A, C, G, T, N)")
    if not (_only_bytes(flat, _BASE_BYTES) and _min_length(flat) > 0):  # bases: _ALT's first
        check_column(body, flat, matches(flat, _ALT),
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
        check_column(body, text, pc.match_substring_regex(text, _QUAL), what)
        raise InvalidVcfError(body.source, f"{what}: a record's QUAL cannot be read")
    good = pc.and_(pc.is_finite(qual), pc.greater_equal(qual, 0))
    if not some_missing:
        check_column(body, text, good, what)
        return pos, qual
    check_column(body, text, pc.or_(missing, good), what)
    return pos, pc.if_else(missing, pa.scalar(None, pa.float64()), qual)


_DIGITS = b"0123456789"
NON_SPACE = re.compile(rb"\S")
_BASE_BYTES = b"ACGTNacgtn"


def _chunks(values: Any) -> list[Any]:
    """Return the arrays of an array or chunked array."""
    return list(values.chunks) if hasattr(values, "chunks") else [values]


def value_offsets(values: Any) -> Any:
    """Return the value offsets of a string array (numpy int32, no copy)."""
    import numpy as np

    return np.frombuffer(values.buffers()[1], np.int32, len(values) + 1, values.offset * 4)


def _value_bytes(values: Any) -> Any:
    """Return the bytes of the values of a string array (numpy uint8, no copy)."""
    import numpy as np

    offsets = value_offsets(values)
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
    """:func:`matches` for a column of long runs of one value (CHROM of a sorted VCF).

    The regex runs once per run (no hashing); when some run fails, or the runs are
    short, :func:`matches` decides (so a failure yields the same mask).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    chunks = [c for c in _chunks(values) if len(c)]
    if chunks and not any(c.null_count for c in chunks):
        runs = pa.concat_arrays([pc.run_end_encode(c).values for c in chunks])
        if len(runs) * 4 <= len(values) and pc.all(pc.match_substring_regex(runs, pattern)).as_py():
            return None
    return matches(values, pattern)


def _label(column: str) -> str:
    """Return the user-facing name of a positional column (never a sample ID)."""
    return "first sample" if column == "SAMPLE_1" else column


def as_array(values: Any) -> Any:
    """Return a chunked array's data as one array (its only chunk needs no copy)."""
    if not hasattr(values, "chunks"):
        return values
    return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()


def has_byte(values: Any, character: str) -> bool:
    """Return whether some value of a string (chunked) array contains the ASCII byte."""
    return any(character.encode() in _value_bytes(c).tobytes() for c in _chunks(values))


def constant_value(values: Any) -> str | None:
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
        start = int(value_offsets(values)[0])
        text = values.buffers()[2].slice(start, n * width)
        if not text.slice(width).equals(text.slice(0, (n - 1) * width)):  # memcmp
            return None
    return str(first)


def _width(values: Any) -> int | None:
    """Return the length in bytes every value of a string array has, or None."""
    import numpy as np

    offsets = value_offsets(values)
    width = int(offsets[1] - offsets[0])
    if int(offsets[-1] - offsets[0]) != len(values) * width or np.any(np.diff(offsets) != width):
        return None
    return width
