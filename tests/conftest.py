"""Shared fixtures: AWS stand-ins (moto) and the synthesized app."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

REPO = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "20")


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
