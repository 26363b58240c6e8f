"""SageMaker Processing entry: ``python -m processing.radiomics stage``.

``stage --run-id R`` (the daily imaging state machine, after the volumes job): every
series of an ingest run that has masks, read from and written to the curated bucket with
manifests (:func:`oncopipe.radiomics.stage.build_series_features`). ``--series UID ...``
(the per-series imaging state machine, once a series settled: :mod:`oncopipe.settle`)
limits it to those series. Environment: the zone buckets (``INGEST_BUCKET`` ...
``ARTIFACTS_BUCKET``). EMF stage metrics (stage ``radiomics``: items by outcome,
durations, ``CostEstimateUSD``) go to stderr; each series' manifest records its estimated
cost (``cost``: its seconds on a 1/``workers`` share of the processing instance), and the
job's estimate is logged (``job cost {...}``).

It uses every CPU of the instance (one process per series) unless ``--workers`` says
otherwise, and prints one JSON line per series: its pseudonymous patient key, series, status,
reason code and counts (:mod:`oncopipe.boundary`: stdout goes to CloudWatch Logs). The
readable reason of a series without features is in its manifest; a failure of the job is
logged by error type, never by message. Features of volume files on a disk:
``oncopipe radiomics`` (the CLI).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("processing.radiomics")

#: Summary fields a series' line may carry (an allow-list: :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("kind", "status", "reason_code", "patient_key", "rois", "features",
                  "skipped_rois")  # fmt: skip


def _outcome(result: Any) -> str:
    """Return the metrics outcome of an item result (a key of ``metrics.OUTCOMES``)."""
    if result.status in ("failed", "skipped"):
        return str(result.status)
    status = str(result.summary.get("status", ""))
    return "succeeded" if status in ("extracted", "") else "quarantined"


def _stage(args: argparse.Namespace) -> int:
    from oncopipe.boundary import failure_fields, log_failure, pick
    from oncopipe.imaging.uids import is_valid_uid
    from oncopipe.metrics import StageMetrics
    from oncopipe.ops.cost import metering, processing_job_profile
    from oncopipe.radiomics.stage import build_series_features
    from oncopipe.runs import previous_daily_run_id, validate_run_id
    from oncopipe.settings import StageSettings
    from oncopipe.storage import ObjectStore, make_client

    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    if args.series is not None and not all(is_valid_uid(uid) for uid in args.series):
        print(json.dumps({"run_id": run_id, "status": "failed",
                          "reason_code": "invalid-series"}), flush=True)  # fmt: skip
        return 2
    settings = StageSettings.from_env()
    # the series run in ``workers`` processes at once: each is charged its seconds on a
    # 1/workers share of the instance (the children inherit the profile's variable)
    profile = processing_job_profile(concurrency=max(args.workers, 1))
    with StageMetrics("radiomics") as metrics, metering(profile):
        try:
            results = build_series_features(
                ObjectStore(make_client()), settings.buckets, run_id,
                params_path=args.params, workers=args.workers, series=args.series,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the boundary: log by type, fail the job
            metrics.outcome("failed")
            metrics.job_cost(profile.job_fields())
            print(json.dumps({"run_id": run_id, **failure_fields(e)}), flush=True)
            log_failure(logger, f"radiomics of run {run_id}", e)
            return 1
        metrics.items_in(len(results))
        for result in results:
            done = result.status == "done"
            metrics.outcome(_outcome(result), seconds=result.seconds if done else None)
        job = profile.job_fields()
        metrics.job_cost(job)
    # stderr (the log), not stdout: stdout is one line per series for the callers
    logger.info("job cost %s", json.dumps(job, default=str))
    for result in results:
        print(json.dumps({"run_id": run_id, "series": result.item, "item_status": result.status,
                          **pick(result.summary, OUTCOME_FIELDS)}, default=str))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.radiomics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("stage",))
    parser.add_argument("--run-id", default=None, help="stage: default yesterday's ingest run")
    parser.add_argument(
        "--series",
        nargs="+",
        default=None,
        metavar="UID",
        help="stage: only these de-identified series of the run",
    )
    parser.add_argument("--params", default=None, help="PyRadiomics parameter file (default v1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return _stage(args)


if __name__ == "__main__":
    sys.exit(main())
