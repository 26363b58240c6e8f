"""The prefix-scoped S3/KMS grant of stage roles, on a bare stack."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk import App, Stack, aws_iam as iam, aws_kms as kms, aws_s3 as s3
from aws_cdk.assertions import Match, Template

from stacks.components.s3_grants import grant_objects


def _stack() -> tuple[Stack, iam.Role, s3.Bucket]:
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    key = kms.Key(stack, "Key")
    bucket = s3.Bucket(stack, "Zone", encryption_key=key, bucket_key_enabled=True)
    role = iam.Role(stack, "StageRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    return stack, role, bucket


def _statements(stack: Stack) -> list[dict[str, Any]]:
    policies = Template.from_stack(stack).find_resources("AWS::IAM::Policy")
    return [s for p in policies.values() for s in p["Properties"]["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return actions if isinstance(actions, list) else [actions]


def test_listing_is_limited_to_the_read_prefixes() -> None:
    stack, role, bucket = _stack()
    grant_objects(role, bucket, read={"fastq/": "FASTQ", "notes/": "notes"})
    Template.from_stack(stack).has_resource_properties("AWS::IAM::Policy", {
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Action": "s3:ListBucket",
            "Condition": {"StringLike": {"s3:prefix": ["fastq/*", "notes/*"]}},
            "Resource": {"Fn::GetAtt": [Match.string_like_regexp("Zone"), "Arn"]},
        })])}})  # fmt: skip
    for statement in _statements(stack):
        if any(a.startswith("s3:List") for a in _actions(statement)):
            assert "s3:prefix" in json.dumps(statement.get("Condition", {})), statement


def test_no_wildcard_list_and_no_permanent_delete() -> None:
    stack, role, bucket = _stack()
    grant_objects(role, bucket, read={"": "all"}, write={"_manifests/": "m"}, delete=True)
    actions = [a for s in _statements(stack) for a in _actions(s)]
    assert "s3:DeleteObject" in actions
    for action in actions:
        assert action not in ("s3:DeleteObjectVersion", "s3:DeleteObject*", "s3:List*", "s3:*")
        assert not action.endswith("*"), action  # every action named, none by wildcard


def test_key_use_only_through_s3_for_this_bucket() -> None:
    stack, role, bucket = _stack()
    grant_objects(role, bucket, write={"out/": "outputs"})
    kms_statements = [s for s in _statements(stack) if _actions(s)[0].startswith("kms:")]
    assert kms_statements
    for statement in kms_statements:
        condition = statement["Condition"]["StringEquals"]
        assert condition["kms:ViaService"] == "s3.eu-west-1.amazonaws.com"
        assert condition["kms:EncryptionContext:aws:s3:arn"] == {
            "Fn::GetAtt": [stack.get_logical_id(bucket.node.default_child), "Arn"]  # type: ignore[arg-type]
        }
    assert {a for s in kms_statements for a in _actions(s)} == {
        "kms:Decrypt",
        "kms:GenerateDataKey",
    }


def test_write_without_delete_grants_no_delete() -> None:
    stack, role, bucket = _stack()
    grant_objects(role, bucket, write={"out/": "outputs"}, list_prefixes=())
    actions = [a for s in _statements(stack) for a in _actions(s)]
    assert not [a for a in actions if a.startswith("s3:Delete") or a.startswith("s3:List")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, "nothing to grant"), ({"read": {"fastq/*": "x"}}, "the grant adds")],
)
def test_bad_grants_are_refused(kwargs: dict[str, Any], message: str) -> None:
    _, role, bucket = _stack()
    with pytest.raises(ValueError, match=message):
        grant_objects(role, bucket, **kwargs)
