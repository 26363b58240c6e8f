"""Batch job entry: ``python -m batch_jobs.imaging volumes [--run-id R] [--series UID ...]``.

Converts every DICOM series de-identified in a run into a Parquet volume, with the masks
of the patient's RTSTRUCT/SEG objects beside it (:func:`build_series_volumes`). Without
``--run-id`` it takes the previous UTC day's ingest run (the daily schedule). Environment:
the zone buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``). Prints one JSON line per
series. One bad series never stops the others: a series that cannot be converted is
reported (``inconsistent`` or ``quarantined`` with the reason: a data problem, exit 0);
a series that failed unexpectedly is reported ``failed`` after all the others were
done, and the job exits 1 so that the failure is seen (the re-run redoes only it).

``--series`` (the per-series imaging state machine, once a series settled:
:mod:`oncopipe.settle`) converts only those de-identified SeriesInstanceUIDs of the run;
without it every series of the run (the daily sweep, which skips what is already done).
EMF stage metrics (stage ``volumes``: items by outcome, durations, ``ItemsRetried`` on a
later Batch attempt, ``CostEstimateUSD``) go to stderr. Each series' manifest records its
estimated cost (``cost``: its seconds on the job's reservation,
:func:`oncopipe.ops.cost.batch_job_profile`); the whole job's estimate is logged
(``job cost {...}``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from oncopipe.imaging.stage import build_series_volumes
from oncopipe.imaging.uids import is_valid_uid
from oncopipe.metrics import StageMetrics
from oncopipe.ops import cost
from oncopipe.runs import previous_daily_run_id, validate_run_id
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client


def _outcome(result: Any) -> str:
    """Return the metrics outcome of an item result (a key of ``metrics.OUTCOMES``)."""
    if result.status == "failed":
        return "failed"
    if result.status == "skipped":
        return "skipped"
    if str(result.summary.get("status", "")) in ("quarantined", "inconsistent"):
        return "quarantined"
    return "succeeded"


def record_outcomes(metrics: StageMetrics, results: Sequence[Any]) -> None:
    """Record the items received and each item's outcome (failed, skipped, quarantined
    for a data problem, else succeeded) on ``metrics``, with the duration of the items
    processed now."""
    metrics.items_in(len(results))
    for result in results:
        seconds = getattr(result, "seconds", None)
        metrics.outcome(_outcome(result), seconds=seconds if result.status == "done" else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs.imaging", description=__doc__)
    parser.add_argument("step", choices=("volumes",))
    parser.add_argument("--run-id", default=None, help="default: yesterday's ingest run")
    parser.add_argument(
        "--series",
        nargs="+",
        default=None,
        metavar="UID",
        help="only these de-identified series of the run (default: all)",
    )
    args = parser.parse_args(argv)
    if args.series is not None and not all(is_valid_uid(uid) for uid in args.series):
        parser.error("--series: expected de-identified SeriesInstanceUIDs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    profile = cost.batch_job_profile()  # several series per job: each charged its seconds
    with StageMetrics("volumes") as metrics, cost.metering(profile):
        metrics.attempt()
        try:
            results = build_series_volumes(ObjectStore(make_client()), settings.buckets,
                                           run_id, series=args.series)  # fmt: skip
        except Exception:  # the boundary: log, fail the job (Batch retries spot reclaims only)
            metrics.outcome("failed")
            metrics.job_cost(profile.job_fields())
            logging.getLogger("batch_jobs.imaging").exception("volumes of %s failed", run_id)
            return 1
        record_outcomes(metrics, results)
        job = profile.job_fields()
        metrics.job_cost(job)
    for result in results:
        print(json.dumps({"run_id": run_id, "series": result.item, "item_status": result.status,
                          **dict(result.summary)}, default=str))  # fmt: skip
    # stderr (the log), not stdout: stdout is one line per series for the callers
    logging.getLogger("batch_jobs.imaging").info("job cost %s", json.dumps(job, default=str))
    return 1 if any(result.status == "failed" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
