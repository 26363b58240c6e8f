"""The whole-genome scatter/gather of the genomics stage, on object storage.

The cores (:mod:`oncopipe.genomics.shard`, :mod:`oncopipe.genomics.gather`) work on a
local folder; this module moves their files through the curated bucket's scratch prefix
``genomics/_scatter/<run-id>/<sample>/`` so that each phase can run in its own Batch job
(an array child per shard or region) on any machine:

- :func:`plan_sample`: decides from the FASTQ sizes and the reference ``.fai`` (and
  :class:`~oncopipe.genomics.shard.ScatterSettings`) whether the sample aligns as one job
  or as ``shards`` array children, and whether its calls scatter into ``regions``. When
  alignment scatters it streams the FASTQ pair from the ingest bucket (no full download)
  into shards and uploads them, ``shards.json`` last (the split's commit record).
  A committed split of the same input versions is reused, not redone.
- :func:`align_shard_part`: array child ``index`` aligns its shard and uploads the BAM,
  then its marker. A child whose marker is there and valid does nothing (a retried array
  job redoes only the failed shards).
- :func:`gather_sample`: :func:`oncopipe.genomics.stage.align_sample`'s commit, with the
  BAM from the gathered shards (merge, markdup, index, QC): the same curated
  outputs and manifest as the single job.
- :func:`call_region_job` / :func:`call_gather_sample`: the same for calling by region.

An invalid FASTQ pair is not split: the plan reports one job, whose ``align`` quarantines
it with the single-job path's reason documents.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oncopipe import layout
from oncopipe.errors import InputError
from oncopipe.genomics.call import CallerSettings
from oncopipe.genomics.fastq import InvalidFastqError
from oncopipe.genomics.gather import PhaseResult, align_shard, call_region_part, region_name
from oncopipe.genomics.shard import (
    SHARD_MANIFEST,
    LaneInput,
    ScatterSettings,
    ShardError,
    ShardSet,
    read_fai,
    shard_name,
    split_pairs,
)
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)
SCRATCH = layout.CURATED_GENOMICS_SCRATCH
#: Environment variables of the job definitions that carry ``config.scatter``.
SETTINGS_ENV = {
    "pairs_per_shard": "SCATTER_PAIRS_PER_SHARD",
    "scatter_min_fastq_bytes": "SCATTER_MIN_FASTQ_BYTES",
    "call_regions": "SCATTER_CALL_REGIONS",
    "scatter_min_reference_bases": "SCATTER_MIN_REFERENCE_BASES",
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> ScatterSettings:
    """Return the scatter settings from the job's environment (defaults where unset).

    Raises:
        ConfigError: a value is not a positive integer.
        ValueError: a value is not an integer.
    """
    environ = os.environ if environ is None else environ
    values = {name: int(environ[var]) for name, var in SETTINGS_ENV.items() if environ.get(var)}
    return ScatterSettings(**values)


def scratch_prefix(run_id: str, sample: str, phase: str) -> str:
    """Return the scratch prefix of a sample's ``align`` or ``call`` scatter in a run."""
    return f"{SCRATCH}{run_id}/{sample}/{phase}/"


@dataclass(frozen=True)
class SamplePlan:
    """How a sample runs: ``shards`` (0: one align job) and ``regions`` (1: one call job)."""

    shards: int
    regions: int
    fastq_bytes: int
    reference_bases: int


def _tags(run_id: str, step: str) -> dict[str, str]:
    return {"run-id": run_id, "step": step}


def _lane_refs(
    store: ObjectStore, buckets: layout.Buckets, lanes: Sequence[Mapping[str, Any]]
) -> list[tuple[ObjectRef, ObjectRef]]:
    refs = []
    for lane in lanes:
        pair = []
        for column in ("fastq_1", "fastq_2"):
            ref = store.head(buckets.ingest, str(lane[column]))
            if ref is None:
                raise InputError(str(lane[column]), "FASTQ file named by the sample sheet is gone")
            pair.append(ref)
        refs.append((pair[0], pair[1]))
    return refs


def reference_bases(store: ObjectStore, buckets: layout.Buckets, reference_prefix: str,
                    workdir: Path) -> int:  # fmt: skip
    """Return the reference's length from its ``.fai`` (the reference, indexed when missing).

    Raises:
        InputError: the reference is missing; InvalidReferenceError: a bad ``.fai``.
    """
    fai = workdir / "panel.fa.fai"
    key = f"{reference_prefix}panel.fa.fai"
    if store.exists(buckets.artifacts, key):
        store.download_file(buckets.artifacts, key, str(fai))
    else:
        from oncopipe.genomics.reference import fetch_reference

        fetch_reference(store, buckets.artifacts, reference_prefix, workdir)
    return sum(length for _, length in read_fai(fai))


