"""FASTQ pairs validated a few megabytes at a time, with the record reader's answers.

:func:`iter_pair_batches` (what validation and the shard split use) checks a few
megabytes of both mates at a time with array operations: where lines end, their lengths,
the header and '+' markers, the alphabet and quality range (a ``bytes.translate`` class
table, AND-reduced per line), and the mate names (compared as gathered bytes). No Python
step runs per record. Where a batch holds anything these checks do not handle themselves
(a CRLF line end, a line over the limit, any invalid record, a name that starts with
whitespace, the end of one mate before the other, a gzip error), the rest of the lane,
from the first pair of that batch, goes to the record reader
(:func:`oncopipe.genomics.fastq.iter_pairs`), which accepts what is valid and names the
first problem exactly as it always has. The next megabytes are inflated in worker
threads while a batch is checked (ISA-L releases the GIL).
"""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from oncopipe.genomics.fastq import (
    GZIP_READ_ERRORS,
    MAX_LINE_BYTES,
    QUALITY_MAX,
    QUALITY_MIN,
    READ_BUFFER,
    SEQUENCE_BYTES,
    FastqPairRecord,
    FastqStats,
    iter_pairs,
    open_decompressed,
)

#: Decompressed bytes gathered from each mate before a batch is checked.
_BATCH_BYTES = 4 << 20
#: Pairs a batch of the exact path (:func:`_exact_batches`) gathers.
_EXACT_BATCH_PAIRS = 4096


@dataclass(frozen=True, eq=False)  # numpy fields: no element-wise ==
class PairBatch:
    """Consecutive validated read pairs of a lane, as each mate's records.

    ``data_1``/``data_2`` are the records as a shard holds them (``\\n`` line ends, bare
    '+' lines); ``ends_1[i]`` is where record ``i`` of ``data_1`` ends. ``first`` counts
    the pairs of the lane before this batch.
    """

    first: int
    data_1: bytes
    data_2: bytes
    ends_1: np.ndarray
    ends_2: np.ndarray
    lengths_1: np.ndarray
    lengths_2: np.ndarray

    @property
    def pairs(self) -> int:
        return len(self.ends_1)

    @property
    def bases(self) -> int:
        return int(self.lengths_1.sum()) + int(self.lengths_2.sum())

    @property
    def min_length(self) -> int:
        return int(min(self.lengths_1.min(), self.lengths_2.min()))

    @property
    def max_length(self) -> int:
        return int(max(self.lengths_1.max(), self.lengths_2.max()))

    def records(self, start: int, stop: int) -> tuple[bytes, bytes]:
        """Return the records of pairs ``start``..``stop - 1`` of the batch, each mate's."""
        return (_cut(self.data_1, self.ends_1, start, stop),
                _cut(self.data_2, self.ends_2, start, stop))  # fmt: skip


def _cut(data: bytes, ends: np.ndarray, start: int, stop: int) -> bytes:
    if start >= stop:
        return b""
    begin = int(ends[start - 1]) if start else 0
    end = int(ends[stop - 1])
    return data if begin == 0 and end == len(data) else data[begin:end]


def _read_ahead(handle: io.BufferedIOBase) -> tuple[list[bytes], BaseException | None, bool]:
    """Read about :data:`_BATCH_BYTES` from ``handle``: the blocks, the read error met
    (None if none), and whether the stream ended."""
    blocks: list[bytes] = []
    held = 0
    while held < _BATCH_BYTES:
        try:
            block = handle.read(READ_BUFFER)
        except GZIP_READ_ERRORS as e:
            return blocks, e, True
        if not block:
            return blocks, None, True
        blocks.append(block)
        held += len(block)
    return blocks, None, False


