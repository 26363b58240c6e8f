"""The local worker: consumes ingest events and runs the ingest flow of the state machine.

Each Lambda handler runs in its own subprocess (:mod:`oncopipe.local.lambda_runtime`), so
it meets the same contract as in AWS: an event in, a JSON result or an error type out,
its environment from :meth:`LocalState.handler_env`. The flow below is the state
machine's definition (``stacks/ingest_stack.py``) step for step: Route, retried on
transient errors; on failure QuarantineAfterError then RoutingFailed; else Outcome.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from oncopipe.flow import INGEST, attempts
from oncopipe.local.state import LocalState, home

ROUTER_MODULE = "lambdas.ingest_router.handler"
QUARANTINE_MODULE = "lambdas.ingest_quarantine.handler"
DEID_MODULE = "lambdas.dicom_deid.handler"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Invocation:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] = field(default_factory=dict)
    #: refused requests behind the error (:func:`lambda_runtime.refused_requests`)
    denied: list[dict[str, str]] = field(default_factory=list)


class HandlerProcess:
    """One warm handler subprocess, invoked one event at a time."""

    def __init__(self, module: str, env: dict[str, str], log: IO[bytes]) -> None:
        self.module = module
        full_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "oncopipe.local.lambda_runtime", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=full_env,
            cwd=str(REPO_ROOT),
            text=True,
            bufsize=1,
        )

    def invoke(self, event: dict[str, Any]) -> Invocation:
        """Send one event; return the handler's result or error.

        Raises:
            RuntimeError: the subprocess died (its log under ``.oncopipe/local/logs``).
        """
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(event) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"{self.module} exited with {self._process.wait()}; see {home() / 'logs'}"
            )
        answer = json.loads(line)
        return Invocation(
            ok=answer["ok"],
            result=answer.get("result") or {},
            error=answer.get("error") or {},
            denied=answer.get("denied") or [],
        )

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()


@dataclass(frozen=True)
class Execution:
    """One run of the ingest flow for one object, as Step Functions would report it."""

    key: str
    status: str  # SUCCEEDED / FAILED
    outcome: str  # the terminal state's name
    route: dict[str, Any]
    seconds: float


class IngestFlow:
    """The ingest state machine, run locally against the handler subprocesses."""

    def __init__(self, state: LocalState, retry_delay: float = 0.5) -> None:
        logs = home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._log = (logs / "handlers.log").open("ab")
        # Each function as its own role (its synthesized policy, when IAM is enforced).
        self.router = HandlerProcess(ROUTER_MODULE, state.stage_env("router"), self._log)
        self.quarantine = HandlerProcess(QUARANTINE_MODULE, state.stage_env("quarantine"),
                                         self._log)  # fmt: skip
        self.deid = HandlerProcess(DEID_MODULE, state.stage_env("deid"), self._log)
        self.retry_delay = retry_delay
        self._state = state

    def _reason(self, route: Invocation, key: str) -> dict[str, Any]:
        """Return ``reason`` and ``details`` of a quarantined object's reason document."""
        import boto3

        from oncopipe.layout import quarantine_reason_key

        s3 = boto3.client("s3", **self._state.client_kwargs())
        document_key = quarantine_reason_key(str(route.result.get("run_id")), key)
        try:
            body = s3.get_object(Bucket=self._state.buckets.quarantine, Key=document_key)["Body"]
        except s3.exceptions.NoSuchKey:
            return {}
        document = json.loads(body.read())
        return {"reason": document.get("message"), "details": document.get("details", [])}

    def execute(self, event: dict[str, Any]) -> Execution:
        """Run the flow (:data:`oncopipe.flow.INGEST`) for one event; return how it ended.

        The router runs as often as the state machine would run it for its error (the
        task's retriers; waits scaled down by ``retry_delay / 5 s``); the outcome is the
        name of the terminal state the state machine ends in. The genomics and notes
        branches end where the state machine hands over (the execution started, the note
        queued): the local runner runs those jobs next, as the deployed ones follow.
        """
        started = time.perf_counter()
        key = str(event.get("detail", {}).get("object", {}).get("key", "?"))

        def ended(status: str, outcome: str, route: dict[str, Any]) -> Execution:
            return Execution(key, status, outcome, route, time.perf_counter() - started)

        retry = 0
        while True:
            route = self.router.invoke(event)
            name = str(route.error.get("Error", ""))
            if route.ok or route.denied:  # a refusal is the same on every attempt
                break
            if retry + 1 >= attempts(INGEST.route.retries, name):
                break
            retry += 1
            policy = next(r for r in INGEST.route.retries if r.matches(name))
            time.sleep(self.retry_delay * policy.wait_seconds(retry) / policy.interval_seconds)
        if not route.ok:
            failed = {**event, "error": route.error}  # the ASL: result_path $.error
            self.quarantine.invoke({"event": failed, "error": route.error})
            return ended("FAILED", INGEST.routing_failed, {"error": route.error})
        branch = INGEST.branch_for(route.result)
        if branch is None:
            return ended("SUCCEEDED", INGEST.default, route.result)
        if branch.success is None:  # input quarantined by the router
            # The router returns codes only (its result is state output): the local report
            # reads the readable reason where it lives, in the quarantine zone.
            return ended("FAILED", branch.failures[0],
                         {**route.result, **self._reason(route, key)})  # fmt: skip
        if branch.start == INGEST.deidentify.name:
            quarantined, errored = branch.failures
            deid = self.deid.invoke(event)
            if not deid.ok:
                return ended("FAILED", errored, {"error": deid.error})
            if deid.result.get("status") == "quarantined":
                return ended("FAILED", quarantined, deid.result)
            return ended("SUCCEEDED", branch.success, deid.result)
        return ended("SUCCEEDED", branch.success, route.result)

    def close(self) -> None:
        self.router.close()
        self.quarantine.close()
        self.deid.close()
        self._log.close()


