"""What every command module of the CLI shares: the consoles and how an error ends a command.

Tables, JSON and progress bars go to the terminal through rich; the stage commands'
one-line summaries are plain lines (:func:`echo`). Nothing printed carries PHI (object
keys, counts, pseudonymous keys and error reasons only).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from oncopipe.errors import OncopipeError

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich ``Console`` made on first use.

    Importing rich costs ~0.15 s of every command's start (a tenth of a radiomics run on
    a small scan, ``benchmarks/profiles.md`` §1); the stage commands print with
    :func:`echo` and never load it.
    """

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def rich(self) -> Console:
        """The rich console itself (for ``Progress(console=...)``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich(), name)


console: Any = _LazyConsole(stderr=False)
err_console: Any = _LazyConsole(stderr=True)


def echo(text: str, *, err: bool = False) -> None:
    """Print one plain line: no markup (a path with [brackets] stays as it is), no wrapping."""
    click.echo(text, err=err)


def fail(error: Exception) -> NoReturn:
    """Print ``error`` as one unwrapped line on stderr and exit with status 1."""
    from rich.markup import escape

    # the message is text, not markup (tool messages carry [brackets]); one line, unwrapped
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", markup=True, highlight=False,
                      soft_wrap=True)  # fmt: skip
    sys.exit(1)


def run_zones() -> tuple[Any, Any, bool]:
    """Return (object store, buckets, local) for the run commands: CURATED_BUCKET and
    QUARANTINE_BUCKET from the environment (the AWS configuration), else the local mode."""
    import os

    from oncopipe.layout import Buckets
    from oncopipe.settings import BUCKET_ENV
    from oncopipe.storage import ObjectStore, make_client

    names = {zone: os.environ.get(name, "") for zone, name in BUCKET_ENV.items()}
    if names["curated"] and names["quarantine"]:
        return ObjectStore(make_client()), Buckets(**names), False
    from oncopipe.local import runner
    from oncopipe.local.state import LocalState

    try:
        state = LocalState.load()
    except OncopipeError as e:
        fail(OncopipeError(f"{e} (or set CURATED_BUCKET and QUARANTINE_BUCKET)"))
    store, _ = runner.clients(state)
    return store, state.buckets, True


def latest_run(store: Any, zones: list[str]) -> str:
    """Return the run whose manifests finished last (``oncopipe report latest``)."""
    run = latest_run_or_none(store, zones)
    if run is None:
        fail(OncopipeError("no run has manifests yet"))
    return str(run)


def latest_run_or_none(store: Any, zones: list[str]) -> str | None:
    """Return the run whose manifests finished last, or None when no run has any."""
    import json as _json

    from oncopipe.manifest import MANIFEST_ROOT

    latest: dict[str, str] = {}
    for bucket in zones:
        for key in store.list_keys(bucket, f"{MANIFEST_ROOT}/"):
            run = key.split("/")[1]
            if run.startswith("_"):  # _symlinks: the tables, not a run
                continue
            finished = str(_json.loads(store.get_bytes(bucket, key)).get("finished_at", ""))
            latest[run] = max(latest.get(run, ""), finished)
    if not latest:
        return None
    return max(latest, key=lambda r: latest[r])
