"""The genomics stage on object storage: align each sample, call each patient.

Items and their commit records (manifests, :mod:`oncopipe.manifest`):

- step ``align``, one item per sample: the FASTQ pair (ingest) is validated, aligned and
  written to ``curated/genomics/bam/<patient_key>/<sample>.bam`` (+ ``.bai``, QC JSON).
  An invalid pair is quarantined with the reason; nothing lands in curated.
- step ``call``, one item per tumour sample: its BAM (and the patient's normal BAM) ->
  ``curated/genomics/vcf/<patient_key>/<sample>.vcf.gz`` and the Parquet variant table
  ``curated/genomics/variants/<patient_key>/<sample>.parquet`` (Glue table ``variants``).

The reference (``panel.fa`` + ``panel.json``) comes from the artifacts bucket; its BWA
index is built once when missing and stored beside it for every later job.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oncopipe import layout
from oncopipe.errors import InputError
from oncopipe.genomics.align import (
    ReadGroup,
    align_pair,
    merge_bams,
    qc_metrics,
)
from oncopipe.genomics.call import CallerSettings, call_variants
from oncopipe.genomics.fastq_batches import validate_pair
from oncopipe.genomics.reference import fetch_reference
from oncopipe.genomics.variants import variant_rows, write_parquet
from oncopipe.manifest import ItemResult, ItemWriter, StepContext, process_item, retract_item
from oncopipe.quarantine import write_quarantine
from oncopipe.stage_inputs import load_sample_inputs
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)
ALIGNER = "bwa-mem-0.7.17"


def bam_key(patient_key: str, sample: str) -> str:
    return f"{layout.CURATED_GENOMICS_BAM}{patient_key}/{sample}.bam"


def align_sample(
    store: ObjectStore,
    buckets: layout.Buckets,
    lanes: Sequence[Mapping[str, Any]],
    run_id: str,
    *,
    key_secret: bytes,
    reference_prefix: str = layout.ARTIFACTS_REFERENCE,
    threads: int = 2,
    shards: int = 0,
) -> ItemResult:
    """Align one sample: its stage-input rows (:func:`load_samples`), one per lane.

    ``shards`` > 0: the sample was split by the scatter plan and its shards aligned by
    array children (:mod:`oncopipe.genomics.scatter_stage`); this is then the gather: the
    shard BAMs are merged, duplicates marked, indexed and QC'd into the same curated
    outputs and manifest (the FASTQ pair was validated by the split).

    ``key_secret`` (the pseudonymisation secret) names the ingest FASTQ files in the
    curated manifest by opaque reference only.

    Returns the item result.

    Each lane gets its own read group (``ID`` = sample.lane, ``SM`` = patient key); lanes
    are aligned one by one and merged into the sample's BAM. If any lane's FASTQ pair is
    invalid, the sample's FASTQ files are quarantined (each with a reason document that
    names the file and the read) and nothing is curated; the item's summary then holds the
    status and reason code only, never the readable reason (it names ingest keys).

    Raises:
        InputError: a FASTQ file named by the sheet is gone from the ingest bucket.
        ValueError: no lanes, or lanes of different samples.
    """
    if not lanes or len({str(lane["sample"]) for lane in lanes}) != 1:
        raise ValueError("align_sample takes the rows of exactly one sample")
    sample = lanes[0]
    pairs: list[tuple[ObjectRef, ObjectRef, ReadGroup]] = []
    for lane in lanes:
        refs = []
        for column in ("fastq_1", "fastq_2"):
            ref = store.head(buckets.ingest, str(lane[column]))
            if ref is None:
                raise InputError(str(lane[column]), "FASTQ file named by the sample sheet is gone")
            refs.append(ref)
        group = ReadGroup(
            id=f"{lane['sample']}.{lane.get('lane') or '1'}",
            sample=str(lane["patient_key"]),
            library=str(lane.get("library") or lane["sample"]),
            platform=str(lane.get("platform") or "ILLUMINA"),
        )
        pairs.append((refs[0], refs[1], group))
    with tempfile.TemporaryDirectory(prefix="oncopipe-align-") as tmp:
        workdir = Path(tmp)
        fasta, _, fasta_etag = fetch_reference(store, buckets.artifacts, reference_prefix, workdir)
        ctx = StepContext(
            store=store, manifest_bucket=buckets.curated, run_id=run_id, step="align",
            params={"aligner": ALIGNER, "reference": fasta_etag,
                    "read_groups": [g.header_line() for _, _, g in pairs]},
            key_secret=key_secret,
        )  # fmt: skip

        def gathered(writer: ItemWriter) -> Mapping[str, Any]:
            from oncopipe.genomics.gather import gather_alignment
            from oncopipe.genomics.scatter_stage import download_shards

            folder = workdir / "shards"
            shard_set = download_shards(store, buckets.curated, run_id,
                                        str(sample["sample"]), folder)  # fmt: skip
            out = workdir / "sample.bam"
            qc = gather_alignment(folder, fasta, out, threads=threads)
            return _commit_bam(writer, out, qc, reads=shard_set.pairs)

        def _commit_bam(writer: ItemWriter, out: Path, qc: Any, *, reads: int) -> dict[str, Any]:
            key = bam_key(str(sample["patient_key"]), str(sample["sample"]))
            writer.upload_file(str(out), buckets.curated, key)
            writer.upload_file(f"{out}.bai", buckets.curated, f"{key}.bai")
            writer.put(buckets.curated, key.replace(".bam", ".qc.json"), qc.to_json().encode(),
                       content_type="application/json")  # fmt: skip
            return {"kind": "sample", "sample": sample["sample"], "status": "aligned",
                    "lanes": len(pairs), "reads": reads, "bam": key, "qc": asdict(qc)}  # fmt: skip

        def work(writer: ItemWriter) -> Mapping[str, Any]:
            if shards:
                return gathered(writer)
            local = []
            reads = 0
            for n, (ref_1, ref_2, _) in enumerate(pairs):
                r1, r2 = workdir / f"{n}_R1.fastq.gz", workdir / f"{n}_R2.fastq.gz"
                store.download_file(ref_1.bucket, ref_1.key, str(r1))
                store.download_file(ref_2.bucket, ref_2.key, str(r2))
                try:
                    with r1.open("rb") as h1, r2.open("rb") as h2:
                        reads += validate_pair(h1, h2, name_1=ref_1.key, name_2=ref_2.key).reads
                except InputError as e:
                    summary: dict[str, Any] = {}
                    for q1, q2, _ in pairs:
                        for ref in (q1, q2):
                            summary = write_quarantine(writer, buckets, ref, run_id, "align", e)
                    # the readable reason names the FASTQ files (keys, PHI): it stays in the
                    # quarantine reason documents; the curated manifest keeps the code only
                    return {"kind": "fastq", "sample": sample["sample"],
                            "status": summary["status"], "reason_code": summary["reason_code"],
                            "quarantined": len(pairs) * 2}  # fmt: skip
                local.append((r1, r2))
            out = workdir / "sample.bam"
            if len(pairs) == 1:
                qc = align_pair(fasta, *local[0], out, read_group=pairs[0][2], threads=threads)
            else:
                lane_bams = []
                for n, ((r1, r2), (_, _, group)) in enumerate(zip(local, pairs, strict=True)):
                    lane_bam = workdir / f"lane{n}.bam"
                    align_pair(fasta, r1, r2, lane_bam, read_group=group, threads=threads)
                    lane_bams.append(str(lane_bam))
                merge_bams(lane_bams, out, threads=threads)
                qc = qc_metrics(fasta, out)
            return _commit_bam(writer, out, qc, reads=reads)

        inputs = [ref for r1, r2, _ in pairs for ref in (r1, r2)]
        return process_item(ctx, str(sample["sample"]), inputs, work)


def call_sample(
    store: ObjectStore,
    buckets: layout.Buckets,
    tumour: Mapping[str, Any],
    normal: Mapping[str, Any] | None,
    run_id: str,
    *,
    reference_prefix: str = layout.ARTIFACTS_REFERENCE,
    settings: CallerSettings | None = None,
    regions: int = 1,
) -> ItemResult:
    """Call a tumour sample (against its normal when there is one); return the result.

    ``regions`` > 1: the calls were made by region by array children
    (:func:`oncopipe.genomics.scatter_stage.call_region_job`); this is then their gather
    (``bcftools concat`` + norm) into the same curated outputs and manifest.

    Raises:
        InputError: a BAM is missing (the sample was not aligned, or was quarantined).
    """
    settings = settings or CallerSettings()
    patient = str(tumour["patient_key"])
    bams: list[ObjectRef] = []
    for sample in (tumour, normal):
        if sample is None:
            continue
        ref = store.head(buckets.curated, bam_key(patient, str(sample["sample"])))
        if ref is None:
            error = InputError(bam_key(patient, str(sample["sample"])), "no aligned BAM to call")
            # a BAM retracted upstream: the calls made from it are retracted too
            ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                              step="call")  # fmt: skip
            retract_item(ctx, str(tumour["sample"]), error)
            raise error
        bams.append(ref)
    with tempfile.TemporaryDirectory(prefix="oncopipe-call-") as tmp:
        workdir = Path(tmp)
        fasta, panel, fasta_etag = fetch_reference(
            store, buckets.artifacts, reference_prefix, workdir
        )
        ctx = StepContext(
            store=store, manifest_bucket=buckets.curated, run_id=run_id, step="call",
            params={"caller": "pileup-vaf", "settings": asdict(settings), "reference": fasta_etag,
                    "matched_normal": normal is not None},
        )  # fmt: skip

        def work(writer: ItemWriter) -> Mapping[str, Any]:
            from oncopipe.genomics.scatter_stage import download_regions, local_bam

            local = [local_bam(store, ref, workdir, i) for i, ref in enumerate(bams)]
            vcf = workdir / "calls.vcf.gz"
            normal_bam = local[1] if len(local) > 1 else None
            if regions > 1:
                from oncopipe.genomics.gather import concat_regions

                parts = workdir / "regions"
                download_regions(store, buckets.curated, run_id, str(tumour["sample"]),
                                 regions, parts)  # fmt: skip
                concat_regions(fasta, local[0], parts, regions, vcf, normal_bam=normal_bam,
                               settings=settings)  # fmt: skip
            else:
                call_variants(fasta, local[0], vcf, normal_bam=normal_bam, settings=settings)
            columns = variant_rows(vcf, patient_key=patient, sample=str(tumour["sample"]),
                                   run_id=run_id, panel=panel, reference=fasta)  # fmt: skip
            table = workdir / "variants.parquet"
            rows = write_parquet(columns, table)
            base = f"{patient}/{tumour['sample']}"
            writer.upload_file(
                str(vcf), buckets.curated, f"{layout.CURATED_GENOMICS_VCF}{base}.vcf.gz"
            )
            writer.upload_file(f"{vcf}.tbi", buckets.curated,
                               f"{layout.CURATED_GENOMICS_VCF}{base}.vcf.gz.tbi")  # fmt: skip
            writer.upload_file(str(table), buckets.curated,
                               f"{layout.CURATED_GENOMICS_VARIANTS}{base}.parquet")  # fmt: skip
            from oncopipe.monitor.histogram import sample_output  # the drift job's input

            writer.put_json(buckets.curated, *sample_output(
                columns.select(["filter", "depth", "vaf"]).to_pylist(), patient_key=patient,
                sample=str(tumour["sample"]), reference_prefix=reference_prefix,
                paired=normal is not None))  # fmt: skip
            picked = columns.select(["gene", "protein_change", "filter"]).to_pylist()
            passed = [f"{r['gene']} {r['protein_change']}" for r in picked
                      if r["protein_change"] and r["filter"] == "PASS"]  # fmt: skip
            return {"kind": "sample", "sample": tumour["sample"], "status": "called",
                    "variants": rows, "hotspots": passed}  # fmt: skip

        return process_item(ctx, str(tumour["sample"]), bams, work)


def plan(
    samples: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Return (tumour, matched normal or None) for every tumour sample of a sample table.

    A sample with several lanes has several rows; it is called once (its first row).
    """
    normals: dict[Any, Mapping[str, Any]] = {}
    tumours: dict[Any, Mapping[str, Any]] = {}
    for s in samples:
        if s["type"] == "normal":
            normals.setdefault(s["patient_key"], s)
        else:
            tumours.setdefault(s["sample"], s)
    return [(t, normals.get(t["patient_key"])) for t in tumours.values()]


def load_samples(
    store: ObjectStore, buckets: layout.Buckets, table_key: str
) -> list[dict[str, Any]]:
    """Return the stage inputs (with ingest keys; PHI zone) of a curated sample table.

    The curated table holds opaque references only; see
    :func:`oncopipe.stage_inputs.load_sample_inputs`, which this is, and what it raises.
    """
    return load_sample_inputs(store, buckets, table_key)
