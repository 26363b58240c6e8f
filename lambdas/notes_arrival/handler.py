"""Lambda adapter of notes on arrival: the consumer of the notes queue.

Event: an SQS batch gathered for at most ``ops.notes_batch_seconds`` (the event source's
batching window); each message is ``{"run_id": ...}``, sent by the ingest state machine for
every note it routed. For each run named in the batch it starts one execution of the
notes-on-arrival state machine (the notes processing job with ``--run-id``), which
processes the run's notes not processed yet. Result: the partial batch response
(``batchItemFailures``: the messages of a run whose start failed are retried by SQS; a
malformed message is dropped and counted).

The messages hold run ids only: never a note's key or text.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.completeness import group_by_run

logger = Logger(service="notes-arrival")
STATE_MACHINE_ENV = "NOTES_STATE_MACHINE_ARN"
STATE_MACHINE_ARN = os.environ[STATE_MACHINE_ENV]  # fails at cold start when unset
SFN = boto3.client("stepfunctions")


def execution_name(run_id: str, message_ids: list[str]) -> str:
    """Return a name unique to the batch (a redelivered batch gets the same name)."""
    digest = hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()[:16]
    return f"{run_id[:60]}-{digest}"


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Start one notes job per run of the batch; return ``{"batchItemFailures": [...]}``."""
    runs, bad = group_by_run(event.get("Records", []))
    failures: list[dict[str, str]] = []
    for run_id, message_ids in runs.items():
        try:
            SFN.start_execution(stateMachineArn=STATE_MACHINE_ARN,
                                name=execution_name(run_id, message_ids),
                                input=json.dumps({"run_id": run_id}))  # fmt: skip
        except SFN.exceptions.ExecutionAlreadyExists:
            pass  # a redelivered batch: its job was started
        except Exception:  # retried by SQS; logged by type only
            logger.exception("start failed", extra={"run_id": run_id})
            failures += [{"itemIdentifier": m} for m in message_ids]
    logger.info("batch", extra={"runs": len(runs), "malformed": len(bad),
                                "retried": len(failures)})  # fmt: skip
    return {"batchItemFailures": failures}