def plan_sample(
    store: ObjectStore,
    buckets: layout.Buckets,
    lanes: Sequence[Mapping[str, Any]],
    run_id: str,
    *,
    settings: ScatterSettings,
    reference_prefix: str = layout.ARTIFACTS_REFERENCE,
) -> SamplePlan:
    """Plan one sample (its stage-input rows, one per lane); split it when it scatters.

    Returns the plan. The split (when ``shards`` > 0) is committed under the sample's
    ``align`` scratch prefix, ``shards.json`` last, with the input versions it was made from.

    Raises:
        InputError: a FASTQ file or the reference is missing.
    """
    from oncopipe.genomics.align import ReadGroup

    refs = _lane_refs(store, buckets, lanes)
    fastq_bytes = sum(r1.size + r2.size for r1, r2 in refs)
    sample = str(lanes[0]["sample"])
    with tempfile.TemporaryDirectory(prefix="oncopipe-plan-") as tmp:
        workdir = Path(tmp)
        bases = reference_bases(store, buckets, reference_prefix, workdir)
        regions = settings.regions_for(bases)
        if not settings.scatter_alignment(fastq_bytes):
            return SamplePlan(0, regions, fastq_bytes, bases)
        prefix = scratch_prefix(run_id, sample, "align")
        inputs = [r.etag for pair in refs for r in pair]
        manifest_key = prefix + SHARD_MANIFEST
        if store.exists(buckets.curated, manifest_key):
            committed = json.loads(store.get_bytes(buckets.curated, manifest_key))
            extra = committed.get("extra", {})
            if (extra.get("inputs") == inputs
                    and committed.get("pairs_per_shard") == settings.pairs_per_shard):  # fmt: skip
                return SamplePlan(len(committed["shards"]), regions, fastq_bytes, bases)
        streams = []
        try:
            lane_inputs = []
            for lane, (r1, r2) in zip(lanes, refs, strict=True):
                b1 = store.client.get_object(Bucket=r1.bucket, Key=r1.key,
                                             IfMatch=f'"{r1.etag}"')["Body"]  # fmt: skip
                b2 = store.client.get_object(Bucket=r2.bucket, Key=r2.key,
                                             IfMatch=f'"{r2.etag}"')["Body"]  # fmt: skip
                streams += [b1, b2]
                group = ReadGroup(
                    id=f"{lane['sample']}.{lane.get('lane') or '1'}",
                    sample=str(lane["patient_key"]),
                    library=str(lane.get("library") or lane["sample"]),
                    platform=str(lane.get("platform") or "ILLUMINA"),
                )
                lane_inputs.append(LaneInput(b1, b2, r1.key, r2.key, group))
            folder = workdir / "shards"
            try:
                shard_set = split_pairs(lane_inputs, folder,
                                        pairs_per_shard=settings.pairs_per_shard,
                                        calibration_pairs=settings.calibration_pairs)  # fmt: skip
            except InvalidFastqError:
                # the single job quarantines it, with the reason documents of that path
                return SamplePlan(0, regions, fastq_bytes, bases)
        finally:
            for stream in streams:
                stream.close()
        tags = _tags(run_id, "align-split")
        for path in sorted(folder.iterdir()):
            if path.name != SHARD_MANIFEST:
                store.upload_file(str(path), buckets.curated, prefix + path.name, tags=tags)
        document = asdict(shard_set)
        document["extra"] = {"inputs": inputs}
        store.put_bytes(buckets.curated, manifest_key, json.dumps(document).encode(), tags=tags,
                        content_type="application/json")  # fmt: skip
        return SamplePlan(len(shard_set.shards), regions, fastq_bytes, bases)


def _download_shard_set(store: ObjectStore, bucket: str, prefix: str, folder: Path) -> ShardSet:
    folder.mkdir(parents=True, exist_ok=True)
    if not store.exists(bucket, prefix + SHARD_MANIFEST):
        raise ShardError(f"s3://{bucket}/{prefix}{SHARD_MANIFEST}: no shard manifest: the "
                         "plan did not finish; run plan again")  # fmt: skip
    store.download_file(bucket, prefix + SHARD_MANIFEST, str(folder / SHARD_MANIFEST))
    return ShardSet.load(folder)


