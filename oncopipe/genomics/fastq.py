"""FASTQ pair validation, streamed, before any compute is spent on a sample.

Checks every record of both mates in one pass: gzip integrity (a truncated upload is the
most common fault), the four-line structure, sequence alphabet, quality length and range,
mate names in step, and equal read counts. Errors name the file and the read number (the
1-based record index), never the read content.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from oncopipe.errors import InputError

_SEQUENCE = frozenset(b"ACGTNacgtn")
_QUALITY_MIN, _QUALITY_MAX = 33, 126  # '!'..'~' (Phred+33)


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


def _mate_name(header: bytes) -> bytes:
    """Return the read name without '@', the comment, and a /1 or /2 suffix."""
    name = header[1:].split(None, 1)[0] if len(header) > 1 else b""
    if name.endswith((b"/1", b"/2")):
        name = name[:-2]
    return name


def _records(handle: Iterable[bytes], name: str) -> Iterator[tuple[bytes, int]]:
    """Yield (read name, sequence length) for each record, validating as it goes.

    Raises:
        InvalidFastqError: structure, alphabet, quality or gzip problems.
    """
    number = 0
    lines = iter(handle)
    while True:
        try:
            header = next(lines, None)
            if header is None:
                return
            number += 1
            sequence = next(lines, None)
            plus = next(lines, None)
            quality = next(lines, None)
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise InvalidFastqError(
                name, f"read {number}: the gzip stream is truncated or corrupt ({type(e).__name__})"
            ) from e
        if sequence is None or plus is None or quality is None:
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
            raise InvalidFastqError(
                name, f"read {number}: illegal sequence characters {''.join(bad)!r}"
            )
        if len(quality) != len(sequence):
            raise InvalidFastqError(
                name,
                f"read {number}: quality length {len(quality)} != sequence length {len(sequence)}",
            )
        if min(quality) < _QUALITY_MIN or max(quality) > _QUALITY_MAX:
            raise InvalidFastqError(name, f"read {number}: quality characters outside '!'..'~'")
        yield _mate_name(header.rstrip(b"\r\n")), len(sequence)


def validate_pair(r1: IO[bytes], r2: IO[bytes], *, name_1: str, name_2: str) -> FastqStats:
    """Validate a gzip-compressed FASTQ pair, streamed; return its statistics.

    ``r1`` / ``r2`` are binary streams of the compressed files (local files or S3 bodies).

    Raises:
        InvalidFastqError: the first problem found, naming the file and read number.
    """
    reads = bases = 0
    min_length, max_length = 1 << 30, 0
    with gzip.open(r1, "rb") as g1, gzip.open(r2, "rb") as g2:
        mates_1, mates_2 = _records(g1, name_1), _records(g2, name_2)
        while True:
            first, second = next(mates_1, None), next(mates_2, None)
            if first is None and second is None:
                break
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
            bases += first[1] + second[1]
            min_length = min(min_length, first[1], second[1])
            max_length = max(max_length, first[1], second[1])
    if reads == 0:
        raise InvalidFastqError(name_1, "no reads: the FASTQ pair is empty")
    return FastqStats(reads=reads, bases=bases, min_length=min_length, max_length=max_length)
