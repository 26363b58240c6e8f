"""``oncopipe local up|run|status|down``: the orchestration behind the CLI."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from oncopipe import layout
from oncopipe.completeness import PatientOutcome
from oncopipe.deployment import load_config, read_cdk_json
from oncopipe.flow import INGEST
from oncopipe.ingest import Router
from oncopipe.layout import Buckets
from oncopipe.local import arrival, provision, server
from oncopipe.local.iam import AccessDenial, denials_size, read_denials
from oncopipe.local.series import LOCAL_SETTLE_SECONDS, LocalSeriesSettle
from oncopipe.local.state import DEFAULT_REGION, LocalState, client_kwargs, home
from oncopipe.local.worker import (
    Execution,
    IngestFlow,
    JobResult,
    consume,
    run_genomics_jobs,
    run_imaging_job,
    run_notes_job,
    run_radiomics_job,
)
from oncopipe.manifest import MANIFEST_ROOT, ItemResult
from oncopipe.sample_data import CohortFiles
from oncopipe.settle import SettleOutcome
from oncopipe.storage import ObjectStore


def up(
    env: str | None, *, port: int | None = None, external: bool = False, iam: bool = True
) -> LocalState:
    """Start the embedded endpoint (unless ``external``) and create the resources.

    ``external=True`` provisions the endpoint of the standard AWS configuration
    (``AWS_ENDPOINT_URL``, profile, region) instead of starting moto. With ``iam`` (the
    default, embedded endpoint only) every stage later runs as its synthesized role with
    the endpoint's IAM enforcement on (:mod:`oncopipe.local.iam`).

    Raises:
        ServerError: the embedded endpoint did not start.
        IamResolutionError: the stages' policies could not be synthesized or resolved
            (the endpoint is stopped again).
    """
    config = load_config(read_cdk_json(), env)
    try:
        existing = LocalState.load()
    except Exception:  # noqa: BLE001 - no usable state: start fresh
        existing = None
    if existing and existing.server_pid and server.is_running(existing.server_pid):
        return existing
    pid: int | None = None
    endpoint: str | None = None
    if external:
        region = boto3.session.Session().region_name or DEFAULT_REGION
    else:
        region = DEFAULT_REGION
        pid, endpoint = server.start_server(
            home() / "logs" / "moto.log", port, denials_file=denials_log()
        )
    kwargs = client_kwargs(region, endpoint)
    try:
        made = provision.provision(config.project, config.name, kwargs)
        enforced = (
            provision.provision_iam(made, config.name, kwargs, endpoint)
            if iam and endpoint
            else None
        )
    except BaseException:
        if pid:
            server.stop_server(pid)
        raise
    state = LocalState(
        env=config.name,
        project=config.project,
        region=region,
        endpoint_url=endpoint,
        server_pid=pid,
        buckets=made.buckets,
        queue_url=made.queue_url,
        dead_letter_queue_url=made.dead_letter_queue_url,
        secret_arn=made.secret_arn,
        database=made.database,
        credentials=enforced.credentials if enforced else None,
        stage_roles=enforced.stage_roles if enforced else {},
    )
    state.save()
    return state


def down() -> bool:
    """Stop the embedded endpoint and forget the state; return True if one was running."""
    try:
        state = LocalState.load()
    except Exception:  # noqa: BLE001 - nothing to stop
        return False
    running = bool(state.server_pid and server.is_running(state.server_pid))
    if state.server_pid:
        server.stop_server(state.server_pid)
    LocalState.clear()
    return running


@dataclass
class StepSummary:
    """One row of the run summary: a step and the kind of item it handled."""

    step: str
    kind: str
    items: int = 0
    succeeded: int = 0
    quarantined: int = 0
    skipped: int = 0
    outputs: int = 0
    seconds: float = 0.0


@dataclass
class RunReport:
    run_id: str
    rows: list[StepSummary]
    executions: list[Execution] = field(default_factory=list)
    reconciled: list[ItemResult] = field(default_factory=list)
    jobs: list[JobResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: Requests a stage's role refused (IAM enforcement on): each is a missing grant.
    access_denied: list[AccessDenial] = field(default_factory=list)
    #: What the series settle did with each timer (:mod:`oncopipe.local.series`).
    series: list[SettleOutcome] = field(default_factory=list)
    #: The settle time the run used (seconds).
    settle_seconds: int = 0
    #: Each sheet patient: predicted when complete, else waiting / no-model (arrival.py).
    patients: list[PatientOutcome] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(r.quarantined for r in self.rows)


def summarize(store: ObjectStore, buckets: Buckets, run_id: str) -> list[StepSummary]:
    """Return the run summary, read from the run's manifests (the commit records).

    Steps whose items are ingest objects keep their manifests in the PHI zone
    (quarantine bucket); the stages' manifests are in curated.
    """
    rows: dict[tuple[str, str], StepSummary] = {}
    keys = [
        (bucket, key)
        for bucket in (buckets.quarantine, buckets.curated)
        for key in store.list_keys(bucket, f"{MANIFEST_ROOT}/{run_id}/")
    ]
    for bucket, key in keys:
        document: dict[str, Any] = json.loads(store.get_bytes(bucket, key))
        summary = document.get("summary", {})
        step, kind = str(document["step"]), str(summary.get("kind", "-"))
        row = rows.setdefault((step, kind), StepSummary(step=step, kind=kind))
        row.items += 1
        if summary.get("status") == "quarantined":
            row.quarantined += 1
        else:
            row.succeeded += 1
        row.outputs += len(document.get("outputs", []))
        row.seconds += float(document.get("seconds", 0.0))
    return [rows[k] for k in sorted(rows)]


def clients(state: LocalState) -> tuple[ObjectStore, Any]:
    """Return the object store and SQS client of the local state's endpoint."""
    kwargs = state.client_kwargs()
    store = ObjectStore(boto3.client("s3", **kwargs))  # type: ignore[call-overload]
    return store, boto3.client("sqs", **kwargs)  # type: ignore[call-overload]