def consume(
    sqs: Any,
    queue_url: str,
    flow: IngestFlow,
    *,
    run_id: str,
    expected_keys: set[str] | None,
    idle_timeout: float,
    on_execution: Callable[[Execution], None] = lambda e: None,
) -> list[Execution]:
    """Process ingest events until every expected key was seen, or the queue stays idle.

    Each event gets ``run_id`` (as a replay through the state machine would). A message
    is deleted only after its flow finished, so a crash leaves it for the next worker.
    """
    executions: list[Execution] = []
    pending = set(expected_keys) if expected_keys is not None else None
    idle_since = time.monotonic()
    while True:
        if pending is not None and not pending:
            return executions
        if time.monotonic() - idle_since > idle_timeout:
            return executions
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        if messages:
            idle_since = time.monotonic()
        for message in messages:
            event = json.loads(message["Body"])
            event["run_id"] = run_id
            execution = flow.execute(event)
            executions.append(execution)
            if pending is not None:
                pending.discard(execution.key)
            on_execution(execution)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


@dataclass(frozen=True)
class JobResult:
    """One Batch job run locally (the container's command in a subprocess)."""

    step: str
    sample: str
    exit_code: int
    outcome: dict[str, Any]


def scatter_env(state: LocalState) -> dict[str, str]:
    """Return the scatter settings' job environment from the local configuration
    (the variables the job definitions set from ``config.scatter``)."""
    from oncopipe.genomics.scatter_stage import SETTINGS_ENV

    scatter = state._config().scatter
    values = {"pairs_per_shard": scatter.align_pairs_per_shard,
              "scatter_min_fastq_bytes": scatter.scatter_min_fastq_bytes,
              "call_regions": scatter.call_regions,
              "scatter_min_reference_bases": scatter.scatter_min_reference_bases}  # fmt: skip
    return {SETTINGS_ENV[name]: str(value) for name, value in values.items()}


