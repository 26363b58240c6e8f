"""Lambda adapter of the series settle: the consumer of the settle timer queue.

Event: an SQS batch of timer messages (:class:`oncopipe.settle.TimerMessage`). For each,
:func:`oncopipe.settle.settle` drops it (a later instance restarted the timer, or a
duplicate delivery), sends it on (a settle time over the SQS maximum of 900 s), or claims
the series and starts its conversion: an execution of the per-series imaging state
machine (volume and masks, then radiomics). Result: the partial batch response
(``batchItemFailures``: a busy series or a failed start is retried by SQS; the event
source mapping must report batch item failures).

Messages, logs and the state machine input hold pseudonymous patient keys, de-identified
series UIDs, run ids, generations and codes: never a source id or an ingest key.
"""

from __future__ import annotations

import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.settle import (
    SettleOutcome,
    SettleSettings,
    SettleTable,
    SettleTimer,
    StateMachineConversion,
    TimerMessage,
    handle_records,
    settle,
)

logger = Logger(service="series-settle")
SETTINGS = SettleSettings.from_env(consumer=True)  # fails at cold start when misconfigured
TABLE = SettleTable(boto3.client("dynamodb"), SETTINGS.table_name)
TIMER = SettleTimer(boto3.client("sqs"), SETTINGS.queue_url)
CONVERT = StateMachineConversion(boto3.client("stepfunctions"), SETTINGS.state_machine_arn)


def _one(message: TimerMessage) -> SettleOutcome:
    outcome = settle(message, table=TABLE, timer=TIMER, convert=CONVERT, now=time.time())
    logger.info(
        "settle",
        extra={
            "series": outcome.key.label,
            "generation": outcome.generation,
            "status": outcome.status,
            **{k: v for k, v in outcome.detail.items() if isinstance(v, (str, int, float))},
        },
    )
    return outcome


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Handle the batch; return ``{"batchItemFailures": [...]}`` (the messages to retry)."""
    outcomes, failures = handle_records(event.get("Records", []), _one)
    logger.info("batch", extra={"handled": len(outcomes), "retried": len(failures)})
    return {"batchItemFailures": failures}
