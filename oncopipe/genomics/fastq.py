"""FASTQ pair validation, streamed, before any compute is spent on a sample.

Checks every record of both mates in one pass: gzip integrity (a truncated upload is the
most common fault), the four-line structure, sequence alphabet, quality length and range,
mate names in step, and equal read counts. Errors name the file and the read number (the
1-based record index), never the read content.

Memory is bounded per record: a line is read with a length limit
(:data:`MAX_LINE_BYTES` by default), so a file that is one enormous line (a corrupt
upload, a gzip of a single line that inflates to gigabytes) is rejected after reading
at most that many bytes instead of being held whole.

This module is the record-at-a-time reader (:func:`iter_pairs`), the exact one;
:mod:`oncopipe.genomics.fastq_batches` reads a few megabytes at a time with the same
answers, and holds :func:`~oncopipe.genomics.fastq_batches.validate_pair`.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from isal import igzip, isal_zlib

from oncopipe.errors import InputError

_SEQUENCE = frozenset(b"ACGTNacgtn")
QUALITY_MIN, QUALITY_MAX = 33, 126  # '!'..'~' (Phred+33)
SEQUENCE_BYTES = bytes(sorted(_SEQUENCE))
#: Longest FASTQ line accepted (bytes, line terminator excluded). Short-read lines are a
#: few hundred bytes; 1 MiB leaves room for long reads while bounding memory per record.
MAX_LINE_BYTES = 1 << 20
_LINE_NAMES = ("header", "sequence", "'+'", "quality")


class InvalidFastqError(InputError):
    """A FASTQ file (or pair) cannot be aligned; the message names file and read."""

    reason_code = "invalid-fastq"


@dataclass(frozen=True)
class FastqStats:
    """What one validated pair holds."""

    reads: int  # read pairs
    bases: int  # both mates
    min_length: int
    max_length: int


#: Read-ahead of :func:`open_decompressed` (decompressed bytes).
READ_BUFFER = 1 << 20


#: What a gzip read raises on a truncated or corrupt stream (``BadGzipFile`` is an OSError).
_ISAL_ERROR = cast("type[Exception]", isal_zlib.error)  # the stubs type it as an instance
GZIP_READ_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, _ISAL_ERROR, OSError)


@contextmanager
def open_decompressed(source: Any) -> Iterator[io.BufferedReader]:
    """Open a gzip file (a path or a binary stream) for reading lines, decompressed.

    Inflate is ISA-L's (``isal.igzip``, the ``gzip`` module's interface at about twice
    its speed). A ``BufferedReader`` over it reads a megabyte at a time and splits lines
    in C. Decompression errors surface from ``read``/``readline`` as one of
    :data:`GZIP_READ_ERRORS`.
    """
    if not isinstance(source, (str, bytes, os.PathLike)) and not hasattr(source, "readinto"):
        source = _RawReader(source)  # ISA-L's reader calls readinto: an S3 body has read only
    with igzip.open(source, "rb") as handle:
        yield io.BufferedReader(handle, READ_BUFFER)  # type: ignore[arg-type]


class _RawReader(io.RawIOBase):
    """A raw stream over an object that has only ``read(n)`` (botocore's StreamingBody)."""

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        block = self._source.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


def _mate_name(header: bytes) -> bytes:
    """Return the read name without '@', the comment, and a /1 or /2 suffix."""
    parts = header[1:].split(None, 1)
    name = parts[0] if parts else b""  # "@" alone, or only whitespace after it
    if name.endswith((b"/1", b"/2")):
        name = name[:-2]
    return name


def describe_gzip_error(error: BaseException) -> str:
    """Return what a gzip read error means, without the library's message (it can quote
    the file's first bytes)."""
    if isinstance(error, EOFError):
        return "it ends before the end of the gzip stream"
    if isinstance(error, gzip.BadGzipFile):
        return "not gzip data, or a gzip checksum mismatch"
    if isinstance(error, (zlib.error, _ISAL_ERROR)):
        return "corrupt compressed data"
    return type(error).__name__


def _line_reader(
    handle: io.BufferedIOBase, name: str, max_line: int
) -> Callable[[int, int], bytes]:
    """Return ``read(record, line_in_record)``: the next line, at most ``max_line`` bytes
    (plus its terminator), or ``b""`` at the end of the file.

    Raises (from the returned function):
        InvalidFastqError: a line is too long, or the gzip stream is truncated or corrupt.
    """
    readline = handle.readline
    limit = max_line + 2  # room for "\r\n"

    def read(record: int, line: int) -> bytes:
        try:
            text = readline(limit)
        except GZIP_READ_ERRORS as e:
            raise InvalidFastqError(
                name,
                f"read {record}: the gzip stream is truncated or corrupt "
                f"({describe_gzip_error(e)})",
            ) from e
        if len(text) > max_line and len(text.rstrip(b"\r\n")) > max_line:
            raise InvalidFastqError(
                name,
                f"read {record}: the {_LINE_NAMES[line]} line is longer than {max_line} bytes "
                "(the file is corrupt, or raise the line limit for long reads)",
            )
        return text

    return read


def _records(
    handle: io.BufferedIOBase, name: str, max_line: int, start: int = 0
) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield (read name, sequence length, record) for each record, validating as it goes.

    ``record`` is the record's four lines as written back (``\n`` line ends, the '+'
    line bare), ready to copy into a shard.

    Raises:
        InvalidFastqError: an empty file; structure, alphabet, quality, line length or
            gzip problems.
    """
    read = _line_reader(handle, name, max_line)
    number = start
    while True:
        header = read(number + 1, 0)
        if not header:
            if number == 0:
                raise InvalidFastqError(name, "file is empty: no reads")
            return
        number += 1
        sequence = read(number, 1)
        plus = read(number, 2) if sequence else b""
        quality = read(number, 3) if plus else b""
        if not quality:
            raise InvalidFastqError(name, f"read {number}: the file ends inside the record")
        if not header.startswith(b"@"):
            raise InvalidFastqError(name, f"read {number}: the header line does not start with '@'")
        if not plus.startswith(b"+"):
            raise InvalidFastqError(name, f"read {number}: the third line does not start with '+'")
        sequence = sequence.rstrip(b"\r\n")
        quality = quality.rstrip(b"\r\n")
        if not sequence:
            raise InvalidFastqError(name, f"read {number}: empty sequence")
        if not _SEQUENCE.issuperset(sequence):
            bad = sorted({chr(c) for c in sequence if c not in _SEQUENCE})
            shown = "".join(c if c.isprintable() and c.isascii() else "?" for c in bad[:10])
            raise InvalidFastqError(name, f"read {number}: illegal sequence characters {shown!r}")
        if len(quality) != len(sequence):
            raise InvalidFastqError(
                name,
                f"read {number}: quality length {len(quality)} != sequence length {len(sequence)}",
            )
        if min(quality) < QUALITY_MIN or max(quality) > QUALITY_MAX:
            raise InvalidFastqError(name, f"read {number}: quality characters outside '!'..'~'")
        header = header.rstrip(b"\r\n")
        yield _mate_name(header), len(sequence), b"%s\n%s\n+\n%s\n" % (header, sequence, quality)


@dataclass(frozen=True)
class FastqPairRecord:
    """One validated read pair: the mate name and both records (four lines each)."""

    name: bytes
    length_1: int
    length_2: int
    record_1: bytes
    record_2: bytes


def iter_pairs(
    g1: io.BufferedIOBase,
    g2: io.BufferedIOBase,
    *,
    name_1: str,
    name_2: str,
    max_line_bytes: int = MAX_LINE_BYTES,
    start: int = 0,
) -> Iterator[FastqPairRecord]:
    """Yield the read pairs of two *decompressed* FASTQ streams, validating as it goes.

    The record-at-a-time reader: the checks of :func:`validate_pair`, for a caller that
    needs each record, and the exact path of :func:`iter_pair_batches`. ``start`` is how
    many pairs came before the streams' position (read numbers in errors go on from it).

    Raises:
        InvalidFastqError: the first problem found, naming the file and read number.
        ValueError: ``max_line_bytes`` is not positive.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    mates_1 = _records(g1, name_1, max_line_bytes, start)
    mates_2 = _records(g2, name_2, max_line_bytes, start)
    reads = start
    while True:
        first, second = next(mates_1, None), next(mates_2, None)
        if first is None and second is None:
            return
        if first is None or second is None:
            shorter, longer = (name_1, name_2) if first is None else (name_2, name_1)
            raise InvalidFastqError(
                shorter, f"has {reads} reads but {longer} has more: R1/R2 counts differ"
            )
        reads += 1
        if first[0] != second[0]:
            raise InvalidFastqError(
                name_2, f"read {reads}: mate name does not match read {reads} of {name_1}"
            )
        yield FastqPairRecord(first[0], first[1], second[1], first[2], second[2])
