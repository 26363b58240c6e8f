"""SageMaker Processing entry: ``python -m processing.notes stage [--run-id R]``.

The clinical notes of an ingest run (the daily features state machine): every note the
router received is scrubbed of PHI and its concepts extracted (step ``notes``; a bad note
is quarantined with the reason), then the notes are tokenised for the model (step
``note-tokens``). Without ``--run-id`` it takes the previous UTC day's ingest run.
Environment: the zone buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``) and the
pseudonym secret (``PSEUDONYM_SECRET_ARN``). Prints one JSON line per note (keys and
counts only, never text); exit 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    from oncopipe.notes.stage import process_run_notes, tokenize_run_notes
    from oncopipe.pseudonym import load_secret
    from oncopipe.runs import previous_daily_run_id, validate_run_id
    from oncopipe.settings import StageSettings
    from oncopipe.storage import ObjectStore, make_client

    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    store = ObjectStore(make_client())
    try:
        notes = process_run_notes(store, settings.buckets, run_id, load_secret())
        tokens = tokenize_run_notes(store, settings.buckets, run_id)
    except Exception:  # the boundary: log, fail the job
        logging.getLogger("processing.notes").exception("notes of %s failed", run_id)
        return 1
    tokenized = {r.item: r.summary.get("tokens") for r in tokens}
    for result in notes:
        summary = dict(result.summary)
        line: dict[str, object] = {"run_id": run_id, "item_status": result.status,
                **{k: summary.get(k) for k in ("status", "patient_key", "note_id", "concepts",
                                               "decode_replaced", "reason_code")
                   if k in summary}}  # fmt: skip
        if summary.get("note_id") in tokenized:
            line["tokens"] = tokenized[summary["note_id"]]
        print(json.dumps(line, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
