"""Scatter plans for whole genomes: FASTQ pairs split into shards, the genome into regions.

Alignment scatters by read pairs. :func:`split_pairs` streams each lane's gzip FASTQ pair
(binary streams: a local file, or an S3 ``StreamingBody`` from ``get_object()['Body']``,
so nothing is downloaded whole), validates every record with the FASTQ validator
(:func:`oncopipe.genomics.fastq_batches.iter_pair_batches`, a few megabytes at a time), and
writes shard ``k`` (ISA-L deflate at level 1) as
``shard-0000k_R1.fastq.gz`` / ``_R2`` of ``pairs_per_shard`` pairs (a lane's last shard may
be shorter; shards never mix lanes, so each keeps its lane's read group). It also writes
each lane's calibration sample (its first pairs, for the insert-size model that every
shard of the lane aligns with: :mod:`oncopipe.genomics.align`). The shard set's manifest,
``shards.json``, is written last: it is the split's commit record, and the later phases
(:mod:`oncopipe.genomics.gather`) trust only the files it names, by checksum. An invalid
input or a failure leaves no manifest and removes every file the split wrote.

Calling scatters by region. :func:`plan_regions` cuts the reference (its ``.fai``) into
``count`` non-overlapping regions of equal length (to the base; a contig may be cut
anywhere, several small contigs may share a region), in ``.fai`` order, so the
per-region calls concatenate in genome order. The plan depends on the ``.fai`` only:
every array child computes the same one.

:class:`ScatterSettings` holds the knobs (shard size, region count, and the thresholds
below which a sample still runs as one job).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from isal import igzip

from oncopipe.errors import ConfigError, InputError, OncopipeError
from oncopipe.genomics.align import CALIBRATION_PAIRS, ReadGroup
from oncopipe.genomics.fastq import MAX_LINE_BYTES, open_decompressed
from oncopipe.genomics.fastq_batches import iter_pair_batches

SHARD_MANIFEST = "shards.json"
SCHEMA = 1
#: ISA-L level of shard files: they live minutes; ISA-L's level 1 deflates ~4x faster
#: than zlib's level 1, and a little smaller.
SHARD_COMPRESSLEVEL = 1


class ShardError(OncopipeError):
    """A scatter/gather phase cannot go on: a shard set that is not committed, a shard
    missing or corrupt, a shard index out of range. The message says what to re-run."""


class InvalidReferenceError(InputError):
    """A reference's FASTA index (``.fai``) cannot be read; the message names file and line."""

    reason_code = "invalid-reference"


@dataclass(frozen=True)
class ScatterSettings:
    """How whole genomes scatter (the stage's configuration; defaults for 30x WGS).

    Attributes:
        pairs_per_shard: read pairs per alignment shard.
        scatter_min_fastq_bytes: a sample whose FASTQ files (compressed, all lanes) are
            smaller than this aligns in one job (a panel: the demo stays fast).
        call_regions: regions variant calling scatters into.
        scatter_min_reference_bases: a reference shorter than this is called in one job.
        calibration_pairs: pairs of each lane that estimate its insert-size model.
    """

    pairs_per_shard: int = 5_000_000
    scatter_min_fastq_bytes: int = 4 << 30
    call_regions: int = 64
    scatter_min_reference_bases: int = 50_000_000
    calibration_pairs: int = CALIBRATION_PAIRS

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"genomics scatter setting {name}: must be a positive "
                                  f"integer, got {value!r}")  # fmt: skip

    def scatter_alignment(self, fastq_bytes: int) -> bool:
        """Return True when a sample with this many FASTQ bytes aligns as an array job."""
        return fastq_bytes >= self.scatter_min_fastq_bytes

    def regions_for(self, reference_bases: int) -> int:
        """Return how many regions calling on a reference of this length scatters into
        (1: one job)."""
        if reference_bases < self.scatter_min_reference_bases:
            return 1
        return max(1, min(self.call_regions, reference_bases))


@dataclass
class LaneInput:
    """One lane to split: its gzip FASTQ streams, their names for errors, its read group.

    ``name_1``/``name_2`` appear in error messages only (never in the shard manifest):
    the stage passes what its errors may show.
    """

    r1: IO[bytes]
    r2: IO[bytes]
    name_1: str
    name_2: str
    read_group: ReadGroup


