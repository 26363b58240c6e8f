"""The registry is governed: who may approve, register and overwrite, as synthesized.

The whole app is synthesized once (dev, both cdk-nag packs on, so a finding fails the
fixture) with the model stack's guard applied, every intrinsic resolved
(:class:`tests.infrastructure.test_permissions.Resolver`). Two evaluations of the roles' policies:

- moto's IAM enforcement (the local mode's embedded endpoint): the approver's and the
  training role's synthesized policies loaded into moto, the calls made as those roles;
- moto does not evaluate SageMaker condition keys (it drops conditional denies), so the
  ``sagemaker:ModelApprovalStatus`` rules are checked by :func:`decide`, a small IAM
  evaluator (explicit deny > allow > implicit deny; negated operators match a missing key).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_cdk import App
from botocore.exceptions import ClientError

from oncopipe.local import iam as local_iam
from oncopipe.pipeline import definition as d
from stacks.app_factory import build_app
from tests.conftest import cdk_context
from tests.infrastructure.test_permissions import ACCOUNT, REGION, Resolver

pytestmark = pytest.mark.slow

GROUP = "oncopipe-dev-response"
PACKAGE = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/7"
Templates = dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    context = cdk_context(env="dev")
    context["aws:cdk:enable-path-metadata"] = True
    app = App(context=context, outdir=str(tmp_path_factory.mktemp("governance")))
    built = build_app(app)  # both nag packs: an unacknowledged finding fails here
    built.model.govern(built.app)
    built.model.govern(built.app)  # idempotent (the app factory may apply it too)
    return {s.stack_name: s.template for s in app.synth().stacks}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str, *, case: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def roles(templates: Templates) -> Iterator[tuple[str, str, str]]:
    """(stack, logical ID, construct path) of every role of the app."""
    for stack, template in templates.items():
        for lid, resource in template["Resources"].items():
            if resource["Type"] == "AWS::IAM::Role":
                yield stack, lid, resource.get("Metadata", {}).get("aws:cdk:path", lid)


def role_at(templates: Templates, path_prefix: str) -> tuple[str, str]:
    for stack, lid, path in roles(templates):
        if path.startswith(path_prefix):
            return stack, lid
    raise AssertionError(f"no role at {path_prefix}")


def statements(templates: Templates, stack: str, role_id: str) -> list[dict[str, Any]]:
    """Every statement of every policy (inline, AWS::IAM::Policy, managed) of a role."""
    resolver = Resolver(templates)
    found: list[dict[str, Any]] = []
    resources = templates[stack]["Resources"]
    for inline in resources[role_id]["Properties"].get("Policies", []):
        found += resolver.resolve(stack, inline["PolicyDocument"])["Statement"]
    for resource in resources.values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and {
            "Ref": role_id
        } in resource["Properties"].get("Roles", []):
            found += _listed(resolver.resolve(stack, resource["Properties"]["PolicyDocument"])[
                "Statement"])  # fmt: skip
    return found


# -- a small IAM evaluator for the condition keys moto ignores ----------------------------

_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotLike", "ArnNotEquals"}


def _condition_holds(operator: str, key: str, expected: Any, context: Mapping[str, str]) -> bool:
    values = [str(v) for v in _listed(expected)]
    if key not in context:
        return operator in _NEGATED
    actual = context[key]
    if operator == "StringEquals":
        return actual in values
    if operator == "StringNotEquals":
        return actual not in values
    if operator in ("StringLike", "ArnLike", "ArnEquals"):
        return any(_glob(v, actual) for v in values)
    if operator in ("StringNotLike", "ArnNotLike", "ArnNotEquals"):
        return not any(_glob(v, actual) for v in values)
    raise AssertionError(f"condition operator {operator} is not evaluated by this test")


def _applies(statement: Mapping[str, Any], action: str, resource: str,
             context: Mapping[str, str]) -> bool:  # fmt: skip
    return (
        any(_glob(str(a), action, case=False) for a in _listed(statement.get("Action", [])))
        and any(_glob(str(r), resource) for r in _listed(statement.get("Resource", [])))
        and all(_condition_holds(op, key, expected, context)
                for op, entries in statement.get("Condition", {}).items()
                for key, expected in entries.items())
    )  # fmt: skip


def decide(policy: list[dict[str, Any]], action: str, resource: str,
           context: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """``Deny`` (explicit), ``Allow`` or ``ImplicitDeny`` of one request."""
    context = context or {}
    matching = [s for s in policy if _applies(s, action, resource, context)]
    if any(s["Effect"] == "Deny" for s in matching):
        return "Deny"
    return "Allow" if matching else "ImplicitDeny"


def test_the_evaluator_honours_missing_keys_and_explicit_denies() -> None:
    allow = {"Effect": "Allow", "Action": "s:Do", "Resource": "arn:x/*"}
    deny = {"Effect": "Deny", "Action": "s:Do", "Resource": "arn:x/*",
            "Condition": {"StringNotEquals": {"k": "ok"}}}  # fmt: skip
    assert decide([allow, deny], "s:Do", "arn:x/1", {"k": "ok"}) == "Allow"
    assert decide([allow, deny], "s:Do", "arn:x/1", {"k": "no"}) == "Deny"
    assert decide([allow, deny], "s:Do", "arn:x/1") == "Deny"  # missing key: negated matches
    assert decide([allow], "s:Other", "arn:x/1") == "ImplicitDeny"


# -- the rules ----------------------------------------------------------------------------


def _approval(status: str) -> dict[str, str]:
    return {"sagemaker:ModelApprovalStatus": status}


def test_every_role_of_the_app_but_the_approver_is_denied_approving(templates: Templates) -> None:
    approvers, checked = [], 0
    for stack, lid, path in roles(templates):
        policy = statements(templates, stack, lid)
        decision = decide(policy, "sagemaker:UpdateModelPackage", PACKAGE, _approval("Approved"))
        if decision == "Allow":
            approvers.append(path)
        else:
            deny = decide(
                [*policy, {"Effect": "Allow", "Action": "*", "Resource": "*"}],
                "sagemaker:UpdateModelPackage",
                PACKAGE,
                _approval("Approved"),
            )
            assert deny == "Deny", f"{path}: approval is not explicitly denied"
            checked += 1
    assert approvers == ["Oncopipe-dev-Model/ModelApprover/Role/Resource"]
    assert checked >= 40


def test_the_four_eyes_function_can_reject_but_not_approve(templates: Templates) -> None:
    policy = statements(templates, *role_at(templates, "Oncopipe-dev-Model/FourEyes/"))
    assert decide(policy, "sagemaker:DescribeModelPackage", PACKAGE) == "Allow"
    action = "sagemaker:UpdateModelPackage"
    assert decide(policy, action, PACKAGE, _approval("Rejected")) == "Allow"
    assert decide(policy, action, PACKAGE, _approval("Approved")) == "Deny"


def test_the_pipeline_registers_pending_versions_only(templates: Templates) -> None:
    policy = statements(templates, *role_at(templates, "Oncopipe-dev-Model/PipelineRole/"))
    action = "sagemaker:CreateModelPackage"
    assert decide(policy, action, PACKAGE, _approval("PendingManualApproval")) == "Allow"
    assert decide(policy, action, PACKAGE, _approval("Approved")) == "Deny"
    assert decide(policy, action, PACKAGE) == "Deny"  # no status given: not allowed either
    training = statements(templates, *role_at(templates, "Oncopipe-dev-Model/TrainingRole/"))
    assert decide(training, action, PACKAGE, _approval("Approved")) == "Deny"


def test_the_registered_version_records_the_artefact_digest(templates: Templates) -> None:
    resolver = Resolver(templates)
    stack = "Oncopipe-dev-Model"
    pipeline = next(r for r in templates[stack]["Resources"].values()
                    if r["Type"] == "AWS::SageMaker::Pipeline")  # fmt: skip
    body = pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"]
    definition = json.loads(resolver.resolve(stack, body))
    registers = [s for s in d.all_steps(definition["Steps"]) if s["Type"] == "RegisterModel"]
    assert [s["Name"] for s in registers] == ["RegisterTunedModel", "RegisterModel"]
    for step in registers:  # trained or tuned: the digest the evaluation step computed
        evaluate = "EvaluateTuned" if "Tuned" in step["Name"] else "Evaluate"
        args = step["Arguments"]
        assert args["ModelApprovalStatus"] == "PendingManualApproval"
        assert args["CustomerMetadataProperties"]["artifact_sha256"] == {"Std:JsonGet": {
            "PropertyFile": {"Get": f"Steps.{evaluate}.PropertyFiles.EvaluationReport"},
            "Path": "artifact.sha256"}}  # fmt: skip
    # the nightly rescore scores only the artefact its package recorded
    machine = next(r for r in templates[stack]["Resources"].values()
                   if r["Type"] == "AWS::StepFunctions::StateMachine"
                   and "NightlyRescore" in r["Metadata"]["aws:cdk:path"])  # fmt: skip
    states = json.loads(resolver.resolve(stack, machine["Properties"]["DefinitionString"]))
    states = states["States"]
    assert states["HashArtifact"]["Next"] == "DigestMatches"
    choice = states["DigestMatches"]
    assert choice["Choices"][0]["Variable"] == "$.artifact.sha256"
    assert choice["Choices"][0]["StringEqualsPath"] == "$.package.sha256"
    assert choice["Default"] == "ArtifactChanged"
    assert states["DescribeServingVersion"]["ResultSelector"]["sha256.$"] == (
        "$.CustomerMetadataProperties.artifact_sha256"
    )


def _artifacts_arn(templates: Templates) -> str:
    lake = "Oncopipe-dev-DataLake"
    for lid, resource in templates[lake]["Resources"].items():
        if resource.get("Metadata", {}).get("aws:cdk:path") == f"{lake}/Artifacts/Bucket/Resource":
            return str(Resolver(templates).resolve(lake, {"Fn::GetAtt": [lid, "Arn"]}))
    raise AssertionError("no artifacts bucket")


def test_only_the_training_role_writes_trained_models_and_nobody_deletes_them(
    templates: Templates,
) -> None:
    artefact = f"{_artifacts_arn(templates)}/models/response-1/output/model.tar.gz"
    writers = []
    for stack, lid, path in roles(templates):
        policy = statements(templates, stack, lid)
        for action in ("s3:DeleteObject", "s3:DeleteObjectVersion"):
            assert decide(policy, action, artefact) != "Allow", f"{path} may {action}"
        if decide(policy, "s3:PutObject", artefact) == "Allow":
            writers.append(path)
        elif "ModelApprover" not in path:
            wide = [*policy, {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
            assert decide(wide, "s3:PutObject", artefact) == "Deny", path
    assert writers == ["Oncopipe-dev-Model/TrainingRole/Resource"]


# -- moto enforces the synthesized policies -----------------------------------------------


@pytest.fixture
def enforced(templates: Templates, tmp_path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """A moto server with the group, a version, and the approver and training roles."""
    from oncopipe.local import server

    pid, endpoint = server.start_server(tmp_path / "moto.log",
                                        denials_file=tmp_path / "denied.jsonl")  # fmt: skip
    try:
        base = {"endpoint_url": endpoint, "region_name": REGION,
                "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}  # fmt: skip
        sagemaker = boto3.client("sagemaker", **base)
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        arn = sagemaker.create_model_package(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="PendingManualApproval",
            InferenceSpecification={"Containers": [{"Image": "i:1",
                                                    "ModelDataUrl": "s3://b/m.tar.gz"}],
                                    "SupportedContentTypes": ["application/json"],
                                    "SupportedResponseMIMETypes": ["application/json"]},
        )["ModelPackageArn"]  # fmt: skip
        client = boto3.client("iam", **base)
        principal, credentials = local_iam.create_admin(client)
        policies = {}
        for name, prefix in {"approver": "Oncopipe-dev-Model/ModelApprover/",
                             "training": "Oncopipe-dev-Model/TrainingRole/"}.items():  # fmt: skip
            stack, lid = role_at(templates, prefix)
            policies[name] = local_iam.StagePolicy(name, prefix, f"local-{name}",
                                                   statements(templates, stack, lid))  # fmt: skip
        arns = local_iam.create_stage_roles(client, policies, principal)
        local_iam.enable_enforcement(endpoint)
        sts = boto3.client("sts", **{**base, **credentials})
        sessions = {}
        for name, role_arn in arns.items():
            env = local_iam.assume(sts, role_arn, name)
            sessions[name] = {**base, "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                              "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                              "aws_session_token": env["AWS_SESSION_TOKEN"]}  # fmt: skip
        yield {"package": {"arn": arn}, **sessions}
    finally:
        server.stop_server(pid)


def test_moto_lets_the_approver_approve_and_refuses_the_training_role(
    enforced: dict[str, dict[str, Any]],
) -> None:
    arn = enforced["package"]["arn"]
    as_training = boto3.client("sagemaker", **enforced["training"])
    with pytest.raises(ClientError) as refused:
        as_training.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    as_approver = boto3.client("sagemaker", **enforced["approver"])
    as_approver.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved",
                                     ApprovalDescription="reviewed")  # fmt: skip
    described = as_approver.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "Approved"
    with pytest.raises(ClientError):  # the approver reads and approves; it registers nothing
        as_approver.create_model_package(ModelPackageGroupName=GROUP,
                                         ModelApprovalStatus="PendingManualApproval")  # fmt: skip
    assert as_approver.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == (
        "Approved"
    )
