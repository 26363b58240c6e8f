"""Shared fixtures: AWS stand-ins (moto) and the synthesized app."""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "20")
# The CLI's console wraps at the terminal's width, which differs between a terminal, CI and
# a pytest-xdist worker (80 columns): the CLI tests read whole lines.
os.environ["COLUMNS"] = "200"

#: The test layers (folders of ``tests/``), slowest first. ``make test`` hands whole files to
#: its worker processes in this order, so the long end-to-end files start first and the many
#: short unit files fill in behind them.
LAYERS = ("e2e", "infrastructure", "adapters", "unit")


#: The session fixtures of the synthesized apps (see :func:`synthesized_app`).
APP_FIXTURES = ("app_dev", "app_prod", "app_env")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the tests by layer (see :data:`LAYERS`), keeping the file order within one."""

    def layer(item: pytest.Item) -> int:
        folder = item.path.parent.name
        return LAYERS.index(folder) if folder in LAYERS else len(LAYERS)

    items.sort(key=layer)


@functools.cache
def _uses_apps(path: Path) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    return any(name in text for name in APP_FIXTURES)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test``'s ``--dist loadfile``, with one change: every file that uses the
    session's synthesized apps is one unit of work, so one worker synthesizes each
    environment once (two workers did it twice: ~30 s of the suite). (pytest-xdist's own
    ``loadgroup`` marks do not reach its scheduler under pytest 9: it renames items
    through an attribute pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SynthesizedAppsTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "synthesized-apps" if _uses_apps(REPO / path) else path

    return SynthesizedAppsTogether(config, log)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, so no test can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """An in-process moto S3 client."""
    from moto import mock_aws

    with mock_aws():
        yield boto3.client("s3", region_name=REGION)


def make_bucket(client: Any, name: str) -> str:
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def make_buckets(client: Any, prefix: str) -> Any:
    """Create the four zone buckets ``<prefix>-ingest`` ... (versioned); return their names."""
    from oncopipe.layout import Buckets

    buckets = Buckets(ingest=f"{prefix}-ingest", quarantine=f"{prefix}-quarantine",
                      curated=f"{prefix}-curated", artifacts=f"{prefix}-artifacts")  # fmt: skip
    for name in (buckets.ingest, buckets.quarantine, buckets.curated, buckets.artifacts):
        make_bucket(client, name)
    return buckets


def cdk_context(**extra: Any) -> dict[str, Any]:
    """The cdk.json context with bundling skipped (no pip install during tests)."""
    context: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]
    context["aws:cdk:bundling-stacks"] = []
    context.update(extra)
    return context


# -- the synthesized app, once per environment for the whole session --------------------------
_APPS: dict[str, Any] = {}


def synthesized_app(env: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole app of ``env`` as ``cdk synth`` builds it (both nag packs on, path metadata on).

    Built once per session and shared by every infrastructure module: a synth of the app takes
    10-15 s on 2 cores, and a dozen modules used to pay it each. The returned object is read
    only: a test that needs other configuration builds its own app (see ``cdk_context``).
    Attributes: ``built`` (:class:`stacks.app_factory.OncopipeApp`), ``assembly``, ``outdir``.
    """
    if env not in _APPS:
        from types import SimpleNamespace

        from aws_cdk import App

        from stacks.app_factory import build_app

        outdir = tmp_path_factory.mktemp(f"cdk-{env}")
        context = cdk_context(env=env)
        # construct paths in the templates' metadata: the IAM tests find roles by path
        context["aws:cdk:enable-path-metadata"] = True
        built = build_app(App(context=context, outdir=str(outdir)))
        assembly = built.app.synth()  # raises when an unacknowledged nag finding remains
        _APPS[env] = SimpleNamespace(built=built, assembly=assembly, outdir=outdir)
    return _APPS[env]


@pytest.fixture(scope="session")
def app_dev(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dev app, synthesized once per session (see :func:`synthesized_app`)."""
    return synthesized_app("dev", tmp_path_factory)


@pytest.fixture(scope="session")
def app_prod(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The prod app, synthesized once per session (see :func:`synthesized_app`)."""
    return synthesized_app("prod", tmp_path_factory)


@pytest.fixture(scope="session", params=["dev", "prod"])
def app_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each environment's app in turn (dev, prod), each synthesized once per session."""
    return synthesized_app(request.param, tmp_path_factory)


def stack_templates(app: Any) -> dict[str, Any]:
    """The synthesized templates of a :func:`synthesized_app`, by stack name (read only)."""
    return {stack.stack_name: stack.template for stack in app.assembly.stacks}


def _token(value: dict[str, Any]) -> str:
    """Name a CloudFormation intrinsic inside a definition: ``<LogicalId>`` (or ``<token>``)."""
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return f"<{'.'.join(value['Fn::GetAtt'])}>"
    return "<token>"


def definition_text(value: Any) -> str:
    """Return a state machine's DefinitionString as text, each intrinsic named by its logical
    id (``<LogicalId>``, ``<LogicalId.Attribute>``): ``json.loads`` reads it state by state."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(definition_text(p) for p in parts)
    return _token(value)


def fastq_records(data: bytes) -> list[bytes]:
    """The 4-line records of a gzipped FASTQ."""
    lines = gzip.decompress(data).splitlines(keepends=True)
    return [b"".join(lines[i : i + 4]) for i in range(0, len(lines), 4)]


def with_pcr_duplicates(r1: bytes, r2: bytes, count: int, seed: int) -> tuple[bytes, bytes]:
    """Append ``count`` PCR duplicates (the same pair under a new name) to the pair."""
    rng = random.Random(seed)
    one, two = fastq_records(r1), fastq_records(r2)
    picks = rng.sample(range(len(one)), count)
    extra_1: list[bytes] = []
    extra_2: list[bytes] = []
    for n, pick in enumerate(picks):
        for source, extra in ((one, extra_1), (two, extra_2)):
            header, rest = source[pick].split(b"\n", 1)
            name, comment = header.split(b" ", 1)
            extra.append(name + b"-dup" + str(n).encode() + b" " + comment + b"\n" + rest)
    return (gzip.compress(b"".join(one + extra_1), mtime=0),
            gzip.compress(b"".join(two + extra_2), mtime=0))  # fmt: skip