@dataclass(frozen=True)
class Shard:
    """One alignment shard of a shard set (file names relative to the shard folder)."""

    index: int
    lane: int
    r1: str
    r2: str
    pairs: int
    sha256_r1: str
    sha256_r2: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass(frozen=True)
class Lane:
    """A lane of a shard set: its read group, calibration sample and totals."""

    lane: int
    read_group: ReadGroup
    calibration_r1: str
    calibration_r2: str
    calibration_pairs: int
    sha256_calibration: str
    pairs: int
    bases: int


@dataclass(frozen=True)
class ShardSet:
    """A committed split: lanes, shards and the settings they were made with."""

    pairs_per_shard: int
    lanes: tuple[Lane, ...]
    shards: tuple[Shard, ...]
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pairs(self) -> int:
        return sum(s.pairs for s in self.shards)

    def shard(self, index: int) -> Shard:
        """Return shard ``index``.

        Raises:
            ShardError: no such shard.
        """
        if not 0 <= index < len(self.shards):
            raise ShardError(f"shard {index} does not exist: this split has shards "
                             f"0..{len(self.shards) - 1}")  # fmt: skip
        return self.shards[index]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, folder: Path) -> ShardSet:
        """Read the committed shard set of ``folder``.

        Raises:
            ShardError: no manifest (the split did not finish: run it again), or an
                unreadable one.
        """
        path = folder / SHARD_MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ShardError(f"{path}: no shard manifest: the split did not finish; "
                             "run the split phase again") from e  # fmt: skip
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ShardError(f"{path}: unreadable shard manifest ({type(e).__name__}); "
                             "run the split phase again") from e  # fmt: skip
        try:
            if raw.get("schema") != SCHEMA:
                raise ShardError(f"{path}: shard manifest schema {raw.get('schema')!r}, "
                                 f"expected {SCHEMA}")  # fmt: skip
            lanes = tuple(
                Lane(**{**lane, "read_group": ReadGroup(**lane["read_group"])})
                for lane in raw["lanes"]
            )
            shards = tuple(Shard(**shard) for shard in raw["shards"])
            return cls(pairs_per_shard=int(raw["pairs_per_shard"]), lanes=lanes,
                       shards=shards, extra=dict(raw.get("extra", {})))  # fmt: skip
        except (KeyError, TypeError, AttributeError) as e:
            raise ShardError(f"{path}: malformed shard manifest ({type(e).__name__}: {e}); "
                             "run the split phase again") from e  # fmt: skip


def shard_name(index: int) -> str:
    """Return the file stem of shard ``index`` (``shard-00007``)."""
    return f"shard-{index:05d}"


def sha256_file(path: Path) -> str:
    """Return the SHA-256 (hex) of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, document: Any) -> None:
    """Write a JSON document under a temporary name, then rename it into place."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(partial, path)


