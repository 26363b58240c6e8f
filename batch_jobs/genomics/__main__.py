"""Batch job entry: ``python -m batch_jobs.genomics STEP --run-id R --sample-table K ...``.

Steps: ``align`` and ``call`` (one job per sample); for whole genomes the scatter/gather
phases (:mod:`oncopipe.genomics.scatter_stage`): ``plan`` (prints ``shards``, 0 when the
sample aligns as one job, and ``regions``, 1 when it calls as one job, and writes them to
:func:`oncopipe.layout.plan_key` for the state machine; splits the FASTQ pair when it scatters),
``align-shard`` (an array child: shard ``--index`` or ``AWS_BATCH_JOB_ARRAY_INDEX``),
``gather`` (commits the sample's BAM from its shards), ``call-region`` (an array child:
region ``--index`` of ``--regions``) and ``call-gather`` (commits the calls from the
``--regions`` parts). The scatter settings come from
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
reference of the object it names and the AWS error codes behind it. The line also has the
job's ``cost`` estimate (:func:`oncopipe.ops.cost.batch_job_profile`: the job definition's
``ONCOPIPE_JOB_VCPUS`` / ``ONCOPIPE_JOB_MEMORY_MIB``, instance type and spot or on-demand
from the instance metadata), which the committed manifest records too (``cost``). EMF
stage metrics (stage ``align`` or ``call``: item in and outcome, duration, input bytes,
``ItemsRetried`` on a later Batch attempt, ``CostEstimateUSD``) go to stderr. The readable
reason of a quarantined sample (which names its FASTQ files) is in the quarantine zone's
reason document, beside the quarantined copy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from oncopipe import layout
from oncopipe.boundary import failure_fields, log_failure, pick
from oncopipe.genomics.stage import align_sample, call_sample, load_samples, plan
from oncopipe.metrics import StageMetrics
from oncopipe.ops import cost
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = logging.getLogger("batch_jobs.genomics")

#: Summary fields an outcome line may carry (an allow-list: see :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("kind", "status", "reason_code", "lanes", "reads", "bam", "qc", "variants",
                  "hotspots", "quarantined")  # fmt: skip
STEPS = ("align", "call", "plan", "align-shard", "gather", "call-region", "call-gather")
#: The metrics stage of each step (:data:`oncopipe.metrics.STAGES`).
STAGE_OF = {"align": "align", "plan": "align", "align-shard": "align", "gather": "align",
            "call": "call", "call-region": "call", "call-gather": "call"}  # fmt: skip
#: Steps whose job role reads the pseudonymisation secret (opaque references; the
#: pseudonymous sample key of the cost estimate). The others record no sample key.
SECRET_STEPS = ("align", "gather")
#: Steps that commit one item (a sample's BAM or calls) with its manifest.
COMMIT_STEPS = ("align", "gather", "call", "call-gather")


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
    # only the steps whose role reads the secret (their job definitions name it)
    secret = _configured_secret() if args.step in SECRET_STEPS else None
    sample_tag = cost.sample_key(secret, args.sample) if secret else None
    profile = cost.batch_job_profile(whole_job=args.step in COMMIT_STEPS, sample=sample_tag)
    with StageMetrics(STAGE_OF[args.step]) as metrics:
        metrics.attempt()
        with cost.metering(profile):
            code = _run(parser, args, store, settings, reference, threads, secret, metrics,
                        profile)  # fmt: skip
    return code


def _configured_secret() -> bytes | None:
    """Return the pseudonymisation secret when the job has one configured, else None.

    ``align`` and ``gather`` need it (opaque references) and use it for the pseudonymous
    sample key of their cost estimates. A secret that cannot be loaded is left to ``align``
    to report (the other steps simply record no sample key).
    """
    from oncopipe.pseudonym import SECRET_ARN_ENV, SECRET_VALUE_ENV, load_secret

    if not (os.environ.get(SECRET_ARN_ENV) or os.environ.get(SECRET_VALUE_ENV)):
        return None
    try:
        return load_secret()
    except Exception as e:  # noqa: BLE001 - align raises it again inside its boundary
        logger.warning("pseudonymisation secret not loaded (%s)", type(e).__name__)
        return None


def _outcome(result: Any) -> str:
    """Return the metrics outcome of a committing step's item (a key of ``metrics.OUTCOMES``)."""
    if result.status == "skipped":
        return "skipped"
    return "quarantined" if result.summary.get("status") == "quarantined" else "succeeded"