@dataclass
class _Mate:
    """One mate's decompressed stream as the batch reader holds it.

    The next few megabytes are inflated in a worker thread while the current batch is
    checked (ISA-L releases the GIL); at most one read is in flight.
    """

    handle: io.BufferedIOBase
    name: str
    pool: ThreadPoolExecutor
    buffer: bytes = b""
    ended: bool = False
    error: BaseException | None = None
    pending: Future[tuple[list[bytes], BaseException | None, bool]] | None = None

    def fill(self) -> None:
        """Take read-ahead until the buffer holds :data:`_BATCH_BYTES` or the stream
        ends, and start the next read; a read error ends the stream and is kept for the
        exact path to report where it was met."""
        parts = [self.buffer]
        held = len(self.buffer)
        while held < _BATCH_BYTES and not self.ended:
            blocks = self._take()
            parts.extend(blocks)
            held += sum(map(len, blocks))
        self.buffer = b"".join(parts)
        if not self.ended and self.pending is None:
            self.pending = self.pool.submit(_read_ahead, self.handle)

    def _take(self) -> list[bytes]:
        future = self.pending or self.pool.submit(_read_ahead, self.handle)
        self.pending = None
        blocks, self.error, self.ended = future.result()
        return blocks

    def settle(self) -> None:
        """Wait for the read in flight and keep what it read (before the exact path)."""
        if self.pending is not None:
            self.buffer += b"".join(self._take())

    def drop(self) -> None:
        """Wait for the read in flight and discard it, raising nothing (before the
        stream is closed: the error that ended the reading is the one to report)."""
        if self.pending is not None:
            wait([self.pending])
            self.pending = None

    def rest(self) -> io.BufferedReader:
        """The stream from the start of the buffer on (for the exact path)."""
        self.settle()
        return io.BufferedReader(_Resumed(self.buffer, self.handle, self.error, self.ended),
                                 READ_BUFFER)  # fmt: skip


class _Resumed(io.RawIOBase):
    """A raw stream of ``prefix``, then the rest of ``handle``; a read error that the
    batch reader met is raised where it was met, after the prefix."""

    def __init__(self, prefix: bytes, handle: io.BufferedIOBase, error: BaseException | None,
                 ended: bool) -> None:  # fmt: skip
        super().__init__()
        self._prefix = memoryview(prefix)
        self._handle = handle
        self._error = error
        self._ended = ended

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        if self._error is not None:
            raise self._error
        if self._ended:
            return 0
        block = self._handle.read(len(buffer))
        buffer[: len(block)] = block
        return len(block)


def _byte_classes() -> np.ndarray:
    """The class bits of each byte value: 1 sequence letter, 2 quality character,
    4 a whitespace byte that ends a read name; a line end has every bit (an AND over a
    line, its end included, is the AND over its content)."""
    table = np.zeros(256, dtype=np.uint8)
    table[np.frombuffer(SEQUENCE_BYTES, dtype=np.uint8)] |= 1
    table[QUALITY_MIN : QUALITY_MAX + 1] |= 2
    table[np.frombuffer(b" \t\x0b\x0c", dtype=np.uint8)] |= 4
    table[ord("\n")] = 0xFF
    return table


_CLASSES = _byte_classes()
#: The same as a ``bytes.translate`` table (it maps 4 MiB in a few ms, numpy's lookup
#: takes twice as long).
_CLASS_TABLE = _CLASSES.tobytes()


@dataclass(frozen=True, eq=False)  # numpy fields: no element-wise ==
class _Scanned:
    """One mate's part of a batch that passed every check."""

    data: bytes
    ends: np.ndarray  # end of each record in ``data``
    lengths: np.ndarray  # sequence length of each record
    text: np.ndarray  # the buffer's bytes the records took
    name_starts: np.ndarray  # where each read name starts in ``text`` (after the '@')
    name_lengths: np.ndarray  # its length, a /1 or /2 suffix left off
    consumed: int  # bytes of the buffer the records took


def _newlines(buffer: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(buffer, dtype=np.uint8) == ord("\n"))


