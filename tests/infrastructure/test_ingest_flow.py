"""The ingest flow (:mod:`oncopipe.flow`) against the state machine and the local worker.

The synthesized state machine is read state by state (names, types, Choice rules, retriers,
catches, terminal states) and compared with the flow's description; then the local worker
is run on each kind of router result and must end in the terminal state the state machine
reaches for that result (its Choice rules evaluated on the same result).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from oncopipe.flow import INGEST, TRANSIENT_ERRORS, Branch
from oncopipe.local.worker import IngestFlow, Invocation
from tests.conftest import definition_text

pytestmark = pytest.mark.slow

#: The retrier CDK adds to a Lambda task (``retry_on_service_exceptions``), not the flow's.
LAMBDA_SERVICE_ERRORS = [
    "Lambda.ClientExecutionTimeoutException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
]


@pytest.fixture(scope="module")
def states(app_dev: Any) -> dict[str, Any]:
    """The ingest state machine's definition (dev app), StartAt and States."""
    stack = app_dev.built.ingest
    template = app_dev.assembly.get_stack_by_name(stack.stack_name).template
    machines = [r for r in template["Resources"].values()
                if r["Type"] == "AWS::StepFunctions::StateMachine"]  # fmt: skip
    assert len(machines) == 1
    definition: dict[str, Any] = json.loads(
        definition_text(machines[0]["Properties"]["DefinitionString"])
    )
    return definition


def _flow_retries(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in state.get("Retry", []) if r["ErrorEquals"] != LAMBDA_SERVICE_ERRORS]


def _condition(branch: Branch) -> dict[str, Any]:
    status = {"Variable": "$.route.result.status", "StringEquals": branch.status}
    if branch.kind is None:
        return status
    return {"And": [{"Variable": "$.route.result.kind", "StringEquals": branch.kind}, status]}


