"""``oncopipe ops`` (CloudFormation drift, cost per run) and ``oncopipe report``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from oncopipe.cli_common import console, err_console, fail as _fail, latest_run, run_zones
from oncopipe.errors import OncopipeError


# -- operations ----------------------------------------------------------------------------
@click.group()
def ops() -> None:
    """Operate the deployed platform in an AWS account."""


@ops.command("drift")
@click.option("--env", "env", default=None, help="Environment of cdk.json (default: dev).")
@click.option(
    "--stack",
    "stacks",
    multiple=True,
    help="Only this stack of the app (repeatable; default: every stack).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "json", "html"]),
    default="md",
    show_default=True,
    help="Report format.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report to this file (default: standard output).",
)
@click.option(
    "--fail-on",
    "fail_on",
    type=click.Choice(["critical", "any", "never"]),
    default="critical",
    show_default=True,
    help="Exit 1 on a critical drift / on any drift not in drift_allow_list.",
)
@click.option(
    "--timeout",
    "timeout_min",
    type=click.FloatRange(0.1, 360),
    default=30,
    show_default=True,
    help="Minutes to wait for CloudFormation's detection.",
)
@click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(1, 300),
    default=10,
    show_default=True,
    help="Seconds between two status calls.",
)
@click.option("--region", default=None, help="AWS region (default: the AWS configuration).")
def ops_drift(
    env: str | None,
    stacks: tuple[str, ...],
    fmt: str,
    output: Path | None,
    fail_on: str,
    timeout_min: float,
    poll_s: float,
    region: str | None,
) -> None:
    """CloudFormation drift of the app's stacks (and their nested stacks): one report with
    severities, the allow-list of cdk.json and the coverage of the check.

    Exit code: 0 no drift that --fail-on counts, 1 drift, 2 detection errors (access
    denied, timeout, bad configuration). Progress goes to standard error."""
    from rich.markup import escape

    from oncopipe.deployment import ConfigurationError, load_config, read_cdk_json, stack_names
    from oncopipe.ops import drift
    from oncopipe.ops.drift_report import RENDERERS

    def fail(message: str) -> None:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                          soft_wrap=True)  # fmt: skip
        sys.exit(2)

    def show(event: drift.Progress) -> None:
        what = {
            "started": "detection started",
            "waiting": f"waiting for {event.detail} stack(s)",
            "finished": f"detection finished: {event.detail}",
            "not-deployed": "not deployed",
            "error": f"error ({event.detail})",
            "timed-out": "timed out",
        }.get(event.event, event.event)
        label = f"{event.stack}: " if event.stack else ""
        err_console.print(f"[{event.elapsed_s:5.0f} s] {label}{what}", markup=False,
                          highlight=False, soft_wrap=True)  # fmt: skip

    try:
        config = load_config(read_cdk_json(), env)
    except ConfigurationError as e:
        fail(str(e))
    names = stack_names(config)
    unknown = [s for s in stacks if s not in names]
    if unknown:
        fail(f"not a stack of the app: {', '.join(unknown)} (stacks: {', '.join(names)})")
    try:
        report = drift.detect(
            drift.make_cloudformation_client(region),
            [n for n in names if not stacks or n in stacks],
            allow_list=config.drift_allow_list,
            environment=config.name,
            poll_s=poll_s,
            timeout_s=timeout_min * 60,
            progress=show,
        )
    except drift.DriftDetectionError as e:
        fail(str(e))
    text = RENDERERS[fmt](report)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"report written to {output}", markup=False, highlight=False)
    else:
        click.echo(text, nl=False)
    for stack in report.errors:
        err_console.print(f"[bold red]error:[/] {escape(stack.name)}: {escape(stack.reason)}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    code = report.exit_code(fail_on)  # type: ignore[arg-type]
    err_console.print(
        f"{report.drifted_resources} drifted resources ({report.critical_resources} critical), "
        f"{len(report.errors)} detection errors: exit {code} (--fail-on {fail_on})",
        markup=False, highlight=False,
    )  # fmt: skip
    sys.exit(code)


@ops.command("cost")
@click.option("--run", "run_id", required=True, help="Run ID.")
@click.option("--no-actual", is_flag=True, help="Do not query Cost Explorer (estimates only).")
def ops_cost(run_id: str, no_actual: bool) -> None:
    """Cost per sample and stage of a run: the manifests' estimates beside the actual from
    Cost Explorer (by the oncopipe:run-id, oncopipe:stage and oncopipe:sample tags)."""
    import boto3

    from oncopipe.ops import cost, cost_report

    store, buckets, local_mode = run_zones()
    ce = None
    if not (no_actual or local_mode):
        ce = boto3.client("ce", region_name=cost.COST_EXPLORER_REGION)
    zones = [buckets.curated, buckets.quarantine]
    manifests = list(cost_report.iter_run_manifests(store, zones, run_id))
    report = cost_report.cost_report(run_id, manifests, ce)
    table = Table(title=f"cost of run {run_id} (USD)")
    for column in ("stage", "sample", "items", "estimate", "actual"):
        table.add_column(column, justify="left" if column in ("stage", "sample") else "right")
    for row in report.rows:
        table.add_row(row.stage, row.sample, str(row.items),
                      "-" if row.estimate_usd is None else f"{row.estimate_usd:.4f}",
                      "-" if row.actual_usd is None else f"{row.actual_usd:.4f}")  # fmt: skip
    if report.rows:
        console.print(table)
    else:
        console.print(f"no job of run {run_id} recorded a cost estimate in its manifest",
                      highlight=False, markup=False)  # fmt: skip
    total = f"estimate {report.estimate_total:.4f} USD"
    if report.actual_total is not None:
        total += f", actual {report.actual_total:.4f} USD"
    console.print(total, highlight=False, markup=False)
    if report.price_as_of:
        console.print(f"prices as of {', '.join(report.price_as_of)} (oncopipe/ops/prices.csv)",
                      highlight=False, markup=False)  # fmt: skip
    note = "estimates only: local mode has no Cost Explorer" if local_mode else report.note
    if note:
        console.print(note, highlight=False, markup=False)


@click.command("report")
@click.argument("run_id", metavar="RUN")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write (one self-contained page).")  # fmt: skip
@click.option("--plot", "plots", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PNG plot to embed (repeatable; default: the local model's plots).")  # fmt: skip
@click.option("--drift", "drift_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON of `oncopipe ops drift --format json` to show.")  # fmt: skip
@click.option("--no-actual", is_flag=True, help="Do not query Cost Explorer (estimates only).")
def report_command(run_id: str, out: Path, plots: tuple[Path, ...], drift_json: Path | None,
                   no_actual: bool) -> None:  # fmt: skip
    """Write the run report of RUN (a run ID, or `latest`): items per stage, quarantines
    (reason codes), durations, cost, time to insight per pseudonymous patient, drift status
    and plots, as one self-contained HTML page."""
    import json

    import boto3

    from oncopipe.ops import cost
    from oncopipe.ops.report import collect, drift_rows, write_report

    store, buckets, local_mode = run_zones()
    if run_id == "latest":
        run_id = latest_run(store, [buckets.quarantine, buckets.curated])
    if not plots and local_mode:
        from oncopipe.local.state import home

        plots = tuple(sorted((home() / "model" / "evaluation").glob("*.png")))
    drift, drift_note = None, None
    if drift_json is not None:
        try:
            drift, drift_note = drift_rows(json.loads(drift_json.read_text(encoding="utf-8")))
        except (ValueError, AttributeError) as e:
            _fail(ValueError(f"{drift_json}: not the JSON of `oncopipe ops drift` ({e})"))
    ce = None if (no_actual or local_mode) else boto3.client(
        "ce", region_name=cost.COST_EXPLORER_REGION)  # fmt: skip
    try:
        data = collect(store, buckets, run_id, cost_explorer=ce, drift=drift,
                       drift_note=drift_note, plots=plots)  # fmt: skip
    except (OncopipeError, ValueError) as e:
        _fail(e)
    path = write_report(data, out)
    console.print(f"run report {path}", highlight=False, markup=False)
