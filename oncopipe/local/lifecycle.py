"""``oncopipe local lifecycle``: the model lifecycle loop end to end, locally (issue 12 §7).

Each decision is made by the core that makes it in AWS, on the embedded endpoint (or any
S3-compatible endpoint the clients name); this module only moves the simulated clock and
delivers what EventBridge would:

1. a synthetic cohort (:mod:`oncopipe.cohort.synthetic`, committed like the stages commit
   their tables) and one simulated VAF histogram per patient, written by the variants
   stage's writer (:func:`oncopipe.monitor.histogram.sample_output`);
2. the model pipeline (:func:`oncopipe.pipeline.definition.model_pipeline`) run by
   :class:`oncopipe.pipeline.local_runner.LocalPipelineRunner`, started as the data
   scientist: v1 is registered PendingManualApproval (or the AUC gate fails the run);
3. the creator approves v1 through the approver role (:func:`oncopipe.governance.
   set_status`); the approval event reaches the four-eyes check (:func:`oncopipe.governance.
   review`: rejected) and deployment (:func:`oncopipe.deploy.verify`: refused);
4. the approver approves; four eyes keep it; deployment verifies the artefact's digest
   and publishes the drift baseline (:func:`oncopipe.deploy.publish_baseline`); the serving
   handler of the training image (:mod:`training.serve`) is started on the verified
   artefact and answers one request (what the endpoint's model and configuration would);
5. days 1..N: that day's simulated samples are written (from the shift day on, a new
   sequencing platform moves every clonal call's VAF by ``shift``; on the gap day nothing
   is uploaded); at 01:15 UTC the next day the drift job (:func:`oncopipe.monitor.job.run`,
   composed as the ``model_drift`` Lambda composes it) compares the day with the approved
   version's baseline and writes its report and PNG; the alarm is the M-of-N rule
   (:class:`oncopipe.monitor.window.AlarmRule`, CloudWatch's missing-data-not-breaching);
6. each change of the alarm to ALARM is an event to the retrain gate
   (:class:`oncopipe.monitor.gate.RetrainGate`, wired as the ``retrain_gate`` Lambda wires
   it); when it starts the pipeline, the retrain runs with the parameters the gate passed
   and registers its candidate PendingManualApproval. With ``calendar``, the weekly
   schedule (``lifecycle.retrain_schedule``) asks the gate too.

The SageMaker API calls are answered by :class:`oncopipe.local.registry.LocalSageMaker`
(moto's registry records every change as made by the package's creator, so four eyes could
not run on it). A scenario has its own buckets and lease table
(:func:`oncopipe.local.provision.provision_lifecycle`), emptied first: the control run (no
shift) starts from nothing, as the drift run does. Data are simulated; keys are synthetic
pseudonymous keys; output holds counts, distances, versions and decisions.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from oncopipe import layout
from oncopipe.errors import OncopipeError
from oncopipe.local.registry import LocalExecution, LocalSageMaker, user_context
from oncopipe.pipeline.local_runner import LOCAL_ACCOUNT, set_environment
from oncopipe.storage import TAG_RUN_ID, TAG_STEP, ObjectStore

#: Day 1 of the simulated month (a Monday).
START = dt.date(2026, 11, 2)
#: When the drift job runs: the daily rule's cron(15 1 * * ? *), on the previous UTC day.
DRIFT_JOB_TIME = dt.time(1, 15)
#: The model family of the retrain gate (``stacks.monitor_stack.MODEL_FAMILY``).
FAMILY = "response"
#: The radiomic features of the synthetic cohort: a small v1 subset, so training is fast.
FEATURE_PREFIXES = ("original_", "log-sigma-1-0-mm-3D_")
#: Small and fast (seconds): the pipeline's hyperparameters locally (epochs: the options').
HYPERPARAMETERS = {"batch-size": "32", "lr": "0.003", "d-model": "32", "layers": "2",
                   "heads": "2", "seed": "0", "threads": "1", "package": "false",
                   "log-level": "WARNING"}  # fmt: skip
#: Pipeline steps whose progress lines are not worth a line of the demo.
_QUIET_STEP_LINES = re.compile(r": (not executed|input .*|channel .*|running)$")


class LifecycleError(OncopipeError):
    """The lifecycle cannot go on (bad options, or a step left nothing to go on with)."""


@dataclass(frozen=True)
class Options:
    """What to simulate. ``gap_day`` None: the day after the shift day; 0: no gap."""

    days: int = 30
    shift: float = 0.12
    shift_day: int = 10
    samples_per_day: int = 20
    gap_day: int | None = None
    control: bool = True
    calendar: bool = False
    seed: int = 0
    patients: int = 800
    epochs: int = 8
    start: dt.date = START

    def __post_init__(self) -> None:
        checks = ((self.days >= 1, "days must be at least 1"),
                  (1 <= self.shift_day <= self.days, "shift day must be one of the days"),
                  (0.0 <= self.shift <= 1.0, "shift must be within 0..1 (VAF units)"),
                  (self.samples_per_day >= 1, "samples per day must be at least 1"),
                  (self.patients >= 100, "the cohort needs at least 100 patients"),
                  (self.epochs >= 1, "epochs must be at least 1"),
                  (self.gap_day is None or 0 <= self.gap_day <= self.days,
                   "gap day must be 0 (none) or one of the days"))  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise LifecycleError(f"lifecycle options: {message}")

    @property
    def gap(self) -> int:
        """Return the day without uploads (0: none)."""
        if self.gap_day is not None:
            return self.gap_day
        return self.shift_day + 1 if self.shift_day < self.days else 0


@dataclass(frozen=True)
class Endpoint:
    """Where the scenario's resources live: boto3 client arguments and the job environment."""

    client_kwargs: dict[str, Any]
    job_environment: dict[str, str]


