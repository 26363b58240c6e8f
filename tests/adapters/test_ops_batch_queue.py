"""The Batch queue watch: oldest RUNNABLE age over every page, settings, the published EMF."""

from __future__ import annotations

import importlib
import json
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from oncopipe.errors import ConfigError
from oncopipe.ops.batch_queue import QueueWatchSettings, queue_ages, queue_name

QUEUE_ARN = "arn:aws:batch:eu-west-1:123456789012:job-queue/oncopipe-dev-align"
NOW_MS = 1_800_000_000_000


def _job(job_id: str, created_ms: int) -> dict[str, Any]:
    # a job name may carry a sample identifier: it must never reach a metric or the log
    return {"jobId": job_id, "jobName": "align-P001-T", "createdAt": created_ms}


def _stubbed(pages: list[dict[str, Any]], queue: str) -> tuple[Any, Stubber]:
    client = boto3.client("batch", region_name="eu-west-1")
    stubber = Stubber(client)
    token = None
    for page in pages:
        expected = {"jobQueue": queue, "jobStatus": "RUNNABLE", "maxResults": 100}
        if token:
            expected["nextToken"] = token
        stubber.add_response("list_jobs", page, expected)
        token = page.get("nextToken")
    return client, stubber


def test_oldest_runnable_job_is_found_across_pages() -> None:
    pages = [
        {"jobSummaryList": [_job("a", NOW_MS - 60_000)], "nextToken": "t1"},
        {"jobSummaryList": [_job("b", NOW_MS - 7_200_000), _job("c", NOW_MS - 5_000)]},
    ]
    client, stubber = _stubbed(pages, QUEUE_ARN)
    with stubber:
        (age,) = queue_ages(client, [QUEUE_ARN], now_ms=NOW_MS)
    stubber.assert_no_pending_responses()
    assert age.queue == "oncopipe-dev-align"
    assert age.runnable_jobs == 3
    assert age.oldest_seconds == pytest.approx(7200.0)


def test_an_empty_queue_has_age_zero() -> None:
    client, stubber = _stubbed([{"jobSummaryList": []}], "q")
    with stubber:
        (age,) = queue_ages(client, ["q"], now_ms=NOW_MS)
    assert (age.runnable_jobs, age.oldest_seconds) == (0, 0.0)


def test_settings_need_the_environment_and_a_queue() -> None:
    settings = QueueWatchSettings(environment="dev", queues=("a", "b"))
    assert QueueWatchSettings.from_env(settings.as_env()) == settings
    with pytest.raises(ConfigError, match="BATCH_JOB_QUEUES"):
        QueueWatchSettings.from_env({"ONCOPIPE_ENV": "dev", "BATCH_JOB_QUEUES": " , "})
    assert queue_name("plain-name") == "plain-name"


def test_handler_publishes_age_per_queue_and_no_job_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ONCOPIPE_ENV", "dev")
    monkeypatch.setenv("BATCH_JOB_QUEUES", QUEUE_ARN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    handler = importlib.reload(importlib.import_module("lambdas.ops_batch_queue.handler"))
    client, stubber = _stubbed([{"jobSummaryList": [_job("a", NOW_MS - 90_000)]}], QUEUE_ARN)
    monkeypatch.setattr(handler, "_client", lambda: client)
    monkeypatch.setattr(handler.time, "time", lambda: NOW_MS / 1000)

    class Context:
        function_name = "watch"
        memory_limit_in_mb = 128
        invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:watch"
        aws_request_id = "r"

    with stubber:
        summary = handler.lambda_handler({}, Context())
    assert summary == {"oncopipe-dev-align": {"runnable": 1, "oldest_s": 90.0}}
    out = capsys.readouterr()
    documents = [json.loads(line) for line in out.out.splitlines() if '"_aws"' in line]
    (emf,) = [d for d in documents if "BatchOldestRunnableSeconds" in d]
    assert emf["JobQueue"] == "oncopipe-dev-align" and emf["Environment"] == "dev"
    assert emf["BatchOldestRunnableSeconds"] == [90.0]
    assert "P001" not in out.out + out.err
