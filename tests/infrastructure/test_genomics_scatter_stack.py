"""The genomics state machine and its Batch jobs: whole genomes scatter, panels do not.

Read from the synthesized dev app (both cdk-nag packs on: its synth raises on an
unacknowledged finding). The state machine's definition is walked by a small interpreter
of the states it uses (Map, Task, Choice) and compared, step for step, with what the local
worker (:func:`oncopipe.local.worker.run_genomics_jobs`) runs for the same plans, so the
two cannot drift apart. The plan job itself runs against S3 (moto) to show that the
document it writes is the one the state machine reads.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from oncopipe import layout
from oncopipe.genomics.scatter_stage import SCRATCH
from oncopipe.layout import plan_key
from tests.conftest import definition_text, make_bucket

pytestmark = pytest.mark.slow

#: The hand-written Batch states keep only the job status (see stacks/genomics_stack.py).
SCATTER_STEPS = ("plan", "align-shard", "gather", "call-region", "call-gather")


# -- reading the synthesized template ---------------------------------------------------------


@pytest.fixture(scope="module")
def genomics(app_dev: Any) -> dict[str, Any]:
    """The genomics stack's template, the machine's definition and the job steps."""
    stack = app_dev.built.genomics
    template = app_dev.assembly.get_stack_by_name(stack.stack_name).template
    resources = template["Resources"]
    machines = [r for r in resources.values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    assert len(machines) == 1
    text = definition_text(machines[0]["Properties"]["DefinitionString"])
    # a token inside a JSON string ("<X>") or standing for one ("<X>" quoted by Fn::Join)
    definition = json.loads(text)
    jobs = {f"<{k}>": r["Properties"] for k, r in resources.items()
            if r["Type"] == "AWS::Batch::JobDefinition"}  # fmt: skip
    return {"template": template, "definition": definition, "jobs": jobs,
            "config": app_dev.built.config, "stack": stack}  # fmt: skip


def _step(genomics: dict[str, Any], state: dict[str, Any]) -> str:
    """Return the ``batch_jobs.genomics`` step a Batch task state runs."""
    command = genomics["jobs"][state["Parameters"]["JobDefinition"]]["ContainerProperties"][
        "Command"
    ]
    assert command[0] == "batch_jobs.genomics"
    return str(command[1])


def _processor(genomics: dict[str, Any], map_state: str) -> dict[str, Any]:
    state = genomics["definition"]["States"][map_state]
    assert state["Type"] == "Map"
    return cast(dict[str, Any], state["ItemProcessor"]["States"])


def _is_batch(state: dict[str, Any]) -> bool:
    return state.get("Type") == "Task" and "batch:submitJob.sync" in state.get("Resource", "")


# -- the definition -------------------------------------------------------------------------


def test_align_choice_uses_the_configured_threshold_and_the_planned_shards(
    genomics: dict[str, Any],
) -> None:
    states = _processor(genomics, "AlignSamples")
    threshold = genomics["config"].scatter.scatter_min_fastq_bytes
    assert states["Plan"]["Next"] == "ReadPlan" and _step(genomics, states["Plan"]) == "plan"
    assert states["ReadPlan"]["Next"] == "AlignScatters"
    choice = states["AlignScatters"]
    assert choice["Type"] == "Choice"
    by_next = {c["Next"]: c["And"] for c in choice["Choices"]}
    bytes_rule = {"Variable": "$.scatter.plan.fastq_bytes", "NumericGreaterThanEquals": threshold}
    assert bytes_rule in by_next["AlignShards"] and bytes_rule in by_next["AlignOneShard"]
    assert {"Variable": "$.scatter.plan.shards", "NumericGreaterThanEquals": 2} in by_next[
        "AlignShards"
    ]
    assert {"Variable": "$.scatter.plan.shards", "NumericEquals": 1} in by_next["AlignOneShard"]
    # a panel (below the threshold, or not split) is the single job of before
    assert choice["Default"] == "Align" and _step(genomics, states["Align"]) == "align"
    assert states["Align"].get("End") is True


def test_align_shards_is_an_array_job_sized_by_the_plan_then_gathered(
    genomics: dict[str, Any],
) -> None:
    states = _processor(genomics, "AlignSamples")
    shards = states["AlignShards"]
    assert _is_batch(shards) and _step(genomics, shards) == "align-shard"
    assert shards["Parameters"]["ArrayProperties"] == {"Size.$": "$.scatter.plan.shards"}
    assert shards["Next"] == "Gather" and _step(genomics, states["Gather"]) == "gather"
    assert states["Gather"].get("End") is True
    # a split into one shard: Batch arrays need two children, so child 0 runs alone
    one = states["AlignOneShard"]
    assert _step(genomics, one) == "align-shard" and one["Next"] == "Gather"
    assert "ArrayProperties" not in one["Parameters"]
    command = one["Parameters"]["ContainerOverrides"]["Command.$"]
    job = genomics["jobs"][one["Parameters"]["JobDefinition"]]["ContainerProperties"]["Command"]
    elements = [f"$.{c[5:]}" if c.startswith("Ref::") else f"'{c}'" for c in job]
    elements += ["'--index'", "'0'"]
    assert command == "States.Array(" + ", ".join(elements) + ")"


def test_the_plan_is_read_without_a_lambda_from_the_key_the_plan_job_writes(
    genomics: dict[str, Any],
) -> None:
    for map_state, read in (("AlignSamples", "ReadPlan"), ("CallTumours", "ReadCallPlan")):
        state = _processor(genomics, map_state)[read]
        assert state["Resource"].endswith(":states:::aws-sdk:s3:getObject")
        template = plan_key("{}", "{}")
        assert template.startswith(SCRATCH)
        assert state["Parameters"]["Key.$"] == (f"States.Format('{template}', $.run_id, $.sample)")
        assert state["ResultSelector"] == {"plan.$": "States.StringToJson($.Body)"}
        assert state["ResultPath"] == "$.scatter"
    resources = json.dumps(genomics["template"]["Resources"])
    assert "AWS::Lambda::Function" not in resources


def test_calls_scatter_over_the_planned_regions_then_gather(genomics: dict[str, Any]) -> None:
    states = _processor(genomics, "CallTumours")
    choice = states["CallScatters"]
    assert choice["Choices"] == [
        {"Variable": "$.scatter.plan.regions", "NumericGreaterThanEquals": 2,
         "Next": "CallRegions"}
    ]  # fmt: skip
    assert choice["Default"] == "Call" and _step(genomics, states["Call"]) == "call"
    regions = states["CallRegions"]
    assert _step(genomics, regions) == "call-region"
    assert regions["Parameters"]["ArrayProperties"] == {"Size.$": "$.scatter.plan.regions"}
    for name in ("CallRegions", "CallGather"):
        parameters = states[name]["Parameters"]["Parameters"]
        assert parameters["regions.$"] == "States.Format('{}', $.scatter.plan.regions)"
    assert regions["Next"] == "CallGather"
    assert _step(genomics, states["CallGather"]) == "call-gather"
    # the whole sheet: every sample aligned before any tumour is called
    top = genomics["definition"]
    assert top["StartAt"] == "AlignSamples" and top["States"]["AlignSamples"]["Next"] == (
        "CallTumours"
    )
    for each in ("AlignSamples", "CallTumours"):
        assert top["States"][each]["Catch"][0]["Next"] == "GenomicsFailed"


def test_every_submission_retries_batch_exceptions(genomics: dict[str, Any]) -> None:
    found = 0
    for map_state in ("AlignSamples", "CallTumours"):
        for name, state in _processor(genomics, map_state).items():
            if _is_batch(state):
                found += 1
                errors = [e for r in state["Retry"] for e in r["ErrorEquals"]]
                assert "Batch.AWSBatchException" in errors, name
                # a job that ran and failed is not resubmitted by Step Functions
                assert "States.ALL" not in errors and "States.TaskFailed" not in errors, name
    assert (
        found == 8
    )  # Plan, Align, AlignShards, AlignOneShard, Gather, Call, CallRegions, CallGather


def test_job_definitions_retry_spot_reclaims_per_child(genomics: dict[str, Any]) -> None:
    config = genomics["config"]
    steps = {}
    for props in genomics["jobs"].values():
        command = props["ContainerProperties"]["Command"]
        if command[0] != "batch_jobs.genomics":
            continue
        steps[command[1]] = props
        strategy = props["RetryStrategy"]
        assert strategy["Attempts"] == config.batch_spot_retries
        assert strategy["EvaluateOnExit"][0] == {"Action": "RETRY", "OnStatusReason": "Host EC2*"}
        assert strategy["EvaluateOnExit"][1] == {"Action": "EXIT", "OnReason": "*"}
        environment = {e["Name"]: e["Value"] for e in props["ContainerProperties"]["Environment"]}
        assert environment["SCATTER_MIN_FASTQ_BYTES"] == str(config.scatter.scatter_min_fastq_bytes)
        assert environment["SCATTER_PAIRS_PER_SHARD"] == str(config.scatter.align_pairs_per_shard)
    assert set(steps) == {"align", "call", *SCATTER_STEPS}
    for step in ("call-region", "call-gather"):
        assert steps[step]["ContainerProperties"]["Command"][-2:] == ["--regions", "Ref::regions"]
    # the plan splits, it does not align: a small job
    plan = steps["plan"]["ContainerProperties"]["ResourceRequirements"]
    assert {"Type": "VCPU", "Value": "2"} in plan


# -- grants -----------------------------------------------------------------------------------


def _statements(genomics: dict[str, Any], role: Any) -> list[dict[str, Any]]:
    stack = genomics["stack"]
    logical = stack.get_logical_id(role.node.default_child)
    found = []
    for resource in genomics["template"]["Resources"].values():
        if resource["Type"] != "AWS::IAM::Policy":
            continue
        if {"Ref": logical} in resource["Properties"]["Roles"]:
            found += resource["Properties"]["PolicyDocument"]["Statement"]
    assert found
    return found


def _curated_paths(genomics: dict[str, Any], role: Any, action: str) -> set[str]:
    """Return the curated object patterns a role's statements allow ``action`` on."""
    curated = re.compile(r"CuratedBucket[0-9A-F]{8}Arn$")
    paths = set()
    for statement in _statements(genomics, role):
        actions = statement["Action"]
        if action.lower() not in [a.lower() for a in ([actions] if isinstance(actions, str)
                                                       else actions)]:  # fmt: skip
            continue
        resources = statement["Resource"]
        for resource in resources if isinstance(resources, list) else [resources]:
            if isinstance(resource, dict) and "Fn::Join" in resource:
                head, *rest = resource["Fn::Join"][1]
                if isinstance(head, dict) and curated.search(str(head.get("Fn::ImportValue"))):
                    paths.add("".join(str(r) for r in rest))
    return paths


