#!/usr/bin/env python3
"""Whole-genome scale model: measured per-shard, gather and per-region times -> a 30x WGS.

Measured here (real bwa 0.7.17, samtools, bcftools through the scatter/gather cores of
:mod:`oncopipe.genomics.gather`, each phase in a child process for its peak RSS):

1. ``align_shard`` on two shards of simulated 2x150 bp pairs
   (:func:`oncopipe.genomics.simulate.simulate_pair`) against a synthetic reference of
   ``REFERENCE_MB`` Mb (random sequence in which ~45 % is diverged copies of repeat families
   (300 bp SINE-like at 12 % divergence, 6 kb LINE-like at 8 %) and 3 % is tandem repeats,
   so seeds have multiple hits as in a mammalian genome, and an FM index larger than the
   CPU caches), and ``bwa mem`` alone on the same shard, so the bwa share and the
   reference-independent rest (sort, index, read count, checksums) separate;
2. ``gather_alignment`` (merge | markdup, index, QC) of the shards (fixmate ran in each
   shard's alignment);
3. ``call_region_part`` on a 30x BAM of a 150 kb contig (per base of a region at 30x).

0. ``split_pairs`` (the ``plan`` job's split of the FASTQ pair into shards: every record
   validated a few megabytes at a time by array checks, ISA-L inflate and deflate in
   worker threads), per pair, on the same simulated reads;

Model (printed with its assumptions):

- Split: one process for the whole sample (lanes in turn), time linear in pairs at the
  measured rate. Its checks run in one thread (inflate and deflate run in worker
  threads, which the plan job's 2 vCPUs hold), so neither more vCPUs nor the
  concurrency shorten it. Charged as 2 vCPU and 4 GiB of the shard instance.

- Input: the issue's 150 GB FASTQ.gz at ~200 bytes per gzipped pair (2x150 bp + headers,
  gzip ~3.6x) = 750 M pairs (the issue says 600-800 M). That is ~73x of a 3.1 Gb genome,
  not 30x: a 30x genome is ~310 M pairs (~62 GB). Both are modelled.
- bwa per-pair cost on the human genome, from the literature: 4 h 12 min for a 30x
  NA12878 WGS (2x150 bp, HiSeq X) with ``bwa mem -t 36`` on an AWS c5.9xlarge, i.e.
  151 vCPU-hours, ~1.76 vCPU-ms per pair at 310 M pairs (bwa-mem2 issue #16,
  https://github.com/bwa-mem2/bwa-mem2/issues/16). The same issue's Xeon E5 run
  (3 h 05 min) shows the spread across CPUs. The cost per read grows with the reference
  (FM-index cache misses, repeat hits), so our measured per-pair bwa cost on the small
  reference is printed beside it with the factor between the two; the model uses the
  literature figure, plus the measured non-bwa part of a shard.
- Shard jobs: ``pairs_per_shard`` of ``ScatterSettings`` (5 M), ``align_vcpus`` of the prod
  configuration on 16-vCPU instances, perfect thread scaling of bwa (optimistic, bwa-mem2
  #16 and the UCLA benchmark show flattening past ~20 threads). Shards run in waves of
  ``concurrency``; wall = ceil(shards / concurrency) x per-shard + gather + call.
- Gather: scaled linearly in pairs from the measured gather (which includes its fixed
  start-up cost, so it errs high), with its threads scaling perfectly from the measured
  ones to ``align_vcpus`` (optimistic: markdup is mostly single-threaded);
  the upper bound without thread scaling is printed beside it.
- Calling: 64 regions (``ScatterSettings.call_regions``), time linear in bases x depth;
  regions run in waves of ``min(64, concurrency)``.
- Spot cost: the cheapest spot row of ``oncopipe/ops/prices.csv`` (us-east-1) among the
  prod ``batch_instance_types`` that fits a job's vCPUs and memory; a job is charged its
  share of that instance (the cost module's vCPU:GiB split); the cost does not depend on
  the concurrency, the wall time does.

Goal printed beside it: the issue's cited "150 GB in under 30 minutes".

Usage: ``python benchmarks/wgs_scale.py [--quick] [--json PATH]`` (quick: ~1 min here).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

from _bench import Memory, Report, run_child

from oncopipe.genomics.align import ReadGroup, align_pair, ensure_index
from oncopipe.genomics.shard import LaneInput, ScatterSettings, split_pairs
from oncopipe.genomics.simulate import simulate_pair, write_fasta

THREADS = os.cpu_count() or 1
HUMAN_BASES = 3.1e9
LITERATURE_VCPU_HOURS = 151.2  # 4 h 12 min x 36 vCPUs, bwa-mem2 issue #16
LITERATURE_PAIRS = 310e6  # 30x of 3.1 Gb at 2 x 150 bp (assumed, not stated in the issue)
BYTES_PER_GZ_PAIR = 200
GOAL_MINUTES = 30.0
CONCURRENCY = (16, 64, 256)
CALL_CONTIG = 150_000
#: Pairs the split's rate is measured on (its fixed costs, thread start-up, are ~0.1 s).
SPLIT_PAIRS = 400_000


def _diverged(rng: random.Random, unit: str, divergence: float) -> str:
    return "".join(rng.choice("ACGT") if rng.random() < divergence else b for b in unit)


def repeat_reference(megabases: float, seed: int = 7) -> dict[str, str]:
    """Return a synthetic reference (two contigs) with mammalian-like repeat content."""
    rng = random.Random(seed)
    total = int(megabases * 1e6)
    sine = "".join(rng.choice("ACGT") for _ in range(300))
    line = "".join(rng.choice("ACGT") for _ in range(6000))
    parts: list[str] = []
    size = 0
    while size < total:
        draw = rng.random()
        if draw < 0.25:  # SINE-like copies: short, many, diverged
            piece = _diverged(rng, sine, 0.12)
        elif draw < 0.32:  # LINE-like copies, often truncated at the 5' end
            piece = _diverged(rng, line[rng.randrange(0, 5000) :], 0.08)
        elif draw < 0.35:  # a tandem repeat
            unit = "".join(rng.choice("ACGT") for _ in range(rng.randint(2, 40)))
            piece = unit * rng.randint(5, 60)
        else:  # unique sequence
            piece = "".join(rng.choices("ACGT", k=rng.randint(500, 6000)))
        parts.append(piece)
        size += len(piece)
    genome = "".join(parts)[:total]
    half = total // 2
    return {"chrA": genome[:half], "chrB": genome[half:]}


@dataclass(frozen=True)
class Measured:
    """Per-pair and per-base figures measured on this machine."""

    split_seconds_per_pair: float  # the plan job's split: one process, every lane in turn
    shard_pairs: int
    shard_seconds: float
    shard_cpu_per_pair: float
    bwa_cpu_per_pair: float
    shard_rss_mb: float
    bwa_rss_mb: float
    index_mb: float
    gather_seconds_per_pair: float
    gather_rss_mb: float
    call_seconds_per_base_30x: float
    call_rss_mb: float


def _shard_child(folder: Path, index: int, reference: Path) -> str:
    return (
        "import json\nfrom pathlib import Path\n"
        "from oncopipe.genomics.gather import align_shard\n"
        f"r = align_shard(Path({str(folder)!r}), {index}, Path({str(reference)!r}), "
        f"threads={THREADS})\nprint(json.dumps(r.status))\n"
    )


def _split_child(r1: Path, r2: Path, folder: Path, pairs_per_shard: int) -> str:
    """The plan job's split in a child (its peak RSS); prints its own seconds and pairs."""
    return (
        "import time\nfrom pathlib import Path\n"
        "from oncopipe.genomics.align import ReadGroup\n"
        "from oncopipe.genomics.shard import LaneInput, split_pairs\n"
        "group = ReadGroup(id='W.1', sample='pk-bench', library='W')\n"
        f"with open({str(r1)!r}, 'rb') as a, open({str(r2)!r}, 'rb') as b:\n"
        "    started = time.perf_counter()\n"
        "    done = split_pairs([LaneInput(a, b, 'W_R1', 'W_R2', group)], "
        f"Path({str(folder)!r}), pairs_per_shard={pairs_per_shard}, calibration_pairs=2000)\n"
        "    print(time.perf_counter() - started, done.pairs)\n"
    )


