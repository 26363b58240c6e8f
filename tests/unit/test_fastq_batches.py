"""The batch FASTQ reader gives the record reader's answers: the same records, the same
counts, and the same first error, on valid and hostile pairs alike."""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Iterator
from typing import Any

import pytest

from oncopipe.genomics import fastq, fastq_batches
from oncopipe.genomics.fastq import InvalidFastqError, iter_pairs
from oncopipe.genomics.fastq_batches import iter_pair_batches

MAX_LINE = 300
MUTATIONS = ("none", "crlf", "no-final-newline", "named-plus", "lower-case", "bare-at",
             "space-name", "bad-letter", "quality-length", "quality-range", "empty-sequence",
             "no-plus", "no-at", "mate-name", "mate-count", "empty", "long-line",
             "blank-name", "truncated")  # fmt: skip


def _records(rng: random.Random, count: int, mate: int) -> list[list[str]]:
    out = []
    for i in range(count):
        length = rng.choice([5, 30, 150])
        suffix = rng.choice(["", f" {mate}:N:0:ACGT", f"/{mate}", f"/{mate} x", f"\tBC:{mate}",
                             f"/{mate}\x0bx"])  # fmt: skip
        out.append([f"@read{i}{suffix}", "".join(rng.choices("ACGTN", k=length)), "+",
                    "".join(rng.choices([chr(c) for c in range(33, 75)], k=length))])  # fmt: skip
    return out


def _mutate(rng: random.Random, kind: str, r1: list[list[str]], r2: list[list[str]]) -> None:
    mate = rng.choice([r1, r2])
    i = rng.randrange(len(mate))
    if kind == "named-plus":
        for rec in mate:
            rec[2] = "+" + rec[0][1:]
    elif kind == "lower-case":
        mate[i][1] = mate[i][1].lower()
    elif kind == "bare-at":
        r1[i][0] = r2[i][0] = "@"
    elif kind == "blank-name":  # nothing but whitespace after the '@'
        r1[i][0], r2[i][0] = "@ ", rng.choice(["@ ", "@\t", "@x"])
    elif kind == "space-name":
        r1[i][0], r2[i][0] = "@ x" + str(rng.randrange(2)), "@ x" + str(rng.randrange(2))
    elif kind == "bad-letter":
        mate[i][1] = mate[i][1][:-1] + "X"
    elif kind == "quality-length":
        mate[i][3] += "I"
    elif kind == "quality-range":
        mate[i][3] = mate[i][3][:-1] + " "
    elif kind == "empty-sequence":
        mate[i][1] = mate[i][3] = ""
    elif kind == "no-plus":
        mate[i][2] = "-"
    elif kind == "no-at":
        mate[i][0] = ">" + mate[i][0][1:]
    elif kind == "mate-name":
        mate[i][0] = f"@other{i}"
    elif kind == "mate-count":
        mate.pop()
    elif kind == "empty":
        mate.clear()
    elif kind == "long-line":
        mate[i][1], mate[i][3] = "A" * (MAX_LINE + 1), "I" * (MAX_LINE + 1)


def _gzip(records: list[list[str]], *, crlf: bool, last_newline: bool) -> bytes:
    end = "\r\n" if crlf else "\n"
    text = "".join(end.join(rec) + end for rec in records)
    if not last_newline and text:
        text = text[: -len(end)]
    return gzip.compress(text.encode(), mtime=0)


def _case(rng: random.Random) -> tuple[str, bytes, bytes]:
    kind = rng.choice(MUTATIONS)
    count = rng.choice([1, 2, 7, 40, 200])
    r1, r2 = _records(rng, count, 1), _records(rng, count, 2)
    if kind not in ("none", "crlf", "no-final-newline", "truncated"):
        _mutate(rng, kind, r1, r2)
    crlf, open_end = kind == "crlf", kind == "no-final-newline"
    d1 = _gzip(r1, crlf=crlf, last_newline=not open_end)
    d2 = _gzip(r2, crlf=crlf, last_newline=not open_end or rng.random() < 0.5)
    if kind == "truncated":
        if rng.random() < 0.5:
            d1 = d1[: rng.randrange(10, len(d1))]
        else:
            d2 = d2[: rng.randrange(10, len(d2))]
    return kind, d1, d2