def _terminals(states: dict[str, Any], start: str) -> Iterator[str]:
    """Yield the terminal states reachable from ``start`` (Next, Choices, Default, Catch)."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        state = states[name]
        if state["Type"] in ("Succeed", "Fail"):
            yield name
            continue
        todo += [c["Next"] for c in state.get("Choices", [])]
        todo += [c["Next"] for c in state.get("Catch", [])]
        todo += [state[k] for k in ("Next", "Default") if k in state]


def test_the_state_machine_is_the_flow_state_by_state(states: dict[str, Any]) -> None:
    machine = states["States"]
    assert states["StartAt"] == INGEST.route.name
    route = machine[INGEST.route.name]
    assert route["Type"] == "Task" and route["Next"] == INGEST.outcome_choice
    assert _flow_retries(route) == [r.asl() for r in INGEST.route.retries]
    (catch,) = route["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    assert catch["Next"] == INGEST.quarantine_after_error.name
    quarantine = machine[INGEST.quarantine_after_error.name]
    assert _flow_retries(quarantine) == [r.asl() for r in INGEST.quarantine_after_error.retries]
    assert quarantine["Next"] == INGEST.routing_failed
    assert machine[INGEST.routing_failed]["Type"] == "Fail"

    choice = machine[INGEST.outcome_choice]
    assert choice["Type"] == "Choice"
    expected = [{**_condition(b), "Next": b.start} for b in INGEST.branches]
    assert choice["Choices"] == expected  # every rule, in the flow's order
    assert choice["Default"] == INGEST.default
    assert machine[INGEST.default]["Type"] == "Succeed"
    for branch in INGEST.branches:
        ends = set(_terminals(machine, branch.start))
        assert ends == {branch.success, *branch.failures} - {None}, branch.start
        if branch.success is not None:
            assert machine[branch.success]["Type"] == "Succeed"
        assert all(machine[f]["Type"] == "Fail" for f in branch.failures)
    for task in (INGEST.deidentify, INGEST.start_genomics):
        assert _flow_retries(machine[task.name]) == [r.asl() for r in task.retries], task.name
    assert machine[INGEST.deidentify.name]["Next"] == INGEST.deid_outcome_choice

    named = {INGEST.route.name, INGEST.quarantine_after_error.name, INGEST.routing_failed,
             INGEST.outcome_choice, INGEST.default, INGEST.deid_outcome_choice}  # fmt: skip
    for branch in INGEST.branches:
        named |= {branch.start, *branch.failures} | ({branch.success} - {None})
    assert set(machine) == named  # no state the flow does not describe


# -- the local worker against the state machine -------------------------------------------


def _holds(rule: dict[str, Any], document: dict[str, Any]) -> bool:
    """Evaluate a Choice rule (StringEquals, And) on a state document."""
    if "And" in rule:
        return all(_holds(r, document) for r in rule["And"])
    value: Any = document
    for part in rule["Variable"].removeprefix("$.").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return bool(value == rule["StringEquals"])


def _choose(machine: dict[str, Any], choice: str, document: dict[str, Any]) -> str:
    state = machine[choice]
    return next((c["Next"] for c in state["Choices"] if _holds(c, document)), state["Default"])


def _end(machine: dict[str, Any], name: str, document: dict[str, Any]) -> str:
    """Follow a successful path from ``name`` to its terminal state (Choices evaluated)."""
    while machine[name]["Type"] not in ("Succeed", "Fail"):
        state = machine[name]
        name = _choose(machine, name, document) if state["Type"] == "Choice" else state["Next"]
    return name


class _Handler:
    """A handler that answers from a list (the last answer repeats); counts its calls."""

    def __init__(self, *answers: Invocation) -> None:
        self.answers, self.calls = list(answers), 0

    def invoke(self, event: dict[str, Any]) -> Invocation:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


def _worker(router: _Handler, deid: _Handler | None = None) -> IngestFlow:
    worker = IngestFlow.__new__(IngestFlow)  # no handler subprocesses: the flow alone
    worker.router, worker.quarantine = router, _Handler(Invocation(ok=True))  # type: ignore[assignment]
    worker.deid = deid or _Handler(Invocation(ok=True, result={}))  # type: ignore[assignment]
    worker.retry_delay = 0.0
    worker._reason = lambda route, key: {}  # type: ignore[method-assign]
    return worker


EVENT = {"detail": {"object": {"key": "dicom/x.dcm"}}}
ROUTER_RESULTS = [
    {"kind": "fastq", "status": "received"},
    {"kind": "dicom", "status": "received"},
    {"kind": "note", "status": "received"},
    {"kind": "samplesheet", "status": "accepted"},
    {"kind": "samplesheet", "status": "quarantined", "reason_code": "invalid-samplesheet"},
    {"kind": "dicom", "status": "quarantined", "reason_code": "not-dicom"},
]


@pytest.mark.parametrize("result", ROUTER_RESULTS, ids=lambda r: f"{r['kind']}-{r['status']}")
@pytest.mark.parametrize("deid_status", ["deidentified", "quarantined"])
def test_the_worker_ends_where_the_state_machine_ends(
    states: dict[str, Any], result: dict[str, Any], deid_status: str
) -> None:
    machine = states["States"]
    deid = _Handler(Invocation(ok=True, result={"status": deid_status}))
    execution = _worker(_Handler(Invocation(ok=True, result=result)), deid).execute(EVENT)
    document = {"route": {"result": result}, "deid": {"result": {"status": deid_status}}}
    assert execution.outcome == _end(machine, _choose(machine, INGEST.outcome_choice, document),
                                     document)  # fmt: skip
    assert execution.status == ("FAILED" if machine[execution.outcome]["Type"] == "Fail"
                                else "SUCCEEDED")  # fmt: skip


def test_the_worker_retries_a_transient_error_as_often_as_the_state_machine(
    states: dict[str, Any],
) -> None:
    machine = states["States"]
    retrier = next(r for r in _flow_retries(machine[INGEST.route.name])
                   if "ClientError" in r["ErrorEquals"])  # fmt: skip
    failing = _Handler(Invocation(ok=False, error={"Error": TRANSIENT_ERRORS[0]}))
    execution = _worker(failing).execute(EVENT)
    assert failing.calls == 1 + retrier["MaxAttempts"]
    assert execution.outcome == machine[INGEST.quarantine_after_error.name]["Next"]
    assert machine[execution.outcome]["Type"] == "Fail"

    recovers = _Handler(Invocation(ok=False, error={"Error": "ReadTimeoutError"}),
                        Invocation(ok=True, result=ROUTER_RESULTS[0]))  # fmt: skip
    assert _worker(recovers).execute(EVENT).outcome == INGEST.default
    assert recovers.calls == 2

    final = _Handler(Invocation(ok=False, error={"Error": "ValueError"}))  # no retrier: once
    assert _worker(final).execute(EVENT).outcome == INGEST.routing_failed
    assert final.calls == 1


def test_a_failed_deid_ends_in_the_catch_of_the_deid_task(states: dict[str, Any]) -> None:
    machine = states["States"]
    (catch,) = machine[INGEST.deidentify.name]["Catch"]
    broken = _Handler(Invocation(ok=False, error={"Error": "RuntimeError"}))
    execution = _worker(_Handler(Invocation(ok=True, result=ROUTER_RESULTS[1])), broken).execute(
        EVENT
    )
    assert execution.outcome == catch["Next"] and execution.status == "FAILED"