@dataclass
class Day:
    """One simulated day of a scenario: its uploads, the drift job's verdict, the decisions."""

    day: int
    date: str
    samples: int
    shifted: bool
    score: float | None
    note: str
    alarm: str
    decisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Scenario:
    """What happened in one scenario (``drift`` or ``control``)."""

    name: str
    shift: float
    days: list[Day] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    deployed: dict[str, Any] = field(default_factory=dict)
    served: dict[str, Any] = field(default_factory=dict)
    executions: list[dict[str, Any]] = field(default_factory=list)
    gate: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    @property
    def alarm_days(self) -> list[int]:
        """Return the days whose window turned the alarm to ALARM."""
        before = "OK"
        turned = []
        for d in self.days:
            if d.alarm == "ALARM" and before != "ALARM":
                turned.append(d.day)
            before = d.alarm
        return turned

    def detection_day(self, shift_day: int) -> int | None:
        """Return the first day from ``shift_day`` on whose window is in ALARM (None: never)."""
        return next((d.day for d in self.days if d.day >= shift_day and d.alarm == "ALARM"), None)

    def as_dict(self, shift_day: int) -> dict[str, Any]:
        detected = self.detection_day(shift_day) if self.shift else None
        return {
            "shift": self.shift,
            "alarm_days": self.alarm_days,
            "false_alarm_days": [d for d in self.alarm_days if not self.shift or d < shift_day],
            "detection_day": detected,
            # counted as the benchmark counts it: caught in the shift's first window = 1 day
            "detection_delay_days": None if detected is None else detected - shift_day + 1,
            "approvals": self.approvals, "deployed": self.deployed, "served": self.served,
            "executions": self.executions, "gate_decisions": self.gate,
            "versions": self.versions, "plots": self.plots,
            "days": [asdict(d) for d in self.days],
        }  # fmt: skip


@dataclass
class Report:
    """The whole run: both scenarios, the summary file and the plots."""

    options: Options
    rules: dict[str, Any]
    drift: Scenario
    control: Scenario | None
    out: Path
    summary: Path
    plots: list[Path]
    seconds: float


def _principal(prefix: str, role: str, session: str, *, person: bool = False) -> dict[str, Any]:
    """A local principal's UserContext: a role session (a person's carries SourceIdentity)."""
    arn = f"arn:aws:sts::{LOCAL_ACCOUNT}:assumed-role/{prefix}-{role}/{session}"
    return user_context(arn, source_identity=session if person else None)


@dataclass(frozen=True)
class Principals:
    """Who acts. Sessions are pseudonymous; a person's SourceIdentity follows role chains."""

    scientist: dict[str, Any]  # runs the first training
    creator_as_approver: dict[str, Any]  # the same person through the ModelApprover role
    approver: dict[str, Any]
    four_eyes: dict[str, Any]
    deploy: dict[str, Any]
    gate: dict[str, Any]

    @classmethod
    def of(cls, prefix: str) -> Principals:
        """Return the principals of the deployment ``prefix`` (local role names)."""
        return cls(
            scientist=_principal(prefix, "DataScientist", "scientist-1", person=True),
            creator_as_approver=_principal(prefix, "ModelApprover", "scientist-1", person=True),
            approver=_principal(prefix, "ModelApprover", "approver-1", person=True),
            four_eyes=_principal(prefix, "FourEyes", "model-four-eyes"),
            deploy=_principal(prefix, "ModelDeploy", "model-deploy"),
            gate=_principal(prefix, "RetrainGate", "retrain-gate"),
        )


def _synthetic_keys(rng: np.random.Generator, n: int) -> list[str]:
    """Pseudonymous-shaped keys of simulated patients (as the synthetic cohort makes them)."""
    return ["pk-" + base64.b32encode(rng.integers(0, 256, 10, dtype=np.uint8).tobytes())
            .decode("ascii").lower() for _ in range(n)]  # fmt: skip