def _answer(reader: str, d1: bytes, d2: bytes) -> tuple[Any, ...]:
    try:
        with fastq.open_decompressed(io.BytesIO(d1)) as g1, \
                fastq.open_decompressed(io.BytesIO(d2)) as g2:  # fmt: skip
            if reader == "records":
                pairs = list(iter_pairs(g1, g2, name_1="A.fq.gz", name_2="B.fq.gz",
                                        max_line_bytes=MAX_LINE))  # fmt: skip
                return ("ok", b"".join(p.record_1 for p in pairs),
                        b"".join(p.record_2 for p in pairs), len(pairs),
                        sum(p.length_1 + p.length_2 for p in pairs))  # fmt: skip
            batches = list(iter_pair_batches(g1, g2, name_1="A.fq.gz", name_2="B.fq.gz",
                                             max_line_bytes=MAX_LINE))  # fmt: skip
    except InvalidFastqError as e:
        return ("error", str(e))
    done = 0
    for batch in batches:
        assert batch.first == done
        done += batch.pairs
        pieces = [batch.records(i, i + 1) for i in range(batch.pairs)]
        assert b"".join(p[0] for p in pieces) == batch.data_1
        assert b"".join(p[1] for p in pieces) == batch.data_2
        assert all(p[0].startswith(b"@") and p[0].count(b"\n") == 4 for p in pieces)
    return ("ok", b"".join(b.data_1 for b in batches), b"".join(b.data_2 for b in batches),
            done, sum(b.bases for b in batches))  # fmt: skip


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few records, so every case crosses batch and read boundaries."""
    monkeypatch.setattr(fastq_batches, "_BATCH_BYTES", 3000)
    monkeypatch.setattr(fastq_batches, "READ_BUFFER", 700)
    monkeypatch.setattr(fastq, "READ_BUFFER", 700)


@pytest.mark.parametrize("seed", [1, 2])
def test_batches_agree_with_records_on_hostile_pairs(small_batches: None, seed: int) -> None:
    rng = random.Random(seed)
    seen: dict[str, set[str]] = {}
    for _ in range(300):
        kind, d1, d2 = _case(rng)
        records, batches = _answer("records", d1, d2), _answer("batches", d1, d2)
        seen.setdefault(kind, set()).add(records[0])
        if kind == "truncated" and records[0] == batches[0] == "error":
            # where the stream breaks, both name the file and a read; the read number
            # may differ by the read-ahead (a megabyte for the record reader)
            assert batches[1].split(": read ")[0] == records[1].split(": read ")[0]
            assert "truncated or corrupt" in batches[1]
            continue
        assert batches == records, kind
    assert len(seen) >= len(MUTATIONS) - 2  # the cases were drawn, valid and invalid both
    assert seen["none"] == {"ok"} and seen["bad-letter"] == {"error"}


def test_plain_records_take_the_array_path(
    small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid records of every usual header spelling never fall back to the record reader."""

    def refuse(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise AssertionError("the record reader ran on plain valid input")

    monkeypatch.setattr(fastq_batches, "_exact_batches", refuse)
    rng = random.Random(7)
    r1, r2 = _records(rng, 500, 1), _records(rng, 500, 2)
    for rec in r1[::3]:
        rec[2] = "+" + rec[0][1:]  # '+' lines that repeat the name
    d1 = _gzip(r1, crlf=False, last_newline=True)
    d2 = _gzip(r2, crlf=False, last_newline=True)
    answer = _answer("batches", d1, d2)
    assert answer[0] == "ok" and answer[3] == 500
    assert b"+read" not in answer[1]  # written back bare


def test_an_s3_body_with_only_read_is_decompressed() -> None:
    """botocore's StreamingBody has read() and no readinto(), which ISA-L's reader uses."""

    class Body:
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(size)

    text = b"@r1 1:N\nACGT\n+\nIIII\n"
    with fastq.open_decompressed(Body(gzip.compress(text))) as handle:
        assert handle.read() == text
