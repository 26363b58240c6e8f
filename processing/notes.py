"""SageMaker Processing entry: ``python -m processing.notes stage [--run-id R]``.

The clinical notes of an ingest run (the daily features state machine): every note the
router received is scrubbed of PHI and its concepts extracted (step ``notes``; a bad note
is quarantined with the reason), then the notes are tokenised for the model (step
``note-tokens``). Without ``--run-id`` it takes the previous UTC day's ingest run.
Environment: the zone buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``), the
pseudonym secret (``PSEUDONYM_SECRET_ARN``) and the size cap of a note (``NOTES_MAX_BYTES``,
default 1000000; a bigger note is quarantined as ``note-too-large``). Prints one JSON line per
note (keys and counts only, never text), then one ``{"job": ...}`` line with the counts and the
job's cost estimate (:func:`oncopipe.ops.cost.processing_job_profile`: the processing
instance); exit 1 on failure, 2 on a bad setting. Each note's manifest records its own
estimate (``cost``: its seconds on the instance). EMF stage metrics (stage ``notes``: items
by outcome, durations, ``CostEstimateUSD``) go to stderr.

The same command serves both triggers: the notes-on-arrival job started minutes after a
batch of notes was routed (``stacks/components/notes_on_arrival.py``) and the daily sweep.
Either processes the run's notes that have no matching manifest yet; a note done before is
skipped (``item_status`` ``skipped``), so running it on every batch is safe and cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.notes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("stage",))
    parser.add_argument("--run-id", default=None, help="default: yesterday's ingest run")
    args = parser.parse_args(argv)
    # PyFastNER (inside PyRuSH) logs rule syntax on the root logger at INFO by the thousand
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    logging.getLogger("oncopipe").setLevel(logging.INFO)
    from oncopipe.errors import ConfigError
    from oncopipe.notes.stage import max_bytes_from_env, process_run_notes, tokenize_run_notes
    from oncopipe.pseudonym import load_secret
    from oncopipe.runs import previous_daily_run_id, validate_run_id
    from oncopipe.settings import StageSettings
    from oncopipe.storage import ObjectStore, make_client

    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    try:
        max_bytes = max_bytes_from_env(os.environ)  # a bad cap fails at start, not per note
    except ConfigError as e:
        print(f"python -m processing.notes: {e}", file=sys.stderr)
        return 2
    from oncopipe.metrics import StageMetrics
    from oncopipe.ops.cost import metering, processing_job_profile

    store = ObjectStore(make_client())
    profile = processing_job_profile()  # notes one by one: each charged its own seconds
    with StageMetrics("notes") as metrics, metering(profile):
        try:
            notes = process_run_notes(store, settings.buckets, run_id, load_secret(),
                                      max_bytes=max_bytes)  # fmt: skip
            tokens = tokenize_run_notes(store, settings.buckets, run_id)
        except Exception:  # the boundary: log, fail the job
            metrics.outcome("failed")
            metrics.job_cost(profile.job_fields())
            logging.getLogger("processing.notes").exception("notes of %s failed", run_id)
            return 1
        metrics.items_in(len(notes))
        for result in notes:
            metrics.outcome(_outcome(result), seconds=result.seconds)
        cost = profile.job_fields()
        cost.pop("seconds", None)
        metrics.job_cost(cost)
    tokenized = {r.item: r.summary.get("tokens") for r in tokens}
    for result in notes:
        summary = dict(result.summary)
        line: dict[str, object] = {"run_id": run_id, "item_status": result.status,
                **{k: summary.get(k) for k in ("status", "patient_key", "note_id", "concepts",
                                               "decode_replaced", "encoding", "reason_code")
                   if k in summary}}  # fmt: skip
        if summary.get("note_id") in tokenized:
            line["tokens"] = tokenized[summary["note_id"]]
        print(json.dumps(line, default=str))
    counts = {status: sum(r.status == status for r in notes) for status in ("done", "skipped")}
    print(json.dumps({"job": "notes", "run_id": run_id, "notes": len(notes), **counts, **cost},
                     default=str))  # fmt: skip
    return 0


def _outcome(result: object) -> str:
    """Return the metrics outcome of a note's item result (a key of ``metrics.OUTCOMES``)."""
    status = str(getattr(result, "status", ""))
    if status == "skipped":
        return "skipped"
    summary = getattr(result, "summary", {}) or {}
    return "quarantined" if summary.get("status") == "quarantined" else "succeeded"


if __name__ == "__main__":
    sys.exit(main())