def _schedule_times(expression: str, start: dt.date, days: int) -> list[dt.datetime]:
    """Return the times of ``cron(M H ? * DAYS *)`` or ``rate(N day(s))`` in the days.

    Raises:
        LifecycleError: another form (the local demo reads only these two).
    """
    names = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
    first = dt.datetime.combine(start, dt.time(0), dt.UTC)
    cron = re.fullmatch(r"cron\((\d+) (\d+) \? \* ([A-Z,*]+) \*\)", expression.strip())
    rate = re.fullmatch(r"rate\((\d+) days?\)", expression.strip())
    if cron:
        minute, hour, weekdays = int(cron[1]), int(cron[2]), cron[3]
        wanted = (
            set(range(7))
            if weekdays == "*"
            else {names.index(w) for w in weekdays.split(",") if w in names}
        )
        return [first + dt.timedelta(days=i, hours=hour, minutes=minute) for i in range(days)
                if (start + dt.timedelta(days=i)).weekday() in wanted]  # fmt: skip
    if rate:
        return [first + dt.timedelta(days=i) for i in range(0, days, max(int(rate[1]), 1))]
    raise LifecycleError(f"lifecycle.retrain_schedule {expression!r}: the local lifecycle reads "
                         "cron(M H ? * DAYS *) or rate(N days) only")  # fmt: skip


