"""The whole-genome scatter/gather of the genomics stage on object storage, end to end.

The phases the array jobs run (:mod:`oncopipe.genomics.scatter_stage`: plan, align-shard,
gather, call-region, call-gather), against S3 (moto), compared with the single jobs on the
same input: the same reads and duplicate flags, the same VCF records.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pysam
import pytest

from oncopipe import layout
from oncopipe.genomics import gather as gather_module
from oncopipe.genomics.scatter_stage import (
    align_shard_part,
    call_region_job,
    plan_sample,
    scratch_prefix,
    settings_from_env,
)
from oncopipe.genomics.shard import ScatterSettings, ShardError
from oncopipe.genomics.simulate import Variant, make_panel, simulate_pair, write_fasta
from oncopipe.genomics.stage import align_sample, bam_key, call_sample
from oncopipe.layout import Buckets
from oncopipe.manifest import manifest_key
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket, with_pcr_duplicates

pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("bwa", "samtools", "bcftools")),
    reason="bwa/samtools/bcftools are installed by `make setup`",
)
BUCKETS = Buckets(ingest="s-ingest", quarantine="s-quarantine", curated="s-curated",
                  artifacts="s-artifacts")  # fmt: skip
SAMPLE = {"sample": "P1-T", "type": "tumour", "patient_key": "pk-aaaaaaaaaaaaaaaa",
          "fastq_1": "fastq/P1-T_R1.fastq.gz", "fastq_2": "fastq/P1-T_R2.fastq.gz",
          "lane": "1", "library": "P1-T", "platform": "ILLUMINA"}  # fmt: skip
SECRET = bytes(range(32))
PLANTED_DUPLICATES = 20
#: scatter everything: shards of 700 pairs, 4 calling regions on the ~10 kb panel
SCATTER = ScatterSettings(pairs_per_shard=700, scatter_min_fastq_bytes=1, call_regions=4,
                          scatter_min_reference_bases=1)  # fmt: skip


def _populate(store: ObjectStore, tmp: Path, *, broken: bool = False) -> None:
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(store.client, name)
    sequences, panel, changes = make_panel()
    write_fasta(sequences, tmp / "panel.fa")
    panel.dump(tmp / "panel.json")
    for name in ("panel.fa", "panel.json"):
        store.client.upload_file(str(tmp / name), BUCKETS.artifacts,
                                 f"{layout.ARTIFACTS_REFERENCE}{name}")  # fmt: skip
    kras = changes["KRAS G12C"][0]
    planted = [Variant(kras.contig, kras.pos, kras.ref, kras.alt, 0.4, "KRAS", "G12C")]
    r1, r2 = simulate_pair(sequences, planted, sample="P1-T", depth=60, seed=5)
    r1, r2 = with_pcr_duplicates(r1, r2, PLANTED_DUPLICATES, seed=3)
    if broken:
        r2 = r2[: len(r2) // 2]
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SAMPLE["fastq_1"], Body=r1)
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SAMPLE["fastq_2"], Body=r2)


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    return ObjectStore(s3)


def _download(store: ObjectStore, key: str, path: Path) -> Path:
    store.download_file(BUCKETS.curated, key, str(path))
    return path


def _bam_counts(bam: Path) -> dict[str, Any]:
    counts = {"reads": 0, "mapped": 0, "proper": 0, "duplicates": 0}
    flags: dict[str, list[bool]] = {}
    with pysam.AlignmentFile(str(bam)) as handle:
        for r in handle.fetch(until_eof=True):
            if r.is_secondary or r.is_supplementary:
                continue
            counts["reads"] += 1
            counts["mapped"] += not r.is_unmapped
            counts["proper"] += r.is_proper_pair
            counts["duplicates"] += r.is_duplicate
            flags.setdefault(str(r.query_name).split("-dup")[0], []).append(r.is_duplicate)
    planted = [sorted(f) for f in flags.values() if len(f) == 4]
    return {**counts, "planted": planted}


def _vcf_records(vcf: Path) -> list[str]:
    with pysam.VariantFile(str(vcf)) as handle:
        return [str(record) for record in handle]


def _single(store: ObjectStore, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    assert align_sample(store, BUCKETS, [SAMPLE], "single", key_secret=SECRET).status == "done"
    bam = _download(store, bam_key(SAMPLE["patient_key"], "P1-T"), tmp / "single.bam")
    called = call_sample(store, BUCKETS, SAMPLE, None, "single")
    vcf = _download(store, f"{layout.CURATED_GENOMICS_VCF}{SAMPLE['patient_key']}/P1-T.vcf.gz",
                    tmp / "single.vcf.gz")  # fmt: skip
    assert called.summary["hotspots"] == ["KRAS G12C"]
    return _bam_counts(bam), _vcf_records(vcf)


def _align_shards(store: ObjectStore, run: str, shards: int) -> list[str]:
    return [align_shard_part(store, BUCKETS, run, "P1-T", i, threads=2).status
            for i in range(shards)]  # fmt: skip


def test_sharded_run_equals_single_jobs_reads_duplicates_and_calls(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path)
    single_counts, single_calls = _single(store, tmp_path)

    planned = plan_sample(store, BUCKETS, [SAMPLE], "sharded", settings=SCATTER)
    assert planned.shards >= 4 and planned.regions == 4
    assert _align_shards(store, "sharded", planned.shards) == ["done"] * planned.shards
    gathered = align_sample(store, BUCKETS, [SAMPLE], "sharded", key_secret=SECRET,
                            shards=planned.shards)  # fmt: skip
    assert gathered.summary["status"] == "aligned"
    bam = _download(store, bam_key(SAMPLE["patient_key"], "P1-T"), tmp_path / "sharded.bam")
    sharded_counts = _bam_counts(bam)
    assert sharded_counts == single_counts
    assert sharded_counts["reads"] == 2 * gathered.summary["reads"]
    # planted PCR duplicates: of each original + copy, one pair kept and one flagged
    assert sharded_counts["planted"] == [[False, False, True, True]] * PLANTED_DUPLICATES

    for index in range(planned.regions):
        ref = store.head(BUCKETS.curated, bam_key(SAMPLE["patient_key"], "P1-T"))
        assert ref is not None
        part = call_region_job(store, BUCKETS, [ref], "sharded", "P1-T", index, planned.regions)
        assert part.status == "done"
    called = call_sample(store, BUCKETS, SAMPLE, None, "sharded", regions=planned.regions)
    assert called.summary["hotspots"] == ["KRAS G12C"]
    vcf = _download(store, f"{layout.CURATED_GENOMICS_VCF}{SAMPLE['patient_key']}/P1-T.vcf.gz",
                    tmp_path / "sharded.vcf.gz")  # fmt: skip
    assert _vcf_records(vcf) == single_calls and single_calls
    # both runs committed the sample with a manifest: readers see one way to a BAM
    for run in ("single", "sharded"):
        assert store.exists(BUCKETS.curated, manifest_key(run, "align", "P1-T"))


def test_plan_of_a_small_sample_is_one_job_and_a_committed_split_is_reused(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path)
    small = plan_sample(store, BUCKETS, [SAMPLE], "r", settings=ScatterSettings())
    assert (small.shards, small.regions) == (0, 1)
    layout_prefix = scratch_prefix("r", "P1-T", "align")
    assert not any(store.list_keys(BUCKETS.curated, layout_prefix))
    first = plan_sample(store, BUCKETS, [SAMPLE], "r", settings=SCATTER)
    manifest = store.head(BUCKETS.curated, layout_prefix + "shards.json")
    again = plan_sample(store, BUCKETS, [SAMPLE], "r", settings=SCATTER)
    assert again == first
    assert store.head(BUCKETS.curated, layout_prefix + "shards.json") == manifest


def test_an_invalid_pair_is_not_split_and_the_single_job_quarantines_it(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path, broken=True)
    planned = plan_sample(store, BUCKETS, [SAMPLE], "r", settings=SCATTER)
    assert planned.shards == 0
    assert not any(store.list_keys(BUCKETS.curated, scratch_prefix("r", "P1-T", "align")))
    result = align_sample(store, BUCKETS, [SAMPLE], "r", key_secret=SECRET)
    assert result.summary["status"] == "quarantined"


def test_a_failed_shard_is_retried_alone_and_a_killed_gather_resumes(
    store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(store, tmp_path)
    planned = plan_sample(store, BUCKETS, [SAMPLE], "r", settings=SCATTER)
    real = gather_module.align_sorted

    def fail_shard_1(reference: Path, r1: Path, r2: Path, bam: Path, **kw: Any) -> None:
        if bam.name == "shard-00001.bam":
            raise RuntimeError("spot instance reclaimed")
        real(reference, r1, r2, bam, **kw)

    monkeypatch.setattr(gather_module, "align_sorted", fail_shard_1)
    statuses = []
    for i in range(planned.shards):
        try:
            statuses.append(align_shard_part(store, BUCKETS, "r", "P1-T", i, threads=2).status)
        except RuntimeError:
            statuses.append("failed")
    assert statuses == ["done", "failed"] + ["done"] * (planned.shards - 2)
    with pytest.raises(ShardError, match=r"1 of \d+ shards are not aligned \(shard 1\)"):
        align_sample(store, BUCKETS, [SAMPLE], "r", key_secret=SECRET, shards=planned.shards)
    assert not store.exists(BUCKETS.curated, manifest_key("r", "align", "P1-T"))

    monkeypatch.setattr(gather_module, "align_sorted", real)
    assert _align_shards(store, "r", planned.shards) == (
        ["skipped", "done"] + ["skipped"] * (planned.shards - 2))  # fmt: skip

    real_finish = gather_module.finish_alignment

    def killed(*args: Any, **kwargs: Any) -> Any:
        real_finish(*args, **kwargs)
        raise KeyboardInterrupt("the gather's instance went away")

    monkeypatch.setattr(gather_module, "finish_alignment", killed)
    with pytest.raises(KeyboardInterrupt):
        align_sample(store, BUCKETS, [SAMPLE], "r", key_secret=SECRET, shards=planned.shards)
    assert not store.exists(BUCKETS.curated, bam_key(SAMPLE["patient_key"], "P1-T"))
    monkeypatch.setattr(gather_module, "finish_alignment", real_finish)
    # the re-run starts from the shards' markers: no shard is aligned again
    assert _align_shards(store, "r", planned.shards) == ["skipped"] * planned.shards
    done = align_sample(store, BUCKETS, [SAMPLE], "r", key_secret=SECRET, shards=planned.shards)
    assert done.summary["status"] == "aligned"


def test_scatter_settings_come_from_the_job_environment() -> None:
    settings = settings_from_env({"SCATTER_PAIRS_PER_SHARD": "1000",
                                  "SCATTER_CALL_REGIONS": "16"})  # fmt: skip
    assert (settings.pairs_per_shard, settings.call_regions) == (1000, 16)
    assert settings.scatter_min_fastq_bytes == ScatterSettings().scatter_min_fastq_bytes
