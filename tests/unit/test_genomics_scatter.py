"""Whole-genome scatter/gather: shards and regions give what one job gives.

Sharded alignment (split -> align-shard per shard -> gather) and region calling
(call-region per region -> concat + norm) against the single-job paths, on the sample
panel and on a simulated larger genome; planted PCR duplicates; a failed shard retried
alone; a killed gather re-run; invalid input leaving nothing behind.
"""

from __future__ import annotations

import gzip
import io
import random
import shutil
from pathlib import Path
from typing import IO, Any, cast

import pysam
import pytest

from oncopipe.errors import ConfigError
from oncopipe.genomics import gather as gather_module
from oncopipe.genomics.align import (
    AlignmentError,
    InsertModel,
    ReadGroup,
    align_pair,
    align_sorted,
    parse_insert_model,
)
from oncopipe.genomics.call import call_variants
from oncopipe.genomics.fastq import InvalidFastqError
from oncopipe.genomics.gather import (
    align_shard,
    call_region_part,
    concat_regions,
    gather_alignment,
    missing_shards,
    regions_of,
)
from oncopipe.genomics.shard import (
    SHARD_MANIFEST,
    InvalidReferenceError,
    LaneInput,
    ScatterSettings,
    ShardError,
    ShardSet,
    plan_regions,
    read_fai,
    split_pairs,
)
from oncopipe.genomics.simulate import Variant, make_panel, simulate_pair, write_fasta
from tests.conftest import fastq_records, with_pcr_duplicates

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("bwa", "samtools", "bcftools")),
    reason="bwa/samtools/bcftools are installed by `make setup`",
)
GROUP = ReadGroup(id="T.L1", sample="pk-scatter", library="T")
PLANTED_DUPLICATES = 25


