"""The stage metrics' EMF documents: names, dimensions, nothing identifying."""

from __future__ import annotations

import io
import json

import pytest

from oncopipe.metrics import DURATION, QUARANTINED, SUCCEEDED, StageMetrics


def test_flush_writes_one_emf_line_with_environment_and_stage_only() -> None:
    out = io.StringIO()
    with StageMetrics("notes", environment="dev", stream=out) as metrics:
        metrics.items_in(3)
        metrics.outcome("succeeded", seconds=0.5, nbytes=100, count=2)
        metrics.outcome("quarantined")
    (line,) = out.getvalue().splitlines()
    document = json.loads(line)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Oncopipe"
    assert directive["Dimensions"] == [["Environment", "Stage"]]
    assert document["Environment"] == "dev" and document["Stage"] == "notes"
    assert document[SUCCEEDED] == [2.0] and document[QUARANTINED] == [1.0]
    assert document[DURATION] == [0.5]


def test_timed_records_a_failure_and_reraises() -> None:
    out = io.StringIO()
    metrics = StageMetrics("align", environment="dev", stream=out)
    with pytest.raises(RuntimeError), metrics.timed():
        raise RuntimeError("boom")
    document = metrics.flush()
    assert document is not None and document["ItemsFailed"] == [1.0]
    assert "ItemDuration" in document


def test_nothing_recorded_writes_nothing_and_unknown_names_are_refused() -> None:
    out = io.StringIO()
    assert StageMetrics("deid", stream=out).flush() is None
    assert out.getvalue() == ""
    with pytest.raises(ValueError, match="unknown stage"):
        StageMetrics("s3://bucket/patient-123")
    with pytest.raises(ValueError, match="unknown outcome"):
        StageMetrics("deid").outcome("done")


def test_two_instances_do_not_share_values() -> None:
    first = StageMetrics("notes", environment="dev", stream=io.StringIO())
    first.value("TimeToInsight", 10.0)
    second = StageMetrics("cohort", environment="dev", stream=io.StringIO())
    second.value("TimeToInsight", 20.0)
    document = second.flush()
    assert document is not None and document["TimeToInsight"] == [20.0]
    assert document["Stage"] == "cohort"