def run_genomics_jobs(
    state: LocalState,
    execution: Execution,
    run_id: str,
    *,
    threads: int = 2,
    on_job: Callable[[JobResult], None] = lambda j: None,
    scatter: dict[str, str] | None = None,
    array_workers: int = 2,
    attempts: int = 2,
) -> list[JobResult]:
    """Run the genomics branch of the state machine for an accepted sample sheet.

    Like the state machine: per sample a ``plan`` job; a sample that scatters runs one
    ``align-shard`` process per shard (the array job's children, ``AWS_BATCH_JOB_ARRAY_INDEX``
    set, ``array_workers`` at a time; a failed child is retried alone, up to ``attempts``
    in all, like the job definition's retry strategy), then ``gather``; a small one runs
    ``align``. Then per tumour sample ``call``, or ``call-region`` children and
    ``call-gather`` when its reference scatters. Every process is the Batch job's command
    (``python -m batch_jobs.genomics``) with the job definition's environment (``scatter``:
    the scatter settings, default :func:`scatter_env`).

    Returns one result per sample and step (``align``, ``call``), whose outcome is the
    committing job's, with ``shards`` / ``regions`` and the array children's results added.
    """
    from concurrent.futures import ThreadPoolExecutor

    table = execution.route.get("sample_table")
    if not table:
        return []
    settings_env = scatter_env(state) if scatter is None else scatter
    # the job definition's role (the same JobRole for both, as synthesized today)
    envs = {role: {**os.environ, **state.stage_env(role), **settings_env,
                   "THREADS": str(threads), "PYTHONPATH": str(REPO_ROOT)}
            for role in ("align", "call")}  # fmt: skip

    def job(step: str, role: str, sample: str, *extra: str,
            index: int | None = None) -> JobResult:  # fmt: skip
        env = dict(envs[role])
        if index is not None:
            env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
        done = subprocess.run(
            [sys.executable, "-m", "batch_jobs.genomics", step, "--run-id", run_id,
             "--sample-table", table, "--sample", sample, *extra],
            capture_output=True, text=True, env=env, cwd=str(REPO_ROOT),
        )  # fmt: skip
        with (home() / "logs" / "batch-jobs.log").open("a", encoding="utf-8") as log:
            log.write(done.stderr)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        outcome = json.loads(lines[-1]) if lines else {"status": "failed"}
        return JobResult(step, sample, done.returncode, outcome)

    def array(step: str, role: str, sample: str, size: int, *extra: str) -> list[JobResult]:
        children: dict[int, JobResult] = {}
        pending = list(range(size))
        for _ in range(attempts):
            with ThreadPoolExecutor(max_workers=array_workers) as pool:
                ran = list(pool.map(lambda i: job(step, role, sample, *extra, index=i), pending))
            children.update(zip(pending, ran, strict=True))
            pending = [i for i in pending if children[i].exit_code != 0]
            if not pending:
                break
        return [children[i] for i in range(size)]

    def sample_result(step: str, sample: str, final: JobResult, key: str, size: int,
                      children: list[JobResult]) -> JobResult:  # fmt: skip
        outcome = {**final.outcome, key: size,
                   "children": [{"index": i, "exit_code": c.exit_code,
                                 "item_status": c.outcome.get("item_status")}
                                for i, c in enumerate(children)]}  # fmt: skip
        return JobResult(step, sample, final.exit_code, outcome)

    results = []
    regions: dict[str, int] = {}
    for sample in execution.route.get("sample_ids", []):
        planned = job("plan", "align", sample)
        if planned.exit_code != 0:
            result = JobResult("align", sample, planned.exit_code, planned.outcome)
        else:
            shards = int(planned.outcome.get("shards", 0))
            regions[sample] = int(planned.outcome.get("regions", 1))
            if shards:
                children = array("align-shard", "align", sample, shards)
                final = (job("gather", "align", sample)
                         if all(c.exit_code == 0 for c in children)
                         else JobResult("gather", sample, 1, {"status": "failed"}))  # fmt: skip
                result = sample_result("align", sample, final, "shards", shards, children)
            else:
                result = job("align", "align", sample)
        results.append(result)
        on_job(result)
    for sample in execution.route.get("tumour_ids", []):
        count = regions.get(sample, 1)
        if count > 1:
            children = array("call-region", "call", sample, count, "--regions", str(count))
            final = (job("call-gather", "call", sample, "--regions", str(count))
                     if all(c.exit_code == 0 for c in children)
                     else JobResult("call-gather", sample, 1, {"status": "failed"}))  # fmt: skip
            result = sample_result("call", sample, final, "regions", count, children)
        else:
            result = job("call", "call", sample)
        results.append(result)
        on_job(result)
    return results


def _run_job_command(
    state: LocalState, stage: str, module: str, args: list[str], log_name: str
) -> Any:
    """Run a job image's command like its container would, as ``stage``'s role.

    Logs stderr; returns the finished process.
    """
    env = {**os.environ, **state.stage_env(stage), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO_ROOT))  # fmt: skip
    with (home() / "logs" / log_name).open("a", encoding="utf-8") as log:
        log.write(done.stderr)
    return done


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_imaging_job(state: LocalState, run_id: str) -> JobResult:
    """Run the daily imaging Batch job's command for a run (volumes and masks)."""
    done = _run_job_command(state, "imaging", "batch_jobs.imaging",
                            ["volumes", "--run-id", run_id], "batch-jobs.log")  # fmt: skip
    return JobResult("volumes", run_id, done.returncode, {"series": _json_lines(done.stdout)})


def run_radiomics_job(state: LocalState, run_id: str, *, workers: int = 2) -> JobResult:
    """Run the radiomics SageMaker Processing job's command for a run (after the volumes)."""
    done = _run_job_command(state, "radiomics", "processing.radiomics",
                            ["stage", "--run-id", run_id, "--workers", str(workers)],
                            "processing-jobs.log")  # fmt: skip
    return JobResult("radiomics", run_id, done.returncode, {"series": _json_lines(done.stdout)})


def run_notes_job(state: LocalState, run_id: str) -> JobResult:
    """Run the notes processing job's command for a run (scrub, extract, tokenise)."""
    done = _run_job_command(state, "notes", "processing.notes", ["stage", "--run-id", run_id],
                            "processing-jobs.log")  # fmt: skip
    return JobResult("notes", run_id, done.returncode, {"notes": _json_lines(done.stdout)})
