"""The IAM-enforced local mode: policies resolved from the templates, enforced by moto."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from oncopipe.local import iam
from oncopipe.local.iam import IamResolutionError, LocalResources
from oncopipe.local.lambda_runtime import refused_requests

ACCOUNT = iam.LOCAL_ACCOUNT
REGION = "eu-west-1"
LOG_GROUP = "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/x:*"
LOCAL = LocalResources(
    region=REGION,
    buckets={z: f"oncopipe-dev-{z}" for z in ("ingest", "quarantine", "curated", "artifacts")},
    key_arns={
        z: f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{z}-id" for z in ("ingest", "curated", "platform")
    },
    secret_arn=f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:oncopipe-dev/pk-AbCdEf",
    database="oncopipe_dev_curated",
)


def _res(rtype: str, path: str, **properties: Any) -> dict[str, Any]:
    return {"Type": rtype, "Properties": properties, "Metadata": {"aws:cdk:path": path}}


def _export(name: str, value: Any) -> dict[str, Any]:
    return {"Value": value, "Export": {"Name": name}}


def tiny_app() -> dict[str, dict[str, Any]]:
    """Templates shaped like the synthesized app: a lake stack and an ingest stack.

    Logical IDs are deliberately unlike the construct paths: roles are found by path.
    """
    lake = "Oncopipe-dev-DataLake"
    resources = {
        f"Zb{zone}": _res("AWS::S3::Bucket", f"{lake}/{zone.title()}/Bucket/Resource")
        for zone in ("ingest", "quarantine", "curated", "artifacts")
    }
    resources |= {
        f"Zk{zone}": _res("AWS::KMS::Key", f"{lake}/{zone.title()}Key/Resource")
        for zone in ("ingest", "curated", "platform")
    }
    resources["Zsecret"] = _res("AWS::SecretsManager::Secret", f"{lake}/PseudonymSecret/Resource")
    resources["Zdb"] = _res("AWS::Glue::Database", f"{lake}/CuratedDatabase")
    resources["Ztable"] = _res(
        "AWS::Glue::Table", f"{lake}/TableSamples", TableInput={"Name": "samples"}
    )
    lake_template = {
        "Resources": resources,
        "Outputs": {
            "A": _export("lake:IngestArn", {"Fn::GetAtt": ["Zbingest", "Arn"]}),
            "B": _export("lake:QuarantineArn", {"Fn::GetAtt": ["Zbquarantine", "Arn"]}),
            "C": _export("lake:IngestKeyArn", {"Fn::GetAtt": ["Zkingest", "Arn"]}),
            "D": _export("lake:Secret", {"Ref": "Zsecret"}),
        },
    }
    ingest = "Oncopipe-dev-Ingest"
    quarantine_arn = {"Fn::ImportValue": "lake:QuarantineArn"}
    router_policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject*", "s3:List*"],
                "Resource": [
                    {"Fn::ImportValue": "lake:IngestArn"},
                    {"Fn::Join": ["", [{"Fn::ImportValue": "lake:IngestArn"}, "/*"]]},
                ],
            },
            {
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": {"Fn::Sub": ["${Q}/_manifests/*", {"Q": quarantine_arn}]},
            },
            {
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "secretsmanager:GetSecretValue"],
                "Resource": [
                    {"Fn::ImportValue": "lake:IngestKeyArn"},
                    {"Fn::ImportValue": "lake:Secret"},
                ],
            },
            {
                "Effect": "Allow",
                "Action": "sqs:SendMessage",
                "Resource": {"Fn::GetAtt": ["Qdlq", "Arn"]},
            },
            {"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": {"Fn::Sub": LOG_GROUP}},
        ],
    }
    ingest_template = {
        "Resources": {
            "R0le": _res(
                "AWS::IAM::Role", f"{ingest}/Router/Role/Resource", AssumeRolePolicyDocument={}
            ),
            "P0l": _res(
                "AWS::IAM::Policy",
                f"{ingest}/Router/Role/DefaultPolicy/Resource",
                PolicyDocument=router_policy,
                Roles=[{"Ref": "R0le"}],
            ),
            "F1": _res(
                "AWS::Lambda::Function",
                f"{ingest}/Router/Function/Resource",
                Role={"Fn::GetAtt": ["R0le", "Arn"]},
            ),
            "Qdlq": _res("AWS::SQS::Queue", f"{ingest}/Router/DeadLetters/Resource"),
        },
        "Outputs": {"E": _export("ingest:RouterRoleName", {"Ref": "R0le"})},
    }
    return {lake: lake_template, ingest: ingest_template}


def router(templates: dict[str, dict[str, Any]]) -> iam.StagePolicy:
    return iam.stage_policies(templates, "dev", LOCAL, stages=["router"])["router"]


def test_stage_policy_is_found_by_construct_path_and_resolved_to_local_resources() -> None:
    policy = router(tiny_app())
    assert policy.role_path == "Oncopipe-dev-Ingest/Router/Role/Resource"
    assert policy.role_name == "Oncopipe-dev-Ingest-Router-Role"
    s3_read, s3_write, kms_secret, sqs, logs = policy.statements
    assert s3_read["Resource"] == [
        "arn:aws:s3:::oncopipe-dev-ingest",
        "arn:aws:s3:::oncopipe-dev-ingest/*",
    ]
    assert s3_write["Resource"] == "arn:aws:s3:::oncopipe-dev-quarantine/_manifests/*"
    assert kms_secret["Resource"] == [LOCAL.key_arns["ingest"], LOCAL.secret_arn]
    assert "not-emulated" in sqs["Resource"]  # a queue the local mode does not create
    assert logs["Resource"] == f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/x:*"


def test_a_policy_of_another_stack_attached_to_the_role_is_collected() -> None:
    templates = tiny_app()
    templates["Oncopipe-dev-Features"] = {
        "Resources": {
            "Xp": _res(
                "AWS::IAM::Policy",
                "Oncopipe-dev-Features/RouterExtra/Resource",
                PolicyDocument={
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "s3:GetObject",
                            "Resource": "arn:aws:s3:::oncopipe-dev-curated/x/*",
                        }
                    ]
                },
                Roles=[{"Fn::ImportValue": "ingest:RouterRoleName"}],
            )
        }
    }
    resources = [s["Resource"] for s in router(templates).statements]
    assert "arn:aws:s3:::oncopipe-dev-curated/x/*" in resources


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update({"Fn::If": ["C", "a", "b"]}), "Fn::If is not supported"),
        (lambda r: r.update({"Fn::ImportValue": "lake:Nope"}), "no stack exports 'lake:Nope'"),
        (lambda r: r.update({"Ref": "NoSuchThing"}), "has no resource NoSuchThing"),
        (lambda r: r.update({"Fn::GetAtt": ["Odd", "Arn"]}), "(AWS::Odd::Thing) has no local"),
    ],
)
def test_an_unresolvable_reference_fails_loudly_naming_the_policy(
    mutate: Any, message: str
) -> None:
    templates = tiny_app()
    ingest = templates["Oncopipe-dev-Ingest"]["Resources"]
    ingest["Odd"] = _res("AWS::Odd::Thing", "Oncopipe-dev-Ingest/Odd/Resource")
    statement = ingest["P0l"]["Properties"]["PolicyDocument"]["Statement"][1]
    statement["Resource"] = {}
    mutate(statement["Resource"])
    with pytest.raises(IamResolutionError) as caught:
        router(templates)
    assert message in str(caught.value)
    assert "Oncopipe-dev-Ingest/Router/Role/DefaultPolicy/Resource" in str(caught.value)


def test_a_renamed_lake_resource_fails_instead_of_granting_nothing_silently() -> None:
    templates = tiny_app()
    lake = templates["Oncopipe-dev-DataLake"]["Resources"]
    lake["Zbcurated"]["Metadata"]["aws:cdk:path"] = "Oncopipe-dev-DataLake/CuratedZone/Resource"
    with pytest.raises(IamResolutionError, match="Curated/Bucket/Resource: no resource"):
        router(templates)


def test_an_aws_managed_policy_cannot_be_reproduced_locally() -> None:
    templates = tiny_app()
    role = templates["Oncopipe-dev-Ingest"]["Resources"]["R0le"]["Properties"]
    role["ManagedPolicyArns"] = [
        {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/ReadOnlyAccess"]]}
    ]
    with pytest.raises(IamResolutionError, match="arn:aws:iam::aws:policy/ReadOnlyAccess"):
        router(templates)


def test_emulated_policy_keeps_s3_resources_and_widens_services_moto_checks_against_star() -> None:
    statements = [
        {
            "Sid": "a",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "kms:Decrypt"],
            "Resource": ["arn:aws:s3:::b/x/*", LOCAL.key_arns["ingest"]],
        },
    ]
    document = iam.emulated_policy(statements)
    kms, s3 = document["Statement"]
    assert kms == {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": "*"}
    assert s3 == {
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": ["arn:aws:s3:::b/x/*", LOCAL.key_arns["ingest"]],
    }
    assert statements[0]["Action"] == ["s3:GetObject", "kms:Decrypt"]  # input untouched


def test_a_conditional_deny_is_left_out_and_a_plain_deny_kept() -> None:
    conditional = {"Effect": "Deny", "Action": "s3:*", "Resource": "*",
                   "Condition": {"Bool": {"aws:SecureTransport": "false"}}}  # fmt: skip
    plain = {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/*"}
    document = iam.emulated_policy([conditional, plain])
    assert document["Statement"] == [{**plain, "Action": ["s3:DeleteObject"]}]


def test_a_refused_object_is_reported_by_its_layout_prefix_only() -> None:
    short = iam.shorten_resource("arn:aws:s3:::oncopipe-dev-ingest/dicom/SMITH^JOHN/1.dcm")
    assert short == "arn:aws:s3:::oncopipe-dev-ingest/dicom/…"
    assert iam.shorten_resource("arn:aws:s3:::b/Okafor.txt") == "arn:aws:s3:::b/…"
    assert iam.shorten_resource("arn:aws:s3:::b") == "arn:aws:s3:::b"
    assert iam.shorten_resource("*") == "*"


def test_read_denials_keeps_the_stage_roles_refusals_once_each(tmp_path: Path) -> None:
    log = tmp_path / "denied.jsonl"
    role = f"arn:aws:iam::{ACCOUNT}:role/Oncopipe-dev-Genomics-JobRole"
    refusal = {
        "principal": f"arn:aws:sts::{ACCOUNT}:assumed-role/Oncopipe-dev-Genomics-JobRole/s",
        "action": "s3:GetObject",
        "resource": "arn:aws:s3:::q/_sample-inputs/r/x.jsonl",
    }
    worker = {
        "principal": f"arn:aws:iam::{ACCOUNT}:user/{iam.ADMIN_USER}",
        "action": "s3:X",
        "resource": "*",
    }
    log.write_text("\n".join(json.dumps(e) for e in (refusal, refusal, worker)) + "\n{trunc")
    denials = iam.read_denials(log, {"align": role, "call": role})
    assert [str(d) for d in denials] == [
        "align/call (role Oncopipe-dev-Genomics-JobRole): s3:GetObject on "
        "arn:aws:s3:::q/_sample-inputs/…"
    ]
    assert iam.read_denials(log, {"align": role}, offset=iam.denials_size(log)) == []
    assert iam.read_denials(tmp_path / "none.jsonl", {"align": role}) == []


def test_refused_requests_are_found_behind_a_redacted_error() -> None:
    refused = ClientError({"Error": {"Code": "AccessDenied", "Message": "x"}}, "PutObject")
    try:
        try:
            raise refused
        except ClientError:
            raise RuntimeError("ClientError while handling obj-1; withheld") from None
    except RuntimeError as e:
        assert refused_requests(e) == [{"code": "AccessDenied", "operation": "PutObject"}]
    other = ClientError({"Error": {"Code": "NoSuchKey", "Message": "x"}}, "GetObject")
    assert refused_requests(other) == []


# -- moto enforces what the resolved policy says ------------------------------------------


@pytest.fixture
def enforced_endpoint(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A moto server (own process) with one bucket, the worker principal and enforcement on."""
    from oncopipe.local import server

    pid, endpoint = server.start_server(
        tmp_path / "moto.log", denials_file=tmp_path / "denied.jsonl"
    )
    try:
        kwargs = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        s3 = boto3.client("s3", **kwargs)
        s3.create_bucket(
            Bucket="oncopipe-dev-quarantine",
            CreateBucketConfiguration={"LocationConstraint": REGION},
        )
        client = boto3.client("iam", **kwargs)
        principal, credentials = iam.create_admin(client)
        policy = router(tiny_app())
        roles = iam.create_stage_roles(client, {"router": policy}, principal)
        iam.enable_enforcement(endpoint)
        admin = {**kwargs, **credentials}
        sts = boto3.client("sts", **admin)
        session = iam.assume(sts, roles["router"], "router")
        yield (
            endpoint,
            {
                "admin": admin,
                "router": {
                    **kwargs,
                    "aws_access_key_id": session["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": session["AWS_SECRET_ACCESS_KEY"],
                    "aws_session_token": session["AWS_SESSION_TOKEN"],
                },
                "router_role": roles["router"],
            },
        )
    finally:
        server.stop_server(pid)


def roles_arn(clients: dict[str, Any]) -> str:
    return str(clients["router_role"])


def test_the_stage_role_can_do_what_its_policy_grants_and_nothing_else(
    enforced_endpoint: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    _, clients = enforced_endpoint
    as_router = boto3.client("s3", **clients["router"])
    as_router.put_object(Bucket="oncopipe-dev-quarantine", Key="_manifests/r/1.json", Body=b"{}")
    with pytest.raises(ClientError) as denied:  # granted under _manifests/ only
        as_router.put_object(Bucket="oncopipe-dev-quarantine", Key="r/copy.bin", Body=b"x")
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    # the endpoint logged who was refused what, whatever the caller does with the error
    (refusal,) = iam.read_denials(tmp_path / "denied.jsonl", {"router": roles_arn(clients)})
    assert refusal.action == "s3:PutObject"
    assert refusal.resource == "arn:aws:s3:::oncopipe-dev-quarantine/r/…"
    with pytest.raises(ClientError):  # no read of the quarantine bucket was granted
        as_router.get_object(Bucket="oncopipe-dev-quarantine", Key="_manifests/r/1.json")
    # the worker's own principal may do everything; unknown credentials are refused
    admin = boto3.client("s3", **clients["admin"])
    assert admin.get_object(Bucket="oncopipe-dev-quarantine", Key="_manifests/r/1.json")
    stranger = boto3.client(
        "s3",
        **{**clients["admin"], "aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
    )
    with pytest.raises(ClientError) as refused:
        stranger.list_objects_v2(Bucket="oncopipe-dev-quarantine")
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_revoking_one_grant_revokes_exactly_that_access(
    enforced_endpoint: tuple[str, dict[str, Any]],
) -> None:
    _, clients = enforced_endpoint
    client = boto3.client("iam", **clients["admin"])
    role = "Oncopipe-dev-Ingest-Router-Role"
    document = client.get_role_policy(RoleName=role, PolicyName="synthesized")["PolicyDocument"]
    revoked = copy.deepcopy(document)
    revoked["Statement"] = [s for s in revoked["Statement"] if s["Action"] != ["s3:PutObject"]]
    client.put_role_policy(
        RoleName=role, PolicyName="synthesized", PolicyDocument=json.dumps(revoked)
    )
    as_router = boto3.client("s3", **clients["router"])
    with pytest.raises(ClientError) as denied:
        as_router.put_object(
            Bucket="oncopipe-dev-quarantine", Key="_manifests/r/2.json", Body=b"{}"
        )
    assert denied.value.response["Error"]["Code"] == "AccessDenied"


def test_the_synthesized_app_resolves_for_every_stage_the_worker_runs() -> None:
    """The real templates: every stage has a role and every reference a local value."""
    templates = iam.synthesized_templates("dev")
    policies = iam.stage_policies(templates, "dev", LOCAL)
    assert set(policies) == set(iam.STAGE_ROLES)
    router_resources = json.dumps(policies["router"].statements)
    assert "arn:aws:s3:::oncopipe-dev-ingest" in router_resources
    for stage, policy in policies.items():
        assert policy.statements, stage
        assert "Fn::" not in json.dumps(policy.statements), stage
