"""``oncopipe model list|approve|reject|rollback`` on moto's SageMaker registry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import click
import pytest
from click.testing import CliRunner
from moto import mock_aws

from oncopipe.model_cli import model

GROUP = "oncopipe-dev-response"
REGION = "eu-west-1"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto registry with the group and three versions (1, 2 approved; 3 pending)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("sagemaker", region_name=REGION)
        client.create_model_package_group(ModelPackageGroupName=GROUP)
        for status in ("Approved", "Approved", "PendingManualApproval"):
            client.create_model_package(
                ModelPackageGroupName=GROUP,
                ModelApprovalStatus=status,
                ModelPackageDescription="pipeline execution x",
                InferenceSpecification={
                    "Containers": [{"Image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/i:1",
                                    "ModelDataUrl": "s3://b/models/j/output/model.tar.gz"}],
                    "SupportedContentTypes": ["application/json"],
                    "SupportedResponseMIMETypes": ["application/json"],
                },
            )  # fmt: skip
        yield client


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(model, ["--group", GROUP, "--region", REGION, *args])


def _statuses(client: Any) -> dict[int, str]:
    summaries = client.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    return {int(s["ModelPackageVersion"]): s["ModelApprovalStatus"] for s in summaries}


def _description(client: Any, version: int) -> str:
    arn = next(s["ModelPackageArn"] for s in client.list_model_packages(
        ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
        if s["ModelPackageVersion"] == version)  # fmt: skip
    return str(client.describe_model_package(ModelPackageName=arn).get("ApprovalDescription"))


def test_list_shows_every_version_with_its_status(registry: Any) -> None:
    result = _run("list")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "pipeline execution" in line]
    assert len(rows) == 3
    assert "Approved" in rows[0] and "Approved" in rows[1] and "PendingManualApproval" in rows[2]


def test_approve_and_reject_set_the_status_and_record_the_reason(registry: Any) -> None:
    result = _run("approve", "3", "--reason", "AUC 0.81 on the 2026-11 cohort")
    assert result.exit_code == 0, result.output
    assert _statuses(registry)[3] == "Approved"
    assert _description(registry, 3) == "AUC 0.81 on the 2026-11 cohort"
    assert _run("reject", "1", "--reason", "superseded").exit_code == 0
    assert _statuses(registry) == {1: "Rejected", 2: "Approved", 3: "Approved"}


def test_an_unknown_version_fails_naming_it_and_changes_nothing(registry: Any) -> None:
    result = _run("approve", "9", "--reason", "x")
    assert result.exit_code == 1
    assert "no version '9'" in result.output
    assert _statuses(registry) == {1: "Approved", 2: "Approved", 3: "PendingManualApproval"}


def test_rollback_rejects_the_serving_version_and_reapproves_the_one_before(registry: Any) -> None:
    assert _run("approve", "3", "--reason", "new model").exit_code == 0
    result = _run("rollback", "--reason", "drift alarm on v3")
    assert result.exit_code == 0, result.output
    assert "version 3: Rejected" in result.output and "version 2: Approved" in result.output
    assert _statuses(registry) == {1: "Approved", 2: "Approved", 3: "Rejected"}
    assert _description(registry, 2) == "restored by rollback from version 3: drift alarm on v3"
    assert _description(registry, 3) == "rolled back to version 2: drift alarm on v3"
    # and again: v2 serves, v1 is the one before it
    assert _run("rollback", "--reason", "again").exit_code == 0
    assert _statuses(registry) == {1: "Approved", 2: "Rejected", 3: "Rejected"}


def test_rollback_without_an_earlier_approved_version_changes_nothing(registry: Any) -> None:
    assert _run("reject", "1", "--reason", "bad").exit_code == 0
    result = _run("rollback", "--reason", "x")
    assert result.exit_code == 1
    assert "no approved version" in result.output and "nothing changed" in result.output
    assert _statuses(registry) == {1: "Rejected", 2: "Approved", 3: "PendingManualApproval"}