def _scan(buffer: bytes, newlines: np.ndarray, count: int, max_line: int) -> _Scanned | None:
    """Check the first ``count`` records of ``buffer`` (``newlines``: where its lines
    end, ``4 * count`` of them at least); return them, or None if anything needs the
    exact path. Array operations only: no Python step per record."""
    n = 4 * count
    line_ends = newlines[:n]
    consumed = int(line_ends[-1]) + 1
    if buffer.find(b"\r", 0, consumed) >= 0:
        return None
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = line_ends[:-1] + 1
    lengths = line_ends - starts
    if int(lengths.max()) > max_line:
        return None
    text = np.frombuffer(buffer, dtype=np.uint8, count=consumed)
    header, sequence, plus, quality = (lengths[i::4] for i in range(4))
    head = starts[0::4]
    if ((header < 2).any() or (text[head] != ord("@")).any()
            or (text[starts[2::4]] != ord("+")).any()
            or (sequence == 0).any() or (sequence != quality).any()):  # fmt: skip
        return None
    classes = np.frombuffer(buffer[:consumed].translate(_CLASS_TABLE), dtype=np.uint8)
    if (classes[head + 1] & 4).any():  # a name that starts with whitespace
        return None
    every_line = np.bitwise_and.reduceat(classes, starts)
    if not ((every_line[1::4] & 1).all() and (every_line[3::4] & 2).all()):
        return None
    name_starts = head + 1
    breaks = np.flatnonzero((classes & 4) != 0)  # (in '+' lines too: those lie past every name end)
    after = np.searchsorted(breaks, name_starts)
    name_ends = line_ends[0::4].copy()
    has_break = after < len(breaks)
    within = breaks[np.minimum(after, len(breaks) - 1)]
    cut = has_break & (within < name_ends)
    name_ends[cut] = within[cut]
    name_lengths = name_ends - name_starts
    last = text[name_ends - 1]
    suffix = ((name_lengths >= 2) & (text[name_ends - 2] == ord("/"))
              & ((last == ord("1")) | (last == ord("2"))))  # fmt: skip
    name_lengths = name_lengths - 2 * suffix
    if (plus == 1).all():
        data = buffer[:consumed]
    else:  # '+' lines that repeat the name: written back bare, as the exact path does
        bare = buffer[:consumed].split(b"\n")[:n]
        bare[2::4] = [b"+"] * count
        data = b"\n".join(bare) + b"\n"
    ends = np.cumsum(header + sequence + quality + 5)  # four line ends and a bare "+"
    return _Scanned(data, ends, sequence, text, name_starts, name_lengths, consumed)


def _same_mates(first: _Scanned, second: _Scanned) -> bool:
    """Return True when every record's mate name matches the other mate's."""
    if not np.array_equal(first.name_lengths, second.name_lengths):
        return False
    total = int(first.name_lengths.sum())
    if total == 0:
        return True
    offsets = np.arange(total) - np.repeat(np.cumsum(first.name_lengths) - first.name_lengths,
                                           first.name_lengths)  # fmt: skip
    at_1 = np.repeat(first.name_starts, first.name_lengths) + offsets
    at_2 = np.repeat(second.name_starts, second.name_lengths) + offsets
    return bool(np.array_equal(first.text[at_1], second.text[at_2]))