def test_job_roles_read_and_write_the_scatter_scratch_and_nothing_wider(
    genomics: dict[str, Any],
) -> None:
    stack = genomics["stack"]
    scratch = f"/{SCRATCH}*"
    expected = {
        stack.job_role: {f"/{layout.CURATED_GENOMICS_BAM}*", "/_manifests/*", scratch},
        stack.call_role: {f"/{layout.CURATED_GENOMICS_VCF}*",
                          f"/{layout.CURATED_GENOMICS_VARIANTS}*",
                          f"/{layout.CURATED_GENOMICS_VAF_HISTOGRAMS}*", "/_manifests/*", scratch},
    }  # fmt: skip
    for role, writes in expected.items():
        assert _curated_paths(genomics, role, "s3:PutObject") == writes
        assert scratch in _curated_paths(genomics, role, "s3:GetObject")
        everything = _curated_paths(genomics, role, "s3:GetObject") | writes
        assert not everything & {"/*", "/genomics/*"}
        # no deletes on the scratch: a redone part overwrites, the prefix expires
        assert scratch not in _curated_paths(genomics, role, "s3:DeleteObject")


def test_state_machine_reads_only_the_plans_and_submits_only_to_the_queue(
    genomics: dict[str, Any],
) -> None:
    machine = genomics["stack"].state_machine
    assert _curated_paths(genomics, machine.role, "s3:GetObject") == {f"/{SCRATCH}*"}
    assert not _curated_paths(genomics, machine.role, "s3:PutObject")
    # every wildcard it holds is one of the acknowledged ones (nag passed on them)
    wildcards = set()
    for statement in _statements(genomics, machine.role):
        resources = statement["Resource"]
        for resource in resources if isinstance(resources, list) else [resources]:
            text = json.dumps(resource)
            if "*" in text:
                wildcards.add(re.sub(r'.*"([^"]*\*)".*', r"\1", text))
    assert wildcards == {"*", ":job/*", ":job-definition/*", f"/{SCRATCH}*"}


