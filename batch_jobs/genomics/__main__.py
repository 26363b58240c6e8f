"""Batch job entry: ``python -m batch_jobs.genomics STEP --run-id R --sample-table K ...``.

Steps: ``align`` and ``call`` (one job per sample); for whole genomes the scatter/gather
phases (:mod:`oncopipe.genomics.scatter_stage`): ``plan`` (prints ``shards``, 0 when the
sample aligns as one job, and ``regions``, 1 when it calls as one job; splits the FASTQ
pair when it scatters), ``align-shard`` (an array child: shard ``--index`` or
``AWS_BATCH_JOB_ARRAY_INDEX``), ``gather`` (commits the sample's BAM from its shards),
``call-region`` (an array child: region ``--index`` of ``--regions``) and ``call-gather``
(commits the calls from the ``--regions`` parts). The scatter settings come from
``SCATTER_PAIRS_PER_SHARD``, ``SCATTER_MIN_FASTQ_BYTES``, ``SCATTER_CALL_REGIONS`` and
``SCATTER_MIN_REFERENCE_BASES`` (the job definitions set them from ``config.scatter``).

Environment (set by the job definition; validated at start): ``INGEST_BUCKET``,
``QUARANTINE_BUCKET``, ``CURATED_BUCKET``, ``ARTIFACTS_BUCKET``, for ``align`` the
pseudonymisation secret (``PSEUDONYM_SECRET_ARN``), optional
``REFERENCE_PREFIX`` (default ``reference/panel-v1/``) and ``THREADS`` (default: the vCPUs
the container sees). Exit codes: 0 done, skipped or quarantined (a handled outcome); 2 bad
arguments; 1 any other failure, which Batch retries only for spot reclaims (the job
definition's retry strategy).

Prints one JSON line with the item's outcome, and logs, without PHI (stdout and stderr go
to CloudWatch Logs; :mod:`oncopipe.boundary`): the step, the sample id, the status and
reason code, counts and curated keys; a failure by its error type, reason code, the opaque
reference of the object it names and the AWS error codes behind it. The readable reason of a
quarantined sample (which names its FASTQ files) is in the quarantine zone's reason
document, beside the quarantined copy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from oncopipe import layout
from oncopipe.boundary import failure_fields, log_failure, pick
from oncopipe.genomics.stage import align_sample, call_sample, load_samples, plan
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = logging.getLogger("batch_jobs.genomics")

#: Summary fields an outcome line may carry (an allow-list: see :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("kind", "status", "reason_code", "lanes", "reads", "bam", "qc", "variants",
                  "hotspots", "quarantined")  # fmt: skip
STEPS = ("align", "call", "plan", "align-shard", "gather", "call-region", "call-gather")


def _array_index(value: int | None) -> int:
    """Return the array child's index: ``--index``, else ``AWS_BATCH_JOB_ARRAY_INDEX``.

    Raises:
        SystemExit: neither is set (exit code 2, like a bad argument).
    """
    if value is not None:
        return value
    raw = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
    if raw is None or not raw.isdigit():
        raise SystemExit("--index or AWS_BATCH_JOB_ARRAY_INDEX is required for this step")
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    """Run one job; return its exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m batch_jobs.genomics", description=__doc__)
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--sample-table", required=True, help="curated key of the sample table")
    parser.add_argument("--sample", required=True, help="sample id (tumour sample for call)")
    parser.add_argument("--index", type=int, help="array child (align-shard, call-region)")
    parser.add_argument("--regions", type=int, default=1, help="regions of the call scatter")
    args = parser.parse_args(argv)
    if args.regions < 1:
        parser.error("--regions must be at least 1")
    if args.step in ("align-shard", "call-region"):
        try:
            args.index = _array_index(args.index)
        except SystemExit as e:
            parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = StageSettings.from_env()
    store = ObjectStore(make_client())
    reference = os.environ.get("REFERENCE_PREFIX", layout.ARTIFACTS_REFERENCE)
    threads = int(os.environ.get("THREADS") or os.cpu_count() or 1)
    secret: bytes | None = None
    try:
        samples = load_samples(store, settings.buckets, args.sample_table)
        if args.step in ("plan", "align-shard", "call-region"):
            return _scatter_phase(parser, args, store, settings.buckets, samples, reference,
                                  threads)  # fmt: skip
        if args.step in ("align", "gather"):
            lanes = [s for s in samples if s["sample"] == args.sample]
            if not lanes:
                parser.error(f"sample {args.sample} is not in {args.sample_table}")
            from oncopipe.pseudonym import load_secret

            # the curated manifest names the ingest FASTQ files by opaque reference
            secret = load_secret()
            result = align_sample(store, settings.buckets, lanes, args.run_id,
                                  key_secret=secret, reference_prefix=reference,
                                  threads=threads,
                                  shards=1 if args.step == "gather" else 0)  # fmt: skip
        else:
            pair = next((p for p in plan(samples) if p[0]["sample"] == args.sample), None)
            if pair is None:
                parser.error(f"{args.sample} is not a tumour sample of {args.sample_table}")
            regions = args.regions if args.step == "call-gather" else 1
            result = call_sample(store, settings.buckets, pair[0], pair[1], args.run_id,
                                 reference_prefix=reference, regions=regions)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the boundary: report by type, fail the job
        # (Batch decides retries). Never str(e): an InputError names an ingest key.
        failure: dict[str, Any] = {"step": args.step, "run_id": args.run_id,
                                   "sample": args.sample,
                                   **failure_fields(e, secret=secret)}  # fmt: skip
        print(json.dumps(failure), flush=True)
        log_failure(logger, f"{args.step} of sample {args.sample} in run {args.run_id}", e)
        return 1
    outcome = {"step": args.step, "run_id": args.run_id, "sample": args.sample,
               "item_status": result.status, "manifest": result.manifest_key,
               **pick(result.summary, OUTCOME_FIELDS)}  # fmt: skip
    print(json.dumps(outcome, default=str), flush=True)
    return 0