def _input_bytes(store: ObjectStore, bucket: str, key: str) -> int | None:
    """Return the bytes of an item's inputs, as its manifest records them (None if unknown)."""
    from oncopipe.manifest import read_manifest

    try:
        document = read_manifest(store, bucket, key)
    except Exception:  # noqa: BLE001 - a metric never fails the job
        return None
    if document is None:
        return None
    return sum(int(i.get("size") or 0) for i in document.get("inputs", []))


def _run(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    store: ObjectStore,
    settings: StageSettings,
    reference: str,
    threads: int,
    secret: bytes | None,
    metrics: StageMetrics,
    profile: cost.JobProfile,
) -> int:
    """Run the step inside its metrics and cost metering; print its outcome; return the code.

    Committing steps (:data:`COMMIT_STEPS`) count one item in and its outcome, with the
    duration and the bytes of its inputs; array children and ``plan`` count only a failure.
    Every step records the job's cost estimate (``CostEstimateUSD``, and ``cost`` in the
    outcome line).
    """
    started = time.perf_counter()
    commits = args.step in COMMIT_STEPS
    if commits:
        metrics.items_in()
    try:
        samples = load_samples(store, settings.buckets, args.sample_table)
        if args.step in ("plan", "align-shard", "call-region"):
            code = _scatter_phase(parser, args, store, settings.buckets, samples, reference,
                                  threads, profile)  # fmt: skip
            metrics.job_cost(profile.job_fields())
            return code
        if args.step in ("align", "gather"):
            lanes = [s for s in samples if s["sample"] == args.sample]
            if not lanes:
                parser.error(f"sample {args.sample} is not in {args.sample_table}")
            from oncopipe.pseudonym import load_secret

            # the curated manifest names the ingest FASTQ files by opaque reference
            secret = secret or load_secret()
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
        metrics.outcome("failed", seconds=time.perf_counter() - started)
        metrics.job_cost(profile.job_fields())
        failure: dict[str, Any] = {"step": args.step, "run_id": args.run_id,
                                   "sample": args.sample,
                                   **failure_fields(e, secret=secret)}  # fmt: skip
        print(json.dumps(failure), flush=True)
        log_failure(logger, f"{args.step} of sample {args.sample} in run {args.run_id}", e)
        return 1
    done = result.status != "skipped"
    nbytes = _input_bytes(store, settings.buckets.curated, result.manifest_key) if done else None
    metrics.outcome(_outcome(result), seconds=time.perf_counter() - started, nbytes=nbytes)
    job = profile.job_fields()
    metrics.job_cost(job)
    outcome = {"step": args.step, "run_id": args.run_id, "sample": args.sample,
               "item_status": result.status, "manifest": result.manifest_key,
               **pick(result.summary, OUTCOME_FIELDS), "cost": job}  # fmt: skip
    print(json.dumps(outcome, default=str), flush=True)
    return 0


#: The plan step's outcome as an object, beside the sample's scatter scratch.
def _scatter_phase(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    store: ObjectStore,
    buckets: layout.Buckets,
    samples: list[dict[str, Any]],
    reference: str,
    threads: int,
    profile: cost.JobProfile,
) -> int:
    """Run ``plan``, ``align-shard`` or ``call-region``; print its outcome; return 0.

    The outcome line carries the job's ``cost`` (the children write no manifest: their
    cost is in the line and in the ``CostEstimateUSD`` metric only).

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
        document = {"shards": planned.shards, "regions": planned.regions,
                    "fastq_bytes": planned.fastq_bytes,
                    "reference_bases": planned.reference_bases}  # fmt: skip
        # The state machine cannot read a job's stdout: it sizes the array jobs from this.
        # A rerun that plans the same writes nothing (no new version of an unchanged plan).
        key, body = layout.plan_key(args.run_id, args.sample), json.dumps(document).encode()
        curated = buckets.curated
        if not (store.exists(curated, key) and store.get_bytes(curated, key) == body):
            store.put_bytes(buckets.curated, key, body, content_type="application/json",
                            tags={"run-id": args.run_id, "step": "plan"})  # fmt: skip
        outcome.update(document)
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
    outcome["cost"] = profile.job_fields()
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