# -- the same steps as the local worker -------------------------------------------------------


def _walk(
    genomics: dict[str, Any], states: dict[str, Any], start: str, data: dict[str, Any],
    plans: dict[str, dict[str, int]], out: list[tuple[str, str, int | None]],
) -> None:  # fmt: skip
    """Run the definition's states on ``data``: Map, Task (Batch, S3), Choice, Succeed, Fail.

    Batch tasks append ``(step, sample, children)`` to ``out`` (children: the array size,
    1 for a single child run with ``--index``, None for a plain job); the S3 read returns
    the sample's plan. An unknown state or operator fails the test (extend the walker).
    """
    name: str | None = start
    while name is not None:
        state = states[name]
        kind = state["Type"]
        if kind in ("Succeed", "Fail"):
            return
        if kind == "Map":
            assert state["ItemsPath"].startswith("$.")
            for item in data[state["ItemsPath"][2:]]:
                selected = {}
                for key, path in state["ItemSelector"].items():
                    item_field = path.removeprefix("$$.Map.Item.Value.")
                    value = item[item_field] if item_field != path else data[path[2:]]
                    selected[key.removesuffix(".$")] = value
                processor = state["ItemProcessor"]
                _walk(genomics, processor["States"], processor["StartAt"], selected, plans, out)
        elif kind == "Task" and _is_batch(state):
            parameters = state["Parameters"]
            size: int | None = None
            if "ArrayProperties" in parameters:
                size = int(_path(data, parameters["ArrayProperties"]["Size.$"]))
                assert size >= 2, "Batch array jobs have 2 to 10,000 children"
            elif "ContainerOverrides" in parameters:
                assert "'--index', '0'" in parameters["ContainerOverrides"]["Command.$"]
                size = 1
            out.append((_step(genomics, state), data["sample"], size))
        elif kind == "Task" and state["Resource"].endswith("s3:getObject"):
            data = {**data, "scatter": {"plan": plans[data["sample"]]}}
        elif kind == "Choice":
            name = next((c["Next"] for c in state["Choices"] if _holds(c, data)), state["Default"])
            continue
        else:
            raise AssertionError(f"state {name}: type {kind} is not walked")
        name = None if state.get("End") else state["Next"]


