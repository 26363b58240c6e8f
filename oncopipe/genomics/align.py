"""Alignment core: FASTQ pairs -> coordinate-sorted, duplicate-marked, indexed BAM + QC.

Two phases, shared by the single-job path and the scattered whole-genome path
(:mod:`oncopipe.genomics.shard`, :mod:`oncopipe.genomics.gather`), so the two give the same
BAM by construction:

1. :func:`align_sorted`: ``bwa mem`` streams SAM straight into ``samtools sort`` (no SAM
   on disk), one FASTQ pair (a lane, or a shard of one) -> one sorted BAM.
2. :func:`finish_alignment`: ``samtools merge`` of the sorted BAMs -> ``collate`` ->
   ``fixmate -m`` -> ``sort`` -> ``markdup`` (one pipe, uncompressed BAM between the
   steps), then ``index`` and QC.

The insert-size model. ``bwa mem`` infers the insert-size distribution per batch of reads
and uses it for pairing and mate rescue, so a read pair can align differently in a shard
than in the whole file. Both paths therefore align with one fixed model (``bwa mem -I``),
estimated by bwa on a calibration sample: the first :data:`CALIBRATION_PAIRS` pairs of the
lane (:func:`write_calibration`, :func:`estimate_insert_model`).

The read group carries the pseudonymous patient key as ``SM``. Uses the Debian/Bioconda
``bwa`` and ``samtools`` binaries, as the Batch container image does.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from oncopipe.errors import OncopipeError
from oncopipe.genomics.fastq import MAX_LINE_BYTES, iter_pairs, open_decompressed

INDEX_SUFFIXES = (".amb", ".ann", ".bwt", ".pac", ".sa")
_RG_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
#: Read pairs of the calibration sample the insert-size model is estimated from.
CALIBRATION_PAIRS = 20_000
#: Sort memory per samtools thread.
SORT_MEMORY = "768M"
_FR_BLOCK = re.compile(
    r"analyzing insert size distribution for orientation FR\.\.\.(.*?)"
    r"(?=analyzing insert size distribution for orientation|\Z)",
    re.S,
)
_MEAN_SD = re.compile(r"\] mean and std\.dev: \(([0-9.]+), ([0-9.]+)\)")
_PROPER = re.compile(r"low and high boundaries for proper pairs: \((-?[0-9]+), (-?[0-9]+)\)")


class AlignmentError(OncopipeError):
    """An aligner or samtools step failed; the message has the tool's last words."""


@dataclass(frozen=True)
class ReadGroup:
    id: str
    sample: str  # SM: the pseudonymous patient key
    library: str
    platform: str = "ILLUMINA"

    def header_line(self) -> str:
        for name, value in asdict(self).items():
            if not _RG_VALUE.match(value):
                raise ValueError(f"read group {name} {value!r}: use letters, digits, _ . : -")
        return f"@RG\\tID:{self.id}\\tSM:{self.sample}\\tLB:{self.library}\\tPL:{self.platform}"


@dataclass(frozen=True)
class AlignmentQC:
    reads: int
    mapped: int
    mapped_fraction: float
    properly_paired_fraction: float
    duplicates: int
    insert_size_mean: float
    insert_size_sd: float
    mean_depth: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def require_tools(*names: str) -> None:
    """Raise AlignmentError naming the missing tool(s) and how to get them."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise AlignmentError(
            f"{', '.join(missing)} not found on PATH: install the Debian packages "
            "(apt-get install bwa samtools bcftools) or run in the alignment container"
        )


def ensure_index(reference: Path) -> None:
    """Build the BWA index and the FASTA index beside ``reference`` unless present."""
    require_tools("bwa", "samtools")
    if not all(Path(f"{reference}{s}").exists() for s in INDEX_SUFFIXES):
        _run(["bwa", "index", str(reference)], "bwa index")
    if not Path(f"{reference}.fai").exists():
        _run(["samtools", "faidx", str(reference)], "samtools faidx")


def last_words(stderr: str, *, lines: int = 3, limit: int = 400) -> str:
    """Return a tool's last non-empty stderr lines on one line (for a one-line error)."""
    tail = [line.strip() for line in stderr.splitlines() if line.strip()][-lines:]
    text = " | ".join(tail)
    return text[-limit:] if text else "no message"


def _run(command: list[str], what: str) -> str:
    """Run a tool; return its stdout.

    Raises:
        AlignmentError: it exited non-zero (with its last words).
    """
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AlignmentError(f"{what} failed ({result.returncode}): {last_words(result.stderr)}")
    return result.stdout


