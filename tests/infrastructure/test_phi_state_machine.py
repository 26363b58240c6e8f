"""The ingest state machine surfaces no PHI: no Fail cause, path or log carries a key.

Keys, reasons and details name patients; the states may pass on codes, counts and
opaque references only (the readable reason is in the quarantine zone).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aws_cdk.assertions import Template

pytestmark = pytest.mark.slow

#: Fields of the router's (or any task's) result that hold or may hold PHI.
PHI_FIELDS = ("key", "reason", "details", "Cause", "bucket", "manifest", "samples",
              "referenced_keys")  # fmt: skip
PATH_FIELDS = ("CausePath", "ErrorPath", "OutputPath", "InputPath", "ResultPath", "ItemsPath")
PHI_PATH = re.compile(r"\$[\w.\[\]$]*\.(" + "|".join(PHI_FIELDS) + r")\b")


@pytest.fixture(scope="module")
def ingest(app_dev: Any) -> Template:
    return Template.from_stack(app_dev.built.ingest)


def _definition(template: Template) -> dict[str, Any]:
    (machine,) = template.find_resources("AWS::StepFunctions::StateMachine").values()
    raw = machine["Properties"]["DefinitionString"]
    if isinstance(raw, dict):  # Fn::Join of strings and tokens (ARNs): tokens are not paths
        raw = "".join(p if isinstance(p, str) else "TOKEN" for p in raw["Fn::Join"][1])
    return json.loads(raw)


def _states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, state in definition["States"].items():
        yield name, state
        for nested in (state.get("ItemProcessor"), state.get("Iterator"),
                       *state.get("Branches", [])):  # fmt: skip
            if nested:
                yield from _states(nested)


def _paths(value: Any) -> Iterator[str]:
    """Every JSONPath string in a state field (``"x.$": "$..."`` and plain paths)."""
    if isinstance(value, str) and value.startswith("$"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item)


def test_no_fail_state_causes_with_a_key_or_reason(ingest: Template) -> None:
    fails = {n: s for n, s in _states(_definition(ingest)) if s["Type"] == "Fail"}
    assert {"InputQuarantined", "RoutingFailed", "GenomicsNotStarted"} <= set(fails)
    for name, state in fails.items():
        for field in ("Cause", "Error", "CausePath", "ErrorPath"):
            value = str(state.get(field, ""))
            assert not PHI_PATH.search(value), f"{name}.{field} = {value}"
        cause = state.get("CausePath", "")
        assert not cause or cause.endswith((".Error", ".reason_code")), f"{name}: {cause}"


def test_no_state_passes_on_a_phi_field(ingest: Template) -> None:
    for name, state in _states(_definition(ingest)):
        for field in (*PATH_FIELDS, "Parameters", "ItemSelector", "ResultSelector", "Arguments"):
            for path in _paths(state.get(field)):
                assert not PHI_PATH.search(path), f"{name}.{field}: {path}"


def test_every_lambda_task_keeps_only_the_payload(ingest: Template) -> None:
    """The full Invoke result (headers, request ids and all) is not kept as state."""
    for name, state in _states(_definition(ingest)):
        if state["Type"] == "Task" and "lambda:invoke" in str(state.get("Resource")):
            assert state.get("ResultSelector") in (
                {"result.$": "$.Payload"},
                {"route": {"result.$": "$.Payload"}},  # the first state: replaces the event
            ), name


def test_execution_data_is_not_logged(ingest: Template) -> None:
    (machine,) = ingest.find_resources("AWS::StepFunctions::StateMachine").values()
    assert machine["Properties"]["LoggingConfiguration"]["IncludeExecutionData"] is False


def test_the_s3_event_never_stays_in_the_state(ingest: Template) -> None:
    # The execution input is the S3 event: it names the ingest key (PHI). The first state
    # replaces it with its result (and its catchers with the error); no later state reads
    # the event from the state, only from the execution input ($$.Execution.Input).
    definition = _definition(ingest)
    first = definition["States"][definition["StartAt"]]
    assert first.get("ResultPath") == "$" or first.get("OutputPath") not in (None, "$")
    for catcher in first.get("Catch", []):
        assert catcher.get("ResultPath") == "$", catcher
    for name, state in _states(definition):
        if name == definition["StartAt"]:
            continue
        for path in _paths({k: v for k, v in state.items() if k not in ("Next", "Type")}):
            assert not re.match(r"\$\.(detail|resources|source)\b", path), (name, path)
