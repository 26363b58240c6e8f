"""A VCF's bytes, read for the variant table: integrity, the header, the records.

gzip / BGZF integrity (every block's CRC and length, and the BGZF end-of-file marker,
whose absence means a truncated file), that the file is VCF text (``##fileformat=VCF``
first, ``##`` meta lines, the ``#CHROM`` header with the fixed columns), and the records
handed to Arrow's CSV reader without a copy (:class:`Body`, :func:`read_records`).
:class:`InvalidVcfError` names the file and the record, never quoting the record
(:func:`describe` says what a bad value is without it). Used by
:mod:`oncopipe.genomics.variants`.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from oncopipe.errors import InputError

FIXED = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
#: The empty BGZF block that ends every BGZF file (SAM specification, section 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


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
class Body:
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


def read_body(vcf: Path, source: str) -> Body:
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
    return Body(
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


def _diagnose_parse_error(body: Body) -> NoReturn:
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


def read_records(body: Body) -> Any:
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


def _parse_records(body: Body, block: int, *, check_utf8: bool) -> Any:
    """Arrow's CSV reader on the records, ``block`` bytes per block (see read_records).

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
