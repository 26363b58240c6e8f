"""Scatter/gather phases of a whole genome, one function per array child or gather job.

Alignment (after :func:`oncopipe.genomics.shard.split_pairs`):

- :func:`align_shard` (one array child per shard): checks the shard's files against the
  shard manifest's checksums, aligns it with its lane's read group and insert-size model
  (:func:`oncopipe.genomics.align.align_sorted`), checks that every read pair came out,
  and writes ``shard-0000k.bam`` and, last, its done-marker ``shard-0000k.done.json``. A
  shard whose marker matches (same inputs, same parameters, BAM still there with its
  checksum) is skipped: a failed shard is retried alone, the others are not redone.
- :func:`gather_alignment`: every shard's marker must be there (else :class:`ShardError`
  names the missing shards); merges the shard BAMs, marks duplicates, indexes and
  computes QC (:func:`oncopipe.genomics.align.finish_alignment`, the single-job path's
  own final step) and checks the read count. A killed gather is simply run again: it
  starts from the shards' markers, and its BAM is renamed into place only when complete.

Calling:

- :func:`call_region_part` (one array child per region of
  :func:`oncopipe.genomics.shard.plan_regions`): the caller restricted to the region
  (:func:`oncopipe.genomics.call.call_region`), ``region-0000k.vcf.gz`` + its marker.
- :func:`concat_regions`: every region's marker must be there; ``bcftools concat`` +
  ``norm`` (:func:`oncopipe.genomics.call.normalize_calls`, the single-job path's own
  final step) into one indexed VCF.

Markers are local files here; on S3 the stage commits each shard with
:func:`oncopipe.manifest.process_item` instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oncopipe.genomics.align import (
    AlignmentQC,
    InsertModel,
    align_sorted,
    ensure_index,
    estimate_insert_model,
    finish_alignment,
    require_tools,
)
from oncopipe.genomics.call import CallerSettings, call_region, normalize_calls
from oncopipe.genomics.shard import (
    Lane,
    Region,
    ShardError,
    ShardSet,
    plan_regions,
    read_fai,
    sha256_file,
    shard_name,
    write_json_atomic,
)

logger = logging.getLogger(__name__)
ALIGNER = "bwa-mem-0.7.17"
MARKER_SCHEMA = 1


@dataclass(frozen=True)
class PhaseResult:
    """What one array child did: ``done`` (worked) or ``skipped`` (its marker matched)."""

    index: int
    status: str
    output: str
    seconds: float


def _fingerprint(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


def reference_fingerprint(reference: Path) -> str:
    """Return a cheap identity of a reference: a hash of its ``.fai`` (names, lengths,
    offsets) and the FASTA's size. Hashing a 3 GB FASTA per array child would cost more
    than it protects; a different assembly has a different ``.fai``."""
    ensure_index(reference)
    fai = Path(f"{reference}.fai").read_bytes()
    return _fingerprint({"fai": hashlib.sha256(fai).hexdigest(),
                         "size": reference.stat().st_size})  # fmt: skip


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or torn: the phase is redone
    return document


def _marker_valid(marker: Mapping[str, Any] | None, params: Mapping[str, Any],
                  folder: Path) -> bool:  # fmt: skip
    """Return True when a marker records these parameters and its output is intact."""
    if marker is None or marker.get("schema") != MARKER_SCHEMA:
        return False
    if marker.get("params_hash") != _fingerprint(params):
        return False
    output = folder / str(marker.get("output", ""))
    try:
        return (
            output.is_file()
            and output.stat().st_size == marker.get("size")
            and (sha256_file(output) == marker.get("sha256"))
        )
    except OSError:
        return False


def _lane_model(shards: ShardSet, lane: Lane, folder: Path, reference: Path,
                threads: int) -> InsertModel | None:  # fmt: skip
    """Return the lane's insert-size model, estimated once per folder and cached.

    Every child of the lane computes the same model from the same calibration sample
    (bwa with a fixed batch size is deterministic), so a child on another machine that
    has no cache gets the same answer.

    Raises:
        ShardError: the calibration files do not match the shard manifest.
    """
    cache = folder / f"calibration-{lane.lane:03d}.model.json"
    cached = _read_marker(cache)
    if cached is not None and cached.get("calibration") == lane.sha256_calibration:
        model = cached.get("model")
        return InsertModel(**model) if model else None
    c1, c2 = folder / lane.calibration_r1, folder / lane.calibration_r2
    try:
        digest = hashlib.sha256((sha256_file(c1) + sha256_file(c2)).encode("ascii")).hexdigest()
    except OSError as e:
        raise ShardError(f"lane {lane.lane}: calibration sample missing ({type(e).__name__}); "
                         "run the split phase again") from e  # fmt: skip
    if digest != lane.sha256_calibration:
        raise ShardError(f"lane {lane.lane}: calibration sample checksum mismatch (corrupt or "
                         "incomplete copy); run the split phase again")  # fmt: skip
    model = estimate_insert_model(reference, c1, c2, threads=threads)
    write_json_atomic(cache, {"calibration": lane.sha256_calibration,
                              "model": model.as_dict() if model else None})  # fmt: skip
    return model


def count_primary_reads(bam: Path) -> int:
    """Return the primary records of a BAM (secondary and supplementary excluded).

    Raises:
        ShardError: samtools cannot read it.
    """
    require_tools("samtools")
    done = subprocess.run(["samtools", "view", "-c", "-F", "0x900", str(bam)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0 or "[E::" in done.stderr:
        raise ShardError(f"{bam.name}: cannot be read back (truncated or corrupt BAM)")
    return int(done.stdout.strip())


def align_shard(
    folder: Path, index: int, reference: Path, *, threads: int | None = None
) -> PhaseResult:
    """Align shard ``index`` of the committed shard set in ``folder``; return what was done.

    Skipped when its marker matches. Otherwise the shard's files are checked against the
    manifest's checksums, aligned, the BAM's primary reads counted against the shard's
    pairs, and the marker written last.

    Raises:
        ShardError: no committed shard set, no such shard, a shard file missing or not
            the one the split wrote, or reads lost in alignment.
        AlignmentError: bwa or samtools failed.
    """
    import time

    t0 = time.perf_counter()
    shards = ShardSet.load(folder)
    shard = shards.shard(index)
    lane = shards.lanes[shard.lane]
    r1, r2 = folder / shard.r1, folder / shard.r2
    bam = folder / f"{shard.name}.bam"
    marker_path = folder / f"{shard.name}.done.json"
    for path, expected in ((r1, shard.sha256_r1), (r2, shard.sha256_r2)):
        try:
            actual = sha256_file(path)
        except OSError as e:
            raise ShardError(f"shard {index}: {path.name} is missing ({type(e).__name__}); "
                             "run the split phase again") from e  # fmt: skip
        if actual != expected:
            raise ShardError(f"shard {index}: {path.name} checksum mismatch (corrupt or "
                             "incomplete copy); run the split phase again")  # fmt: skip
    params = {"aligner": ALIGNER, "reference": reference_fingerprint(reference),
              "read_group": asdict(lane.read_group), "calibration": lane.sha256_calibration,
              "inputs": [shard.sha256_r1, shard.sha256_r2]}  # fmt: skip
    if _marker_valid(_read_marker(marker_path), params, folder):
        return PhaseResult(index, "skipped", bam.name, 0.0)
    marker_path.unlink(missing_ok=True)
    threads = threads or os.cpu_count() or 1
    model = _lane_model(shards, lane, folder, reference, threads)
    align_sorted(reference, r1, r2, bam, read_group=lane.read_group, threads=threads,
                 insert_model=model)  # fmt: skip
    reads = count_primary_reads(bam)
    if reads != 2 * shard.pairs:
        bam.unlink(missing_ok=True)
        raise ShardError(f"shard {index}: {reads} primary alignments for {shard.pairs} read "
                         "pairs: reads were lost (a truncated shard file?)")  # fmt: skip
    write_json_atomic(marker_path, {
        "schema": MARKER_SCHEMA, "phase": "align-shard", "index": index,
        "params_hash": _fingerprint(params), "params": params,
        "insert_model": model.as_dict() if model else None, "pairs": shard.pairs,
        "output": bam.name, "size": bam.stat().st_size, "sha256": sha256_file(bam),
    })  # fmt: skip
    return PhaseResult(index, "done", bam.name, round(time.perf_counter() - t0, 3))


def missing_shards(folder: Path, reference: Path) -> list[int]:
    """Return the indices of shards of ``folder``'s shard set without a valid marker.

    Raises:
        ShardError: no committed shard set.
    """
    shards = ShardSet.load(folder)
    fingerprint = reference_fingerprint(reference)
    missing = []
    for shard in shards.shards:
        marker = _read_marker(folder / f"{shard.name}.done.json")
        lane = shards.lanes[shard.lane]
        params = {"aligner": ALIGNER, "reference": fingerprint,
                  "read_group": asdict(lane.read_group), "calibration": lane.sha256_calibration,
                  "inputs": [shard.sha256_r1, shard.sha256_r2]}  # fmt: skip
        if not _marker_valid(marker, params, folder):
            missing.append(shard.index)
    return missing


def gather_alignment(
    folder: Path, reference: Path, out_bam: Path, *, threads: int | None = None
) -> AlignmentQC:
    """Gather the aligned shards of ``folder`` into ``out_bam`` (+ ``.bai``); return QC.

    Raises:
        ShardError: a shard has no valid marker (the message lists them: re-run those
            array children), or the gathered BAM lacks reads.
        AlignmentError: samtools failed.
    """
    shards = ShardSet.load(folder)
    missing = missing_shards(folder, reference)
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise ShardError(
            f"{len(missing)} of {len(shards.shards)} shards are not aligned "
            f"(shard {shown}): run align-shard for them, then gather again"
        )
    bams = [folder / f"{shard_name(s.index)}.bam" for s in shards.shards]
    qc = finish_alignment(reference, bams, out_bam, threads=threads)
    reads = count_primary_reads(out_bam)
    if reads != 2 * shards.pairs:
        raise ShardError(f"{out_bam.name}: {reads} primary reads after the gather, "
                         f"{2 * shards.pairs} expected")  # fmt: skip
    return qc


def region_name(index: int) -> str:
    """Return the file stem of calling region ``index`` (``region-00007``)."""
    return f"region-{index:05d}"


def _bam_identity(bam: Path) -> dict[str, Any]:
    # size and mtime, not a hash: a 100 GB BAM per region child would cost minutes
    stat = bam.stat()
    return {"name": bam.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _region_params(reference: Path, region: Region, tumour: Path, normal: Path | None,
                   settings: CallerSettings) -> dict[str, Any]:  # fmt: skip
    return {"caller": "pileup-vaf", "settings": asdict(settings),
            "reference": reference_fingerprint(reference), "region": region.as_tuples(),
            "tumour": _bam_identity(tumour),
            "normal": _bam_identity(normal) if normal else None}  # fmt: skip


def regions_of(reference: Path, count: int) -> list[Region]:
    """Return the calling regions of a reference (its ``.fai``, built when missing).

    Raises:
        InvalidReferenceError: the ``.fai`` cannot be read.
    """
    ensure_index(reference)
    return plan_regions(read_fai(Path(f"{reference}.fai")), count)


def call_region_part(
    reference: Path,
    tumour_bam: Path,
    folder: Path,
    index: int,
    count: int,
    *,
    normal_bam: Path | None = None,
    settings: CallerSettings | None = None,
) -> PhaseResult:
    """Call region ``index`` of ``count`` into ``folder``; return what was done.

    Raises:
        ShardError: no such region.
        InvalidBamError, AlignmentError: as :func:`oncopipe.genomics.call.call_region`.
    """
    import time

    t0 = time.perf_counter()
    settings = settings or CallerSettings()
    regions = regions_of(reference, count)
    if not 0 <= index < len(regions):
        raise ShardError(f"region {index} does not exist: this reference has regions "
                         f"0..{len(regions) - 1}")  # fmt: skip
    region = regions[index]
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{region_name(index)}.vcf.gz"
    marker_path = folder / f"{region_name(index)}.done.json"
    params = _region_params(reference, region, tumour_bam, normal_bam, settings)
    if _marker_valid(_read_marker(marker_path), params, folder):
        return PhaseResult(index, "skipped", part.name, 0.0)
    marker_path.unlink(missing_ok=True)
    records = call_region(reference, tumour_bam, part, normal_bam=normal_bam, settings=settings,
                          intervals=region.as_tuples())  # fmt: skip
    write_json_atomic(marker_path, {
        "schema": MARKER_SCHEMA, "phase": "call-region", "index": index,
        "params_hash": _fingerprint(params), "records": records, "output": part.name,
        "size": part.stat().st_size, "sha256": sha256_file(part),
    })  # fmt: skip
    return PhaseResult(index, "done", part.name, round(time.perf_counter() - t0, 3))


def concat_regions(
    reference: Path,
    tumour_bam: Path,
    folder: Path,
    count: int,
    out_vcf: Path,
    *,
    normal_bam: Path | None = None,
    settings: CallerSettings | None = None,
) -> int:
    """Concatenate and normalise the called regions of ``folder``; return the record count.

    Raises:
        ShardError: a region has no valid marker (the message lists them).
        AlignmentError: bcftools failed.
    """
    settings = settings or CallerSettings()
    regions = regions_of(reference, count)
    missing = [
        r.index for r in regions
        if not _marker_valid(_read_marker(folder / f"{region_name(r.index)}.done.json"),
                             _region_params(reference, r, tumour_bam, normal_bam, settings),
                             folder)
    ]  # fmt: skip
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise ShardError(
            f"{len(missing)} of {len(regions)} regions are not called "
            f"(region {shown}): run call-region for them, then concat again"
        )
    parts = [folder / f"{region_name(r.index)}.vcf.gz" for r in regions]
    return normalize_calls(reference, parts, out_vcf)