class _World:
    """One scenario's resources, clients, registry and simulated clock."""

    def __init__(self, name: str, *, config: Any, endpoint: Endpoint, options: Options,
                 work: Path, job_log: TextIO, say: Callable[[str], None]) -> None:  # fmt: skip
        import boto3

        from oncopipe.local.provision import provision_lifecycle
        from oncopipe.pipeline.definition import PipelineSettings, model_pipeline
        from oncopipe.pipeline.local_runner import LocalPipelineRunner

        self.name, self.config, self.options, self.say = name, config, options, say
        self.job_log = job_log
        kwargs = endpoint.client_kwargs
        self.region = str(kwargs["region_name"])
        self.made = provision_lifecycle(config.project, config.name, name, kwargs)
        self.s3 = boto3.client("s3", **kwargs)
        self.store = ObjectStore(self.s3)
        self.dynamodb = boto3.client("dynamodb", **kwargs)
        self.cloudwatch = boto3.client("cloudwatch", **kwargs)
        self.now = dt.datetime.combine(options.start, dt.time(0), dt.UTC)
        prefix = config.prefix
        self.group = self.pipeline = self.endpoint_name = f"{prefix}-response"
        self.who = Principals.of(prefix)
        self.registry = LocalSageMaker(self.store, self.made.artifacts, groups=(self.group,),
                                       region=self.region, clock=lambda: self.now)  # fmt: skip
        role = f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{prefix}"
        image = f"{LOCAL_ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{prefix}"
        settings = PipelineSettings(
            curated_bucket=self.made.curated, artifacts_bucket=self.made.artifacts,
            cohort_role_arn=f"{role}-cohort", training_role_arn=f"{role}-training",
            evaluation_role_arn=f"{role}-evaluation",
            processing_image_uri=f"{image}-features:local",
            training_image_uri=f"{image}-training:local",
            inference_image_uri=f"{image}-training:local",
            kms_key_arn=self.made.key_arns["platform"],
            subnet_ids=("local",), security_group_ids=("local",),
            model_package_group_name=self.group, project=config.project,
            min_auc=config.lifecycle.auc_gate, auc_tolerance=config.lifecycle.auc_tolerance,
            hyperparameters={**HYPERPARAMETERS, "epochs": str(options.epochs)},
        )  # fmt: skip
        self.step_lines: list[str] = []
        runner = LocalPipelineRunner(
            model_pipeline(settings), self.store, work_dir=work / name / "pipeline",
            artifacts_bucket=self.made.artifacts, pipeline_name=self.pipeline,
            region=self.region, environment=endpoint.job_environment,
            echo=self.step_lines.append,
        )  # fmt: skip
        self.registry.add_pipeline(self.pipeline, runner)
        self.work = work / name
        self.tables: Any = None
        #: the gate's operator notifications (SNS locally: kept, and printed)
        self.notified: list[str] = []

    def client(self, who: Mapping[str, Any]) -> LocalSageMaker:
        return self.registry.acting_as(who)

    def at(self, when: dt.datetime) -> None:
        self.now = when

    # -- the cohort -------------------------------------------------------------------------
    def commit_cohort(self) -> int:
        """Commit the synthetic tables, labels and each patient's VAF histogram."""
        from oncopipe.cohort.columns import radiomic_feature_names
        from oncopipe.cohort.synthetic import commit_tables, generate_tables

        o = self.options
        features = [f for f in radiomic_feature_names() if f.startswith(FEATURE_PREFIXES)]
        self.tables = generate_tables(o.patients, seed=o.seed, features=features)
        commit_tables(self.tables, self.store, self.made.curated, run_id=f"lifecycle-{self.name}",
                      tags=self._tags("labels"))  # fmt: skip
        rng = np.random.default_rng((o.seed, 2))  # the same cohort in every scenario
        patients = self.tables.labels["patient_key"].to_pylist()
        self._put_samples(rng, patients, o.start - dt.timedelta(days=1), 0.0)
        return len(patients)

    def _put_samples(self, rng: np.random.Generator, patients: list[str], date: dt.date,
                     shift: float) -> None:  # fmt: skip
        """Write one simulated sample of each patient as the variants stage writes it."""
        from concurrent.futures import ThreadPoolExecutor

        from oncopipe.monitor.histogram import encode, sample_output
        from oncopipe.monitor.simulation import sample_rows

        documents = [sample_output(sample_rows(rng, shift), patient_key=patient, sample="tumour",
                                   reference_prefix=layout.ARTIFACTS_REFERENCE, paired=True,
                                   day=date.isoformat()) for patient in patients]  # fmt: skip

        def put(item: tuple[str, dict[str, Any]]) -> None:
            key, document = item
            tags = self._tags("variants")
            self.store.put_bytes(self.made.curated, key, encode(document), tags=tags,
                                 content_type="application/json")  # fmt: skip

        with ThreadPoolExecutor(max_workers=8) as pool:  # as a lab's uploads arrive: at once
            list(pool.map(put, documents))

    def _tags(self, step: str) -> dict[str, str]:
        return {TAG_RUN_ID: f"lifecycle-{self.name}", TAG_STEP: step}

    def upload_day(self, rng: np.random.Generator, date: dt.date, n: int, shift: float) -> None:
        """Write ``n`` simulated samples of new patients on ``date``."""
        self._put_samples(rng, _synthetic_keys(rng, n), date, shift)

    # -- pipeline executions ---------------------------------------------------------------
    def run_executions(self) -> list[LocalExecution]:
        """Run the started pipeline executions; print their steps and what they registered.

        The jobs' own output goes to the job log (a container's goes to CloudWatch Logs).
        """
        self.step_lines.clear()
        self.job_log.flush()
        with contextlib.redirect_stdout(self.job_log), contextlib.redirect_stderr(self.job_log):
            done = self.registry.run_pending()
        for line in self.step_lines:
            if not _QUIET_STEP_LINES.search(line):
                self.say(f"    {line}")
        for execution in done:
            versions = [int(a.rsplit("/", 1)[1]) for a in execution.registered]
            self.say(f"  pipeline execution {execution.execution_id}: {execution.status}"
                     + (f" ({execution.failure})" if execution.failure else "")
                     + "".join(f"; registered v{v}" for v in versions))  # fmt: skip
        return done

    # -- approvals and deployment ----------------------------------------------------------
    def approve(
        self, version: int, who: Mapping[str, Any], label: str, reason: str
    ) -> dict[str, Any]:
        """Approve as ``who``; deliver the approval event to four eyes and deployment."""
        from oncopipe.deploy import DeployError, DeploySettings, publish_baseline, verify
        from oncopipe.governance import APPROVED, resolve_version, review, set_status

        target = resolve_version(self.client(who), self.group, str(version))
        set_status(self.client(who), target, APPROVED, reason)
        outcome: dict[str, Any] = {"version": version, "by": label}
        # EventBridge's "SageMaker Model Package State Change" (Approved): two rules, two
        # functions, each with its own role
        decision = review(self.client(self.who.four_eyes), target.arn)
        outcome["four_eyes"] = {"outcome": decision.outcome, "reason": decision.reason}
        self.say(f"  four-eyes check: {decision.outcome} ({decision.reason})")
        settings = DeploySettings(
            group=self.group, endpoint_name=self.endpoint_name,
            artifacts_bucket=self.made.artifacts,
            artifacts_key_arn=self.made.key_arns["platform"],
            kms_key_arn=self.made.key_arns["platform"],
            serving_role_arn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{self.config.prefix}-serving",
            instance_type=self.config.serving_instance_type, instance_count=1,
            security_group_ids=("local",), subnet_ids=("local",),
        )  # fmt: skip
        deployer = self.client(self.who.deploy)
        try:
            plan = verify(deployer, self.s3, target.arn, settings=settings)
        except DeployError as e:
            outcome["deploy"] = {"outcome": "refused", "reason": str(e)}
            self.say(f"  deployment: refused: {e}")
        else:
            key = publish_baseline(deployer, self.s3, plan, self.made.artifacts,
                                   kms_key_arn=self.made.key_arns["platform"])  # fmt: skip
            outcome["deploy"] = {"outcome": "deployed", "plan": plan.as_dict(),
                                 "baseline_key": key}  # fmt: skip
            self.say(f"  deployment: verified (artefact sha256 {plan.artifact_sha256[:12]}..., "
                     f"the registered digest); drift baseline published to "
                     f"s3://{self.made.artifacts}/{key}")  # fmt: skip
        status = self.client(self.who.approver).describe_model_package(ModelPackageName=target.arn)
        outcome["status"] = status["ModelApprovalStatus"]
        outcome["approval_description"] = status.get("ApprovalDescription", "")
        self.say(f"  v{version} is now {outcome['status']}: "
                 f"{outcome['approval_description']}")  # fmt: skip
        return outcome

    def serve(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Start the serving handler on the verified artefact; answer one request."""
        from oncopipe.cohort.dataset import patient_payloads, split_of
        from oncopipe.deploy import VARIANT
        from training.serve import make_server

        package = self.client(self.who.deploy).describe_model_package(
            ModelPackageName=plan["package_arn"]
        )
        container = package["InferenceSpecification"]["Containers"][0]
        bucket, key = str(container["ModelDataUrl"]).removeprefix("s3://").split("/", 1)
        data = self.store.get_bytes(bucket, key)
        if hashlib.sha256(data).hexdigest() != plan["artifact_sha256"]:
            raise LifecycleError(f"v{plan['version']}: the artefact changed after verification")
        model_dir = self.work / "serving" / f"v{plan['version']}"
        model_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(model_dir, filter="data")
        t = self.tables
        payloads = patient_payloads(t.variants, t.radiomics, t.notes)
        patient = next((k for k in payloads if split_of(k) == "test"), next(iter(payloads)))
        environment = {**container.get("Environment", {}), "ONCOPIPE_MODEL_VARIANT": VARIANT}
        with set_environment(environment):
            server = make_server(str(model_dir), host="127.0.0.1", port=0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            with urllib.request.urlopen(f"{url}/ping", timeout=10) as ping:  # noqa: S310
                healthy = ping.status == 200
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            body = json.dumps(payloads[patient]).encode("utf-8")
            request = urllib.request.Request(f"{url}/invocations", data=body, headers=headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                prediction = json.loads(answer.read())
        finally:
            server.shutdown()
            server.server_close()
        served = {"version": plan["version"], "ping": healthy, "patient_key": patient,
                  "response_probability": prediction["response_probability"],
                  "modalities_present": prediction["modalities_present"]}  # fmt: skip
        self.say(f"  serving handler (training/serve.py) on the verified v{plan['version']} "
                 f"artefact: /ping {'ok' if healthy else 'FAILED'}; /invocations for synthetic "
                 f"patient {patient}: response probability "
                 f"{served['response_probability']:.3f}")  # fmt: skip
        return served

    # -- the drift job and the gate --------------------------------------------------------
    def drift_job(self, date: dt.date) -> Any:
        """Run the drift job for ``date`` as the model_drift Lambda does (None: no baseline)."""
        from oncopipe.monitor.job import KIND_THRESHOLDS, baseline_key, kind_of, kind_rules, run

        reader = self.client(self.who.deploy)
        packages = reader.list_model_packages(
            ModelPackageGroupName=self.group, ModelApprovalStatus="Approved",
            SortBy="CreationTime", SortOrder="Descending", MaxResults=1,
        )["ModelPackageSummaryList"]  # fmt: skip
        if not packages:
            return None
        key = baseline_key(int(packages[0]["ModelPackageVersion"]))
        baseline = json.loads(self.store.get_bytes(self.made.artifacts, key))
        # Only VAF histograms are uploaded here (no radiomics or note tables by day, no
        # data capture): the job gets the baseline's VAF monitors, the ones the retrain
        # gate's alarm watches. The others would be reported "not read" and drawn empty
        # in every day's PNG (about 1.5 s a day).
        simulated = {
            **baseline,
            "monitors": {
                name: doc for name, doc in baseline["monitors"].items() if kind_of(name) == "vaf"
            },
        }
        return run(s3=self.s3, cloudwatch=self.cloudwatch, curated_bucket=self.made.curated,
                   histograms_prefix=layout.CURATED_GENOMICS_VAF_HISTOGRAMS,
                   artifacts_bucket=self.made.artifacts, baseline=simulated,
                   day=date.isoformat(), rule=self.rule(), environment=self.config.name,
                   feature_windows={}, rules=kind_rules(self.rule(), KIND_THRESHOLDS))  # fmt: skip

    def rule(self) -> Any:
        from oncopipe.monitor.window import AlarmRule

        life = self.config.lifecycle
        return AlarmRule(
            threshold=life.drift_threshold,
            m=life.drift_alarm_windows,
            n=life.drift_alarm_of_windows,
            min_samples=life.drift_min_samples,
        )

    def gate(self) -> Any:
        from oncopipe.monitor.gate import (
            COHORT_RUN_ID,
            GateSettings,
            RetrainGate,
            count_samples,
            retrain_parameters,
            sagemaker_starter,
        )

        life = self.config.lifecycle
        sagemaker = self.client(self.who.gate)
        return RetrainGate(
            GateSettings(family=FAMILY, cooldown_hours=life.retrain_cooldown_hours,
                         min_new_samples=life.retrain_min_new_samples,
                         monthly_budget=life.retrain_monthly_budget),
            dynamodb=self.dynamodb, table_name=self.made.lease_table, s3=self.s3,
            artifacts_bucket=self.made.artifacts, cloudwatch=self.cloudwatch,
            environment=self.config.name,
            start_pipeline=sagemaker_starter(
                sagemaker, self.pipeline, build_parameter=COHORT_RUN_ID,
                parameters=lambda: retrain_parameters(sagemaker, self.s3, self.group)),
            count_samples=lambda: count_samples(self.s3, self.made.curated,
                                                layout.CURATED_GENOMICS_VAF_HISTOGRAMS),
            notify=lambda subject, body: self.notified.append(subject),
        )  # fmt: skip

    def decide(self, source: str, trigger_id: str, at: dt.datetime) -> dict[str, Any]:
        """Ask the gate; print its decision record; run the retrain it started."""
        from oncopipe.monitor.gate import Trigger, decision_key

        decision = self.gate().decide(Trigger(source, trigger_id, at))
        record: dict[str, Any] = json.loads(
            self.store.get_bytes(self.made.artifacts, decision_key(decision))
        )
        detail = (
            f"started, execution {record['execution_arn'].rsplit('/', 1)[1]}"
            if record["outcome"] == "triggered"
            else f"skipped: {record['reason']}"
        )
        facts = [f"new samples {record['new_samples']}",
                 f"cooldown {record['rules']['cooldown_hours']} h"]  # fmt: skip
        if record.get("retrains_this_month") is not None:
            facts.append(f"retrains this month {record['retrains_this_month']} of "
                         f"{record['rules']['monthly_budget']}")  # fmt: skip
        if record.get("notified"):
            facts.append("operators notified")
        self.say(f"  retrain gate ({source}, {at:%Y-%m-%d %H:%M} UTC): {detail} "
                 f"({', '.join(facts)}); record s3://{self.made.artifacts}/"
                 f"{decision_key(decision)}")  # fmt: skip
        out = {"source": source, "at": at.isoformat(), "outcome": record["outcome"],
               "reason": record["reason"], "new_samples": record["new_samples"],
               "execution_arn": record["execution_arn"],
               "record": f"s3://{self.made.artifacts}/{decision_key(decision)}"}  # fmt: skip
        if record["outcome"] == "triggered":
            execution = self.registry.execution(record["execution_arn"])
            self.say(
                "  the retrain runs with the gate's parameters: "
                + ", ".join(f"{k}={v}" for k, v in execution.parameters.items())
            )
            out["execution"] = self._execution_record(self.run_executions()[-1])
        return out

    def _execution_record(self, execution: LocalExecution) -> dict[str, Any]:
        steps = ({n: r.status for n, r in execution.result.steps.items()}
                 if execution.result else {})  # fmt: skip
        return {"execution_id": execution.execution_id, "status": execution.status,
                "failure": execution.failure, "parameters": execution.parameters,
                "steps": steps, "registered": execution.registered}  # fmt: skip

    def versions(self) -> list[dict[str, Any]]:
        from oncopipe.governance import list_versions

        return [{"version": v.version, "status": v.status, "description": v.description}
                for v in list_versions(self.client(self.who.approver), self.group)]  # fmt: skip


def _scenario(name: str, shift: float, *, config: Any, endpoint: Endpoint, options: Options,
              out: Path, job_log: TextIO, say: Callable[[str], None],
              verbose: bool) -> Scenario:  # fmt: skip
    """Run one scenario from an empty world to the last day."""
    from oncopipe.governance import PENDING
    from oncopipe.monitor.job import report_keys

    world = _World(name, config=config, endpoint=endpoint, options=options, work=out / "work",
                   job_log=job_log, say=say)  # fmt: skip
    scenario = Scenario(name, shift)
    life = config.lifecycle
    world.at(dt.datetime.combine(options.start - dt.timedelta(days=1), dt.time(9), dt.UTC))
    patients = world.commit_cohort()
    say(f"[{name}] cohort: {patients} synthetic patients (feature tables, labels, one VAF "
        f"histogram each) in s3://{world.made.curated}")  # fmt: skip
    scientist = world.client(world.who.scientist)
    scientist.start_pipeline_execution(
        PipelineName=world.pipeline,
        PipelineExecutionDisplayName="first-training",
        PipelineExecutionDescription="started by a data scientist",
    )
    say(f"[{name}] the model pipeline {world.pipeline}, started by the data scientist:")
    first = world.run_executions()[-1]
    scenario.executions.append(world._execution_record(first))
    if not first.registered:
        raise LifecycleError(f"[{name}] the first pipeline run registered no model "
                             f"({first.failure or first.status}); try more --patients or "
                             "--epochs")  # fmt: skip
    version = int(first.registered[0].rsplit("/", 1)[1])
    status = world.client(world.who.approver).describe_model_package(
        ModelPackageName=first.registered[0]
    )["ModelApprovalStatus"]
    say(f"[{name}] v{version} registered: {status}")
    if status != PENDING:
        raise LifecycleError(f"[{name}] v{version} registered as {status}, not {PENDING}")
    if verbose:
        say(f"[{name}] v{version}: approved by its creator, through the ModelApprover role:")
        scenario.approvals.append(world.approve(
            version, world.who.creator_as_approver, "creator",
            "approving my own model"))  # fmt: skip
    say(f"[{name}] v{version}: approved by the approver:")
    approval = world.approve(version, world.who.approver, "approver",
                             "evaluation report and baseline reviewed")  # fmt: skip
    scenario.approvals.append(approval)
    if approval["deploy"]["outcome"] != "deployed":
        raise LifecycleError(f"[{name}] v{version} was not deployed: "
                             f"{approval['deploy']['reason']}")  # fmt: skip
    scenario.deployed = approval["deploy"]
    scenario.served = world.serve(approval["deploy"]["plan"])

    rule = world.rule()
    schedule = (_schedule_times(life.retrain_schedule, options.start, options.days)
                if options.calendar else [])  # fmt: skip
    rng = np.random.default_rng((options.seed, 0 if shift else 1))
    history: list[float | None] = []
    state = "OK"
    say(f"[{name}] {options.days} days of uploads, {options.samples_per_day} samples a day"
        + (f"; from day {options.shift_day} a new sequencing platform shifts the clonal VAFs "
           f"by +{shift}" if shift else "; no shift")
        + (f"; no uploads on day {options.gap}" if options.gap else "")
        + f"; alarm: W1 > {rule.threshold} in {rule.m} of {rule.n} windows with >= "
        f"{rule.min_samples} samples")  # fmt: skip
    for number in range(1, options.days + 1):
        date = options.start + dt.timedelta(days=number - 1)
        decisions: list[dict[str, Any]] = []
        for when in [t for t in schedule if t.date() == date]:
            world.at(when)
            say(f"[{name}] {when:%Y-%m-%d %H:%M} UTC: the weekly calendar retrain asks the gate")
            decisions.append(world.decide("schedule", when.isoformat(), when))
        shifted = bool(shift) and number >= options.shift_day
        samples = 0 if number == options.gap else options.samples_per_day
        world.at(dt.datetime.combine(date, dt.time(12), dt.UTC))
        world.upload_day(rng, date, samples, shift if shifted else 0.0)
        job_time = dt.datetime.combine(date + dt.timedelta(days=1), DRIFT_JOB_TIME, dt.UTC)
        world.at(job_time)
        report = world.drift_job(date)
        score = report.score("vaf") if report is not None else None
        note = (
            next((r.note for r in report.results if r.monitor.startswith("vaf/")), "")
            if report is not None
            else "no approved baseline"
        )
        history.append(score)
        new_state = "ALARM" if rule.alarm(history) else "OK"
        shown = f"W1 {score:.4f}" if score is not None else f"not evaluated ({note})"
        if verbose or new_state != state:
            platform = " (new platform)" if shifted and samples else ""
            say(f"[{name}] day {number:2d} {date} {samples:3d} samples{platform}: {shown} "
                f"-> {new_state}")  # fmt: skip
        if new_state == "ALARM" and state != "ALARM":
            scenario.plots.append(f"s3://{world.made.artifacts}/{report_keys(date.isoformat())[1]}")
            event = str(uuid.uuid5(uuid.NAMESPACE_URL, f"oncopipe-lifecycle/{name}/{date}"))
            say(f"[{name}] the drift alarm changed to ALARM: event {event} to the retrain gate")
            decisions.append(world.decide("drift_alarm", event, job_time))
        state = new_state
        scenario.days.append(Day(number, date.isoformat(), samples, shifted, score, note, state,
                                 decisions))  # fmt: skip
        scenario.gate += decisions
    if not verbose:
        scores = [d.score for d in scenario.days if d.score is not None]
        say(f"[{name}] {options.days} days: largest W1 "
            + (f"{max(scores):.4f}" if scores else "-")
            + f" (threshold {rule.threshold}); the alarm turned to ALARM "
            f"{len(scenario.alarm_days)} time(s)")  # fmt: skip
    scenario.executions += [d["execution"] for d in scenario.gate if "execution" in d]
    scenario.versions = world.versions()
    for v in scenario.versions:
        waiting = " (waits for approval)" if v["status"] == PENDING else ""
        say(f"[{name}] v{v['version']}: {v['status']}{waiting}")
    _scenario_pngs(world, scenario, out)
    return scenario


def _scenario_pngs(world: _World, scenario: Scenario, out: Path) -> None:
    """Copy the drift job's PNG of each day the alarm turned to ALARM under ``out``."""
    paths = []
    for uri in scenario.plots:
        key = uri.removeprefix(f"s3://{world.made.artifacts}/")
        day = key.split("/")[2]
        path = out / f"{scenario.name}-report-{day}.png"
        path.write_bytes(world.store.get_bytes(world.made.artifacts, key))
        paths.append(str(path))
    scenario.plots = paths


def timeline_png(drift: Scenario, control: Scenario | None, threshold: float,
                 shift_day: int, path: Path) -> Path:  # fmt: skip
    """Plot each scenario's daily VAF score against the threshold, with the gate's decisions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8), layout="constrained")
    for scenario, style in ((drift, "-o"), (control, "--s")):
        if scenario is None:
            continue
        days = [d.day for d in scenario.days]
        scores = [d.score if d.score is not None else float("nan") for d in scenario.days]
        ax.plot(days, scores, style, markersize=3,
                label=f"{scenario.name} (shift {scenario.shift:g})")  # fmt: skip
    ax.axhline(threshold, color="red", linewidth=1, label=f"alarm threshold (W1 {threshold})")
    ax.axvline(shift_day - 0.5, color="grey", linestyle=":", label=f"shift from day {shift_day}")
    for d in drift.days:
        for decision in d.decisions:
            text = "retrain" if decision["outcome"] == "triggered" else decision["reason"]
            ax.annotate(text, (d.day, d.score or threshold), textcoords="offset points",
                        xytext=(0, 8), ha="center", fontsize=7)  # fmt: skip
    ax.set_xlabel("day")
    ax.set_ylabel("drift score: Wasserstein-1 (VAF)")
    ax.set_title("Daily VAF drift against the approved model's baseline")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_lifecycle(
    options: Options,
    *,
    config: Any,
    endpoint: Endpoint,
    out: Path,
    job_log: TextIO,
    say: Callable[[str], None] = print,
) -> Report:
    """Run the drift scenario and, with ``options.control``, the control; return the report.

    Writes under ``out``: ``summary.json`` (options, the rules from the configuration,
    each scenario's days, approvals, deployment, gate decisions, versions), the drift
    job's PNG of each day the alarm turned to ALARM and ``drift-timeline.png``. The
    pipeline jobs' output (stdout, stderr) goes to ``job_log``.

    Raises:
        LifecycleError: the first training registered nothing, or it was not deployed.
        botocore.exceptions.ClientError: the endpoint refused a call.
    """
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # an earlier run's plots
        old.unlink()
    shutil.rmtree(out / "work", ignore_errors=True)
    life = config.lifecycle
    rules = {"drift_threshold": life.drift_threshold, "alarm_m": life.drift_alarm_windows,
             "alarm_n": life.drift_alarm_of_windows, "min_samples": life.drift_min_samples,
             "cooldown_hours": life.retrain_cooldown_hours,
             "min_new_samples": life.retrain_min_new_samples,
             "monthly_budget": life.retrain_monthly_budget, "auc_gate": life.auc_gate,
             "auc_tolerance": life.auc_tolerance,
             "retrain_schedule": life.retrain_schedule if options.calendar else None}  # fmt: skip
    common = {"config": config, "endpoint": endpoint, "options": options, "out": out,
              "job_log": job_log, "say": say}  # fmt: skip
    drift = _scenario("drift", options.shift, verbose=True, **common)
    control = _scenario("control", 0.0, verbose=False, **common) if options.control else None
    timeline = timeline_png(drift, control, life.drift_threshold, options.shift_day,
                            out / "drift-timeline.png")  # fmt: skip
    plots = [timeline, *(Path(p) for p in drift.plots),
             *(Path(p) for p in (control.plots if control else []))]  # fmt: skip
    seconds = time.perf_counter() - started
    summary = out / "summary.json"
    document = {
        "options": {**asdict(options), "start": options.start.isoformat(), "gap_day": options.gap},
        "rules": rules,
        "scenarios": {"drift": drift.as_dict(options.shift_day),
                      **({"control": control.as_dict(options.shift_day)} if control else {})},
        "plots": [str(p) for p in plots],
        "seconds": round(seconds, 1),
    }  # fmt: skip
    summary.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    return Report(options, rules, drift, control, out, summary, plots, seconds)