class _HashingFile:
    """A binary file that hashes what is written to it (the shard checksum, in one pass)."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("wb")
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class _GzipOut:
    """A gzip file written under ``.partial`` and hashed; :meth:`commit` renames it.

    Written a batch of records at a time (:class:`oncopipe.genomics.fastq_batches.PairBatch`);
    each batch is deflated and hashed in a worker of ``pool`` (ISA-L and hashlib release
    the GIL) while the next batch is read. A file has at most one write in flight, so
    its bytes are in order.
    """

    def __init__(self, path: Path, created: list[Path], pool: ThreadPoolExecutor) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        created.extend([self.partial, path])
        self._pool = pool
        self._pending: Future[int] | None = None
        self._raw = _HashingFile(self.partial)
        self._gzip = igzip.IGzipFile(fileobj=self._raw, mode="wb",  # type: ignore[arg-type]
                                     compresslevel=SHARD_COMPRESSLEVEL, mtime=0)  # fmt: skip

    def write(self, records: bytes) -> None:
        if records:
            self._wait()
            self._pending = self._pool.submit(self._gzip.write, records)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # a failed write (a full disk) raises here

    def commit(self) -> str:
        """Close, rename into place; return the SHA-256 of the compressed file."""
        self._wait()
        self._gzip.close()
        self._raw.close()
        os.replace(self.partial, self.path)
        return self._raw.digest.hexdigest()

    def abandon(self) -> None:
        """Stop writing (the caller removes the partial file). Nothing is raised: the
        error that stopped the split is the one to report, not a second one (a full disk
        fails the close too)."""
        if self._pending is not None:
            wait([self._pending])
        for close in (self._gzip.close, self._raw.close):
            with contextlib.suppress(Exception):
                close()


def split_pairs(
    lanes: Sequence[LaneInput],
    out_dir: Path,
    *,
    pairs_per_shard: int,
    calibration_pairs: int = CALIBRATION_PAIRS,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> ShardSet:
    """Split lanes of gzip FASTQ pairs into shards of ``pairs_per_shard`` pairs; return the set.

    One streamed pass per lane: every record is validated as it is copied. Shards are
    numbered across lanes in lane order. ``shards.json`` is written last; an existing one
    is removed first, so a split that fails half-way never leaves a manifest naming
    files of two different splits.

    Raises:
        InvalidFastqError: a lane is invalid (the message names its file and read); every
            file this split wrote is removed.
        ValueError: no lanes, or a count is not positive.
    """
    if not lanes:
        raise ValueError("split_pairs: no lanes to split")
    if pairs_per_shard < 1 or calibration_pairs < 1:
        raise ValueError(f"pairs_per_shard and calibration_pairs must be positive, got "
                         f"{pairs_per_shard} and {calibration_pairs}")  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SHARD_MANIFEST).unlink(missing_ok=True)
    created: list[Path] = []
    shards: list[Shard] = []
    done_lanes: list[Lane] = []
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="shard-deflate") as pool:
            for number, lane in enumerate(lanes):
                done_lanes.append(_split_lane(number, lane, out_dir, shards, created, pool,
                                              pairs_per_shard=pairs_per_shard,
                                              calibration_pairs=calibration_pairs,
                                              max_line_bytes=max_line_bytes))  # fmt: skip
        shard_set = ShardSet(pairs_per_shard=pairs_per_shard, lanes=tuple(done_lanes),
                             shards=tuple(shards))  # fmt: skip
        write_json_atomic(out_dir / SHARD_MANIFEST, asdict(shard_set))
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    return shard_set


def _split_lane(
    number: int,
    lane: LaneInput,
    out_dir: Path,
    shards: list[Shard],
    created: list[Path],
    pool: ThreadPoolExecutor,
    *,
    pairs_per_shard: int,
    calibration_pairs: int,
    max_line_bytes: int,
) -> Lane:
    """Split one lane, appending its shards to ``shards``; return the lane's record."""
    lane.read_group.header_line()  # a bad read group fails before any work
    cal_1 = _GzipOut(out_dir / f"calibration-{number:03d}_R1.fastq.gz", created, pool)
    cal_2 = _GzipOut(out_dir / f"calibration-{number:03d}_R2.fastq.gz", created, pool)
    current: tuple[_GzipOut, _GzipOut] | None = None
    in_shard = pairs = bases = calibrated = 0
    cal_digest = ""

    def close_shard() -> None:
        assert current is not None
        index = len(shards)
        sha_1, sha_2 = current[0].commit(), current[1].commit()
        shards.append(Shard(index=index, lane=number, r1=current[0].path.name,
                            r2=current[1].path.name, pairs=in_shard, sha256_r1=sha_1,
                            sha256_r2=sha_2))  # fmt: skip

    try:
        with open_decompressed(lane.r1) as g1, open_decompressed(lane.r2) as g2, \
                contextlib.closing(iter_pair_batches(  # closed before the streams are
                    g1, g2, name_1=lane.name_1, name_2=lane.name_2,
                    max_line_bytes=max_line_bytes)) as batches:  # fmt: skip
            for batch in batches:
                if calibrated < calibration_pairs:
                    take = min(batch.pairs, calibration_pairs - calibrated)
                    records_1, records_2 = batch.records(0, take)
                    cal_1.write(records_1)
                    cal_2.write(records_2)
                    calibrated += take
                done = 0
                while done < batch.pairs:
                    if current is None:
                        stem = out_dir / shard_name(len(shards))
                        name_1, name_2 = Path(f"{stem}_R1.fastq.gz"), Path(f"{stem}_R2.fastq.gz")
                        current = (_GzipOut(name_1, created, pool),
                                   _GzipOut(name_2, created, pool))  # fmt: skip
                    take = min(batch.pairs - done, pairs_per_shard - in_shard)
                    records_1, records_2 = batch.records(done, done + take)
                    current[0].write(records_1)
                    current[1].write(records_2)
                    done += take
                    in_shard += take
                    if in_shard == pairs_per_shard:
                        close_shard()
                        current, in_shard = None, 0
                pairs += batch.pairs
                bases += batch.bases
        if current is not None:
            close_shard()
            current = None
        cal_digest = hashlib.sha256((cal_1.commit() + cal_2.commit()).encode("ascii")).hexdigest()
    except BaseException:
        for out in (cal_1, cal_2, *(current or ())):
            out.abandon()
        raise
    return Lane(lane=number, read_group=lane.read_group, calibration_r1=cal_1.path.name,
                calibration_r2=cal_2.path.name, calibration_pairs=calibrated,
                sha256_calibration=cal_digest, pairs=pairs, bases=bases)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """A stretch of one contig, 1-based and inclusive at both ends (bcftools' regions)."""

    contig: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class Region:
    """One calling region: intervals in genome order, together ``length`` bases."""

    index: int
    intervals: tuple[Interval, ...]

    @property
    def length(self) -> int:
        return sum(i.length for i in self.intervals)

    def as_tuples(self) -> list[tuple[str, int, int]]:
        """Return (contig, start, end) per interval, as :func:`call_region` takes them."""
        return [(i.contig, i.start, i.end) for i in self.intervals]