def _scatter_phase(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    store: ObjectStore,
    buckets: layout.Buckets,
    samples: list[dict[str, Any]],
    reference: str,
    threads: int,
) -> int:
    """Run ``plan``, ``align-shard`` or ``call-region``; print its outcome; return 0.

    Raises:
        SystemExit: the sample is not in the table (exit code 2).
        Exception: what the phase raises (the caller reports it and fails the job).
    """
    from oncopipe.genomics.scatter_stage import (
        align_shard_part,
        call_region_job,
        plan_sample,
        settings_from_env,
    )

    outcome: dict[str, Any] = {"step": args.step, "run_id": args.run_id, "sample": args.sample}
    if args.step == "plan":
        lanes = [s for s in samples if s["sample"] == args.sample]
        if not lanes:
            parser.error(f"sample {args.sample} is not in {args.sample_table}")
        planned = plan_sample(store, buckets, lanes, args.run_id, settings=settings_from_env(),
                              reference_prefix=reference)  # fmt: skip
        outcome.update(shards=planned.shards, regions=planned.regions,
                       fastq_bytes=planned.fastq_bytes,
                       reference_bases=planned.reference_bases)  # fmt: skip
    elif args.step == "align-shard":
        done = align_shard_part(store, buckets, args.run_id, args.sample, args.index,
                                reference_prefix=reference, threads=threads)  # fmt: skip
        outcome.update(index=done.index, item_status=done.status, seconds=done.seconds)
    else:
        pair = next((p for p in plan(samples) if p[0]["sample"] == args.sample), None)
        if pair is None:
            parser.error(f"{args.sample} is not a tumour sample of {args.sample_table}")
        bams = []
        for row in (pair[0], pair[1]):
            if row is None:
                continue
            from oncopipe.genomics.stage import bam_key

            key = bam_key(str(row["patient_key"]), str(row["sample"]))
            ref = store.head(buckets.curated, key)
            if ref is None:
                from oncopipe.errors import InputError

                raise InputError(key, "no aligned BAM to call")
            bams.append(ref)
        done = call_region_job(store, buckets, bams, args.run_id, args.sample, args.index,
                               args.regions, reference_prefix=reference)  # fmt: skip
        outcome.update(index=done.index, item_status=done.status, seconds=done.seconds)
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
