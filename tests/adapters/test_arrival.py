"""Notes on arrival and patients predicted once complete (issue 13 §4, §5).

- the completeness core on committed manifests and tables (moto S3, in-process): what a
  sheet names, which patient is complete, the prediction item and its ``TimeToInsight``;
- the local hooks: the notes job started on arrival, the patient-ready step as its role.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from oncopipe import completeness
from oncopipe.completeness import (
    CURATED_PREDICTIONS,
    expected_modalities,
    predict_ready,
    run_readiness,
)
from oncopipe.layout import Buckets
from oncopipe.manifest import ItemWriter, StepContext, iter_manifests, process_item
from oncopipe.metrics import TIME_TO_INSIGHT, StageMetrics
from oncopipe.ops.insight import time_to_insight
from oncopipe.pseudonym import object_ref, patient_key
from oncopipe.storage import ObjectStore
from tests.conftest import make_buckets

SECRET = bytes(range(32))
RUN = "ingest-20261202"
PK1 = patient_key(SECRET, "MRN-1001")  # every modality
PK2 = patient_key(SECRET, "MRN-1002")  # its note never arrives
DICOM_PK1 = "dicom/patient001/"


def _parquet(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _one_patient(table: Any, pk: str) -> Any:
    """The first synthetic patient's rows of a table, under ``pk``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    first = table["patient_key"][0].as_py()
    rows = table.filter(pc.equal(table["patient_key"], first))
    index = rows.schema.get_field_index("patient_key")
    return rows.set_column(index, "patient_key", pa.array([pk] * rows.num_rows))


class Lake:
    """A run's committed items, written through the same commit path as the stages."""

    def __init__(self, s3: Any) -> None:
        from oncopipe.cohort.synthetic import generate_tables

        self.buckets: Buckets = make_buckets(s3, "arrival")
        self.store = ObjectStore(s3)
        self.synthetic = generate_tables(2, seed=3)

    def commit(self, step: str, item: str, outputs: dict[str, bytes], summary: dict[str, Any],
               *, phi: bool = False) -> None:  # fmt: skip
        b = self.buckets
        source = self.store.put_bytes(b.ingest, f"in/{step}/{item}", item.encode(), tags={})
        ctx = StepContext(store=self.store, manifest_bucket=b.quarantine if phi else b.curated,
                          run_id=RUN, step=step, phi_zone=phi, key_secret=SECRET,
                          tables_bucket=b.curated)  # fmt: skip

        def work(writer: ItemWriter) -> dict[str, Any]:
            for key, data in outputs.items():
                writer.put(b.curated, key, data)
            return summary

        process_item(ctx, item, [source], work)

    def sheet(self, rows: list[dict[str, Any]]) -> None:
        lines = "\n".join(json.dumps(r) for r in rows).encode()
        self.commit("route", "samplesheets/cohort.csv",
                    {f"cohort/samples/{RUN}/sheet.jsonl": lines},
                    {"kind": "samplesheet", "status": "accepted"}, phi=True)  # fmt: skip

    def call(self, pk: str) -> None:
        table = _one_patient(self.synthetic.variants, pk)
        self.commit("call", f"{pk}-T", {f"genomics/variants/{pk}/{pk}-T.parquet": _parquet(table)},
                    {"kind": "sample", "status": "called"})  # fmt: skip

    def radiomics(self, pk: str) -> None:
        table = _one_patient(self.synthetic.radiomics, pk)
        self.commit("radiomics", f"1.2.{len(pk)}.{pk[-3:]}",
                    {f"imaging/radiomics/{pk}/series.parquet": _parquet(table)},
                    {"kind": "series", "status": "extracted", "patient_key": pk})  # fmt: skip

    def note(self, pk: str) -> None:
        table = _one_patient(self.synthetic.notes, pk)
        self.commit(
            "notes",
            f"notes/{pk}.txt",
            {f"notes/concepts/{pk}/n1.parquet": _parquet(table)},
            {"kind": "note", "status": "extracted", "patient_key": pk},
            phi=True,
        )


def _row(pk: str, sample: str, kind: str, *, dicom: str = "", note: str = "") -> dict[str, Any]:
    return {"patient_key": pk, "sample": sample, "type": kind,
            "dicom_ref": object_ref(SECRET, dicom) if dicom else None,
            "notes_ref": object_ref(SECRET, note) if note else None}  # fmt: skip


