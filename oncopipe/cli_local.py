"""``oncopipe local``: the embedded local mode (up, run, model, lifecycle, status, down)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from oncopipe.cli_common import console, fail as _fail, latest_run_or_none
from oncopipe.errors import OncopipeError


# -- local mode ----------------------------------------------------------------------------
@click.group()
def local() -> None:
    """The embedded local mode: every stage on your machine, no AWS account."""


@local.command("up")
@click.option("--env", "env", default=None, help="Environment of cdk.json (default: dev).")
@click.option(
    "--port",
    type=click.IntRange(1024, 65535),
    default=None,
    help="Port of the embedded endpoint (default: a free one).",
)
@click.option(
    "--external",
    is_flag=True,
    help="Do not start moto: create the resources on the endpoint of the standard "
    "AWS configuration (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_REGION).",
)
@click.option(
    "--iam/--no-iam",
    default=True,
    show_default=True,
    help="Run each stage as its synthesized IAM role with the embedded endpoint's IAM "
    "enforcement on (a missing grant fails the run).",
)
def local_up(env: str | None, port: int | None, external: bool, iam: bool) -> None:  # fmt: skip
    """Start the embedded AWS endpoint and create the platform's resources."""
    from oncopipe.local import runner

    try:
        state = runner.up(env, port=port, external=external, iam=iam)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    where = state.endpoint_url or "the endpoint of your AWS configuration"
    console.print(f"local mode up at {where} (env {state.env})")
    for zone in ("ingest", "quarantine", "curated", "artifacts"):
        console.print(f"  {zone:<10} s3://{getattr(state.buckets, zone)}")
    console.print(f"  catalog    {state.database}")
    if state.iam_enforced:
        console.print(f"  IAM        enforced: {len(state.stage_roles)} stages as their roles")


@local.command("run")
@click.option(
    "--cohort",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Upload this folder (laid out like the ingest bucket).",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Upload nothing: process the events already queued, until idle.",
)
@click.option(
    "--run-id",
    default=None,
    help="Run ID (default: a new one). Re-using a finished run's ID skips every item already done.",
)
@click.option(
    "--patients",
    default=3,
    show_default=True,
    type=click.IntRange(1, 500),
    help="Patients of the generated cohort (without --cohort).",
)
@click.option(
    "--idle-timeout",
    default=20.0,
    show_default=True,
    type=float,
    help="Seconds without events after which the worker stops waiting.",
)
@click.option(
    "--settle-seconds",
    default=None,
    type=click.IntRange(0, 86_400),
    help="A DICOM series converts once no instance arrived for this long "
    "(default: 3 s locally; deployed: series_settle_seconds).",
)
def local_run(cohort: Path | None, drain: bool, run_id: str | None, patients: int,
              idle_timeout: float, settle_seconds: int | None) -> None:  # fmt: skip
    """Upload a cohort to the ingest bucket and process it like the cloud would."""
    from oncopipe.local import runner
    from oncopipe.local.state import LocalState, home
    from oncopipe.runs import new_run_id, validate_run_id
    from oncopipe.sample_data import generate, scan

    try:
        state = LocalState.load()
        run_id = validate_run_id(run_id) if run_id else new_run_id("local")
        if drain:
            files = None
        elif cohort:
            files = scan(cohort)
        else:
            files = generate(home() / "cohort", patients=patients)
            console.print(f"generated the sample cohort under {files.root}")
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console.rich(), transient=False,
        )  # fmt: skip
        with progress:
            report = runner.run(state, files, run_id, idle_timeout=idle_timeout,
                                progress=progress, settle_seconds=settle_seconds)  # fmt: skip
    except (OncopipeError, ValueError) as e:
        _fail(e)
    _print_report(report, state)
    if report.access_denied:
        # As in AWS: a missing grant fails the stage; here it fails the run, by name.
        console.print("[bold red]access denied[/] (a grant the stage's role lacks):")
        for denial in report.access_denied:
            console.print(f"  {denial}", highlight=False, markup=False)
        sys.exit(1)


