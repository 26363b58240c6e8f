"""Variant calling core: tumour BAM (+ matched normal) -> normalised VCF with AD and VAF.

Caller choice, for tumour-only and low-VAF calling: ``bcftools mpileup`` computes the
per-allele read depths (base quality >= 20, mapping quality >= 20, no depth cap on a
panel, indels called at any depth: ``-L`` is lifted from its default 250, which silently
skips indels on deep panels), and an allele is called where it has at least
``min_alt_reads`` reads and a VAF of at least ``min_vaf``. ``bcftools call`` is not
used: its genotype model assumes germline allele fractions (0, 0.5, 1) and under-calls
subclonal somatic variants. QUAL is the
phred-scaled probability that the alt reads are sequencing errors (binomial, per-base
error 0.1 %). With a matched normal, an allele seen in the normal (>= 2 reads or VAF >= 2
%) is filtered as ``germline``. ``bcftools norm`` then left-aligns indels and splits
multi-allelic records.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oncopipe.errors import InputError
from oncopipe.genomics.align import AlignmentError, ensure_index, last_words, require_tools

ERROR_RATE = 0.001
#: What ``samtools quickcheck``'s exit status bits mean (samtools 1.16, bam_quickcheck.c).
_QUICKCHECK = {
    2: "cannot be opened as BAM, CRAM or SAM (not alignment data, or unreadable)",
    4: "is not alignment data (empty, or not BAM/CRAM/SAM)",
    8: "has no reference sequences (@SQ lines) in its header",
    16: "has no BGZF end-of-file marker: the file is truncated",
}


class InvalidBamError(InputError):
    """An alignment file cannot be called: truncated, corrupt or not a BAM."""

    reason_code = "invalid-bam"


@dataclass(frozen=True)
class CallerSettings:
    min_vaf: float = 0.05
    min_alt_reads: int = 3
    min_depth: int = 10
    min_base_quality: int = 20
    min_mapping_quality: int = 20
    normal_max_alt_reads: int = 1
    normal_max_vaf: float = 0.02


def error_qual(alt: int, depth: int, error_rate: float = ERROR_RATE) -> float:
    """Return -10 log10 P(X >= alt), X ~ Binomial(depth, error_rate), capped at 999."""
    if alt <= 0:
        return 0.0
    log_terms = []
    log_p, log_q = math.log(error_rate), math.log1p(-error_rate)
    for k in range(alt, depth + 1):
        term = math.lgamma(depth + 1) - math.lgamma(k + 1) - math.lgamma(depth - k + 1)
        log_terms.append(term + k * log_p + (depth - k) * log_q)
        if len(log_terms) > 1 and log_terms[-1] < log_terms[0] - 40:
            break
    top = max(log_terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in log_terms))
    return min(999.0, round(-10 * log_tail / math.log(10), 1))


def check_bam(bam: Path, *, name: str | None = None) -> None:
    """Check that ``bam`` opens as alignment data with a header and is not truncated.

    ``samtools quickcheck`` reads the header and the BGZF end-of-file marker (a file cut
    at a block boundary has none); ``name`` names the file in the error (default: path).

    Raises:
        InvalidBamError: the check failed, with what it means.
    """
    require_tools("samtools")
    result = subprocess.run(["samtools", "quickcheck", "-q", str(bam)], capture_output=True)
    if result.returncode != 0:
        reasons = [text for bit, text in _QUICKCHECK.items() if result.returncode & bit]
        raise InvalidBamError(
            name or str(bam),
            "; ".join(reasons) or f"fails samtools quickcheck (exit {result.returncode})",
        )


def _decodes(bam: Path) -> bool:
    """Return whether every record of ``bam`` decompresses and parses (a full read)."""
    result = subprocess.run(["samtools", "view", "-c", str(bam)], capture_output=True)
    return result.returncode == 0 and b"[E::" not in result.stderr


def call_variants(
    reference: Path,
    tumour_bam: Path,
    out_vcf: Path,
    *,
    normal_bam: Path | None = None,
    settings: CallerSettings | None = None,
) -> int:
    """Call variants and write a bgzipped, indexed, normalised VCF; return the record count.

    The single-job path: :func:`call_region` on the whole genome, then
    :func:`normalize_calls`. The scattered path runs the same two steps on regions of the
    genome (:func:`oncopipe.genomics.shard.plan_regions`), so both give the same records.

    The VCF's samples are ``TUMOUR`` (and ``NORMAL``). Intermediate files live in a
    temporary folder beside ``out_vcf``, removed whatever happens; the VCF and its
    ``.tbi`` are moved into place only when complete, so a failure leaves neither.

    Raises:
        InvalidBamError: a BAM is truncated, corrupt or not a BAM (htslib read errors
            make ``bcftools mpileup`` print ``[E::`` lines yet exit 0: they are checked).
        AlignmentError: bcftools or samtools failed otherwise.
    """
    out_vcf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_vcf.parent, prefix=f".{out_vcf.name}.") as tmp:
        part = Path(tmp) / "called.vcf.gz"
        count = call_region(reference, tumour_bam, part, normal_bam=normal_bam,
                            settings=settings)  # fmt: skip
        normalize_calls(reference, [part], out_vcf)
    return count


def call_region(
    reference: Path,
    tumour_bam: Path,
    out_vcf: Path,
    *,
    normal_bam: Path | None = None,
    settings: CallerSettings | None = None,
    intervals: Sequence[tuple[str, int, int]] | None = None,
) -> int:
    """Write the alleles that pass, not yet normalised, as a bgzipped VCF; return how many.

    ``intervals`` (contig, 1-based start, 1-based inclusive end) restricts the pileup to
    those positions (``bcftools mpileup -R``): a site is reported by the interval holding
    its position, an indel by the one holding its anchor base, so non-overlapping
    intervals report every site once. None: the whole genome. The VCF is written under a
    temporary name and renamed when complete.

    Raises:
        InvalidBamError: a BAM is truncated, corrupt or not a BAM.
        AlignmentError: bcftools or samtools failed otherwise.
        ValueError: ``intervals`` is empty.
    """
    require_tools("bcftools", "samtools")
    settings = settings or CallerSettings()
    if intervals is not None and not intervals:
        raise ValueError("call_region: intervals is empty (None calls the whole genome)")
    inputs = [(tumour_bam, "TUMOUR")] + ([(normal_bam, "NORMAL")] if normal_bam else [])
    for bam, _ in inputs:
        check_bam(bam)
    ensure_index(reference)
    out_vcf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_vcf.parent, prefix=f".{out_vcf.name}.") as tmp:
        work = Path(tmp)
        # mpileup runs in the work folder on links with plain names: its read-group file
        # is whitespace-separated (a path with a space would break it), and its
        # messages then carry no user path.
        bams: list[str] = []
        for bam, label in inputs:
            linked = work / f"{label.lower()}.bam"
            linked.symlink_to(bam.resolve())
            if intervals is not None:  # -R jumps through the index
                index = next((Path(f"{bam}{s}") for s in (".bai", ".csi")
                              if Path(f"{bam}{s}").exists()), None)  # fmt: skip
                if index is not None:
                    Path(f"{linked}{index.suffix}").symlink_to(index.resolve())
                else:
                    subprocess.run(["samtools", "index", linked.name], cwd=work,
                                   capture_output=True, check=False)  # fmt: skip
            bams.append(linked.name)
        raw, staged = work / "pileup.bcf", work / "called.vcf.gz"
        # Tumour and normal carry the same SM (the patient key): name the samples per
        # file, or mpileup would merge them into one.
        groups = work / "samples.txt"
        groups.write_text("".join(f"* {link} {label}\n" for link, (_, label)
                                  in zip(bams, inputs, strict=True)))  # fmt: skip
        restrict: list[str] = []
        if intervals is not None:
            # a file, not -r: contig names may hold ':' or ',' (GRCh38 HLA alleles)
            (work / "regions.tsv").write_text(
                "".join(f"{contig}\t{start}\t{end}\n" for contig, start, end in intervals)
            )
            restrict = ["-R", "regions.tsv"]
        pileup = subprocess.run(
            ["bcftools", "mpileup", "--no-version", "-f", str(reference.resolve()),
             "-a", "FORMAT/AD,FORMAT/DP", "-d", "1000000", "-L", "1000000",
             "-q", str(settings.min_mapping_quality), "-Q", str(settings.min_base_quality),
             "-G", groups.name, *restrict, "-Ob", "-o", raw.name, *bams],
            capture_output=True, text=True, cwd=work,
        )  # fmt: skip
        if pileup.returncode != 0 or "[E::" in pileup.stderr:
            for (bam, _), link in zip(inputs, bams, strict=True):
                if not _decodes(work / link):
                    raise InvalidBamError(
                        str(bam), "is corrupt: reading its alignments failed (bad BGZF block, "
                        "CRC mismatch or truncated record)",
                    )  # fmt: skip
            raise AlignmentError(f"bcftools mpileup failed: {last_words(pileup.stderr)}")
        count = _filter_alleles(raw, staged, settings, normal=normal_bam is not None)
        os.replace(staged, out_vcf)
    return count


def normalize_calls(reference: Path, parts: Sequence[Path], out_vcf: Path) -> int:
    """Concatenate per-region calls (in genome order), normalise, bgzip and index them.

    ``bcftools concat`` (when there are several parts) -> ``bcftools norm`` (left-align
    indels, split multi-allelic records) -> ``out_vcf`` + ``.tbi``, moved into place only
    when complete. Returns the number of records written.

    Raises:
        AlignmentError: no parts, or bcftools or tabix failed.
    """
    require_tools("bcftools")
    if not parts:
        raise AlignmentError("normalize_calls: no VCF parts to concatenate")
    out_vcf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_vcf.parent, prefix=f".{out_vcf.name}.") as tmp:
        work = Path(tmp)
        source = parts[0]
        if len(parts) > 1:
            source = work / "concat.bcf"
            concat = subprocess.run(
                ["bcftools", "concat", "--no-version", "-Ob", "-o", str(source),
                 *map(str, parts)], capture_output=True, text=True,
            )  # fmt: skip
            if concat.returncode != 0 or "[E::" in concat.stderr:
                raise AlignmentError(f"bcftools concat failed: {last_words(concat.stderr)}")
        staged = work / "calls.vcf.gz"
        norm = subprocess.run(
            ["bcftools", "norm", "--no-version", "-f", str(reference), "-m", "-both",
             "-Oz", "-o", str(staged), str(source)],
            capture_output=True, text=True,
        )  # fmt: skip
        if norm.returncode != 0 or "[E::" in norm.stderr:
            raise AlignmentError(f"bcftools norm failed: {last_words(norm.stderr)}")
        import pysam

        try:
            pysam.tabix_index(str(staged), preset="vcf", force=True)
        except (OSError, ValueError) as e:
            raise AlignmentError(f"tabix failed on the normalised VCF ({e})") from e
        verbosity = pysam.set_verbosity(0)
        try:
            with pysam.VariantFile(str(staged)) as handle:
                records = sum(1 for _ in handle)
        finally:
            pysam.set_verbosity(verbosity)
        os.replace(staged, out_vcf)
        os.replace(f"{staged}.tbi", f"{out_vcf}.tbi")
    return records


def _filter_alleles(raw: Path, called: Path, settings: CallerSettings, *, normal: bool) -> int:
    """Write the alleles of the pileup ``raw`` that pass to ``called``; return how many.

    Raises:
        AlignmentError: the pileup BCF cannot be read.
    """
    import pysam

    count = 0
    verbosity = pysam.set_verbosity(0)  # no "[E::idx_find_and_load]": the BCF has no index
    try:
        with pysam.VariantFile(str(raw)) as source:
            header = pysam.VariantHeader()
            for contig in source.header.contigs.values():
                header.contigs.add(contig.name, length=contig.length)
            header.add_line('##FILTER=<ID=germline,Description="Allele present in the normal">')
            header.add_line(
                '##INFO=<ID=SOMATIC,Number=0,Type=Flag,Description="Not in the normal">'
            )
            header.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
            header.add_line('##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">')
            header.add_line('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">')
            header.add_line(
                '##FORMAT=<ID=VAF,Number=A,Type=Float,Description="Variant allele fraction">'
            )
            samples = list(source.header.samples)
            for sample in samples:
                header.add_sample(sample)
            with pysam.VariantFile(str(called), "wz", header=header) as sink:
                for record in source:
                    count += _emit(record, sink, samples, settings, normal=normal)
    except (OSError, ValueError) as e:
        raise AlignmentError(f"reading the pileup failed ({type(e).__name__})") from e
    finally:
        pysam.set_verbosity(verbosity)
    return count


def _emit(record: object, sink: object, samples: list[str], settings: CallerSettings,
          *, normal: bool) -> int:  # fmt: skip
    """Write the alleles of one pileup site that pass; return how many were written."""
    alts = [a for a in (record.alts or ()) if a != "<*>"]  # type: ignore[attr-defined]
    if not alts:
        return 0
    tumour = record.samples[samples[0]]  # type: ignore[attr-defined]
    depths = list(tumour["AD"])
    depth = sum(d for d in depths if d is not None)
    written = 0
    # AD lists the reference first: alt number i (1-based) has depth AD[i].
    for index, alt in enumerate(record.alts, start=1):  # type: ignore[attr-defined]
        if alt == "<*>":
            continue
        alt_reads = depths[index] or 0
        vaf = alt_reads / depth if depth else 0.0
        if (
            depth < settings.min_depth
            or alt_reads < settings.min_alt_reads
            or vaf < settings.min_vaf
        ):
            continue
        filters = ["PASS"]
        somatic = False
        normal_ad: list[int] = []
        if normal:
            normal_depths = list(record.samples[samples[1]]["AD"])  # type: ignore[attr-defined]
            normal_alt = normal_depths[index] or 0
            normal_depth = sum(d for d in normal_depths if d is not None)
            normal_vaf = normal_alt / normal_depth if normal_depth else 0.0
            normal_ad = [normal_depths[0] or 0, normal_alt]
            if normal_alt > settings.normal_max_alt_reads or normal_vaf > settings.normal_max_vaf:
                filters = ["germline"]
            else:
                somatic = True
        out = sink.new_record(  # type: ignore[attr-defined]
            contig=record.contig,  # type: ignore[attr-defined]
            start=record.start,  # type: ignore[attr-defined]
            alleles=(record.ref, alt),  # type: ignore[attr-defined]
            qual=error_qual(alt_reads, depth),
            filter=filters,
        )
        if somatic:
            out.info["SOMATIC"] = True
        out.samples[samples[0]]["GT"] = (0, 1) if vaf < 0.9 else (1, 1)
        out.samples[samples[0]]["AD"] = (depths[0] or 0, alt_reads)
        out.samples[samples[0]]["DP"] = depth
        out.samples[samples[0]]["VAF"] = (round(vaf, 4),)
        if normal:
            out.samples[samples[1]]["GT"] = (0, 0) if somatic else (0, 1)
            out.samples[samples[1]]["AD"] = tuple(normal_ad)
            out.samples[samples[1]]["DP"] = sum(normal_ad)
            out.samples[samples[1]]["VAF"] = (
                round(normal_ad[1] / sum(normal_ad), 4) if sum(normal_ad) else 0.0,
            )
        sink.write(out)  # type: ignore[attr-defined]
        written += 1
    return written