def read_fai(path: Path) -> list[tuple[str, int]]:
    """Return (contig, length) for each line of a FASTA index, in order.

    Raises:
        InvalidReferenceError: the file is missing, unreadable, or a line is not
            ``name<TAB>length<TAB>...`` with a positive length (names the line).
    """
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidReferenceError(str(path), f"cannot read the FASTA index "
                                    f"({type(e).__name__})") from e  # fmt: skip
    contigs: list[tuple[str, int]] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        try:
            length = int(fields[1])
        except (IndexError, ValueError):
            length = 0
        if not fields[0] or length < 1:
            raise InvalidReferenceError(str(path), f"line {number}: not a .fai line "
                                        "(name, positive length, offset...)")  # fmt: skip
        contigs.append((fields[0], length))
    if not contigs:
        raise InvalidReferenceError(str(path), "the FASTA index lists no contigs")
    return contigs


def plan_regions(contigs: Sequence[tuple[str, int]], count: int) -> list[Region]:
    """Cut contigs (``.fai`` order) into ``count`` regions of equal length; return them.

    Region ``r`` covers the genome's bases ``[r*T/count, (r+1)*T/count)`` (``T`` the total
    length, contigs laid end to end), so lengths differ by at most one base; fewer regions
    come back when the genome has fewer than ``count`` bases. Regions do not overlap and
    cover every base once.

    Raises:
        ValueError: ``count`` is not positive, or no contigs.
    """
    if count < 1:
        raise ValueError(f"region count must be positive, got {count}")
    if not contigs:
        raise ValueError("plan_regions: no contigs")
    total = sum(length for _, length in contigs)
    count = min(count, total)
    bounds = [r * total // count for r in range(count + 1)]
    regions: list[Region] = []
    offsets = []
    position = 0
    for name, length in contigs:
        offsets.append((name, position, position + length))
        position += length
    for r in range(count):
        low, high = bounds[r], bounds[r + 1]
        intervals = [
            Interval(name, max(low, begin) - begin + 1, min(high, end) - begin)
            for name, begin, end in offsets
            if begin < high and end > low
        ]
        regions.append(Region(index=r, intervals=tuple(intervals)))
    return regions
