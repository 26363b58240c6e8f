"""``oncopipe local lifecycle`` on the embedded endpoint: the model lifecycle loop.

One run of the command (small sizes: 6 days, the shift on day 3, no uploads on day 4, a
600-patient cohort), then what it printed, its summary and what the endpoint holds: each
decision was made by a core (pipeline, four eyes, deployment, drift job, retrain gate).
Fast: the local SageMaker registry's answers and the calendar schedule.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import REPO

#: The end-to-end run (embedded endpoint, three pipeline runs): about 45 s.
slow = pytest.mark.slow

SHIFT_DAY = 3
DAYS = 6
GROUP = "oncopipe-dev-response"


def oncopipe(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update({"ONCOPIPE_HOME": str(home), "COLUMNS": "200"})
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "oncopipe", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"oncopipe {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``local up --no-iam``, one ``local lifecycle``, its output, summary and the endpoint."""
    home = tmp_path_factory.mktemp("oncopipe-home")
    oncopipe(home, "local", "up", "--no-iam")
    try:
        state = json.loads((home / "local" / "state.json").read_text())
        result = oncopipe(home, "local", "lifecycle", "--days", str(DAYS), "--shift-day",
                          str(SHIFT_DAY), "--patients", "600", "--epochs", "8")  # fmt: skip
        summary = json.loads((home / "local" / "lifecycle" / "summary.json").read_text())
        s3 = boto3.client("s3", endpoint_url=state["endpoint_url"], region_name=state["region"],
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        yield {"home": home, "out": result.stdout, "summary": summary, "s3": s3,
               "drift": summary["scenarios"]["drift"]}  # fmt: skip
    finally:
        subprocess.run([sys.executable, "-m", "oncopipe", "local", "down"], cwd=REPO,
                       env={**os.environ, "ONCOPIPE_HOME": str(home)}, capture_output=True,
                       timeout=60, check=False)  # fmt: skip


def _packages(s3: Any, bucket: str) -> dict[int, dict[str, Any]]:
    """The endpoint's registry records (the local runner's), by version."""
    from oncopipe.pipeline.local_runner import model_packages
    from oncopipe.storage import ObjectStore

    return {p["ModelPackageVersion"]: p for p in model_packages(ObjectStore(s3), bucket, GROUP)}


ARTIFACTS = "oncopipe-dev-lifecycle-drift-artifacts"


@slow
def test_v1_registers_pending_and_its_creators_approval_is_refused(run: dict[str, Any]) -> None:
    first = run["drift"]["executions"][0]
    assert first["status"] == "Succeeded" and first["registered"][0].endswith(f"/{GROUP}/1")
    assert "v1 registered: PendingManualApproval" in run["out"]
    creator, approver = run["drift"]["approvals"]
    # the four-eyes check (the governance core) rejects it; deployment refuses it
    assert creator["by"] == "creator" and creator["four_eyes"]["outcome"] == "rejected"
    assert "approved by the principal that registered it" in creator["four_eyes"]["reason"]
    assert creator["deploy"]["outcome"] == "refused"
    assert "not Approved; not deployed" in creator["deploy"]["reason"]
    assert creator["status"] == "Rejected"
    assert creator["approval_description"].startswith("four-eyes check: ")
    # the creator's session is one person's (SourceIdentity), the approver another's
    package = _packages(run["s3"], ARTIFACTS)[1]
    assert package["CreatedBy"]["IamIdentity"]["SourceIdentity"] == "scientist-1"
    assert package["LastModifiedBy"]["IamIdentity"]["SourceIdentity"] == "approver-1"
    assert approver["four_eyes"]["outcome"] == "kept"


@slow
def test_the_approvers_approval_deploys_v1_with_its_baseline(run: dict[str, Any]) -> None:
    from oncopipe.monitor.job import baseline_key

    approval = run["drift"]["approvals"][1]
    assert approval["status"] == "Approved" and approval["deploy"]["outcome"] == "deployed"
    assert approval["deploy"]["baseline_key"] == baseline_key(1)
    baseline = json.loads(run["s3"].get_object(Bucket=ARTIFACTS,
                                               Key=baseline_key(1))["Body"].read())  # fmt: skip
    assert baseline["model_package_arn"].endswith(f"/{GROUP}/1")
    assert baseline["monitors"]["vaf/panel-v1/paired"]["samples"] > 0
    package = _packages(run["s3"], ARTIFACTS)[1]
    plan = approval["deploy"]["plan"]
    assert plan["artifact_sha256"] == package["CustomerMetadataProperties"]["artifact_sha256"]
    served = run["drift"]["served"]
    assert served["ping"] and 0.0 <= served["response_probability"] <= 1.0
    assert served["patient_key"].startswith("pk-")  # a synthetic pseudonymous key


@slow
def test_the_shift_is_caught_within_three_days(run: dict[str, Any]) -> None:
    drift = run["drift"]
    assert drift["false_alarm_days"] == []
    assert drift["detection_day"] is not None and drift["detection_day"] >= SHIFT_DAY
    assert drift["detection_delay_days"] <= 3
    scores = {d["day"]: d["score"] for d in drift["days"]}
    assert all(scores[d] < 0.03 for d in range(1, SHIFT_DAY))
    # the gap day is not evaluated: the alarm clears and turns to ALARM again after it
    gap = run["summary"]["options"]["gap_day"]
    assert gap == SHIFT_DAY + 1 and scores[gap] is None
    assert drift["alarm_days"] == [SHIFT_DAY, gap + 1]


@slow
def test_the_gate_starts_one_retrain_that_waits_for_approval(run: dict[str, Any]) -> None:
    decisions = run["drift"]["gate_decisions"]
    started = [d for d in decisions if d["outcome"] == "triggered"]
    assert len(started) == 1 and started[0]["source"] == "drift_alarm"
    execution = started[0]["execution"]
    assert execution["status"] == "Succeeded" and execution["registered"][0].endswith("/2")
    # the gate's parameters: the approved version's AUC as the floor, a new cohort build
    v1_auc = json.loads(run["s3"].get_object(
        Bucket=ARTIFACTS, Key=f"evaluation/{run['drift']['executions'][0]['execution_id']}/"
        "evaluation.json")["Body"].read())["metrics"]["auc"]  # fmt: skip
    assert execution["parameters"]["ApprovedAuc"] == pytest.approx(v1_auc)
    assert execution["parameters"]["CohortRunId"].startswith("retrain-")
    assert execution["steps"]["Cohort"] == "Succeeded"  # built anew, not the cached build
    assert [(v["version"], v["status"]) for v in run["drift"]["versions"]] == [
        (1, "Approved"), (2, "PendingManualApproval")]  # fmt: skip
    record = started[0]["record"].removeprefix(f"s3://{ARTIFACTS}/")
    assert json.loads(run["s3"].get_object(Bucket=ARTIFACTS, Key=record)["Body"].read())[
        "outcome"] == "triggered"  # fmt: skip


@slow
def test_a_second_alarm_inside_the_cooldown_is_skipped(run: dict[str, Any]) -> None:
    first, second = run["drift"]["gate_decisions"]
    assert (second["outcome"], second["reason"], second["source"]) == (
        "skipped", "cooldown", "drift_alarm")  # fmt: skip
    hours = run["summary"]["rules"]["cooldown_hours"]
    gap = dt.datetime.fromisoformat(second["at"]) - dt.datetime.fromisoformat(first["at"])
    assert gap < dt.timedelta(hours=hours)


@slow
def test_the_control_run_raises_no_alarm(run: dict[str, Any]) -> None:
    control = run["summary"]["scenarios"]["control"]
    assert control["alarm_days"] == [] and control["gate_decisions"] == []
    assert len(control["days"]) == DAYS and all(d["alarm"] == "OK" for d in control["days"])
    assert [(v["version"], v["status"]) for v in control["versions"]] == [(1, "Approved")]


@slow
def test_the_command_prints_each_decision_and_the_plot_paths(run: dict[str, Any]) -> None:
    out = run["out"]
    for line in ("four-eyes check: rejected", "deployment: refused", "four-eyes check: kept",
                 "drift baseline published to s3://", "/invocations for synthetic patient",
                 f"day  {SHIFT_DAY}", "-> ALARM", "retrain gate (drift_alarm",
                 "started, execution local-", "skipped: cooldown",
                 "v2: PendingManualApproval (waits for approval)",
                 f"control (no shift, {DAYS} days): 0 alarm(s)"):  # fmt: skip
        assert line in out, line
    assert f"alarmed in the window of day {SHIFT_DAY}: 1 day(s) (goal <= 3: met)" in out
    plots = [Path(line.removeprefix("drift plot ")) for line in out.splitlines()
             if line.startswith("drift plot ")]  # fmt: skip
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert any(p.name == "drift-timeline.png" for p in plots)
    assert f"summary {run['home'] / 'local' / 'lifecycle' / 'summary.json'}" in out


# -- fast: the local registry's SageMaker semantics, the schedule, the options ------------
def test_the_local_pipeline_start_types_parameters_and_honours_the_token(s3: Any) -> None:
    from botocore.exceptions import ClientError

    from oncopipe.local.registry import LocalSageMaker, user_context
    from oncopipe.pipeline.definition import model_pipeline
    from oncopipe.pipeline.local_runner import LocalPipelineRunner
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_bucket
    from tests.unit.test_pipeline_definition import settings

    store = ObjectStore(s3)
    registry = LocalSageMaker(store, make_bucket(s3, "artifacts"), groups=(GROUP,),
                              region="eu-west-1")  # fmt: skip
    runner = LocalPipelineRunner(model_pipeline(settings()), store, work_dir="unused",
                                 artifacts_bucket="artifacts")  # fmt: skip
    registry.add_pipeline("p", runner)
    gate = registry.acting_as(user_context("arn:aws:sts::000000000000:assumed-role/gate/g"))
    params = [{"Name": "ApprovedAuc", "Value": "0.81"}, {"Name": "CohortRunId", "Value": "b2"}]
    started = gate.start_pipeline_execution(PipelineName="p", PipelineParameters=params,
                                            ClientRequestToken="t1")  # fmt: skip
    arn = started["PipelineExecutionArn"]
    # a retried start (same token) is the same execution, queued once
    again = gate.start_pipeline_execution(PipelineName="p", ClientRequestToken="t1")
    assert again["PipelineExecutionArn"] == arn
    execution = registry.execution(arn)
    assert execution.parameters == {"ApprovedAuc": 0.81, "CohortRunId": "b2"}
    assert execution.started_by["IamIdentity"]["Arn"].endswith("/gate/g")
    for bad, message in (([{"Name": "MinAUC", "Value": "1"}], "unknown pipeline parameter"),
                         ([{"Name": "MinAuc", "Value": "high"}], "is not a Float")):  # fmt: skip
        with pytest.raises(ClientError, match=message):
            gate.start_pipeline_execution(PipelineName="p", PipelineParameters=bad)
    with pytest.raises(ClientError, match="Could not find model package"):
        gate.describe_model_package(ModelPackageName=f"{arn.split(':pipeline')[0]}"
                                    f":model-package/{GROUP}/9")  # fmt: skip


def test_the_calendar_schedule_and_the_options() -> None:
    from oncopipe.local.lifecycle import START, LifecycleError, Options, _schedule_times

    mondays = _schedule_times("cron(0 3 ? * MON *)", START, 30)
    assert [t.day for t in mondays] == [2, 9, 16, 23, 30] and {t.hour for t in mondays} == {3}
    assert len(_schedule_times("rate(7 days)", START, 30)) == 5
    with pytest.raises(LifecycleError, match="reads cron"):
        _schedule_times("cron(0 3 1 * ? *)", START, 30)
    assert Options().gap == 11 and Options(gap_day=0).gap == 0
    with pytest.raises(LifecycleError, match="shift day must be one of the days"):
        Options(days=5, shift_day=9)