def run(
    state: LocalState,
    cohort: CohortFiles | None,
    run_id: str,
    *,
    idle_timeout: float = 20.0,
    progress: Any = None,
    settle_seconds: int | None = None,
) -> RunReport:
    """Upload a cohort (data first, sample sheets last), process every event, reconcile.

    With ``cohort=None`` nothing is uploaded: the worker drains the events already queued
    (uploads made by hand or another tool) until the queue is idle for ``idle_timeout``.
    ``progress`` is a ``rich.progress.Progress`` or None. Each DICOM series converts
    once it settled (``settle_seconds``, default
    :data:`oncopipe.local.series.LOCAL_SETTLE_SECONDS`); the daily jobs then sweep.
    """
    started = time.perf_counter()
    denials_from = denials_size(denials_log())
    store, sqs = clients(state)
    flow = IngestFlow(state)
    series = LocalSeriesSettle(state, LOCAL_SETTLE_SECONDS if settle_seconds is None
                               else settle_seconds)  # fmt: skip
    executions: list[Execution] = []
    arrived: list[JobResult] = []
    task = None
    if progress is not None:
        total = len(cohort.all_keys) if cohort else None
        task = progress.add_task("routing ingest objects", total=total)

    def advance(execution: Execution) -> None:
        series.observe(execution, run_id)  # the de-id hook: (re)start the series' timer
        if progress is not None and task is not None:
            progress.advance(task)

    try:
        if cohort is None:
            executions += consume(
                sqs, state.queue_url, flow, run_id=run_id, expected_keys=None,
                idle_timeout=idle_timeout, on_execution=advance,
            )  # fmt: skip
        else:
            if cohort.reference_dir is not None:  # the panel reference, as a user uploads it
                for name in ("panel.fa", "panel.json"):
                    store.client.put_object(
                        Bucket=state.buckets.artifacts,
                        Key=f"{layout.ARTIFACTS_REFERENCE}{name}",
                        Body=(cohort.reference_dir / name).read_bytes(),
                    )
            # Data first, then the sample sheets, which are validated against the data.
            for batch in (cohort.data_keys, cohort.samplesheet_keys):
                for key in batch:
                    store.client.put_object(
                        Bucket=state.buckets.ingest,
                        Key=key,
                        Body=(cohort.root / key).read_bytes(),
                    )
                executions += consume(
                    sqs, state.queue_url, flow, run_id=run_id, expected_keys=set(batch),
                    idle_timeout=idle_timeout, on_execution=advance,
                )  # fmt: skip
                # notes on arrival: the notes function's batch of what was just routed
                arrived.append(arrival.notes_on_arrival(state, run_id))
    finally:
        flow.close()
    # Series that settled: volume, masks, radiomics per series, without the daily job.
    series.drain()
    # Reconcile: FASTQ files no accepted sheet names have no patient -> quarantine.
    # The reconcile Lambda's core, as its role (it never pseudonymises: no secret).
    reconcile_client = boto3.client("s3", **state.stage_client_kwargs("reconcile"))  # type: ignore[call-overload]
    router = Router(
        store=ObjectStore(reconcile_client), buckets=state.buckets, patient_key=_no_patient_key
    )
    reconciled: list[ItemResult] = []
    try:
        reconciled = router.reconcile(run_id)
    except ClientError as e:
        if not state.iam_enforced or "AccessDenied" not in str(e):
            raise
        # the Lambda would fail the same way; the refusal is in the endpoint's log
    # De-identified series -> Parquet volumes and masks: the daily imaging Batch job,
    # then their radiomic features: the processing job the imaging state machine runs next.
    imaging = run_imaging_job(state, run_id)
    radiomics = run_radiomics_job(state, run_id)
    # The run's clinical notes: scrubbed, concepts, tokens (the notes processing job).
    notes = run_notes_job(state, run_id)
    jobs: list[JobResult] = []
    accepted = [e for e in executions if e.outcome == INGEST.branch("StartGenomics").success]
    if accepted:
        job_task = None
        if progress is not None:
            total = sum(len(e.route.get("sample_ids", [])) + len(e.route.get("tumour_ids", []))
                        for e in accepted)  # fmt: skip
            job_task = progress.add_task("genomics jobs (align, call)", total=total)

        def job_done(_: JobResult) -> None:
            if progress is not None and job_task is not None:
                progress.advance(job_task)

        for execution in accepted:
            jobs += run_genomics_jobs(state, execution, run_id, on_job=job_done)
    jobs += [*series.jobs, *arrived, imaging, radiomics, notes]
    # every patient whose named modalities are query-able: cohort row + prediction
    try:
        patients = arrival.patients_ready(state, run_id)
    except ClientError as e:
        if not state.iam_enforced or "AccessDenied" not in str(e):
            raise
        patients = []  # the refusal is in the endpoint's log (access_denied below)
    return RunReport(
        run_id=run_id,
        rows=summarize(store, state.buckets, run_id),
        executions=executions,
        reconciled=reconciled,
        jobs=jobs,
        wall_seconds=time.perf_counter() - started,
        access_denied=read_denials(denials_log(), state.stage_roles, offset=denials_from),
        series=series.outcomes,
        settle_seconds=series.settle_seconds,
        patients=patients,
    )


def denials_log() -> Path:
    """Return where the embedded endpoint logs the requests it refused (stage roles)."""
    return home() / "logs" / "denied.jsonl"


def _no_patient_key(source_patient_id: str) -> str:
    raise RuntimeError("reconcile does not pseudonymise")


def bucket_counts(state: LocalState) -> dict[str, int]:
    """Return the number of objects in each zone bucket."""
    store, _ = clients(state)
    counts = {}
    for zone in ("ingest", "quarantine", "curated", "artifacts"):
        name = getattr(state.buckets, zone)
        counts[zone] = sum(1 for _ in store.list_keys(name))
    return counts


def runs(state: LocalState) -> dict[str, int]:
    """Return the run IDs found in the manifests, with their number of manifests."""
    store, _ = clients(state)
    found: dict[str, int] = defaultdict(int)
    for bucket in (state.buckets.quarantine, state.buckets.curated):
        for key in store.list_keys(bucket, f"{MANIFEST_ROOT}/"):
            if not key.split("/")[1].startswith("_"):  # _symlinks: the tables, not a run
                found[key.split("/")[1]] += 1
    return dict(found)