def align_shard_part(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    sample: str,
    index: int,
    *,
    reference_prefix: str = layout.ARTIFACTS_REFERENCE,
    threads: int | None = None,
) -> PhaseResult:
    """Align shard ``index`` of a sample's committed split; return what was done.

    The BAM is uploaded before its marker: a child killed in between leaves no marker
    and is redone. A valid marker already there: ``skipped``.

    Raises:
        ShardError: no committed split, no such shard, a corrupt shard, reads lost.
        AlignmentError: bwa or samtools failed.
    """
    from oncopipe.genomics.reference import fetch_reference

    prefix = scratch_prefix(run_id, sample, "align")
    bucket = buckets.curated
    with tempfile.TemporaryDirectory(prefix="oncopipe-shard-") as tmp:
        workdir = Path(tmp)
        folder = workdir / "shards"
        shards = _download_shard_set(store, bucket, prefix, folder)
        shard = shards.shard(index)
        lane = shards.lanes[shard.lane]
        for name in (shard.r1, shard.r2, lane.calibration_r1, lane.calibration_r2):
            store.download_file(bucket, prefix + name, str(folder / name))
        for name in (f"{shard.name}.done.json", f"{shard.name}.bam"):
            if store.exists(bucket, prefix + name):
                store.download_file(bucket, prefix + name, str(folder / name))
        fasta, _, _ = fetch_reference(store, buckets.artifacts, reference_prefix, workdir)
        result = align_shard(folder, index, fasta, threads=threads)
        if result.status == "done":
            tags = _tags(run_id, "align-shard")
            store.upload_file(str(folder / result.output), bucket, prefix + result.output,
                              tags=tags)  # fmt: skip
            marker = f"{shard_name(index)}.done.json"
            store.upload_file(str(folder / marker), bucket, prefix + marker, tags=tags)
        return result


def download_shards(store: ObjectStore, bucket: str, run_id: str, sample: str,
                    folder: Path) -> ShardSet:  # fmt: skip
    """Download a sample's split manifest and every aligned shard (BAM + marker) there.

    Returns the shard set; shards not aligned yet are simply absent (the gather names them).

    Raises:
        ShardError: no committed split.
    """
    prefix = scratch_prefix(run_id, sample, "align")
    shards = _download_shard_set(store, bucket, prefix, folder)
    for shard in shards.shards:
        for name in (f"{shard.name}.done.json", f"{shard.name}.bam"):
            if store.exists(bucket, prefix + name):
                store.download_file(bucket, prefix + name, str(folder / name))
    return shards


def local_bam(store: ObjectStore, ref: ObjectRef, folder: Path, position: int) -> Path:
    """Download a BAM (+ ``.bai``) under a name and mtime fixed by its version.

    Every region child and the gather then see the same BAM identity (the region markers
    record name, size and mtime), on whichever machine they run.
    """
    path = folder / f"{position}-{ref.etag}.bam"
    store.download_file(ref.bucket, ref.key, str(path))
    store.download_file(ref.bucket, f"{ref.key}.bai", f"{path}.bai")
    for item in (path, Path(f"{path}.bai")):
        os.utime(item, ns=(0, 0))
    return path


def call_region_job(
    store: ObjectStore,
    buckets: layout.Buckets,
    bams: Sequence[ObjectRef],
    run_id: str,
    sample: str,
    index: int,
    count: int,
    *,
    reference_prefix: str = layout.ARTIFACTS_REFERENCE,
    settings: CallerSettings | None = None,
) -> PhaseResult:
    """Call region ``index`` of ``count`` of a tumour sample (``bams``: tumour, then normal).

    Returns what was done; the region's VCF is uploaded before its marker.

    Raises:
        ShardError: no such region. InvalidBamError, AlignmentError: as the caller.
    """
    from oncopipe.genomics.reference import fetch_reference

    prefix = scratch_prefix(run_id, sample, "call")
    bucket = buckets.curated
    with tempfile.TemporaryDirectory(prefix="oncopipe-region-") as tmp:
        workdir = Path(tmp)
        local = [local_bam(store, ref, workdir, i) for i, ref in enumerate(bams)]
        fasta, _, _ = fetch_reference(store, buckets.artifacts, reference_prefix, workdir)
        folder = workdir / "regions"
        folder.mkdir()
        for name in (f"{region_name(index)}.done.json", f"{region_name(index)}.vcf.gz"):
            if store.exists(bucket, prefix + name):
                store.download_file(bucket, prefix + name, str(folder / name))
        result = call_region_part(fasta, local[0], folder, index, count,
                                  normal_bam=local[1] if len(local) > 1 else None,
                                  settings=settings)  # fmt: skip
        if result.status == "done":
            tags = _tags(run_id, "call-region")
            store.upload_file(str(folder / result.output), bucket, prefix + result.output,
                              tags=tags)  # fmt: skip
            marker = f"{region_name(index)}.done.json"
            store.upload_file(str(folder / marker), bucket, prefix + marker, tags=tags)
        return result


def download_regions(store: ObjectStore, bucket: str, run_id: str, sample: str, count: int,
                     folder: Path) -> None:  # fmt: skip
    """Download the called regions (VCF + marker) of a sample that are there."""
    prefix = scratch_prefix(run_id, sample, "call")
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        for name in (f"{region_name(index)}.done.json", f"{region_name(index)}.vcf.gz"):
            if store.exists(bucket, prefix + name):
                store.download_file(bucket, prefix + name, str(folder / name))
