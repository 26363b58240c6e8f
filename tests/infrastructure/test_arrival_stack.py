"""Notes on arrival and patient readiness in the deployed stacks (issue 13 §4).

On the synthesized app of ``dev`` with a serving endpoint: the notes queue and its
function (encrypted, dead letters, the configured batching window, a start right on the
notes state machine only), the patient-ready rules (the environment's state machines and
genomics job queue), the endpoint grant (that one endpoint), the latency alarm from the
configuration, and both nag packs on the stacks these add to; the ingest state machine's
note branch (:meth:`NotesOnArrival.queue_note`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Match, Template

from oncopipe.deployment import ConfigurationError, load_config
from stacks.app_factory import OncopipeApp, build_app
from stacks.components.notes_arrival import STATE_MACHINE_ENV
from stacks.components.patient_ready import ENDPOINT_ENV
from tests.conftest import cdk_context

pytestmark = pytest.mark.slow

PACKAGE = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/oncopipe-dev-response/3"
LATENCY_MS = 1500  # not the default: the alarm must take it from the configuration
BATCH_SECONDS = 45


def _context(**ops: Any) -> dict[str, Any]:
    context = cdk_context(env="dev")
    dev = context["oncopipe:environments"]["dev"]
    dev["serving_model_package_arn"] = PACKAGE
    dev["ops"].update(ops)
    return context


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[OncopipeApp, Path, Stack]:
    outdir = tmp_path_factory.mktemp("cdk-arrival")
    context = _context(endpoint_p95_latency_ms=LATENCY_MS, notes_batch_seconds=BATCH_SECONDS)
    app = build_app(App(context=context, outdir=str(outdir)))
    app.app.synth()  # both nag packs pass on the whole app
    return app, outdir, app.ingest


def _template(outdir: Path, stack: Stack) -> dict[str, Any]:
    return json.loads((outdir / f"{stack.stack_name}.template.json").read_text())


def _resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _exports(outdir: Path) -> dict[str, tuple[str, Any]]:
    """Return export name -> (stack name, exported value) of every template."""
    found: dict[str, tuple[str, Any]] = {}
    for path in outdir.glob("*.template.json"):
        for output in json.loads(path.read_text()).get("Outputs", {}).values():
            name = output.get("Export", {}).get("Name")
            if isinstance(name, str):
                found[name] = (path.name.removesuffix(".template.json"), output["Value"])
    return found


def _imported(outdir: Path, value: Any) -> tuple[str, Any]:
    """Return (stack, exported value) behind an ``Fn::ImportValue``."""
    assert isinstance(value, dict) and "Fn::ImportValue" in value, value
    return _exports(outdir)[value["Fn::ImportValue"]]


def _logical_id(template: dict[str, Any], kind: str, fragment: str) -> str:
    ids = [k for k in _resources(template, kind) if fragment in k]
    assert len(ids) == 1, (kind, fragment, ids)
    return ids[0]


def _statements(template: dict[str, Any], role_fragment: str) -> list[dict[str, Any]]:
    """Return the statements of the DefaultPolicy of the one role whose ID has the fragment."""
    role = _logical_id(template, "AWS::IAM::Role", role_fragment)
    policies = [p for p in _resources(template, "AWS::IAM::Policy").values()
                if {"Ref": role} in p["Properties"]["Roles"]]  # fmt: skip
    return [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_notes_queue_is_encrypted_tls_only_with_dead_letters_and_the_configured_window(
    built: Any,
) -> None:
    app, outdir, _ = built
    features = Template.from_json(_template(outdir, app.features))
    template = _template(outdir, app.features)
    queue = _logical_id(template, "AWS::SQS::Queue", "NotesOnArrivalNotesQueue")
    dead = _logical_id(template, "AWS::SQS::Queue", "NotesOnArrivalNotesDeadLetters")
    props = template["Resources"][queue]["Properties"]
    assert _imported(outdir, props["KmsMasterKeyId"])[0] == app.lake.stack_name
    assert props["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dead, "Arn"]},
                                      "maxReceiveCount": 5}  # fmt: skip
    assert "KmsMasterKeyId" in template["Resources"][dead]["Properties"]
    features.has_resource_properties("AWS::SQS::QueuePolicy", {
        "Queues": [{"Ref": queue}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
    })  # fmt: skip
    function = _logical_id(template, "AWS::Lambda::Function", "NotesOnArrivalNotesArrival")
    features.has_resource_properties("AWS::Lambda::EventSourceMapping", {
        "EventSourceArn": {"Fn::GetAtt": [queue, "Arn"]},
        "FunctionName": {"Ref": function},
        "MaximumBatchingWindowInSeconds": BATCH_SECONDS,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    })  # fmt: skip
    # the visibility outlasts a batch being gathered and handled, so none is handled twice
    timeout = template["Resources"][function]["Properties"]["Timeout"]
    assert props["VisibilityTimeout"] >= 6 * timeout + BATCH_SECONDS


def test_notes_function_may_start_only_the_notes_state_machine_which_runs_the_run(
    built: Any,
) -> None:
    app, outdir, _ = built
    template = _template(outdir, app.features)
    machine = _logical_id(template, "AWS::StepFunctions::StateMachine", "NotesOnArrival")
    function = _logical_id(template, "AWS::Lambda::Function", "NotesOnArrivalNotesArrival")
    env = template["Resources"][function]["Properties"]["Environment"]["Variables"]
    assert env[STATE_MACHINE_ENV] == {"Ref": machine}
    states = [s for s in _statements(template, "NotesOnArrivalNotesArrivalRole")
              if any(a.startswith("states:") for a in _actions(s))]  # fmt: skip
    assert states == [{"Action": "states:StartExecution", "Effect": "Allow",
                       "Resource": {"Ref": machine}}]  # fmt: skip
    definition = json.dumps(template["Resources"][machine]["Properties"]["DefinitionString"])
    assert "createProcessingJob.sync" in definition
    assert "States.Array('processing.notes', 'stage', '--run-id', $.run_id)" in definition
    notes_role = _logical_id(template, "AWS::IAM::Role", "NotesRole")
    assert json.dumps({"Fn::GetAtt": [notes_role, "Arn"]}) in definition
    # the state machine passes the notes role and nothing else
    passed = [s for s in _statements(template, "NotesOnArrivalRole")
              if "iam:PassRole" in _actions(s)]  # fmt: skip
    assert [s["Resource"] for s in passed] == [{"Fn::GetAtt": [notes_role, "Arn"]}]


def test_the_ingest_state_machine_queues_each_routed_note_by_its_run(built: Any) -> None:
    app, outdir, _ = built
    template = _template(outdir, app.ingest)
    (machine,) = _resources(template, "AWS::StepFunctions::StateMachine").values()
    raw = machine["Properties"]["DefinitionString"]
    text = "".join(p if isinstance(p, str) else "TOKEN" for p in raw["Fn::Join"][1])
    states = json.loads(text)["States"]
    # the Outcome choice sends a received note (and nothing else) to QueueNote
    (rule,) = [c for c in states["Outcome"]["Choices"] if c.get("Next") == "QueueNote"]
    assert {"Variable": "$.route.result.kind", "StringEquals": "note"} in rule["And"]
    assert {"Variable": "$.route.result.status", "StringEquals": "received"} in rule["And"]
    queue_note = states["QueueNote"]
    assert queue_note["Resource"].endswith(":sqs:sendMessage")
    assert queue_note["Parameters"]["MessageBody"] == {"run_id.$": "$.route.result.run_id"}
    assert queue_note["ResultPath"] is None and queue_note["Next"] == "NoteQueued"
    sends = [s for s in _statements(template, "IngestStateMachineRole")
             if any(a.startswith("sqs:") for a in _actions(s))]  # fmt: skip
    assert len(sends) == 1 and _actions(sends[0]) == ["sqs:SendMessage"]
    stack, value = _imported(outdir, sends[0]["Resource"])
    features = _template(outdir, app.features)
    queue = _logical_id(features, "AWS::SQS::Queue", "NotesOnArrivalNotesQueue")
    assert stack == app.features.stack_name and value == {"Fn::GetAtt": [queue, "Arn"]}


def test_patient_ready_rules_name_the_environments_flows_and_genomics_queue(built: Any) -> None:
    app, outdir, _ = built
    monitor = _template(outdir, app.monitor)
    features = _template(outdir, app.features)
    queue = _logical_id(monitor, "AWS::SQS::Queue", "PatientReadyReadyQueue")
    patterns: dict[str, dict[str, Any]] = {}
    for logical_id, rule in _resources(monitor, "AWS::Events::Rule").items():
        if "PatientReady" not in logical_id:
            continue
        (target,) = rule["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [queue, "Arn"]}
        assert "DeadLetterConfig" in target and target["RetryPolicy"]["MaximumRetryAttempts"] > 0
        patterns[logical_id] = rule["Properties"]

    def machines(fragment: str) -> set[Any]:
        (props,) = [p for k, p in patterns.items() if fragment in k]
        pattern = props["EventPattern"]
        assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
        assert pattern["detail"]["status"] == ["SUCCEEDED"]
        found = set()
        for arn in pattern["detail"]["stateMachineArn"]:
            stack, value = _imported(outdir, arn)
            assert stack == app.features.stack_name
            found.add(value["Ref"])
        return found

    def machine(fragment: str) -> str:
        return _logical_id(features, "AWS::StepFunctions::StateMachine", fragment)

    assert machines("RunFlowSucceeded") == {machine("NotesOnArrival"), machine("SeriesImaging")}
    assert machines("SweepSucceeded") == {machine("ImagingFeaturesDaily")}
    (sweep,) = [p for k, p in patterns.items() if "SweepSucceeded" in k]
    transformer = sweep["Targets"][0]["InputTransformer"]
    assert transformer["InputPathsMap"] == {"detail-startDate": "$.detail.startDate"}
    (genomics,) = [p for k, p in patterns.items() if "GenomicsJobSucceeded" in k]
    detail = genomics["EventPattern"]["detail"]
    stack, value = _imported(outdir, detail["jobQueue"][0])
    assert stack == app.genomics.stack_name and value["Fn::GetAtt"][1] == "JobQueueArn"
    assert detail["parameters"] == {"run_id": [{"exists": True}]}
    # the queued message is the run id alone (a job's other parameters stay out)
    template = genomics["Targets"][0]["InputTransformer"]["InputTemplate"]
    assert json.loads(template.replace("<detail-parameters-run_id>", '"r"')) == {"run_id": "r"}


def test_invoke_endpoint_is_granted_on_the_model_stacks_endpoint_only(built: Any) -> None:
    app, outdir, _ = built
    monitor = _template(outdir, app.monitor)
    model = _template(outdir, app.model)
    endpoint = _logical_id(model, "AWS::SageMaker::Endpoint", "RealtimeEndpoint")
    invokes = [s for s in _statements(monitor, "PatientReadyRole")
               if any(a.startswith("sagemaker") for a in _actions(s))]  # fmt: skip
    assert len(invokes) == 1 and _actions(invokes[0]) == ["sagemaker:InvokeEndpoint"]
    assert _imported(outdir, invokes[0]["Resource"]) == (app.model.stack_name, {"Ref": endpoint})
    function = _logical_id(monitor, "AWS::Lambda::Function", "PatientReadyFunction")
    env = monitor["Resources"][function]["Properties"]["Environment"]["Variables"]
    assert _imported(outdir, env[ENDPOINT_ENV]) == (
        app.model.stack_name, {"Fn::GetAtt": [endpoint, "EndpointName"]})  # fmt: skip
    # the data it reads and writes: the prediction and its manifest, nothing else written
    writes = [s for s in _statements(monitor, "PatientReadyRole") if "s3:PutObject" in _actions(s)]
    written = {json.dumps(r) for s in writes for r in s["Resource"]}
    assert len(written) == 2
    assert any("/cohort/predictions/*" in r for r in written)
    assert any("/_manifests/*" in r for r in written)


def test_without_a_pinned_endpoint_the_approved_models_endpoint_is_invoked(
    tmp_path: Path,
) -> None:
    app = build_app(App(context=cdk_context(env="dev"), outdir=str(tmp_path)), nag=False)
    template = dict(Template.from_stack(app.monitor).to_json())
    function = _logical_id(template, "AWS::Lambda::Function", "PatientReadyFunction")
    env = template["Resources"][function]["Properties"]["Environment"]["Variables"]
    # the endpoint deployment on approval creates and updates (ModelDeploy)
    assert env[ENDPOINT_ENV] == app.model.endpoint_name == "oncopipe-dev-response"
    statements = _statements(template, "PatientReadyRole")
    sagemaker = [s for s in statements if any(a.startswith("sagemaker") for a in _actions(s))]
    assert [_actions(s) for s in sagemaker] == [["sagemaker:InvokeEndpoint"]]
    resource = json.dumps(sagemaker[0]["Resource"])
    assert resource.endswith(':endpoint/oncopipe-dev-response"]]}')


def test_endpoint_latency_alarm_threshold_comes_from_the_configuration(built: Any) -> None:
    app, outdir, _ = built
    alarms = _resources(_template(outdir, app.ops), "AWS::CloudWatch::Alarm")
    latency = [a["Properties"] for a in alarms.values()
               if a["Properties"].get("MetricName") == "ModelLatency"]  # fmt: skip
    assert latency and {a["Threshold"] for a in latency} == {LATENCY_MS * 1000}  # µs


@pytest.mark.parametrize("value", [0, 9, 60_001, "2000"])
def test_endpoint_latency_outside_its_bounds_is_refused(value: Any) -> None:
    context = _context(endpoint_p95_latency_ms=value)
    with pytest.raises(ConfigurationError, match=r"ops\.endpoint_p95_latency_ms"):
        load_config(context, "dev")


def test_both_nag_packs_pass_on_the_stacks_that_changed(built: Any) -> None:
    app, outdir, ingest = built
    path = outdir / "validation-report.json"
    report = json.loads(path.read_text()) if path.exists() else {"pluginReports": []}
    ours = (app.features, app.monitor, app.ops, ingest)
    findings = [
        f"{r['ruleName']} {c['constructPath']}"
        for plugin in report["pluginReports"]
        for r in plugin["violations"]
        for c in r["violatingConstructs"]
        if c["constructPath"].split("/")[0] in {s.node.path for s in ours}
    ]
    assert findings == []