def measure(work: Path, reference_mb: float, pairs_depth: int) -> tuple[Measured, Report]:
    """Run the phases on this machine; return the figures and the memory rows."""
    report = Report("wgs_scale", quick=False)
    sequences = repeat_reference(reference_mb)
    reference = work / "ref.fa"
    write_fasta(sequences, reference)
    started = time.perf_counter()
    ensure_index(reference)
    index_seconds = time.perf_counter() - started
    index_mb = sum(Path(f"{reference}.{s}").stat().st_size
                   for s in ("bwt", "sa", "pac", "ann", "amb")) / 2**20  # fmt: skip
    r1, r2 = simulate_pair(sequences, [], sample="W", depth=pairs_depth, seed=5)
    folder = work / "shards"
    total_pairs = pairs_depth * sum(len(s) for s in sequences.values()) // 300
    pairs_per_shard = math.ceil(total_pairs * 2 / 3)  # two unequal shards: RSS against size
    # the split's rate on at least SPLIT_PAIRS pairs (the reads repeated: gzip members
    # concatenate), in a child for its peak RSS; the align shards come from the reads once
    repeats = math.ceil(SPLIT_PAIRS / total_pairs)
    fastq_1, fastq_2 = work / "W_R1.fastq.gz", work / "W_R2.fastq.gz"
    fastq_1.write_bytes(r1 * repeats)
    fastq_2.write_bytes(r2 * repeats)
    split = run_child(_split_child(fastq_1, fastq_2, work / "split", 5 * total_pairs))
    seconds_text, pairs_text = split.stdout.strip().splitlines()[-1].split()
    split_seconds, split_count = float(seconds_text), int(pairs_text)
    split_mb = repeats * (len(r1) + len(r2)) / 2**20
    report.memory.append(Memory("split (plan)", f"{split_count:,} pairs "
                                f"({split_mb:.1f} MB gz)", split_mb, split.peak_rss_mb,
                                split_seconds,
                                note="bounded by the batch size, not the input"))  # fmt: skip
    split_pairs([LaneInput(io.BytesIO(r1), io.BytesIO(r2), "W_R1", "W_R2",
                           ReadGroup(id="W.1", sample="pk-bench", library="W"))], folder,
                pairs_per_shard=pairs_per_shard, calibration_pairs=2000)  # fmt: skip
    shards = json.loads((folder / "shards.json").read_text())["shards"]
    runs = [run_child(_shard_child(folder, s["index"], reference)) for s in shards]
    pairs = [int(s["pairs"]) for s in shards]
    for s, run in zip(shards, runs, strict=True):
        size = ((folder / s["r1"]).stat().st_size + (folder / s["r2"]).stat().st_size) / 2**20
        report.memory.append(Memory("align-shard", f"shard of {s['pairs']:,} pairs "
                                    f"({size:.1f} MB gz), {reference_mb:.0f} Mb reference",
                                    size, run.peak_rss_mb, run.seconds,
                                    note=f"bwa index {index_mb:.0f} MB"))  # fmt: skip
    first = shards[0]
    bwa = run_child(
        "import subprocess\n"
        f"subprocess.run(['bwa', 'mem', '-t', '{THREADS}', {str(reference)!r}, "
        f"{str(folder / first['r1'])!r}, {str(folder / first['r2'])!r}], check=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    )
    gather = run_child(
        "from pathlib import Path\nfrom oncopipe.genomics.gather import gather_alignment\n"
        f"gather_alignment(Path({str(folder)!r}), Path({str(reference)!r}), "
        f"Path({str(work / 'sample.bam')!r}), threads={THREADS})\n"
    )
    report.memory.append(Memory("gather", f"{sum(pairs):,} pairs in {len(pairs)} shards",
                                sum((folder / f"shard-{i:05d}.bam").stat().st_size
                                    for i in range(len(pairs))) / 2**20,
                                gather.peak_rss_mb, gather.seconds))  # fmt: skip
    # calling at a realistic depth: a 150 kb contig at 30x, one region
    rng = random.Random(9)
    contig = {"chrC": "".join(rng.choices("ACGT", k=CALL_CONTIG))}
    call_ref = work / "call.fa"
    write_fasta(contig, call_ref)
    ensure_index(call_ref)
    c1, c2 = simulate_pair(contig, [], sample="C", depth=30, seed=6)
    (work / "c1.fq.gz").write_bytes(c1)
    (work / "c2.fq.gz").write_bytes(c2)
    align_pair(call_ref, work / "c1.fq.gz", work / "c2.fq.gz", work / "c.bam",
               read_group=ReadGroup(id="C.1", sample="pk-c", library="C"),
               threads=THREADS)  # fmt: skip
    call = run_child(
        "from pathlib import Path\nfrom oncopipe.genomics.gather import call_region_part\n"
        f"call_region_part(Path({str(call_ref)!r}), Path({str(work / 'c.bam')!r}), "
        f"Path({str(work / 'regions')!r}), 0, 1)\n"
    )
    report.memory.append(Memory("call-region", f"{CALL_CONTIG // 1000} kb region at 30x",
                                (work / "c.bam").stat().st_size / 2**20, call.peak_rss_mb,
                                call.seconds))  # fmt: skip
    shard_cpu = sum(r.cpu_seconds for r in runs) / sum(pairs)
    measured = Measured(
        split_seconds_per_pair=split_seconds / split_count,
        shard_pairs=pairs[0],
        shard_seconds=runs[0].seconds,
        shard_cpu_per_pair=shard_cpu,
        bwa_cpu_per_pair=bwa.cpu_seconds / pairs[0],
        shard_rss_mb=max(r.peak_rss_mb for r in runs),
        bwa_rss_mb=bwa.peak_rss_mb,
        index_mb=index_mb,
        gather_seconds_per_pair=gather.seconds / sum(pairs),
        gather_rss_mb=gather.peak_rss_mb,
        call_seconds_per_base_30x=call.seconds / CALL_CONTIG,
        call_rss_mb=call.peak_rss_mb,
    )
    report.extra["index_seconds"] = round(index_seconds, 2)
    return measured, report


@dataclass(frozen=True)
class Scenario:
    """One modelled input: its name, read pairs and depth."""

    name: str
    pairs: float
    depth: float


def _prod_config() -> dict[str, object]:
    from oncopipe.deployment import read_cdk_json

    environments = read_cdk_json()["oncopipe:environments"]
    prod: dict[str, object] = environments["prod"]
    return prod


def _cheapest(vcpus: int, memory_gib: float, types: list[str]) -> tuple[str, float, float]:
    """Return (instance type, USD per vCPU-hour, USD per GiB-hour) of the cheapest fit."""
    from oncopipe.ops.cost import load_prices

    table = load_prices()
    fits = []
    for name in types:
        price = table.lookup("us-east-1", name, "spot")
        if price.vcpus >= vcpus and price.memory_gib >= memory_gib:
            fits.append(price)
    if not fits:
        raise SystemExit(f"no prod instance type fits {vcpus} vCPUs / {memory_gib:.0f} GiB")
    best = min(fits, key=lambda p: p.usd_per_hour)
    return best.instance_type, best.usd_per_vcpu_hour, best.usd_per_gib_hour


def model(measured: Measured, report: Report) -> None:
    """Print the scale model and add its rows to ``report``."""
    prod = _prod_config()
    align_vcpus = int(str(prod["align_vcpus"]))
    align_gib = int(str(prod["align_memory_mib"])) / 1024
    call_vcpus = int(str(prod["call_vcpus"]))
    call_gib = int(str(prod["call_memory_mib"])) / 1024
    types = [str(t) for t in prod["batch_instance_types"]]  # type: ignore[attr-defined]
    a_type, a_vcpu_rate, a_gib_rate = _cheapest(align_vcpus, align_gib, types)
    c_type, c_vcpu_rate, c_gib_rate = _cheapest(call_vcpus, call_gib, types)
    settings = ScatterSettings()
    human_bwa = LITERATURE_VCPU_HOURS * 3600 / LITERATURE_PAIRS
    rest = max(0.0, measured.shard_cpu_per_pair - measured.bwa_cpu_per_pair)
    per_pair = human_bwa + rest
    shard_seconds = settings.pairs_per_shard * per_pair / align_vcpus
    print(f"\nmeasured here ({THREADS} cores):")
    print(f"  align-shard, {measured.shard_pairs:,} pairs: {measured.shard_seconds:.1f} s, "
          f"{1e3 * measured.shard_cpu_per_pair:.3f} CPU-ms/pair "
          f"(bwa alone {1e3 * measured.bwa_cpu_per_pair:.3f}, rest {1e3 * rest:.3f})")  # fmt: skip
    print(f"  bwa per pair, human (literature): {1e3 * human_bwa:.2f} vCPU-ms = "
          f"{human_bwa / measured.bwa_cpu_per_pair:.1f}x our "
          f"{REFERENCE_MB:.0f} Mb reference")  # fmt: skip
    print(f"  split (plan job, one process): {1e6 * measured.split_seconds_per_pair:.1f} s "
          "per M pairs")  # fmt: skip
    print(f"  gather: {1e6 * measured.gather_seconds_per_pair:.1f} s per M pairs "
          f"({THREADS} threads)")  # fmt: skip
    print(f"  call-region: {1e6 * measured.call_seconds_per_base_30x:.1f} s per Mb at 30x")
    print(f"  peak RSS: align-shard {measured.shard_rss_mb:.0f} MB (bwa alone "
          f"{measured.bwa_rss_mb:.0f} MB, index {measured.index_mb:.0f} MB), gather "
          f"{measured.gather_rss_mb:.0f} MB, call {measured.call_rss_mb:.0f} MB")  # fmt: skip
    scenarios = [Scenario("150 GB FASTQ.gz (750 M pairs, ~73x)", 150e9 / BYTES_PER_GZ_PAIR,
                          150e9 / BYTES_PER_GZ_PAIR * 300 / HUMAN_BASES),
                 Scenario("30x WGS (310 M pairs)", 310e6, 30.0)]  # fmt: skip
    regions = settings.call_regions
    print(f"\nmodel: {settings.pairs_per_shard / 1e6:.0f} M pairs/shard, shard jobs "
          f"{align_vcpus} vCPU on spot {a_type}, {regions} call regions ({call_vcpus} vCPU, "
          f"spot {c_type}); shard = {shard_seconds / 60:.1f} min")  # fmt: skip
    print(f"  {'input':<38}{'conc.':>6}{'shards':>7}{'split':>8}{'align':>8}{'gather':>8}"
          f"{'call':>7}{'wall':>8}{'spot $':>8}  vs goal {GOAL_MINUTES:.0f} min")  # fmt: skip
    for scenario in scenarios:
        shards = math.ceil(scenario.pairs / settings.pairs_per_shard)
        # optimistic: the gather's threads scale to the job's vCPUs (markdup is mostly
        # single-threaded, so the measured-threads figure is the upper bound)
        gather_max = scenario.pairs * measured.gather_seconds_per_pair
        # the split is one process (its checks in one thread, inflate/deflate beside them):
        # its time does not shrink with more vCPUs or the concurrency
        split_s = scenario.pairs * measured.split_seconds_per_pair
        gather_s = gather_max * THREADS / align_vcpus
        region_s = (HUMAN_BASES / regions) * measured.call_seconds_per_base_30x \
            * scenario.depth / 30  # fmt: skip
        align_cost = shards * shard_seconds / 3600 * (align_vcpus * a_vcpu_rate
                                                      + align_gib * a_gib_rate)  # fmt: skip
        gather_cost = gather_s / 3600 * (align_vcpus * a_vcpu_rate + align_gib * a_gib_rate)
        call_cost = regions * region_s / 3600 * (call_vcpus * c_vcpu_rate
                                                 + call_gib * c_gib_rate)  # fmt: skip
        split_cost = split_s / 3600 * (2 * a_vcpu_rate + 4 * a_gib_rate)  # 2 vCPU, 4 GiB
        cost = split_cost + align_cost + gather_cost + call_cost
        for concurrency in CONCURRENCY:
            align_wall = math.ceil(shards / concurrency) * shard_seconds
            call_wall = math.ceil(regions / min(regions, concurrency)) * region_s
            wall = split_s + align_wall + gather_s + call_wall
            print(f"  {scenario.name:<38}{concurrency:>6}{shards:>7}{split_s / 60:>7.1f}m"
                  f"{align_wall / 60:>7.1f}m"
                  f"{gather_s / 60:>7.1f}m{call_wall / 60:>6.1f}m{wall / 60:>7.1f}m"
                  f"{cost:>8.2f}  {wall / 60 / GOAL_MINUTES:.1f}x "
                  f"(gather up to {gather_max / 60:.0f}m)")  # fmt: skip
            if scenario.pairs > 700e6:
                report.add(f"150 GB WGS wall time, {concurrency} concurrent shards (model)",
                           wall / 60, GOAL_MINUTES, goal=f"<= {GOAL_MINUTES:.0f} min (cited)",
                           unit="min", passed=wall / 60 <= GOAL_MINUTES,
                           note=f"spot ${cost:.2f}; split {split_s / 60:.0f} min, "
                           f"gather {gather_s / 60:.0f} min "
                           f"(up to {gather_max / 60:.0f} min without thread scaling), "
                           f"shard {shard_seconds / 60:.1f} min")  # fmt: skip
    report.add("align-shard CPU per pair (measured, bwa + sort + checks)",
               1e3 * measured.shard_cpu_per_pair, None, unit="CPU-ms/pair",
               note=f"{REFERENCE_MB:.0f} Mb repeat-rich synthetic reference; human bwa "
               f"{1e3 * human_bwa:.2f} vCPU-ms/pair (bwa-mem2 issue #16)")  # fmt: skip
    report.extra.update({
        "measured": measured.__dict__, "shard_seconds_model": shard_seconds,
        "human_bwa_vcpu_s_per_pair": human_bwa, "align_instance": a_type,
        "call_instance": c_type,
    })  # fmt: skip


REFERENCE_MB = 24.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 Mb reference (about 1 min)")
    parser.add_argument("--json", type=Path, help="write the rows and memory figures here")
    args = parser.parse_args()
    global REFERENCE_MB
    REFERENCE_MB = 12.0 if args.quick else 24.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="oncopipe-wgs-") as tmp:
        measured, report = measure(Path(tmp), REFERENCE_MB, pairs_depth=1)
    report.quick = args.quick
    model(measured, report)
    print(f"\n(benchmark wall time {time.perf_counter() - started:.0f} s)")
    report.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