@pytest.fixture
def lake(s3: Any) -> Lake:
    lake = Lake(s3)
    lake.sheet([
        _row(PK1, "P1-T", "tumour", dicom=DICOM_PK1, note="notes/p1.txt"),
        _row(PK1, "P1-N", "normal"),
        _row(PK2, "P2-T", "tumour", note="notes/p2.txt"),
        _row(PK2, "P2-N", "normal"),
    ])  # fmt: skip
    lake.call(PK1)
    lake.radiomics(PK1)
    lake.note(PK1)
    lake.call(PK2)  # PK2's note has not arrived: incomplete
    return lake


def _model(calls: list[list[dict[str, Any]]]) -> Callable[[list[dict[str, Any]]], Any]:
    """A stand-in endpoint: answers from the request's content, records what it was sent."""

    def predict(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(payloads)
        return [{"patient_key": p["patient_key"],
                 "probability": len(p.get("variants", [])) / 10.0} for p in payloads]  # fmt: skip

    return predict


def test_the_sheet_names_the_modalities_of_each_patient() -> None:
    rows = [_row(PK1, "P1-T", "tumour", dicom=DICOM_PK1), _row(PK1, "P1-N", "normal"),
            _row(PK2, "P2-N", "normal", note="notes/p2.txt"),
            {"patient_key": "MRN-1003", "type": "tumour"}]  # fmt: skip
    assert expected_modalities(rows) == {PK1: frozenset({"genomics", "imaging"}),
                                         PK2: frozenset({"notes"})}  # fmt: skip


def test_completeness_is_read_from_the_manifests(lake: Lake) -> None:
    states, _ = run_readiness(lake.store, lake.buckets, RUN)
    by_key = {s.patient_key: s for s in states}
    assert by_key[PK1].complete and by_key[PK1].missing == []
    assert not by_key[PK2].complete and by_key[PK2].missing == ["notes"]


def test_a_complete_patient_gets_a_prediction_and_an_incomplete_one_waits(lake: Lake) -> None:
    calls: list[list[dict[str, Any]]] = []
    first = StageMetrics("endpoint", stream=io.StringIO())
    outcomes = predict_ready(lake.store, lake.buckets, RUN, _model(calls), model_version="m1",
                             metrics=first)  # fmt: skip
    assert TIME_TO_INSIGHT in json.dumps(first.flush())
    by_key = {o.patient_key: o for o in outcomes}
    assert by_key[PK1].status == "predicted"
    assert by_key[PK1].time_to_insight_seconds is not None
    assert by_key[PK2].status == "waiting" and by_key[PK2].missing == ("notes",)
    # the endpoint got PK1's cohort row: its own features, every modality
    assert len(calls) == 1 and [p["patient_key"] for p in calls[0]] == [PK1]
    assert {"variants", "radiomics", "notes"} <= set(calls[0][0])
    saved = json.loads(lake.store.get_bytes(lake.buckets.curated,
                                            f"{CURATED_PREDICTIONS}{RUN}/{PK1}.json"))  # fmt: skip
    assert saved["prediction"]["patient_key"] == PK1 and saved["model_version"] == "m1"
    # the predict manifest closes the patient's time to insight
    rows = {r.patient_key: r for r in time_to_insight(lake.store, lake.buckets, RUN)}
    assert rows[PK1].prediction_at is not None and rows[PK2].prediction_at is None
    stage = StageMetrics("endpoint", stream=io.StringIO())
    # re-run: nothing new to predict, nothing rewritten, no second datum
    again = predict_ready(lake.store, lake.buckets, RUN, _model(calls), model_version="m1",
                          metrics=stage)  # fmt: skip
    assert {o.patient_key: o.status for o in again} == {PK1: "skipped", PK2: "waiting"}
    assert len(calls) == 1
    assert TIME_TO_INSIGHT not in json.dumps(stage.flush() or {})


def test_time_to_insight_metric_is_emitted_per_prediction(lake: Lake) -> None:
    stage = StageMetrics("endpoint", stream=io.StringIO())
    predict_ready(lake.store, lake.buckets, RUN, _model([]), metrics=stage)
    document = stage.flush()
    assert document is not None
    directive = document["_aws"]["CloudWatchMetrics"][0]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units[TIME_TO_INSIGHT] == "Seconds"
    assert directive["Dimensions"] == [["Environment", "Stage"]]
    values = document[TIME_TO_INSIGHT]
    values = values if isinstance(values, list) else [values]
    assert document["Stage"] == "endpoint" and len(values) == 1 and values[0] >= 0


def test_the_missing_note_arriving_completes_the_patient(lake: Lake) -> None:
    predict_ready(lake.store, lake.buckets, RUN, _model([]))
    lake.note(PK2)
    outcomes = {o.patient_key: o.status for o in predict_ready(lake.store, lake.buckets, RUN,
                                                               _model([]))}  # fmt: skip
    assert outcomes == {PK1: "skipped", PK2: "predicted"}
    steps = [d["step"] for d in iter_manifests(lake.store, lake.buckets.curated, RUN, "predict")]
    assert steps == ["predict", "predict"]


def test_without_a_model_nothing_is_written(lake: Lake) -> None:
    outcomes = predict_ready(lake.store, lake.buckets, RUN, None)
    assert {o.patient_key: o.status for o in outcomes} == {PK1: "no-model", PK2: "waiting"}
    assert not list(lake.store.list_keys(lake.buckets.curated, CURATED_PREDICTIONS))


def test_a_failing_endpoint_leaves_no_prediction(lake: Lake) -> None:
    def broken(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise TimeoutError("endpoint timed out")

    with pytest.raises(TimeoutError):
        predict_ready(lake.store, lake.buckets, RUN, broken)
    assert not list(lake.store.list_keys(lake.buckets.curated, CURATED_PREDICTIONS))
    assert not list(iter_manifests(lake.store, lake.buckets.curated, RUN, "predict"))


def test_no_source_id_or_ingest_key_in_predictions(lake: Lake) -> None:
    predict_ready(lake.store, lake.buckets, RUN, _model([]))
    for key in lake.store.list_keys(lake.buckets.curated, CURATED_PREDICTIONS):
        text = lake.store.get_bytes(lake.buckets.curated, key).decode()
        assert "MRN-" not in text and "notes/" not in text and "dicom/" not in text
    assert completeness.FEATURE_TABLES  # the tables the cohort row is built from


def _patient_ready_handler(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The patient-ready Lambda module, configured for the lake's buckets (no endpoint)."""
    import importlib
    import sys

    b = lake.buckets
    for name, value in {"INGEST_BUCKET": b.ingest, "QUARANTINE_BUCKET": b.quarantine,
                        "CURATED_BUCKET": b.curated, "ARTIFACTS_BUCKET": b.artifacts,
                        "SERVING_ENDPOINT_NAME": "",
                        "POWERTOOLS_SERVICE_NAME": "patient-ready"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    sys.modules.pop("lambdas.patient_ready.handler", None)
    return importlib.import_module("lambdas.patient_ready.handler")


class _Context:
    function_name, memory_limit_in_mb, aws_request_id = "patient-ready", 1024, "req-1"
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:patient-ready"


def test_a_finished_daily_sweep_predicts_the_previous_days_complete_patients(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    handler = _patient_ready_handler(lake, monkeypatch)
    calls: list[list[dict[str, Any]]] = []
    monkeypatch.setattr(handler, "PREDICTOR", _model(calls))
    # the sweep of RUN's day starts at 03:00 UTC the next day (the rule's message)
    started = datetime(2026, 12, 3, 3, 0, tzinfo=UTC).timestamp() * 1000
    records = [
        {"messageId": "sweep", "body": json.dumps({"sweep_started_ms": started})},
        {"messageId": "broken", "body": json.dumps({"sweep_started_ms": "soon"})},
    ]
    result = handler.lambda_handler({"Records": records}, _Context())
    assert result == {"batchItemFailures": []}
    assert [[p["patient_key"] for p in c] for c in calls] == [[PK1]]  # PK2 still waits
    assert lake.store.head(lake.buckets.curated, f"{CURATED_PREDICTIONS}{RUN}/{PK1}.json")


def test_a_succeeded_flow_event_names_its_run_and_a_failing_run_is_retried(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _patient_ready_handler(lake, monkeypatch)

    def broken(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise TimeoutError("endpoint timed out")

    monkeypatch.setattr(handler, "PREDICTOR", broken)
    event = {"detail-type": "Step Functions Execution Status Change",
             "detail": {"status": "SUCCEEDED", "input": json.dumps({"run_id": RUN})}}  # fmt: skip
    records = [{"messageId": "m1", "body": json.dumps(event)},
               {"messageId": "m2", "body": json.dumps({"run_id": RUN})}]  # fmt: skip
    result = handler.lambda_handler({"Records": records}, _Context())
    # both messages name the run: both are retried by SQS, nothing was committed
    assert sorted(f["itemIdentifier"] for f in result["batchItemFailures"]) == ["m1", "m2"]
    assert not list(lake.store.list_keys(lake.buckets.curated, CURATED_PREDICTIONS))