@dataclass(frozen=True)
class InsertModel:
    """bwa's insert-size model of an FR library (what ``bwa mem -I`` takes)."""

    mean: float
    sd: float
    low: int
    high: int

    def bwa_option(self) -> str:
        """Return the value of ``bwa mem -I``: mean, sd, max, min."""
        return f"{self.mean:.2f},{self.sd:.2f},{self.high},{self.low}"

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def parse_insert_model(bwa_log: str) -> InsertModel | None:
    """Return the FR insert-size model ``bwa mem`` logged (its first batch), or None.

    None when bwa skipped the FR orientation (too few unique pairs) or logged no model.
    """
    block = _FR_BLOCK.search(bwa_log)
    if block is None:
        return None
    mean_sd, proper = _MEAN_SD.search(block.group(1)), _PROPER.search(block.group(1))
    if mean_sd is None or proper is None:
        return None
    return InsertModel(mean=float(mean_sd.group(1)), sd=float(mean_sd.group(2)),
                       low=max(1, int(proper.group(1))), high=int(proper.group(2)))  # fmt: skip


def write_calibration(
    r1: IO[bytes],
    r2: IO[bytes],
    out_r1: Path,
    out_r2: Path,
    *,
    name_1: str,
    name_2: str,
    pairs: int = CALIBRATION_PAIRS,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> int:
    """Write the first ``pairs`` read pairs of a gzip FASTQ pair (binary streams) as the
    calibration sample; return how many were written (fewer when the input is shorter).

    An output named ``*.gz`` is gzip (level 1: the shards' calibration sample travels
    through S3); any other name is plain FASTQ, for a sample bwa reads once on this disk
    (compressing it was a fifth of a panel's alignment time).

    Raises:
        InvalidFastqError: those first records are invalid (names ``name_1``/``name_2``).
    """

    def opened(path: Path) -> Any:
        if path.name.endswith(".gz"):
            return gzip.GzipFile(path, "wb", compresslevel=1, mtime=0)
        return path.open("wb")

    written = 0
    with open_decompressed(r1) as g1, open_decompressed(r2) as g2, \
            opened(out_r1) as o1, opened(out_r2) as o2:  # fmt: skip
        for pair in iter_pairs(g1, g2, name_1=name_1, name_2=name_2,
                               max_line_bytes=max_line_bytes):  # fmt: skip
            if written >= pairs:
                break
            o1.write(pair.record_1)
            o2.write(pair.record_2)
            written += 1
    return written


def estimate_insert_model(
    reference: Path, r1: Path, r2: Path, *, threads: int = 1
) -> InsertModel | None:
    """Align a calibration pair (:func:`write_calibration`) and return bwa's FR model.

    Returns None when bwa could not estimate one (too few unique pairs, not an FR
    library): alignment then lets bwa infer the model per batch.

    Raises:
        AlignmentError: bwa failed.
    """
    require_tools("bwa")
    with tempfile.TemporaryFile() as log:
        # -K: one fixed batch size, so the estimate does not depend on the thread count
        done = subprocess.run(
            ["bwa", "mem", "-t", str(threads), "-K", "100000000", str(reference), str(r1),
             str(r2)], stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        log.seek(0)
        text = log.read().decode(errors="replace")
    if done.returncode != 0:
        raise AlignmentError(f"bwa mem (calibration) failed ({done.returncode}): "
                             f"{last_words(text)}")  # fmt: skip
    return parse_insert_model(text)


def _pipeline(steps: Sequence[tuple[list[str], str]], *, cwd: Path | None = None) -> None:
    """Run commands as one pipe (each one's stdout into the next one's stdin).

    Each step's stderr goes to its own file, not a pipe: a chatty tool (bwa logs a line
    per batch) would otherwise block on a full pipe nobody reads until the end.

    Raises:
        AlignmentError: a step failed: the first one that did not die of a broken pipe
            (what killed the others), with its last words.
    """
    logs = [tempfile.TemporaryFile() for _ in steps]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream: IO[bytes] | None = None
        for n, ((command, _), log) in enumerate(zip(steps, logs, strict=True)):
            last = n == len(steps) - 1
            process = subprocess.Popen(
                command, stdin=upstream, stdout=None if last else subprocess.PIPE,
                stderr=log, cwd=cwd,
            )  # fmt: skip
            if upstream is not None:
                upstream.close()  # the child holds it; a dead reader must SIGPIPE the writer
            upstream = process.stdout
            processes.append(process)
        codes = [p.wait() for p in processes]
        failures = [(n, c) for n, c in enumerate(codes) if c != 0]
        if failures:
            root = next(((n, c) for n, c in failures if c not in (-13, 141)), failures[0])
            n, code = root
            logs[n].seek(0)
            words = last_words(logs[n].read().decode(errors="replace"))
            raise AlignmentError(f"{steps[n][1]} failed ({code}): {words}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()


def align_sorted(
    reference: Path,
    r1: Path,
    r2: Path,
    out_bam: Path,
    *,
    read_group: ReadGroup,
    threads: int | None = None,
    insert_model: InsertModel | None = None,
) -> None:
    """Align one FASTQ pair (a lane, or a shard of one) to a coordinate-sorted BAM.

    ``insert_model`` fixes bwa's insert-size model (``-I``); None lets bwa infer it per
    batch. ``bwa mem | samtools fixmate -m | samtools sort``: bwa writes the records of a
    pair next to each other, which is the grouping fixmate needs, so the mate tags that
    ``markdup`` reads (MC, ms) are added here, before the one sort. The BAM is written
    under a temporary name and renamed when complete, so an interrupted run never leaves
    a BAM that looks finished. It is not indexed and has no duplicates marked: that is
    :func:`finish_alignment`'s job.

    Raises:
        AlignmentError: bwa or samtools failed.
    """
    require_tools("bwa", "samtools")
    threads = threads or os.cpu_count() or 1
    ensure_index(reference)
    partial = out_bam.with_name(out_bam.name + ".partial")
    model = ["-I", insert_model.bwa_option()] if insert_model else []
    try:
        _pipeline([
            (["bwa", "mem", "-t", str(threads), "-Y", "-K", "100000000", *model,
              "-R", read_group.header_line(), str(reference), str(r1), str(r2)], "bwa mem"),
            (["samtools", "fixmate", "-m", "-u", "-", "-"], "samtools fixmate"),
            (["samtools", "sort", "-@", str(threads), "-m", SORT_MEMORY, "-o", str(partial),
              "-T", str(partial) + ".tmp", "-"], "samtools sort"),
        ])  # fmt: skip
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out_bam)


def finish_alignment(
    reference: Path, sorted_bams: Sequence[Path], out_bam: Path, *, threads: int | None = None
) -> AlignmentQC:
    """Merge sorted BAMs, mark duplicates, index; write ``out_bam`` (+ ``.bai``); return QC.

    The BAMs are :func:`align_sorted`'s: coordinate-sorted, with the mate tags of
    ``fixmate -m``. ``samtools merge`` (read groups kept) -> ``markdup`` in one pipe, so
    duplicates are found across lanes and shards without another collate and sort of the
    whole sample. Duplicates are flagged (0x400), not removed. The BAM is renamed into
    place only when complete.

    Raises:
        AlignmentError: samtools failed, or no BAMs were given.
    """
    require_tools("samtools")
    if not sorted_bams:
        raise AlignmentError("finish_alignment: no BAMs to merge")
    threads = threads or os.cpu_count() or 1
    partial = out_bam.with_name(out_bam.name + ".partial")
    with tempfile.TemporaryDirectory(dir=out_bam.parent, prefix=f".{out_bam.name}.") as tmp:
        work = Path(tmp)
        t = str(threads)
        try:
            # -c -p: shards of one lane carry the same @RG and @PG lines; without them
            # merge renames each shard's copy (RG:Z:L1-7A720788) and splits the group.
            # One BAM goes through merge too: merge moves the RG tag of each record to
            # its end, and sharded and single-job BAMs are to be the same record for record
            _pipeline([
                (["samtools", "merge", "-u", "-c", "-p", "-@", t, "-o", "-",
                  *map(str, sorted_bams)], "samtools merge"),
                (["samtools", "markdup", "-S", "-@", t, "-T", str(work / "markdup"), "-",
                  str(partial)], "samtools markdup"),
            ])  # fmt: skip
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(out_bam)
    _run(["samtools", "index", str(out_bam)], "samtools index")
    return qc_metrics(reference, out_bam)


def align_pair(
    reference: Path,
    r1: Path,
    r2: Path,
    out_bam: Path,
    *,
    read_group: ReadGroup,
    threads: int | None = None,
    calibration_pairs: int = CALIBRATION_PAIRS,
) -> AlignmentQC:
    """Align a pair in one job: sorted, duplicate-marked ``out_bam`` (+ ``.bai``); return QC.

    The single-job path; the scattered path (:mod:`oncopipe.genomics.shard` ->
    :mod:`oncopipe.genomics.gather`) runs the same steps on shards of the pair. The
    insert-size model comes from the first ``calibration_pairs`` pairs (0: bwa infers it
    per batch, as plain ``bwa mem`` does).

    Raises:
        AlignmentError: bwa or samtools failed.
        InvalidFastqError: the calibration pairs are invalid.
    """
    return align_lanes(reference, [(r1, r2, read_group)], out_bam, threads=threads,
                       calibration_pairs=calibration_pairs)  # fmt: skip


def align_lanes(
    reference: Path,
    lanes: Sequence[tuple[Path, Path, ReadGroup]],
    out_bam: Path,
    *,
    threads: int | None = None,
    calibration_pairs: int = CALIBRATION_PAIRS,
) -> AlignmentQC:
    """Align a sample's lanes (each with its read group) into one duplicate-marked BAM.

    Each lane gets its own insert-size model (its first ``calibration_pairs`` pairs) and
    sorted BAM; :func:`finish_alignment` merges them and marks duplicates across lanes.
    Returns the QC of ``out_bam``.

    Raises:
        AlignmentError: bwa or samtools failed, or a lane's FASTQ cannot be read.
        InvalidFastqError: a lane's calibration pairs are invalid.
    """
    require_tools("bwa", "samtools")
    threads = threads or os.cpu_count() or 1
    ensure_index(reference)
    with tempfile.TemporaryDirectory(dir=out_bam.parent, prefix=f".{out_bam.name}.") as tmp:
        work = Path(tmp)
        sorted_bams = []
        for n, (r1, r2, group) in enumerate(lanes):
            model = None
            if calibration_pairs > 0:
                c1, c2 = work / f"cal{n}_R1.fastq", work / f"cal{n}_R2.fastq"
                try:
                    with r1.open("rb") as h1, r2.open("rb") as h2:
                        write_calibration(h1, h2, c1, c2, name_1=r1.name, name_2=r2.name,
                                          pairs=calibration_pairs)  # fmt: skip
                except OSError as e:
                    raise AlignmentError(f"lane {n + 1}: cannot read its FASTQ pair "
                                         f"({e.strerror or type(e).__name__})") from e  # fmt: skip
                model = estimate_insert_model(reference, c1, c2, threads=threads)
            lane_bam = work / f"lane{n}.bam"
            align_sorted(reference, r1, r2, lane_bam, read_group=group, threads=threads,
                         insert_model=model)  # fmt: skip
            sorted_bams.append(lane_bam)
        return finish_alignment(reference, sorted_bams, out_bam, threads=threads)


def merge_bams(bams: list[str], out: Path, *, threads: int = 1) -> None:
    """Merge coordinate-sorted lane BAMs (their read groups kept) and index the result."""
    require_tools("samtools")
    partial = out.with_name(out.name + ".partial")
    _run(["samtools", "merge", "-f", "-@", str(threads), "-o", str(partial), *bams],
         "samtools merge")  # fmt: skip
    partial.replace(out)
    _run(["samtools", "index", str(out)], "samtools index")


def qc_metrics(reference: Path, bam: Path) -> AlignmentQC:
    """Return mapped %, duplicates (if marked), insert size and mean depth of a BAM."""
    numbers: dict[str, float] = {}
    for line in _run(["samtools", "stats", str(bam)], "samtools stats").splitlines():
        if line.startswith("SN\t"):
            _, key, value, *_ = line.split("\t")
            numbers[key.rstrip(":")] = float(value)
    length = 0
    for line in Path(f"{reference}.fai").read_text().splitlines():
        length += int(line.split("\t")[1])
    reads = int(numbers.get("raw total sequences", 0))
    mapped = int(numbers.get("reads mapped", 0))
    return AlignmentQC(
        reads=reads,
        mapped=mapped,
        mapped_fraction=round(mapped / reads, 4) if reads else 0.0,
        properly_paired_fraction=round(numbers.get("reads properly paired", 0) / reads, 4)
        if reads
        else 0.0,
        duplicates=int(numbers.get("reads duplicated", 0)),
        insert_size_mean=numbers.get("insert size average", 0.0),
        insert_size_sd=numbers.get("insert size standard deviation", 0.0),
        mean_depth=round(numbers.get("bases mapped (cigar)", 0) / length, 2) if length else 0.0,
    )
