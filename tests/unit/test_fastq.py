"""FASTQ pair validation: every bad-FASTQ case names the file and the read."""

from __future__ import annotations

import gzip
import io

import pytest

from oncopipe.genomics.fastq import InvalidFastqError
from oncopipe.genomics.fastq_batches import validate_pair


def record(name: str, seq: str = "ACGTACGTAC", qual: str | None = None, mate: int = 1) -> str:
    return f"@{name} {mate}:N:0:1\n{seq}\n+\n{qual if qual is not None else 'I' * len(seq)}\n"


def gz(text: str) -> io.BytesIO:
    return io.BytesIO(gzip.compress(text.encode(), mtime=0))


def pair(r1: str, r2: str) -> tuple[io.BytesIO, io.BytesIO]:
    return gz(r1), gz(r2)


def check(r1: io.BytesIO, r2: io.BytesIO) -> object:
    return validate_pair(r1, r2, name_1="S_R1.fastq.gz", name_2="S_R2.fastq.gz")


GOOD_1 = "".join(record(f"r{i}") for i in range(1, 4))
GOOD_2 = "".join(record(f"r{i}", mate=2) for i in range(1, 4))


def test_valid_pair_statistics() -> None:
    stats = check(*pair(GOOD_1, GOOD_2 .replace("ACGTACGTAC", "ACGTN")
                        .replace("IIIIIIIIII", "IIIII")))  # fmt: skip
    assert stats == type(stats)(reads=3, bases=45, min_length=5, max_length=10)  # type: ignore[call-arg]


def test_slash_suffixes_and_crlf_are_accepted() -> None:
    r1 = "".join(record(f"r{i}/1") for i in range(2)).replace("\n", "\r\n")
    r2 = "".join(record(f"r{i}/2", mate=2) for i in range(2))
    assert check(*pair(r1, r2)).reads == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("r1", "r2", "file", "message"),
    [
        (GOOD_1, GOOD_2 + record("r4", mate=2), "S_R1.fastq.gz", "has 3 reads but S_R2"),
        (GOOD_1, GOOD_2.replace("@r2", "@x2"), "S_R2.fastq.gz", "read 2: mate name"),
        (GOOD_1 + record("r4", "ACGT", "III"), GOOD_2 + record("r4", mate=2), "S_R1.fastq.gz",
         "read 4: quality length 3 != sequence length 4"),
        (GOOD_1.replace("ACGTACGTAC", "ACGUACGTAC", 1), GOOD_2, "S_R1.fastq.gz",
         "read 1: illegal sequence characters 'U'"),
        (GOOD_1.replace("@r2", "r2", 1), GOOD_2, "S_R1.fastq.gz", "read 2: the header line"),
        (GOOD_1.replace("\n+\n", "\n-\n", 1), GOOD_2, "S_R1.fastq.gz", "read 1: the third line"),
        (GOOD_1 + "@r4\nACGT\n", GOOD_2, "S_R1.fastq.gz", "read 4: the file ends inside"),
        (GOOD_1.replace("IIIIIIIIII", "IIII IIIII", 1), GOOD_2, "S_R1.fastq.gz",
         "quality characters outside"),
        ("", "", "S_R1.fastq.gz", "no reads"),
        (GOOD_1, "", "S_R2.fastq.gz", "file is empty: no reads"),
        ("", GOOD_2, "S_R1.fastq.gz", "file is empty: no reads"),
    ],
)  # fmt: skip
def test_bad_pairs_name_file_and_read(r1: str, r2: str, file: str, message: str) -> None:
    with pytest.raises(InvalidFastqError, match=message) as err:
        check(*pair(r1, r2))
    assert str(err.value).startswith(f"{file}: ")
    assert err.value.reason_code == "invalid-fastq"


def test_truncated_gzip_is_named() -> None:
    whole = gzip.compress((GOOD_1 * 200).encode(), mtime=0)
    with pytest.raises(InvalidFastqError, match="truncated or corrupt") as err:
        check(io.BytesIO(whole[: len(whole) // 2]), gz(GOOD_2 * 200))
    assert str(err.value).startswith("S_R1.fastq.gz: read ")


def test_not_gzip_at_all() -> None:
    with pytest.raises(InvalidFastqError, match="truncated or corrupt"):
        check(io.BytesIO(GOOD_1.encode()), gz(GOOD_2))


def test_zero_byte_file_is_empty_not_a_count_mismatch() -> None:
    with pytest.raises(InvalidFastqError, match=r"^S_R1\.fastq\.gz: file is empty: no reads$"):
        check(io.BytesIO(b""), gz(GOOD_2))


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_line_limit_is_exact(ending: str) -> None:
    """A line of max_line_bytes passes whatever its terminator; one byte more does not."""
    for length, ok in ((10, True), (11, False)):
        r1 = f"@r1\n{'A' * length}\n+\n{'I' * length}{ending}"
        r2 = f"@r1\n{'A' * length}\n+\n{'I' * length}\n"
        if ok:
            assert validate_pair(*pair(r1, r2), name_1="a", name_2="b", max_line_bytes=10).reads
        else:
            with pytest.raises(InvalidFastqError, match="a: read 1: the sequence line is longer"):
                validate_pair(*pair(r1, r2), name_1="a", name_2="b", max_line_bytes=10)


def test_gzip_errors_do_not_quote_the_data() -> None:
    with pytest.raises(InvalidFastqError) as err:
        check(io.BytesIO(b"@JaneDoe\nACGT\n+\nIIII\n"), gz(GOOD_2))
    assert "Jane" not in str(err.value) and "@J" not in str(err.value)
