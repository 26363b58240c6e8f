"""The ``oncopipe`` command line. Every command has ``--help``.

Output goes to the terminal through rich; nothing printed carries PHI (object keys,
counts, pseudonymous keys and error reasons only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from oncopipe.errors import OncopipeError

console = Console(stderr=False)
err_console = Console(stderr=True)


def _fail(error: Exception) -> None:
    err_console.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=None, version=__import__("oncopipe").__version__)
def main() -> None:
    """oncopipe: multimodal oncology data platform on AWS (and on your laptop)."""


# -- sample data ---------------------------------------------------------------------------
@main.command("sample-data")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the cohort to (laid out like the ingest bucket).",
)
@click.option("--patients", default=3, show_default=True, type=click.IntRange(1, 500))
@click.option(
    "--reads",
    default=200,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Read pairs per FASTQ sample.",
)
@click.option("--seed", default=7, show_default=True, type=int)
def sample_data(out: Path, patients: int, reads: int, seed: int) -> None:  # fmt: skip
    """Generate the sample cohort: FASTQ, notes, sample sheets, and bad inputs."""
    from oncopipe.sample_data import generate

    files = generate(out, patients=patients, reads=reads, seed=seed)
    console.print(
        f"wrote {len(files.all_keys)} files for {files.patients} patients under {out}/ "
        f"(sample sheets: {', '.join(files.samplesheet_keys)})"
    )


# -- sample sheet --------------------------------------------------------------------------
@main.command("validate-samplesheet")
@click.argument("sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Check that the files the sheet names exist under this folder "
    "(the local copy of the ingest bucket). Default: the sheet's parent's parent.",
)
@click.option("--no-check-files", is_flag=True, help="Do not check that named files exist.")
def validate_samplesheet(sheet: Path, base_dir: Path | None, no_check_files: bool) -> None:
    """Validate a sample sheet; list every problem by line and column."""
    from oncopipe.samplesheet import SampleSheetError, parse_samplesheet

    base = base_dir or sheet.resolve().parent.parent
    exists = None if no_check_files else (lambda key: (base / key).is_file())
    prefix_exists = None if no_check_files else (lambda key: (base / key).is_dir())
    try:
        parsed = parse_samplesheet(
            sheet.read_bytes(),
            source=str(sheet),
            exists=exists,
            prefix_exists=prefix_exists,
        )
    except SampleSheetError as e:
        err_console.print(e.report(), highlight=False)
        sys.exit(1)
    console.print(
        f"{sheet}: valid, {len(parsed.rows)} samples of {len(parsed.patients())} patients"
    )


# -- local mode ----------------------------------------------------------------------------
@main.group()
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
def local_up(env: str | None, port: int | None, external: bool) -> None:  # fmt: skip
    """Start the embedded AWS endpoint and create the platform's resources."""
    from oncopipe.local import runner

    try:
        state = runner.up(env, port=port, external=external)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    where = state.endpoint_url or "the endpoint of your AWS configuration"
    console.print(f"local mode up at {where} (env {state.env})")
    for zone in ("ingest", "quarantine", "curated", "artifacts"):
        console.print(f"  {zone:<10} s3://{getattr(state.buckets, zone)}")
    console.print(f"  catalog    {state.database}")


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
def local_run(cohort: Path | None, drain: bool, run_id: str | None, patients: int,
              idle_timeout: float) -> None:  # fmt: skip
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
            TimeElapsedColumn(), console=console, transient=False,
        )  # fmt: skip
        with progress:
            report = runner.run(state, files, run_id, idle_timeout=idle_timeout, progress=progress)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    _print_report(report, state)


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
    console.print(
        f"{len(report.executions)} ingest events in {report.wall_seconds:.1f}s; manifests in "
        f"s3://{state.buckets.quarantine}/_manifests/{report.run_id}/ (routing, PHI zone) and "
        f"s3://{state.buckets.curated}/_manifests/{report.run_id}/ (stages)"
    )


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


if __name__ == "__main__":
    main()