def _print_report(report: object, state: object) -> None:
    from oncopipe.local.runner import RunReport
    from oncopipe.local.state import LocalState

    assert isinstance(report, RunReport) and isinstance(state, LocalState)
    table = Table(title=f"run {report.run_id}")
    for column in ("step", "kind", "items", "ok", "quarantined", "outputs", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for row in report.rows:
        table.add_row(
            row.step, row.kind, str(row.items), str(row.succeeded), str(row.quarantined),
            str(row.outputs), f"{row.seconds:.2f}",
        )  # fmt: skip
    console.print(table)
    rejected = [e for e in report.executions if e.status == "FAILED"]
    orphans = [r for r in report.reconciled if r.summary.get("status") == "quarantined"]
    if rejected or orphans:
        console.print("[bold]quarantined[/] (copy and reason in "
                      f"s3://{state.buckets.quarantine}/{report.run_id}/):")  # fmt: skip
        for execution in rejected:
            reason = execution.route.get("reason") or execution.route.get("error", {}).get("Error")
            console.print(f"  {execution.outcome}: {reason}", highlight=False, markup=False)
            for detail in execution.route.get("details", [])[:8]:
                console.print(f"      {detail}", highlight=False, markup=False)
        for orphan in orphans:
            console.print(f"  reconcile: {orphan.summary['reason']}", highlight=False, markup=False)
    for job in report.jobs:
        if job.step == "volumes":
            for series in job.outcome.get("series", []):
                dims = "x".join(map(str, series.get("dimensions", [])))
                console.print(f"  volume {series.get('patient_key')} {dims} "
                              f"{series.get('status')} masks: {', '.join(series.get('rois', []))}",
                              highlight=False, markup=False)  # fmt: skip
        if job.step == "radiomics":
            for series in job.outcome.get("series", []):
                detail = (
                    f"{series.get('features')} features of {', '.join(series.get('rois', []))}"
                    if series.get("status") == "extracted"
                    else series.get("reason_code", "")  # the reason is in the manifest
                )
                console.print(f"  radiomics {series.get('patient_key', '')} "
                              f"{series.get('status')}: {detail}",
                              highlight=False, markup=False)  # fmt: skip
    settled = [o for o in report.series if o.status == "converted"]
    swept = [s for j in report.jobs if j.step == "volumes" and j.sample == report.run_id
             for s in j.outcome.get("series", []) if s.get("item_status") != "skipped"]  # fmt: skip
    console.print(f"{len(settled)} DICOM series converted when they settled (no instance for "
                  f"{report.settle_seconds}s), before the daily jobs; the daily imaging sweep "
                  f"had {len(swept)} series left to do", highlight=False, markup=False)  # fmt: skip
    failed_jobs = [j for j in report.jobs if j.exit_code != 0]
    for job in failed_jobs:
        failure = job.outcome.get("reason_code") or job.outcome.get("error", "")
        console.print(f"  {job.step} {job.sample} FAILED: {failure}",
                      highlight=False, markup=False)  # fmt: skip
    hotspots = [f"{j.sample}: {', '.join(j.outcome['hotspots'])}"
                for j in report.jobs if j.step == "call" and j.outcome.get("hotspots")]  # fmt: skip
    if hotspots:
        console.print(
            "[bold]hotspot variants[/] (genomics/variants/ Parquet, Glue table variants):"
        )
        for line in hotspots:
            console.print(f"  {line}", highlight=False, markup=False)
    _print_arrival(report)
    console.print(
        f"{len(report.executions)} ingest events and {len(report.jobs)} Batch/processing jobs in "
        f"{report.wall_seconds:.1f}s; manifests in "
        f"s3://{state.buckets.quarantine}/_manifests/{report.run_id}/ (routing, PHI zone) and "
        f"s3://{state.buckets.curated}/_manifests/{report.run_id}/ (stages)"
    )


def _print_arrival(report: Any) -> None:
    """Print the notes processed on arrival vs by the daily sweep, and each patient's state."""
    from oncopipe.local.arrival import ARRIVAL_STEP, processed_now

    on_arrival = sum(processed_now(j) for j in report.jobs if j.step == ARRIVAL_STEP)
    swept = sum(processed_now(j) for j in report.jobs if j.step == "notes")
    console.print(f"notes processed on arrival: {on_arrival}; by the daily sweep: {swept}",
                  highlight=False, markup=False)  # fmt: skip
    _print_patients(report.patients)


def _progress_line(line: str) -> None:
    """Print one progress line of a long local step (also readable in a log file)."""
    console.print(f"  {line}", highlight=False, markup=False, style="dim")


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given libraries' loggers to ERROR for the block; restore them after.

    Each library is imported first: MLflow sets its loggers' levels when it is imported.
    """
    import importlib

    for name in names:
        importlib.import_module(name)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _print_patients(patients: Any) -> None:
    """Print each sheet patient's state: predicted (time to insight), waiting, no model."""
    for patient in patients:
        detail = {
            "waiting": f"waiting for {', '.join(patient.missing)}",
            "no-model": "complete; no model deployed (oncopipe local model)",
        }.get(patient.status, f"time to insight {patient.time_to_insight_seconds or 0:.1f}s")
        console.print(f"  patient {patient.patient_key} {patient.status}: {detail}",
                      highlight=False, markup=False)  # fmt: skip


@local.command("model")
@click.option("--patients", type=int, default=1000, show_default=True,
              help="Synthetic training patients.")  # fmt: skip
def local_model(patients: int) -> None:
    """Train, evaluate, explain and prune the model; score the local run's patients."""
    from oncopipe.local import runner
    from oncopipe.local.model_demo import run_model_demo
    from oncopipe.local.state import LocalState, home

    try:
        state = LocalState.load()
    except OncopipeError as e:
        _fail(e)
    store, _ = runner.clients(state)
    # MLflow's advice (pickle format, SageMaker packages not installed here) is about
    # serving from MLflow, which this demo does not do: errors only from its loggers.
    with _quiet_loggers("mlflow"):
        report = run_model_demo(home() / "model", patients=patients, store=store,
                                curated=state.buckets.curated, progress=_progress_line)  # fmt: skip
    console.print("[bold]ablations[/] (held-out test split of the synthetic cohort):")
    console.print(report.table, highlight=False, markup=False)
    g = report.goals
    if g:
        console.print(
            f"multimodal AUC {g['multimodal_auc']:.3f} (goal >= {g['auc_goal']}); best single "
            f"modality {g['best_single_modality']} {g['best_single_auc']:.3f}, margin "
            f"{g['margin']:+.3f} (goal >= +{g['margin_goal']})", highlight=False, markup=False,
        )  # fmt: skip
    p = report.prune
    console.print(
        f"pruned: AUC {p['test_auc']['pruned']:.3f} vs {p['test_auc']['full']:.3f}, "
        f"p50 {p['latency_ms']['pruned']['p50_ms']:.2f} ms vs "
        f"{p['latency_ms']['full']['p50_ms']:.2f} ms ({p['speedup_p50']:.2f}x faster)",
        highlight=False, markup=False,
    )  # fmt: skip
    for prediction in report.predictions:
        console.print(f"  {prediction.get('patient_key')}: response probability "
                      f"{prediction.get('response_probability'):.3f} "
                      f"(modalities {prediction.get('modalities_present')})",
                      highlight=False, markup=False)  # fmt: skip
    console.print(f"ROC plot {report.out / 'evaluation' / 'roc.png'}; explanations "
                  f"{report.out / 'evaluation' / 'explanations'} "
                  f"({len(report.explanations)} HTML reports); MLflow runs "
                  f"{report.out / 'mlruns'}", highlight=False, markup=False)  # fmt: skip
    # The model is deployed (locally) now: what the patient-ready function does on the next
    # event, for the latest run: its complete patients get a prediction and time to insight.
    run_id = latest_run_or_none(store, [state.buckets.quarantine, state.buckets.curated])
    if run_id is not None:
        from botocore.exceptions import ClientError

        from oncopipe.local.arrival import patients_ready

        try:
            outcomes = patients_ready(state, run_id)
        except (OncopipeError, ClientError) as e:
            _fail(e)
        console.print(f"patients of run {run_id} with the model deployed:", highlight=False,
                      markup=False)  # fmt: skip
        _print_patients(outcomes)


def _line(line: str) -> None:
    """Print one line as it is (no markup, no highlighting, no wrapping)."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)


@local.command("lifecycle")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True,
              help="Simulated days of uploads.")  # fmt: skip
@click.option("--shift", type=click.FloatRange(0.0, 1.0), default=0.12, show_default=True,
              help="VAF shift of the new sequencing platform (every clonal call).")  # fmt: skip
@click.option("--shift-day", type=click.IntRange(1, 366), default=10, show_default=True,
              help="The new platform's first day.")  # fmt: skip
@click.option("--samples-per-day", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Samples uploaded a day.")  # fmt: skip
@click.option("--gap-day", type=click.IntRange(0, 366), default=None,
              help="A day without uploads: the window is not evaluated, the alarm clears "
              "(default: the day after the shift day; 0: none).")  # fmt: skip
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also run a no-shift control of the same length, from nothing.")  # fmt: skip
@click.option("--calendar/--no-calendar", default=False, show_default=True,
              help="lifecycle.retrain_schedule (calendar retrains) asks the gate too.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every simulation.")
@click.option("--patients", type=click.IntRange(100, 100_000), default=800, show_default=True,
              help="Patients of the synthetic training cohort.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1, 500), default=8, show_default=True,
              help="Training epochs (the pipeline's hyperparameter).")  # fmt: skip
def local_lifecycle(days: int, shift: float, shift_day: int, samples_per_day: int,
                    gap_day: int | None, control: bool, calendar: bool, seed: int,
                    patients: int, epochs: int) -> None:  # fmt: skip
    """The model lifecycle end to end: register, four eyes, deploy, drift, retrain gate.

    Runs on the endpoint of `local up` in buckets of its own (emptied first); writes the
    summary, the drift plots and the pipeline jobs' log under .oncopipe/local/lifecycle/.
    """
    from oncopipe.deployment import load_config, read_cdk_json
    from oncopipe.local.lifecycle import Endpoint, Options, run_lifecycle
    from oncopipe.local.state import LocalState, home

    try:
        state = LocalState.load()
        options = Options(days=days, shift=shift, shift_day=shift_day,
                          samples_per_day=samples_per_day, gap_day=gap_day, control=control,
                          calendar=calendar, seed=seed, patients=patients,
                          epochs=epochs)  # fmt: skip
        config = load_config(read_cdk_json(), state.env)
    except OncopipeError as e:
        _fail(e)
    # the pipeline's jobs reach the endpoint as the local worker (MLflow off: no server)
    jobs = {k: v for k, v in state.handler_env().items() if k.startswith("AWS_")}
    endpoint = Endpoint(state.client_kwargs(), {**jobs, "MLFLOW_TRACKING_URI": ""})
    out = home() / "lifecycle"
    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with (out / "jobs.log").open("w", encoding="utf-8") as job_log:
        # the jobs' and the cores' logs go to the log, as a container's go to CloudWatch
        handler = logging.StreamHandler(job_log)
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            report = run_lifecycle(options, config=config, endpoint=endpoint, out=out,
                                   job_log=job_log, say=_line)  # fmt: skip
        except OncopipeError as e:
            _fail(e)
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(level)
    drift = report.drift.as_dict(shift_day)
    delay = drift["detection_delay_days"]
    retrains = [d for d in drift["gate_decisions"] if d["outcome"] == "triggered"]
    skips = [f"{d['reason']} ({d['source']})" for d in drift["gate_decisions"]
             if d["outcome"] != "triggered"]  # fmt: skip
    verdict = "met" if delay is not None and delay <= 3 else "MISSED"
    caught = (f"alarmed in the window of day {drift['detection_day']}: {delay} day(s)"
              if delay is not None else f"was not caught in {days} days")  # fmt: skip
    _line(f"detection: the shift of day {shift_day} {caught} (goal <= 3: {verdict}); "
          f"retrains started: {len(retrains)}; skipped: {', '.join(skips) or 'none'}")  # fmt: skip
    if report.control is not None:
        alarms = report.control.as_dict(shift_day)["alarm_days"]
        _line(f"control (no shift, {days} days): {len(alarms)} alarm(s)"
              + (f" on day(s) {', '.join(map(str, alarms))}" if alarms else ""))  # fmt: skip
    for plot in report.plots:
        _line(f"drift plot {plot}")
    _line(f"summary {report.summary}; pipeline jobs' log {out / 'jobs.log'}; "
          f"{report.seconds:.0f} s")  # fmt: skip


@local.command("status")
def local_status() -> None:
    """Show the endpoint, object counts per zone and the runs found."""
    from oncopipe.local import runner, server
    from oncopipe.local.state import LocalState

    try:
        state = LocalState.load()
    except OncopipeError as e:
        _fail(e)
    alive = state.server_pid is None or server.is_running(state.server_pid)
    health = "running" if alive else "NOT running: run `oncopipe local up`"
    console.print(f"endpoint: {state.endpoint_url or 'AWS configuration'} ({health})")
    if not alive:
        sys.exit(1)
    for zone, count in runner.bucket_counts(state).items():
        console.print(f"  {zone:<10} {count:>5} objects")
    for run_id, manifests in sorted(runner.runs(state).items()):
        console.print(f"  run {run_id}: {manifests} manifests")


@local.command("down")
def local_down() -> None:
    """Stop the embedded endpoint (its data is in memory and goes with it)."""
    from oncopipe.local import runner

    stopped = runner.down()
    console.print("local mode stopped" if stopped else "local mode was not running")
