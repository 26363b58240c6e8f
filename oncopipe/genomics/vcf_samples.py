"""Per-sample fields of the variant table: GT, AD (Number=R) and DP.

The usual sample layout (``GT:AD:DP``-like, the same FORMAT on every record) is read by a
byte scan in blocks (:func:`sample_fields` through ``_regular_samples``); any other goes
the general way, field by field. A bad value is named by record and column, never quoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from oncopipe.genomics.vcf_body import Body
from oncopipe.genomics.vcf_checks import GT, check_column, is_count, matches, value_offsets


def sample_fields(
    body: Body, values: Any, alt_index: Any, layout_text: str, *, records: Any, alleles: Any
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
        check_column(body, values, pc.less_equal(counts, max(len(keys), 1)),
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
        check_column(body, genotype, matches(genotype, GT),
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
        check_column(body, flat_text, is_count(flat_text),
               "the first sample's AD values must be non-negative integers or '.'",
               records=pc.list_parent_indices(parts) if records is None
               else pc.take(records, pc.list_parent_indices(parts)))  # fmt: skip
        lengths = pc.list_value_length(parts)
        check_column(body, ad, pc.or_(pc.equal(ad, "."), pc.equal(lengths, alleles)),
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
        check_column(body, dp, is_count(dp),
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
    body: Body, values: Any, names: int, layout: dict[str, int], alleles: Any, *, records: Any
) -> tuple[Any, Any, Any] | None:
    """Return (GT, alt depth, depth) for the usual file, found in one byte scan; else None.

    The usual file: every record has the same allele count, every sample value has the
    same sequence of ':' and ',' separators, one ':' field per FORMAT name, AD holds one
    value per allele, and every AD and DP value is 1-9 digits. Then the results are
    :func:`sample_fields`' (which handles, checks and reports everything else: on None
    it runs as before, so errors name the same record either way). Only a bad GT is
    reported here, as :func:`sample_fields` reports it.

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
    offsets = value_offsets(values)
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
    ``out``; return False unless every value is 1-9 ASCII digits (then :func:`is_count`
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


def _genotypes(body: Body, data: Any, first: Any, lengths: Any, *, records: Any) -> Any:
    """Return the GT values ``data[first[i]:first[i] + lengths[i]]``, checked as
    :func:`sample_fields` checks them.

    When every GT has one width of at most 8 bytes (``0/1``), the distinct ones are
    found from 8-byte words, not by hashing strings; the regex runs on those alone.

    Raises:
        InvalidVcfError: a bad GT (the same error :func:`sample_fields` raises).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    what = "the first sample's GT must be allele numbers separated by / or |"
    width = int(lengths.max()) if len(lengths) else 0
    if not (0 < width <= 8 and int(lengths.min()) == width):
        genotype = _gather(data, first, first + lengths)
        check_column(body, genotype, matches(genotype, GT), what, records=records)
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
    if pc.all(pc.match_substring_regex(texts.cast(pa.string()), GT)).as_py():
        return genotype
    check_column(body, genotype, matches(genotype, GT), what, records=records)
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
    """Parse ``data[first[i]:last[i]]`` as counts, as :func:`is_count` accepts them.

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