class StreamingBody:
    """A read-only, non-seekable stream, like botocore's ``StreamingBody``."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, amt: int | None = None) -> bytes:
        return self._buffer.read(-1 if amt is None else amt)


def _write_pair(folder: Path, stem: str, r1: bytes, r2: bytes) -> tuple[Path, Path]:
    p1, p2 = folder / f"{stem}_R1.fastq.gz", folder / f"{stem}_R2.fastq.gz"
    p1.write_bytes(r1)
    p2.write_bytes(r2)
    return p1, p2


def _split(folder: Path, r1: bytes, r2: bytes, pairs_per_shard: int) -> ShardSet:
    body_1, body_2 = cast(IO[bytes], StreamingBody(r1)), cast(IO[bytes], StreamingBody(r2))
    lane = LaneInput(body_1, body_2, "S_R1.fastq.gz", "S_R2.fastq.gz", GROUP)
    return split_pairs([lane], folder, pairs_per_shard=pairs_per_shard)


def _scatter_align(folder: Path, reference: Path, r1: bytes, r2: bytes,
                   pairs_per_shard: int) -> tuple[ShardSet, Path]:  # fmt: skip
    shards = _split(folder, r1, r2, pairs_per_shard)
    for shard in shards.shards:
        assert align_shard(folder, shard.index, reference, threads=2).status == "done"
    out = folder / "sharded.bam"
    gather_alignment(folder, reference, out, threads=2)
    return shards, out


def _bam_records(bam: Path) -> list[str]:
    with pysam.AlignmentFile(str(bam)) as handle:
        return [r.to_string() for r in handle.fetch(until_eof=True)]


def _counts(bam: Path) -> dict[str, int]:
    counts = {"reads": 0, "mapped": 0, "paired": 0, "duplicates": 0}
    with pysam.AlignmentFile(str(bam)) as handle:
        for r in handle.fetch(until_eof=True):
            if r.is_secondary or r.is_supplementary:
                continue
            counts["reads"] += 1
            counts["mapped"] += not r.is_unmapped
            counts["paired"] += r.is_proper_pair
            counts["duplicates"] += r.is_duplicate
    return counts


def _vcf_records(vcf: Path) -> list[str]:
    with pysam.VariantFile(str(vcf)) as handle:
        return [str(record) for record in handle]


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample panel, a tumour with planted SNVs and PCR duplicates, aligned in one job."""
    work = tmp_path_factory.mktemp("scatter-panel")
    sequences, _, changes = make_panel()
    reference = work / "panel.fa"
    write_fasta(sequences, reference)
    planted = []
    for name, vaf in (("KRAS G12C", 0.35), ("BRAF V600E", 0.5), ("TP53 R273H", 0.3)):
        v = changes[name][0]
        planted.append(Variant(v.contig, v.pos, v.ref, v.alt, vaf, v.gene, v.protein))
    r1, r2 = simulate_pair(sequences, planted, sample="T", depth=80, seed=5)
    r1, r2 = with_pcr_duplicates(r1, r2, PLANTED_DUPLICATES, seed=6)
    f1, f2 = _write_pair(work, "T", r1, r2)
    single = work / "single.bam"
    align_pair(reference, f1, f2, single, read_group=GROUP, threads=2)
    single_vcf = work / "single.vcf.gz"
    call_variants(reference, single, single_vcf)
    return {"work": work, "reference": reference, "r1": r1, "r2": r2, "single": single,
            "single_vcf": single_vcf, "planted": planted,
            "pairs": len(fastq_records(r1))}  # fmt: skip


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A larger synthetic genome (two long contigs and small ones), called in regions.

    Variants are planted on the boundaries of the calling regions: a deletion anchored
    on the last base of region 0 (its deleted bases in region 1), an insertion anchored
    on the last base of region 1, an SNV on the first base of region 2.
    """
    work = tmp_path_factory.mktemp("scatter-genome")
    rng = random.Random(21)
    lengths = {"chrA": 50_000, "chrB": 30_000, "chrC": 4_000, "chrD": 1_500}
    sequences = {n: [rng.choice("ACGT") for _ in range(k)] for n, k in lengths.items()}
    count = 4
    regions = plan_regions(list(lengths.items()), count)
    deletion_at, insertion_at = regions[0].intervals[-1], regions[1].intervals[-1]
    snv_at = regions[2].intervals[0]
    # planted in normalised form (bcftools norm left-aligns): the anchor base differs
    # from the last deleted base and from the last inserted base
    p, q, s = deletion_at.end, insertion_at.end, snv_at.start  # 1-based
    sequences[deletion_at.contig][p - 1 : p + 3] = list("GACT")
    sequences[insertion_at.contig][q - 1] = "C"
    text = {name: "".join(bases) for name, bases in sequences.items()}
    reference = work / "genome.fa"
    write_fasta(text, reference)
    assert regions_of(reference, count) == regions
    deletion = Variant(deletion_at.contig, p, "GACT", "G", 0.5)
    insertion = Variant(insertion_at.contig, q, "C", "CGATTACA", 0.5)
    base = text[snv_at.contig][s - 1]
    snv = Variant(snv_at.contig, s, base, "A" if base != "A" else "C", 0.5)
    base = text["chrA"][10_000]
    middle = Variant("chrA", 10_001, base, "T" if base != "T" else "G", 0.4)
    planted = [deletion, insertion, snv, middle]
    r1, r2 = simulate_pair(text, planted, sample="G", depth=30, seed=22)
    f1, f2 = _write_pair(work, "G", r1, r2)
    single = work / "single.bam"
    align_pair(reference, f1, f2, single, read_group=GROUP, threads=2)
    single_vcf = work / "single.vcf.gz"
    call_variants(reference, single, single_vcf)
    return {"work": work, "reference": reference, "r1": r1, "r2": r2, "single": single,
            "single_vcf": single_vcf, "planted": planted, "regions": count}  # fmt: skip


# --- splitting -------------------------------------------------------------------------


def test_split_streams_shards_of_n_pairs_in_order(panel: dict[str, Any], tmp_path: Path) -> None:
    shards = _split(tmp_path, panel["r1"], panel["r2"], 1000)
    pairs = panel["pairs"]
    assert [s.pairs for s in shards.shards] == [1000] * (pairs // 1000) + (
        [pairs % 1000] if pairs % 1000 else []
    )
    assert [s.r1 for s in shards.shards[:2]] == ["shard-00000_R1.fastq.gz",
                                                  "shard-00001_R1.fastq.gz"]  # fmt: skip
    rejoined = b"".join(gzip.decompress((tmp_path / s.r2).read_bytes()) for s in shards.shards)
    assert rejoined == b"".join(fastq_records(panel["r2"]))  # same records, same order
    assert ShardSet.load(tmp_path) == shards
    assert shards.lanes[0].read_group == GROUP and shards.lanes[0].pairs == pairs


@pytest.mark.parametrize("pairs_per_shard", [1, 7, 4914, 10_000])
def test_split_shard_sizes_add_up(tmp_path: Path, pairs_per_shard: int) -> None:
    sequences, _, _ = make_panel()
    small = {"KRAS": sequences["KRAS"]}
    r1, r2 = simulate_pair(small, [], sample="S", depth=10, seed=1)
    pairs = len(fastq_records(r1))
    shards = _split(tmp_path, r1, r2, pairs_per_shard)
    sizes = [s.pairs for s in shards.shards]
    assert sum(sizes) == pairs and all(0 < n <= pairs_per_shard for n in sizes)
    assert len(sizes) == -(-pairs // pairs_per_shard)


def test_split_of_invalid_input_names_file_and_read_and_leaves_nothing(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    records = fastq_records(panel["r2"])
    header, sequence, plus, quality = records[2500].split(b"\n")[:4]
    records[2500] = b"\n".join([header, sequence, plus, quality[:-5]]) + b"\n"
    bad = gzip.compress(b"".join(records), mtime=0)
    with pytest.raises(InvalidFastqError, match=r"S_R2.fastq.gz: read 2501: quality length"):
        _split(tmp_path, panel["r1"], bad, 1000)
    assert list(tmp_path.iterdir()) == []  # shards 0 and 1 were written, then removed


def test_split_of_truncated_gzip_fails_cleanly(panel: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(InvalidFastqError, match=r"S_R1.fastq.gz: read .*truncated or corrupt"):
        _split(tmp_path, panel["r1"][: len(panel["r1"]) // 2], panel["r2"], 1000)
    assert not (tmp_path / SHARD_MANIFEST).exists() and not list(tmp_path.glob("shard-*"))


# --- alignment: sharded == single job ---------------------------------------------------


def test_sharded_alignment_equals_single_job_on_the_panel(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    # three full shards and a tail of 6-8 pairs, too few for bwa to estimate an insert
    # size from (it needs 10): the lane's fixed model keeps its pairs proper
    size = (panel["pairs"] - 6) // 3
    shards, sharded = _scatter_align(tmp_path, panel["reference"], panel["r1"], panel["r2"],
                                     size)  # fmt: skip
    assert len(shards.shards) == 4 and shards.shards[-1].pairs < 10
    assert _bam_records(sharded) == _bam_records(panel["single"])
    counts = _counts(sharded)
    assert counts == _counts(panel["single"])
    assert counts["reads"] == 2 * panel["pairs"] and counts["paired"] == counts["reads"]
    with pysam.AlignmentFile(str(sharded)) as handle:
        assert [g["ID"] for g in handle.header.to_dict()["RG"]] == ["T.L1"]  # one group


def test_planted_pcr_duplicates_are_flagged(panel: dict[str, Any], tmp_path: Path) -> None:
    shards, sharded = _scatter_align(tmp_path, panel["reference"], panel["r1"], panel["r2"],
                                     2000)  # fmt: skip
    for bam in (panel["single"], sharded):
        flags: dict[str, list[bool]] = {}
        with pysam.AlignmentFile(str(bam)) as handle:
            for r in handle.fetch(until_eof=True):
                if r.is_secondary or r.is_supplementary:
                    continue
                flags.setdefault(str(r.query_name).split("-dup")[0], []).append(r.is_duplicate)
        planted = [name for name in flags if len(flags[name]) == 4]
        assert len(planted) == PLANTED_DUPLICATES
        for name in planted:  # original + copy, both mates: one pair kept, one flagged
            assert sorted(flags[name]) == [False, False, True, True], name
    # the copies sit in the last shard, their originals in earlier ones
    assert shards.shards[-1].pairs < 2000


def test_sharded_alignment_and_calls_equal_single_job_on_a_larger_genome(
    genome: dict[str, Any], tmp_path: Path
) -> None:
    _, sharded = _scatter_align(tmp_path / "a", genome["reference"], genome["r1"],
                                genome["r2"], 3000)  # fmt: skip
    assert _counts(sharded) == _counts(genome["single"])
    count = genome["regions"]
    for index in range(count):
        call_region_part(genome["reference"], sharded, tmp_path / "calls", index, count)
    out = tmp_path / "sharded.vcf.gz"
    concat_regions(genome["reference"], sharded, tmp_path / "calls", count, out)
    records = _vcf_records(out)
    assert records == _vcf_records(genome["single_vcf"])
    called = {tuple(r.split("\t")[:2] + r.split("\t")[3:5]) for r in records}
    for v in genome["planted"]:
        assert (v.contig, str(v.pos), v.ref, v.alt) in called, v


# --- calling in regions -----------------------------------------------------------------


def test_region_calls_keep_boundary_indels_once(genome: dict[str, Any], tmp_path: Path) -> None:
    count = genome["regions"]
    single = genome["single"]
    for index in range(count):
        call_region_part(genome["reference"], single, tmp_path, index, count)
    out = tmp_path / "regions.vcf.gz"
    concat_regions(genome["reference"], single, tmp_path, count, out)
    records = _vcf_records(out)
    assert records == _vcf_records(genome["single_vcf"])  # records, not headers
    keys = [tuple(r.split("\t")[:2] + r.split("\t")[3:5]) for r in records]
    assert len(keys) == len(set(keys))
    deletion, insertion, snv, _ = genome["planted"]
    for v in (deletion, insertion, snv):  # on region boundaries: found, once
        assert keys.count((v.contig, str(v.pos), v.ref, v.alt)) == 1, v


def test_region_calls_of_the_panel_equal_the_single_job(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    for count in (1, 3, 7):
        folder = tmp_path / str(count)
        for index in range(count):
            call_region_part(panel["reference"], panel["single"], folder, index, count)
        out = folder / "calls.vcf.gz"
        concat_regions(panel["reference"], panel["single"], folder, count, out)
        assert _vcf_records(out) == _vcf_records(panel["single_vcf"]), count
    planted = {(v.contig, v.pos) for v in panel["planted"]}
    with pysam.VariantFile(str(panel["single_vcf"])) as handle:
        assert planted <= {(r.contig, r.pos) for r in handle}


def test_concat_refuses_until_every_region_is_called(panel: dict[str, Any], tmp_path: Path) -> None:
    for index in (0, 2):
        call_region_part(panel["reference"], panel["single"], tmp_path, index, 3)
    with pytest.raises(ShardError, match=r"1 of 3 regions are not called \(region 1\)"):
        concat_regions(panel["reference"], panel["single"], tmp_path, 3, tmp_path / "o.vcf.gz")
    assert not (tmp_path / "o.vcf.gz").exists()
    again = call_region_part(panel["reference"], panel["single"], tmp_path, 0, 3)
    assert again.status == "skipped"
    with pytest.raises(ShardError, match="region 3 does not exist"):
        call_region_part(panel["reference"], panel["single"], tmp_path, 3, 3)


def test_plan_regions_covers_every_base_once_balanced() -> None:
    contigs = [("chr1", 1000), ("chr2", 333), ("chrM", 17), ("chrUn", 5)]
    for count in (1, 2, 3, 7, 64, 1355, 5000):
        regions = plan_regions(contigs, count)
        assert len(regions) == min(count, 1355)
        covered: dict[str, list[int]] = {name: [] for name, _ in contigs}
        for region in regions:
            for i in region.intervals:
                assert 1 <= i.start <= i.end
                covered[i.contig].extend(range(i.start, i.end + 1))
        for name, length in contigs:
            assert covered[name] == list(range(1, length + 1))  # once, in order
        lengths = [r.length for r in regions]
        assert max(lengths) - min(lengths) <= 1


def test_bad_fai_names_file_and_line(tmp_path: Path) -> None:
    fai = tmp_path / "ref.fa.fai"
    fai.write_text("chr1\t100\t6\t60\t61\nchr2\tlots\t200\t60\t61\n")
    with pytest.raises(InvalidReferenceError, match=r"ref.fa.fai: line 2: not a .fai line"):
        read_fai(fai)
    with pytest.raises(ValueError, match="region count must be positive"):
        plan_regions([("c", 10)], 0)


# --- failures, retries, resume ----------------------------------------------------------


def test_a_failed_shard_is_retried_alone(
    panel: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = panel["reference"]
    shards = _split(tmp_path, panel["r1"], panel["r2"], 1000)
    assert len(shards.shards) == 4
    real = gather_module.align_sorted
    calls: list[str] = []

    def flaky(reference: Path, r1: Path, r2: Path, out: Path, **kwargs: Any) -> None:
        calls.append(out.name)
        if out.name == "shard-00001.bam" and calls.count(out.name) == 1:
            out.write_bytes(b"half a BAM")  # a spot reclaim half-way
            raise AlignmentError("bwa mem failed (-9): killed")
        real(reference, r1, r2, out, **kwargs)

    monkeypatch.setattr(gather_module, "align_sorted", flaky)
    results = {}
    for shard in shards.shards:
        try:
            results[shard.index] = align_shard(tmp_path, shard.index, reference, threads=2).status
        except AlignmentError:
            results[shard.index] = "failed"
    assert results == {0: "done", 1: "failed", 2: "done", 3: "done"}
    assert missing_shards(tmp_path, reference) == [1]
    with pytest.raises(ShardError, match=r"1 of 4 shards are not aligned \(shard 1\)"):
        gather_alignment(tmp_path, reference, tmp_path / "out.bam", threads=2)
    before = {i: (tmp_path / f"shard-0000{i}.bam").stat().st_mtime_ns for i in (0, 2, 3)}
    retried = {s.index: align_shard(tmp_path, s.index, reference, threads=2).status
               for s in shards.shards}  # fmt: skip
    assert retried == {0: "skipped", 1: "done", 2: "skipped", 3: "skipped"}
    assert calls.count("shard-00001.bam") == 2 and calls.count("shard-00000.bam") == 1
    assert before == {i: (tmp_path / f"shard-0000{i}.bam").stat().st_mtime_ns for i in (0, 2, 3)}
    gather_alignment(tmp_path, reference, tmp_path / "out.bam", threads=2)
    assert _bam_records(tmp_path / "out.bam") == _bam_records(panel["single"])


def test_a_corrupt_shard_file_is_refused_before_alignment(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    shards = _split(tmp_path, panel["r1"], panel["r2"], 2000)
    path = tmp_path / shards.shards[1].r1
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an incomplete copy
    with pytest.raises(ShardError, match=r"shard 1: shard-00001_R1.fastq.gz checksum mismatch"):
        align_shard(tmp_path, 1, panel["reference"], threads=2)
    assert not (tmp_path / "shard-00001.bam").exists()
    assert not (tmp_path / "shard-00001.done.json").exists()
    with pytest.raises(ShardError, match="shard 9 does not exist"):
        align_shard(tmp_path, 9, panel["reference"])


def test_a_changed_shard_invalidates_its_marker(panel: dict[str, Any], tmp_path: Path) -> None:
    shards = _split(tmp_path, panel["r1"], panel["r2"], 2000)
    assert align_shard(tmp_path, 0, panel["reference"], threads=2).status == "done"
    assert missing_shards(tmp_path, panel["reference"]) == [1]
    (tmp_path / "shard-00000.bam").write_bytes(b"tampered")
    assert (
        missing_shards(tmp_path, panel["reference"]) == [0, 1] == [s.index for s in shards.shards]
    )
    assert align_shard(tmp_path, 0, panel["reference"], threads=2).status == "done"


def test_a_killed_gather_resumes_from_the_shard_markers(
    panel: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = panel["reference"]
    shards = _split(tmp_path, panel["r1"], panel["r2"], 2000)
    for shard in shards.shards:
        align_shard(tmp_path, shard.index, reference, threads=2)
    out = tmp_path / "out.bam"
    real = gather_module.finish_alignment

    def killed(reference: Path, bams: Any, out_bam: Path, **kwargs: Any) -> Any:
        out_bam.with_name(out_bam.name + ".partial").write_bytes(b"partial")
        raise KeyboardInterrupt  # the job killed mid-merge

    monkeypatch.setattr(gather_module, "finish_alignment", killed)
    with pytest.raises(KeyboardInterrupt):
        gather_alignment(tmp_path, reference, out, threads=2)
    assert not out.exists()
    monkeypatch.setattr(gather_module, "finish_alignment", real)
    assert missing_shards(tmp_path, reference) == []  # nothing to realign
    qc = gather_alignment(tmp_path, reference, out, threads=2)
    assert qc.reads == 2 * panel["pairs"] and Path(f"{out}.bai").exists()
    assert not out.with_name(out.name + ".partial").exists()


def test_gather_without_a_split_says_to_run_the_split(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="no shard manifest: the split did not finish"):
        gather_alignment(tmp_path, tmp_path / "ref.fa", tmp_path / "o.bam")


# --- the insert-size model, settings ----------------------------------------------------


def test_bwa_insert_model_is_parsed_from_its_log() -> None:
    log = (
        "[M::mem_pestat] analyzing insert size distribution for orientation FF...\n"
        "[M::mem_pestat] mean and std.dev: (1.00, 2.00)\n"
        "[M::mem_pestat] analyzing insert size distribution for orientation FR...\n"
        "[M::mem_pestat] (25, 50, 75) percentile: (280, 300, 320)\n"
        "[M::mem_pestat] low and high boundaries for computing mean and std.dev: (200, 400)\n"
        "[M::mem_pestat] mean and std.dev: (299.76, 29.53)\n"
        "[M::mem_pestat] low and high boundaries for proper pairs: (160, 440)\n"
        "[M::mem_pestat] skip orientation RF as there are not enough pairs\n"
    )
    model = parse_insert_model(log)
    assert model == InsertModel(mean=299.76, sd=29.53, low=160, high=440)
    assert model.bwa_option() == "299.76,29.53,440,160"
    assert parse_insert_model("[M::mem_pestat] skip orientation FR as there are not enough "
                              "pairs\n") is None  # fmt: skip


def test_a_tiny_shard_aligned_alone_loses_proper_pairs_without_the_model(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    """Why the lane's model is fixed: bwa alone cannot pair a shard of a few pairs."""
    shards = _split(tmp_path, panel["r1"], panel["r2"], (panel["pairs"] - 6) // 3)
    tail = shards.shards[-1]
    assert tail.pairs < 10
    alone = tmp_path / "alone.bam"
    align_sorted(panel["reference"], tmp_path / tail.r1, tmp_path / tail.r2, alone,
                 read_group=GROUP, threads=1)  # fmt: skip
    assert _counts(alone)["paired"] == 0
    align_shard(tmp_path, tail.index, panel["reference"], threads=1)
    assert _counts(tmp_path / f"{tail.name}.bam")["paired"] == 2 * tail.pairs


def test_scatter_settings_validate_and_decide() -> None:
    settings = ScatterSettings(pairs_per_shard=1000, scatter_min_fastq_bytes=1 << 20,
                               call_regions=8, scatter_min_reference_bases=10_000)  # fmt: skip
    assert not settings.scatter_alignment(500_000) and settings.scatter_alignment(2 << 20)
    assert settings.regions_for(9_999) == 1 and settings.regions_for(3_000_000_000) == 8
    for bad in (0, -5, "10", True):
        with pytest.raises(ConfigError, match="pairs_per_shard: must be a positive integer"):
            ScatterSettings(pairs_per_shard=bad)  # type: ignore[arg-type]


def test_a_missing_fastq_is_an_alignment_error_not_a_traceback(
    panel: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(AlignmentError, match="lane 1: cannot read its FASTQ pair"):
        align_pair(panel["reference"], tmp_path / "gone_R1.fq.gz", tmp_path / "gone_R2.fq.gz",
                   tmp_path / "o.bam", read_group=GROUP, threads=1)  # fmt: skip
    assert list(tmp_path.iterdir()) == []
