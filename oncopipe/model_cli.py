"""``oncopipe model list|approve|reject|rollback``: the governed model registry.

Registered into the main group by :mod:`oncopipe.cli` when first used (``LAZY_COMMANDS``).
Runs boto3 against the response model's package group: the AWS configuration decides
the account and credentials (assume the ``ModelApprover`` role to approve), and
``--endpoint-url`` (or ``AWS_ENDPOINT_URL``) points it at the embedded endpoint of
local mode. Output: versions, statuses and descriptions; no principal, no PHI.
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.table import Table

from oncopipe.cli_common import console, fail as _fail
from oncopipe.governance import (
    APPROVED,
    REJECTED,
    GovernanceError,
    list_versions,
    resolve_version,
    rollback,
    set_status,
)


def default_group(env: str | None) -> str:
    """Return the package group of the environment of cdk.json (``<prefix>-response``)."""
    from oncopipe.deployment import load_config, read_cdk_json

    return f"{load_config(read_cdk_json(), env).prefix}-response"


def _client(ctx: click.Context) -> Any:
    import boto3

    options: dict[str, Any] = ctx.obj
    kwargs: dict[str, Any] = {}
    endpoint = options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if options.get("region"):
        kwargs["region_name"] = options["region"]
    return boto3.client("sagemaker", **kwargs)


def _group(ctx: click.Context) -> str:
    options: dict[str, Any] = ctx.obj
    return str(options.get("group") or default_group(options.get("env")))


@click.group("model")
@click.option(
    "--group",
    default=None,
    help="Model package group (default: <prefix>-response of the environment).",
)
@click.option("--env", "env", default=None, help="Environment of cdk.json (default: dev).")
@click.option(
    "--endpoint-url",
    default=None,
    help="AWS endpoint (local mode's embedded one); default: AWS_ENDPOINT_URL or AWS.",
)
@click.option("--region", default=None, help="AWS region (default: the AWS configuration).")
@click.pass_context
def model(ctx: click.Context, group: str | None, env: str | None, endpoint_url: str | None,
          region: str | None) -> None:  # fmt: skip
    """List, approve, reject and roll back versions of the response model."""
    ctx.obj = {"group": group, "env": env, "endpoint_url": endpoint_url, "region": region}


@model.command("list")
@click.pass_context
def list_command(ctx: click.Context) -> None:
    """Show every version: number, status, creation time, description."""
    try:
        versions = list_versions(_client(ctx), _group(ctx))
    except GovernanceError as e:
        _fail(e)
    table = Table()
    table.add_column("version", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("description", overflow="fold")
    for v in versions:
        table.add_row(str(v.version), v.status, v.created, v.description)
    console.print(table)
    if not versions:
        console.print("no versions registered yet")


def _set(ctx: click.Context, version: str, status: str, reason: str) -> None:
    client = _client(ctx)
    try:
        target = resolve_version(client, _group(ctx), version)
        set_status(client, target, status, reason)
    except GovernanceError as e:
        _fail(e)
    console.print(f"version {target.version}: {status}")


_REASON = click.option("--reason", required=True,
                       help="Why: recorded as the version's ApprovalDescription.")  # fmt: skip


@model.command("approve")
@click.argument("version")
@_REASON
@click.pass_context
def approve(ctx: click.Context, version: str, reason: str) -> None:
    """Approve VERSION (a number or ARN) for serving. Needs the ModelApprover role.

    A version approved by the principal that registered it is set back to Rejected by
    the four-eyes check within seconds.
    """
    _set(ctx, version, APPROVED, reason)


@model.command("reject")
@click.argument("version")
@_REASON
@click.pass_context
def reject(ctx: click.Context, version: str, reason: str) -> None:
    """Reject VERSION (a number or ARN)."""
    _set(ctx, version, REJECTED, reason)


@model.command("rollback")
@_REASON
@click.option(
    "--serving", default=None, help="The version serving now (default: the newest approved one)."
)
@click.pass_context
def rollback_command(ctx: click.Context, reason: str, serving: str | None) -> None:
    """Reject the serving version and re-approve the newest earlier approved one."""
    try:
        done = rollback(_client(ctx), _group(ctx), reason, serving=serving)
    except GovernanceError as e:
        _fail(e)
    console.print(f"version {done.rejected.version}: {REJECTED}; "
                  f"version {done.restored.version}: {APPROVED}")  # fmt: skip
