#!/usr/bin/env python3
"""Genomics benchmarks, each side by side with what a user would run instead, in one run.

1. Alignment wall time: ``oncopipe`` (``align_pair``: a sorted, duplicate-marked,
   indexed BAM and its QC) against the samtools recipe for the same result (``bwa mem |
   samtools fixmate -m | samtools sort | samtools markdup``, index, stats) on the same
   simulated pairs and threads (goal: <= 1.10x), and beside a bare ``bwa mem | samtools
   sort`` + index (less work: printed for scale).
2. Accuracy of the caller against the truth of planted variants (tumour-only), by class:
   SNVs at VAF >= 0.2 and depth >= 50 (goal recall and precision >= 0.99), lower-VAF SNVs,
   indels.
3. VCF -> table rows/s: ``variants-to-parquet`` against ``bcftools query`` to TSV on the
   same VCF (goal: >= 1.0x), and against the two-step alternative ``bcftools query`` ->
   ``pyarrow.csv`` -> Parquet (what a user who wants Parquet without our code would script;
   goal: >= 3x).

Timings are printed, never asserted. Usage:
``python benchmarks/genomics.py [--quick] [--json PATH]`` (``--json``: the results rows).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

import pysam
from _bench import Report, json_path

from oncopipe.genomics.align import ReadGroup, align_pair, ensure_index
from oncopipe.genomics.call import call_variants
from oncopipe.genomics.simulate import (
    Variant,
    make_panel,
    simulate_pair,
    write_fasta,
    write_truth_vcf,
)
from oncopipe.genomics.variants import variant_rows, write_parquet

THREADS = os.cpu_count() or 1
REPORT = Report("genomics", quick="--quick" in sys.argv)


def bench_alignment(work: Path, reference: Path, sequences: dict[str, str], depth: int) -> None:
    """Ours against what a user would run for the same BAM, and against a bare sort.

    Ours returns a coordinate-sorted, duplicate-marked, indexed BAM and its QC. The same
    result from the tools, as the samtools manual recipe writes it: ``bwa mem | samtools
    fixmate -m | samtools sort | samtools markdup``, then ``samtools index`` and
    ``samtools stats``. ``bwa mem | samtools sort`` + index (no duplicates marked, no QC)
    is printed beside it, without a goal.
    """
    r1, r2 = simulate_pair(sequences, [], sample="B", depth=depth, seed=3)
    (work / "b1.fq.gz").write_bytes(r1)
    (work / "b2.fq.gz").write_bytes(r2)
    group = ReadGroup(id="B.1", sample="pk-bench", library="B")
    bwa = (f"bwa mem -t {THREADS} -R '{group.header_line()}' {reference} {work}/b1.fq.gz "
           f"{work}/b2.fq.gz 2>/dev/null")  # fmt: skip
    commands = {
        "recipe": f"{bwa} | samtools fixmate -m -u - - | samtools sort -@ {THREADS} -u - "
        f"| samtools markdup -@ {THREADS} - {work}/recipe.bam && samtools index "
        f"{work}/recipe.bam && samtools stats {work}/recipe.bam > {work}/recipe.stats",
        "bare": f"{bwa} | samtools sort -@ {THREADS} -o {work}/raw.bam - "
        f"&& samtools index {work}/raw.bam",
    }
    times: dict[str, list[float]] = {"ours": [], "recipe": [], "bare": []}
    for _ in range(3):  # interleaved; the best run of each counts
        start = time.perf_counter()
        align_pair(reference, work / "b1.fq.gz", work / "b2.fq.gz", work / "ours.bam",
                   read_group=group, threads=THREADS)  # fmt: skip
        times["ours"].append(time.perf_counter() - start)
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    ours, recipe, bare = (min(times[k]) for k in ("ours", "recipe", "bare"))
    print(f"\n1. alignment + sort ({depth}x over {sum(map(len, sequences.values()))} bp, "
          f"{THREADS} threads, {len(r1) / 1e6:.1f} MB R1 gz), best of 3")  # fmt: skip
    print(f"   oncopipe align_pair (markdup, index, QC):       {ours:.2f} s")
    print(f"   bwa | fixmate | sort | markdup + index + stats: {recipe:.2f} s "
          f"({ours / recipe:.2f}x; goal <= 1.10x)")  # fmt: skip
    print(f"   bwa | sort + index (no markdup, no QC):         {bare:.2f} s ({ours / bare:.2f}x)")
    REPORT.add("alignment, markdup, index, QC vs the samtools recipe", ours, recipe,
               goal="<= 1.10x", unit="s", passed=ours / recipe <= 1.10,
               note=f"{depth}x panel, {THREADS} threads; bwa | fixmate -m | sort | markdup, "
               "index, stats")  # fmt: skip
    REPORT.add("alignment vs bwa mem | samtools sort + index (no markdup, no QC)", ours, bare,
               unit="s", note="less work than ours: for scale, no goal")  # fmt: skip


def _planted(rng: random.Random, sequences: dict[str, str]) -> list[Variant]:
    variants: list[Variant] = []
    used: set[tuple[str, int]] = set()
    contigs = list(sequences)
    while len(variants) < 8:
        contig = rng.choice(contigs)
        pos = rng.randrange(120, len(sequences[contig]) - 120)
        if any(c == contig and abs(p - pos) < 30 for c, p in used):
            continue
        used.add((contig, pos))
        ref = sequences[contig][pos - 1]
        vaf = rng.choice((0.05, 0.1, 0.2, 0.3, 0.5))
        if len(variants) < 6:
            alt = rng.choice([b for b in "ACGT" if b != ref])
            variants.append(Variant(contig, pos, ref, alt, vaf))
        elif len(variants) == 6:  # deletion of 1-3 bases
            size = rng.randint(1, 3)
            variants.append(Variant(contig, pos, sequences[contig][pos - 1 : pos + size], ref, vaf))
        else:  # insertion of 1-3 bases
            inserted = "".join(rng.choice("ACGT") for _ in range(rng.randint(1, 3)))
            variants.append(Variant(contig, pos, ref, ref + inserted, vaf))
    return variants


def _normalised(vcf: Path, reference: Path, out: Path) -> set[tuple[str, int, str, str]]:
    subprocess.run(["bcftools", "norm", "-f", str(reference), "-m", "-both", "-Oz", "-o",
                    str(out), str(vcf)], check=True, capture_output=True)  # fmt: skip
    with pysam.VariantFile(str(out)) as handle:
        return {(r.contig, r.pos, r.ref or "", a) for r in handle for a in (r.alts or ())}


def bench_accuracy(work: Path, reference: Path, sequences: dict[str, str], samples: int) -> None:
    rng = random.Random(2026)
    strata: dict[str, list[int]] = {}  # name -> [tp, fn, fp]

    def count(name: str, index: int) -> None:
        strata.setdefault(name, [0, 0, 0])[index] += 1

    for n in range(samples):
        depth = rng.choice((100, 200, 300))
        truth = _planted(rng, sequences)
        r1, r2 = simulate_pair(sequences, truth, sample=f"A{n}", depth=depth, seed=100 + n)
        (work / "a1.fq.gz").write_bytes(r1)
        (work / "a2.fq.gz").write_bytes(r2)
        group = ReadGroup(id="A", sample="A", library="A")
        align_pair(reference, work / "a1.fq.gz", work / "a2.fq.gz", work / "a.bam",
                   read_group=group, threads=THREADS)  # fmt: skip
        call_variants(reference, work / "a.bam", work / "a.vcf.gz")
        write_truth_vcf(truth, sequences, work / "truth.vcf")
        expected = _normalised(work / "truth.vcf", reference, work / "truth.norm.vcf.gz")
        vafs = {}
        for v in truth:
            for key in expected:
                if key[0] == v.contig and abs(key[1] - v.pos) <= 5:
                    vafs[key] = v.vaf
        called = {}
        with pysam.VariantFile(str(work / "a.vcf.gz")) as handle:
            for r in handle:
                if "PASS" in r.filter.keys():
                    for alt in r.alts or ():
                        called[(r.contig, r.pos, r.ref or "", alt)] = r.samples[0]["VAF"][0]
        for key in expected:
            kind = "SNV" if len(key[2]) == len(key[3]) == 1 else "indel"
            band = "VAF>=0.2" if vafs.get(key, 0) >= 0.2 else "VAF<0.2"
            count(f"{kind} {band}, depth>={min(depth, 50)}", 0 if key in called else 1)
        for key, vaf in called.items():
            if key not in expected:
                kind = "SNV" if len(key[2]) == len(key[3]) == 1 else "indel"
                band = "VAF>=0.2" if vaf >= 0.2 else "VAF<0.2"
                count(f"{kind} {band}, depth>=50", 2)
    print(f"\n2. caller accuracy, tumour-only, {samples} simulated samples (depth 100-300)")
    print(f"   {'class':<32} {'TP':>4} {'FN':>4} {'FP':>4} {'recall':>7} {'precision':>9}")
    for name, (tp, fn, fp) in sorted(strata.items()):
        recall = tp / (tp + fn) if tp + fn else float("nan")
        precision = tp / (tp + fp) if tp + fp else float("nan")
        print(f"   {name:<32} {tp:>4} {fn:>4} {fp:>4} {recall:>7.3f} {precision:>9.3f}")
        if name.startswith("SNV VAF>=0.2"):
            worst = min(recall, precision)
            REPORT.add(
                f"caller recall / precision, {name}",
                worst,
                None,
                goal=">= 0.99",
                passed=worst >= 0.99,
                unit="min(recall, precision)",
                note=f"recall {recall:.3f}, precision {precision:.3f}, {samples} samples",
            )


def bench_vcf_table(work: Path, records: int) -> None:
    rng = random.Random(5)
    vcf = work / "big.vcf"
    with vcf.open("w") as handle:
        handle.write("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=250000000>\n")
        handle.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="GT">\n')
        handle.write('##FORMAT=<ID=AD,Number=R,Type=Integer,Description="AD">\n')
        handle.write('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="DP">\n')
        handle.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tT\n")
        pos = 1
        for _ in range(records):
            pos += rng.randint(1, 1000)
            ref, alt = rng.sample("ACGT", 2)
            dp = rng.randint(20, 400)
            ad = rng.randint(3, dp)
            handle.write(f"chr1\t{pos}\t.\t{ref}\t{alt}\t{rng.randint(20, 999)}\tPASS\t.\t"
                         f"GT:AD:DP\t0/1:{dp - ad},{ad}:{dp}\n")  # fmt: skip
    pysam.tabix_compress(str(vcf), str(vcf) + ".gz", force=True)
    ours_runs, raw_runs, two_step_runs = [], [], []
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    query = [
        "bcftools",
        "query",
        "-H",
        "-f",
        "%CHROM\t%POS\t%REF\t%ALT\t%QUAL\t%FILTER[\t%GT\t%AD\t%DP]\n",
        f"{vcf}.gz",
    ]
    for _ in range(3):  # best of 3: the first also pays pyarrow's import
        start = time.perf_counter()
        table = variant_rows(Path(f"{vcf}.gz"), patient_key="pk", sample="T", run_id="b")
        write_parquet(table, work / "big.parquet")
        ours_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        with (work / "big.tsv").open("w") as out:
            subprocess.run(["bcftools", "query", "-f",
                            "%CHROM\t%POS\t%REF\t%ALT\t%QUAL\t%FILTER[\t%GT\t%AD\t%DP]\n",
                            f"{vcf}.gz"], stdout=out, check=True)  # fmt: skip
        raw_runs.append(time.perf_counter() - start)
        start = time.perf_counter()  # the two-step alternative: query -> pyarrow.csv -> Parquet
        with (work / "two.tsv").open("w") as out:
            subprocess.run(query, stdout=out, check=True)
        tsv = pacsv.read_csv(work / "two.tsv", parse_options=pacsv.ParseOptions(delimiter="\t"))
        pq.write_table(tsv, work / "two.parquet", compression="zstd")
        two_step_runs.append(time.perf_counter() - start)
    ours, raw, two = min(ours_runs), min(raw_runs), min(two_step_runs)
    print(f"\n3. VCF -> table, {records} records")
    print(f"   oncopipe variants-to-parquet: {records / ours:>10.0f} rows/s ({ours:.2f}s)")
    print(f"   bcftools query -> TSV:        {records / raw:>10.0f} rows/s ({raw:.2f}s)")
    print(f"   query -> pyarrow.csv -> Parquet: {records / two:>7.0f} rows/s ({two:.2f}s)")
    print(f"   ratio oncopipe / bcftools (rows/s): {raw / ours:.2f}x (goal >= 1.0x)")
    print(f"   ratio oncopipe / two-step (rows/s): {two / ours:.2f}x (goal >= 3x)")
    REPORT.add("VCF -> Parquet rows/s vs bcftools query -> TSV", records / ours, records / raw,
               goal=">= 1.0x", unit="rows/s", passed=raw / ours >= 1.0,
               note=f"{records:,} records")  # fmt: skip
    REPORT.add("VCF -> Parquet rows/s vs bcftools query -> pyarrow.csv -> Parquet",
               records / ours, records / two, goal=">= 3x", unit="rows/s",
               passed=two / ours >= 3.0, note=f"{records:,} records")  # fmt: skip


def main() -> int:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sequences, _, _ = make_panel()
        reference = work / "panel.fa"
        write_fasta(sequences, reference)
        ensure_index(reference)
        bench_alignment(work, reference, sequences, depth=300 if quick else 2000)
        bench_accuracy(work, reference, sequences, samples=4 if quick else 20)
        bench_vcf_table(work, records=20_000 if quick else 200_000)
    REPORT.write(json_path())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
