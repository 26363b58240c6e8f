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
import subprocess
from dataclasses import dataclass
from pathlib import Path

from oncopipe.genomics.align import AlignmentError, ensure_index, require_tools

ERROR_RATE = 0.001


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


def call_variants(
    reference: Path,
    tumour_bam: Path,
    out_vcf: Path,
    *,
    normal_bam: Path | None = None,
    settings: CallerSettings | None = None,
) -> int:
    """Call variants and write a bgzipped, indexed, normalised VCF; return the record count.

    The VCF's samples are the BAMs' read-group samples (tumour first).

    Raises:
        AlignmentError: bcftools failed.
    """
    import pysam

    require_tools("bcftools")
    settings = settings or CallerSettings()
    ensure_index(reference)
    raw = out_vcf.with_name(out_vcf.name + ".pileup.bcf")
    bams = [str(tumour_bam)] + ([str(normal_bam)] if normal_bam else [])
    # Tumour and normal carry the same SM (the patient key): name the samples per file,
    # or mpileup would merge them into one.
    groups = out_vcf.with_name(out_vcf.name + ".samples.txt")
    groups.write_text(
        "".join(f"* {bam} {name}\n" for bam, name in zip(bams, ("TUMOUR", "NORMAL"), strict=False))
    )
    pileup = subprocess.run(
        ["bcftools", "mpileup", "-f", str(reference), "-a", "FORMAT/AD,FORMAT/DP",
         "-d", "1000000", "-L", "1000000", "-q", str(settings.min_mapping_quality),
         "-Q", str(settings.min_base_quality), "-G", str(groups), "-Ob", "-o", str(raw), *bams],
        capture_output=True, text=True,
    )  # fmt: skip
    if pileup.returncode != 0:
        raise AlignmentError(f"bcftools mpileup failed: {pileup.stderr[-500:]}")
    called = out_vcf.with_name(out_vcf.name + ".called.vcf")
    count = 0
    with pysam.VariantFile(str(raw)) as source:
        header = pysam.VariantHeader()
        for contig in source.header.contigs.values():
            header.contigs.add(contig.name, length=contig.length)
        header.add_line('##FILTER=<ID=germline,Description="Allele present in the normal">')
        header.add_line('##INFO=<ID=SOMATIC,Number=0,Type=Flag,Description="Not in the normal">')
        header.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
        header.add_line('##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">')
        header.add_line('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">')
        header.add_line(
            '##FORMAT=<ID=VAF,Number=A,Type=Float,Description="Variant allele fraction">'
        )
        samples = list(source.header.samples)
        for sample in samples:
            header.add_sample(sample)
        with pysam.VariantFile(str(called), "w", header=header) as sink:
            for record in source:
                count += _emit(record, sink, samples, settings, normal=normal_bam is not None)
    raw.unlink(missing_ok=True)
    groups.unlink(missing_ok=True)
    norm = subprocess.run(
        ["bcftools", "norm", "-f", str(reference), "-m", "-both", "-Oz", "-o", str(out_vcf),
         str(called)],
        capture_output=True, text=True,
    )  # fmt: skip
    called.unlink(missing_ok=True)
    if norm.returncode != 0:
        raise AlignmentError(f"bcftools norm failed: {norm.stderr[-500:]}")
    pysam.tabix_index(str(out_vcf), preset="vcf", force=True)
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
