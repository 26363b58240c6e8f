"""Alignment core: a FASTQ pair -> coordinate-sorted, indexed BAM + QC metrics.

``bwa mem`` streams SAM straight into ``samtools sort`` (no SAM on disk); the read group
carries the pseudonymous patient key as ``SM``. Uses the Debian/Bioconda ``bwa`` and
``samtools`` binaries, as the Batch container image does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from oncopipe.errors import OncopipeError

INDEX_SUFFIXES = (".amb", ".ann", ".bwt", ".pac", ".sa")
_RG_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


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


def align_pair(
    reference: Path,
    r1: Path,
    r2: Path,
    out_bam: Path,
    *,
    read_group: ReadGroup,
    threads: int | None = None,
) -> AlignmentQC:
    """Align a pair and write ``out_bam`` (+ ``.bai``); return the QC metrics.

    The BAM is written under a temporary name and renamed when complete, so an
    interrupted run never leaves a BAM that looks finished.

    Raises:
        AlignmentError: bwa or samtools failed.
    """
    require_tools("bwa", "samtools")
    threads = threads or os.cpu_count() or 1
    ensure_index(reference)
    partial = out_bam.with_name(out_bam.name + ".partial")
    # bwa's stderr goes to a file, not a pipe: it logs a line per batch, and a full pipe
    # nobody reads until samtools ends would block bwa for good.
    with tempfile.TemporaryFile() as bwa_log:
        bwa = subprocess.Popen(
            ["bwa", "mem", "-t", str(threads), "-Y", "-K", "100000000",
             "-R", read_group.header_line(), str(reference), str(r1), str(r2)],
            stdout=subprocess.PIPE, stderr=bwa_log,
        )  # fmt: skip
        assert bwa.stdout is not None
        try:
            sort = subprocess.run(
                ["samtools", "sort", "-@", str(threads), "-m", "768M", "-o", str(partial),
                 "-T", str(partial) + ".tmp", "-"],
                stdin=bwa.stdout, capture_output=True, text=True,
            )  # fmt: skip
        finally:
            bwa.stdout.close()
            bwa.wait()
        bwa_log.seek(0)
        bwa_err = bwa_log.read().decode(errors="replace")
    if bwa.returncode != 0:
        partial.unlink(missing_ok=True)
        raise AlignmentError(f"bwa mem failed ({bwa.returncode}): {last_words(bwa_err)}")
    if sort.returncode != 0:
        partial.unlink(missing_ok=True)
        raise AlignmentError(f"samtools sort failed ({sort.returncode}): {last_words(sort.stderr)}")
    partial.replace(out_bam)
    _run(["samtools", "index", str(out_bam)], "samtools index")
    return qc_metrics(reference, out_bam)


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
