"""The four-eyes check on botocore Stubber responses, its Lambda adapter, the digest."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from oncopipe.governance import FOUR_EYES_REJECTION, Actor, Principal, artifact_digest, review

ACCOUNT = "123456789012"
ARN = f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:model-package/oncopipe-dev-response/4"
PIPELINE = f"arn:aws:sts::{ACCOUNT}:assumed-role/Oncopipe-dev-Model-ModelPipelineRole-AB12/exec-1"
ALICE = f"arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_DataScience_0a1b/alice@example.org"
BOB = f"arn:aws:sts::{ACCOUNT}:assumed-role/Oncopipe-dev-Model-ModelApproverRole-CD34/bob"


def _context(arn: str | None = None, **extra: Any) -> dict[str, Any]:
    identity = {"Arn": arn} if arn else {}
    return {**({"IamIdentity": identity} if identity else {}), **extra}


def _described(status: str, created: dict[str, Any] | None,
               modified: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    response: dict[str, Any] = {
        "ModelPackageName": "oncopipe-dev-response",
        "ModelPackageArn": ARN,
        "CreationTime": datetime(2026, 12, 1, tzinfo=UTC),
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "ModelApprovalStatus": status,
    }
    if created is not None:
        response["CreatedBy"] = created
    if modified is not None:
        response["LastModifiedBy"] = modified
    return response


def _review(description: dict[str, Any], *, expect_rejection: bool) -> tuple[Any, Stubber]:
    client = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="x")  # fmt: skip
    stubber = Stubber(client)
    stubber.add_response("describe_model_package", description, {"ModelPackageName": ARN})
    if expect_rejection:
        stubber.add_response(
            "update_model_package",
            {"ModelPackageArn": ARN},
            {"ModelPackageArn": ARN, "ModelApprovalStatus": "Rejected",
             "ApprovalDescription": _anything_starting_with(FOUR_EYES_REJECTION)},
        )  # fmt: skip
    with stubber:
        decision = review(client, ARN)
    stubber.assert_no_pending_responses()
    return decision, stubber


class _anything_starting_with:  # reads as a matcher in the stub
    """A Stubber expected parameter that matches any string with this prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith(self.prefix)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


def test_a_version_approved_by_its_creator_is_rejected_with_the_reason() -> None:
    decision, _ = _review(_described("Approved", _context(ALICE), _context(ALICE)),
                          expect_rejection=True)  # fmt: skip
    assert decision.outcome == "rejected"
    assert "registered it" in decision.reason


def test_a_version_approved_by_another_principal_is_left_approved() -> None:
    decision, _ = _review(_described("Approved", _context(PIPELINE), _context(BOB)),
                          expect_rejection=False)  # fmt: skip
    assert decision.outcome == "kept"


def test_the_creator_as_a_role_and_the_approver_as_its_session_are_the_same() -> None:
    creator = _context(f"arn:aws:iam::{ACCOUNT}:role/aws-reserved/sso.amazonaws.com/"
                       "AWSReservedSSO_DataScience_0a1b")  # fmt: skip
    decision, _ = _review(_described("Approved", creator, _context(ALICE)), expect_rejection=True)
    assert decision.outcome == "rejected"


def test_one_studio_user_profile_is_one_person_whatever_the_role() -> None:
    profile = {"UserProfileArn": f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:user-profile/d-1/alice"}
    decision, _ = _review(
        _described("Approved", _context(PIPELINE, **profile), _context(BOB, **profile)),
        expect_rejection=True,
    )
    assert decision.outcome == "rejected"


def test_an_unrecorded_approver_fails_closed() -> None:
    decision, _ = _review(_described("Approved", _context(ALICE), None), expect_rejection=True)
    assert decision.outcome == "rejected" and "not recorded" in decision.reason


def test_a_second_delivery_after_the_rejection_changes_nothing() -> None:
    # the first delivery rejected it; the package now reads Rejected, modified by the check
    described = _described("Rejected", _context(ALICE), _context(BOB))
    decision, _ = _review(described, expect_rejection=False)
    assert decision.outcome == "skipped"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (ALICE, ALICE.replace("alice@example.org", "carol@example.org"), False),
        (ALICE, ALICE.replace(ACCOUNT, "210987654321"), False),
        (f"arn:aws:iam::{ACCOUNT}:user/ci", f"arn:aws:iam::{ACCOUNT}:user/tools/ci", True),
        (f"arn:aws:iam::{ACCOUNT}:user/ci", f"arn:aws:iam::{ACCOUNT}:role/ci", False),
        (
            f"arn:aws-us-gov:sts::{ACCOUNT}:assumed-role/R/s",
            f"arn:aws-us-gov:iam::{ACCOUNT}:role/R",
            True,
        ),
    ],
)
def test_principals_compare_by_account_kind_name_and_session(a: str, b: str, same: bool) -> None:
    assert Principal.parse(a).same_as(Principal.parse(b)) is same
    assert Actor(None, a, None, None).same_as(Actor(None, b, None, None)) is same