def _path(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.removeprefix("$.").split("."):
        value = value[part]
    return value


def _holds(rule: dict[str, Any], data: dict[str, Any]) -> bool:
    if "And" in rule:
        return all(_holds(r, data) for r in rule["And"])
    value = _path(data, rule["Variable"])
    tests = {
        "NumericGreaterThanEquals": lambda a, b: a >= b,
        "NumericEquals": lambda a, b: a == b,
        "NumericGreaterThan": lambda a, b: a > b,
        "NumericLessThan": lambda a, b: a < b,
    }
    (operator,) = [k for k in rule if k not in ("Variable", "Next")]
    assert operator in tests, f"operator {operator} is not walked"
    return bool(tests[operator](value, rule[operator]))


def _worker_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, route: dict[str, Any],
    plans: dict[str, dict[str, int]],
) -> list[tuple[str, str, int | None]]:  # fmt: skip
    """Run the local worker's genomics flow with every job answered from ``plans``."""
    from oncopipe.local import worker

    monkeypatch.setenv("ONCOPIPE_HOME", str(tmp_path))
    (tmp_path / "local" / "logs").mkdir(parents=True)
    calls: list[tuple[str, str, int | None]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        step, sample = argv[3], argv[argv.index("--sample") + 1]
        index = kwargs["env"].get("AWS_BATCH_JOB_ARRAY_INDEX")
        calls.append((step, sample, None if index is None else int(index)))
        outcome = plans[sample] if step == "plan" else {"item_status": "done"}
        return subprocess.CompletedProcess(argv, 0, json.dumps(outcome) + "\n", "")

    class State:
        def stage_env(self, role: str) -> dict[str, str]:
            return {}

    monkeypatch.setattr(worker.subprocess, "run", run)
    execution = worker.Execution("sheet", "SUCCEEDED", "Accepted", route, 0.0)
    worker.run_genomics_jobs(cast(Any, State()), execution, "r1", scatter={}, array_workers=1)
    # array children (one process each) as one array job of that many children
    steps: list[tuple[str, str, int | None]] = []
    for step, sample, index in calls:
        if index is None:
            steps.append((step, sample, None))
        elif index == 0:
            steps.append((step, sample, 1))
        else:
            previous = steps[-1]
            assert previous[:2] == (step, sample) and previous[2] == index
            steps[-1] = (step, sample, index + 1)
    return steps


def _plan(shards: int, regions: int, fastq_bytes: int) -> dict[str, int]:
    return {"shards": shards, "regions": regions, "fastq_bytes": fastq_bytes,
            "reference_bases": 3_100_000_000 if regions > 1 else 10_000}  # fmt: skip


@pytest.mark.parametrize("scenario", ["whole-genome", "one-shard", "panel"])
def test_state_machine_runs_the_steps_of_the_local_worker_in_order(
    genomics: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, scenario: str
) -> None:
    big = genomics["config"].scatter.scatter_min_fastq_bytes
    plans = {
        "whole-genome": {"T1": _plan(5, 4, big * 2), "N1": _plan(3, 4, big)},
        "one-shard": {"T1": _plan(1, 1, big), "N1": _plan(0, 1, 10)},
        "panel": {"T1": _plan(0, 1, 10), "N1": _plan(0, 1, 10)},
    }[scenario]
    route = {"run_id": "r1", "sample_table": "_samples/r1.parquet", "sample_ids": ["T1", "N1"],
             "tumour_ids": ["T1"],
             "sample_tags": [{"sample": "T1", "tag": "obj-t1"}, {"sample": "N1", "tag": "obj-n1"}],
             "tumour_tags": [{"sample": "T1", "tag": "obj-t1"}]}  # fmt: skip
    machine: list[tuple[str, str, int | None]] = []
    definition = genomics["definition"]
    _walk(genomics, definition["States"], definition["StartAt"], route, plans, machine)
    assert machine == _worker_steps(monkeypatch, tmp_path, route, plans)
    expected_first = {
        "whole-genome": [("plan", "T1", None), ("align-shard", "T1", 5), ("gather", "T1", None)],
        "one-shard": [("plan", "T1", None), ("align-shard", "T1", 1), ("gather", "T1", None)],
        "panel": [("plan", "T1", None), ("align", "T1", None)],
    }[scenario]
    assert machine[: len(expected_first)] == expected_first
    last = {
        "whole-genome": [("call-region", "T1", 4), ("call-gather", "T1", None)],
        "one-shard": [("call", "T1", None)],
        "panel": [("call", "T1", None)],
    }[scenario]
    assert machine[-len(last) :] == last


# -- the plan job writes what the state machine reads ---------------------------------------


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools from `make setup`")
def test_the_plan_job_writes_the_document_the_state_machine_reads(
    genomics: dict[str, Any], s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import pysam

    from batch_jobs.genomics import __main__ as job
    from oncopipe.genomics.simulate import make_panel, simulate_pair, write_fasta

    buckets = {"INGEST_BUCKET": "p-ingest", "QUARANTINE_BUCKET": "p-quarantine",
               "CURATED_BUCKET": "p-curated", "ARTIFACTS_BUCKET": "p-artifacts"}  # fmt: skip
    for name, bucket in buckets.items():
        make_bucket(s3, bucket)
        monkeypatch.setenv(name, bucket)
    sequences, panel, _ = make_panel()
    write_fasta(sequences, tmp_path / "panel.fa")
    pysam.faidx(str(tmp_path / "panel.fa"))
    panel.dump(tmp_path / "panel.json")
    for name in ("panel.fa", "panel.fa.fai", "panel.json"):
        s3.upload_file(str(tmp_path / name), buckets["ARTIFACTS_BUCKET"],
                       f"{layout.ARTIFACTS_REFERENCE}{name}")  # fmt: skip
    r1, r2 = simulate_pair(sequences, [], sample="P1-T", depth=20, seed=11)
    lane = {"sample": "P1-T", "type": "tumour", "patient_key": "pk-aaaaaaaaaaaaaaaa",
            "fastq_1": "fastq/P1-T_R1.fastq.gz", "fastq_2": "fastq/P1-T_R2.fastq.gz",
            "lane": "1", "library": "P1-T", "platform": "ILLUMINA"}  # fmt: skip
    s3.put_object(Bucket=buckets["INGEST_BUCKET"], Key=lane["fastq_1"], Body=r1)
    s3.put_object(Bucket=buckets["INGEST_BUCKET"], Key=lane["fastq_2"], Body=r2)
    # the sample table's stage inputs (the router's part, tested with it)
    monkeypatch.setattr(job, "load_samples", lambda store, b, key: [lane])
    # scatter this small pair: every byte counts, shards of 200 pairs, 3 regions
    for variable, value in {"SCATTER_MIN_FASTQ_BYTES": "1", "SCATTER_PAIRS_PER_SHARD": "200",
                            "SCATTER_CALL_REGIONS": "3",
                            "SCATTER_MIN_REFERENCE_BASES": "1"}.items():  # fmt: skip
        monkeypatch.setenv(variable, value)

    code = job.main(["plan", "--run-id", "r7", "--sample-table", "t", "--sample", "P1-T"])
    assert code == 0
    # the key the definition formats from the Map iteration's run_id and sample
    read = _processor(genomics, "AlignSamples")["ReadPlan"]["Parameters"]["Key.$"]
    template = re.fullmatch(r"States\.Format\('([^']*)', \$\.run_id, \$\.sample\)", read)
    assert template is not None
    key = template.group(1).format("r7", "P1-T")
    body = s3.get_object(Bucket=buckets["CURATED_BUCKET"], Key=key)["Body"].read()
    document = json.loads(body)  # what States.StringToJson($.Body) parses
    assert document["shards"] >= 2 and document["regions"] == 3
    assert document["fastq_bytes"] == len(r1) + len(r2)
    split = s3.get_object(
        Bucket=buckets["CURATED_BUCKET"], Key=f"{SCRATCH}r7/P1-T/align/shards.json"
    )
    committed = json.loads(split["Body"].read())
    assert len(committed["shards"]) == document["shards"]
    # and the machine, reading that document, runs an array of that many children (in a
    # deployment the threshold is the configured one: use the job's here)
    steps: list[tuple[str, str, int | None]] = []
    states = _processor(genomics, "AlignSamples")
    plans = {
        "P1-T": {**document, "fastq_bytes": genomics["config"].scatter.scatter_min_fastq_bytes}
    }
    _walk(genomics, states, "Plan", {"run_id": "r7", "sample_table": "t", "sample": "P1-T"},
          plans, steps)  # fmt: skip
    assert steps == [("plan", "P1-T", None), ("align-shard", "P1-T", document["shards"]),
                     ("gather", "P1-T", None)]  # fmt: skip