def iter_pair_batches(
    g1: io.BufferedIOBase,
    g2: io.BufferedIOBase,
    *,
    name_1: str,
    name_2: str,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Generator[PairBatch, None, None]:
    """Yield the read pairs of two *decompressed* FASTQ streams in validated batches.

    The same pairs, the same records and the same first error as :func:`iter_pairs`
    (see the module docstring for how); a few megabytes of each mate are held at a time.

    Raises:
        InvalidFastqError: the first problem found, naming the file and read number.
        ValueError: ``max_line_bytes`` is not positive.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    with ThreadPoolExecutor(2, thread_name_prefix="fastq-inflate") as pool:
        mates = (_Mate(g1, name_1, pool), _Mate(g2, name_2, pool))
        try:
            pairs = yield from _fast_batches(mates, max_line_bytes)
            if pairs < 0:
                return
            rest = (mates[0].rest(), mates[1].rest())
        finally:
            for mate in mates:  # no read may be left running on a stream being closed
                mate.drop()
    yield from _exact_batches(*rest, name_1=name_1, name_2=name_2,
                              max_line_bytes=max_line_bytes, start=pairs)  # fmt: skip


def _fast_batches(mates: tuple[_Mate, _Mate], max_line: int) -> Generator[PairBatch, None, int]:
    """Yield checked batches while both mates hold plain valid records; return -1 at the
    common end of both, or else the pairs yielded (where the exact path takes over)."""
    pairs = 0
    while True:
        for mate in mates:
            mate.fill()
        newlines = [_newlines(mate.buffer) for mate in mates]
        count = min(len(ends) for ends in newlines) // 4
        if count == 0:
            if pairs and all(m.ended and m.error is None and not m.buffer for m in mates):
                return -1
            return pairs  # the end of a mate, a gzip error, an overlong line: exact path
        first, second = (_scan(mate.buffer, ends, count, max_line)
                         for ends, mate in zip(newlines, mates, strict=True))  # fmt: skip
        if first is None or second is None or not _same_mates(first, second):
            return pairs
        yield PairBatch(pairs, first.data, second.data, first.ends, second.ends,
                        first.lengths, second.lengths)  # fmt: skip
        pairs += count
        mates[0].buffer = mates[0].buffer[first.consumed :]
        mates[1].buffer = mates[1].buffer[second.consumed :]


def _exact_batches(
    g1: io.BufferedIOBase, g2: io.BufferedIOBase, *, name_1: str, name_2: str,
    max_line_bytes: int, start: int,
) -> Iterator[PairBatch]:  # fmt: skip
    """Batches of :func:`iter_pairs`' records, from pair ``start`` on."""
    pending: list[FastqPairRecord] = []

    def batch() -> PairBatch:
        first = start + done
        ends_1 = np.cumsum([len(p.record_1) for p in pending], dtype=np.int64)
        ends_2 = np.cumsum([len(p.record_2) for p in pending], dtype=np.int64)
        return PairBatch(first, b"".join(p.record_1 for p in pending),
                         b"".join(p.record_2 for p in pending), ends_1, ends_2,
                         np.array([p.length_1 for p in pending], dtype=np.int64),
                         np.array([p.length_2 for p in pending], dtype=np.int64))  # fmt: skip

    done = 0
    for pair in iter_pairs(g1, g2, name_1=name_1, name_2=name_2,
                           max_line_bytes=max_line_bytes, start=start):  # fmt: skip
        pending.append(pair)
        if len(pending) == _EXACT_BATCH_PAIRS:
            yield batch()
            done += len(pending)
            pending = []
    if pending:
        yield batch()


def validate_pair(
    r1: IO[bytes],
    r2: IO[bytes],
    *,
    name_1: str,
    name_2: str,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> FastqStats:
    """Validate a gzip-compressed FASTQ pair, streamed; return its statistics.

    ``r1`` / ``r2`` are binary streams of the compressed files (local files or S3 bodies).
    No line may exceed ``max_line_bytes`` (its terminator excluded), which bounds the
    memory a record can take.

    Raises:
        InvalidFastqError: the first problem found, naming the file and read number (an
            empty file, including a zero-byte one, is "file is empty: no reads").
        ValueError: ``max_line_bytes`` is not positive.
    """
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    reads = bases = 0
    min_length, max_length = 1 << 30, 0
    with open_decompressed(r1) as g1, open_decompressed(r2) as g2, \
            closing(iter_pair_batches(g1, g2, name_1=name_1, name_2=name_2,
                                      max_line_bytes=max_line_bytes)) as batches:  # fmt: skip
        for batch in batches:
            reads += batch.pairs
            bases += batch.bases
            min_length = min(min_length, batch.min_length)
            max_length = max(max_length, batch.max_length)
    return FastqStats(reads=reads, bases=bases, min_length=min_length, max_length=max_length)