def test_a_shared_source_identity_is_one_person_across_roles() -> None:
    a = Actor(None, ALICE, None, "alice")
    assert a.same_as(Actor(None, BOB, None, "alice"))
    assert not a.same_as(Actor(None, BOB, None, "bob"))


# -- the Lambda adapter -------------------------------------------------------------------


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MODEL_PACKAGE_GROUP", "oncopipe-dev-response")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "model-four-eyes")
    import lambdas.model_four_eyes.handler as module

    return importlib.reload(module)


class _Context:
    function_name = "four-eyes"
    memory_limit_in_mb = 256
    invoked_function_arn = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:four-eyes"
    aws_request_id = "req-1"


def _event(arn: str = ARN) -> dict[str, Any]:
    return {"id": "e1", "detail-type": "SageMaker Model Package State Change",
            "source": "aws.sagemaker", "resources": [arn],
            "detail": {"ModelPackageGroupName": "oncopipe-dev-response",
                       "ModelApprovalStatus": "Approved"}}  # fmt: skip


def test_the_handler_rejects_a_self_approval_and_logs_no_principal(
    handler: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    client = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="x",
                          aws_secret_access_key="x")  # fmt: skip
    stubber = Stubber(client)
    stubber.add_response("describe_model_package",
                         _described("Approved", _context(ALICE), _context(ALICE)))  # fmt: skip
    stubber.add_response("update_model_package", {"ModelPackageArn": ARN})
    monkeypatch.setattr(handler, "_client", lambda service: client)
    with stubber:
        result = handler.lambda_handler(_event(), _Context())
    assert result["outcome"] == "rejected" and result["version"] == "4"
    (record,) = [r for r in caplog.records if r.getMessage() == "four-eyes decision"]
    assert record.__dict__["outcome"] == "rejected" and record.__dict__["version"] == "4"
    logged = capsys.readouterr().out + caplog.text + json.dumps([vars(r) for r in caplog.records],
                                                                default=str)  # fmt: skip
    assert "alice" not in logged and "assumed-role" not in logged


def test_the_handler_refuses_another_groups_package(handler: Any) -> None:
    other = ARN.replace("oncopipe-dev-response", "someone-else")
    with pytest.raises(ValueError, match="someone-else"):
        handler.lambda_handler(_event(other), _Context())


# -- the artefact digest ------------------------------------------------------------------


def test_the_digest_is_the_sha256_of_the_artefact_version_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("oncopipe.governance.CHUNK_BYTES", 1000)  # several chunks
    body = bytes(range(256)) * 50
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        s3.put_bucket_versioning(Bucket="artifacts",
                                 VersioningConfiguration={"Status": "Enabled"})  # fmt: skip
        key = "models/response-1/output/model.tar.gz"
        version = s3.put_object(Bucket="artifacts", Key=key, Body=body)["VersionId"]
        digest = artifact_digest(s3, f"s3://artifacts/{key}")
    assert digest == {"sha256": hashlib.sha256(body).hexdigest(), "size": str(len(body)),
                      "version_id": version}  # fmt: skip


def test_the_digest_refuses_a_uri_that_is_not_s3() -> None:
    from oncopipe.governance import GovernanceError

    with pytest.raises(GovernanceError, match="not an s3://bucket/key"):
        artifact_digest(None, "/opt/ml/model.tar.gz")


def test_library_logging_is_left_to_the_caller() -> None:
    assert not logging.getLogger("oncopipe.governance").handlers
