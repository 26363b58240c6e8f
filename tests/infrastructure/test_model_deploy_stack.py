"""ModelDeploy on a bare stack: the rule, the state machine's states, scoped grants, cdk-nag.

The construct sits in a stack of its own; the key, bucket, VPC and roles it is given come
from a second stack (as in the app, where they are exports of the lake and network
stacks). Both nag packs run on the construct's stack, with the approval guard applied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import (
    App,
    Aspects,
    Fn,
    Stack,
    Validations,
    aws_ec2 as ec2,
    aws_iam as iam,
    aws_kms as kms,
    aws_s3 as s3,
)
from aws_cdk.assertions import Match, Template
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from oncopipe.deploy import ENV, BlueGreen
from oncopipe.deployment import load_config
from stacks.components.model_deploy import REFUSED, ModelDeploy
from stacks.components.model_governance import ApprovalGuard
from stacks.nag import acknowledge_inline_policies
from tests.conftest import cdk_context

GROUP = "oncopipe-dev-response"
ENDPOINT = "oncopipe-dev-Response"  # mixed case: IAM must use SageMaker's lower-case ARNs
ALARMS = ["oncopipe-dev-endpoint-5xx", "oncopipe-dev-endpoint-latency"]


def _config(app: App) -> Any:
    context = {k: app.node.try_get_context(k)
               for k in ("oncopipe:environments", "oncopipe:default-env")}  # fmt: skip
    return load_config(context, "dev")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelDeploy, dict[str, Any]]:
    outdir = tmp_path_factory.mktemp("cdk-deploy")
    app = App(context=cdk_context(env="dev"), outdir=str(outdir))
    stack = Stack(app, "Bare")  # environment-agnostic, as the app's stacks are
    # what the lake, network and model stacks export to it
    key = kms.Key.from_key_arn(stack, "PlatformKey", Fn.import_value("Lake-PlatformKeyArn"))
    artifacts = s3.Bucket.from_bucket_attributes(
        stack, "Artifacts", bucket_arn=Fn.import_value("Lake-ArtifactsArn"), encryption_key=key
    )
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-0123456789abcdef0",
                                      availability_zones=["eu-west-1a", "eu-west-1b"],
                                      isolated_subnet_ids=["subnet-a", "subnet-b"])  # fmt: skip
    subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)

    def role(name: str) -> iam.IRole:
        return iam.Role.from_role_arn(stack, name, Fn.import_value(f"Model-{name}Arn"))

    serving, approver, trainer = role("ServingRole"), role("Approver"), role("Trainer")
    deploy = ModelDeploy(
        stack, "ModelDeploy", config=_config(app), key=key, artifacts=artifacts,
        group_name=GROUP, endpoint_name=ENDPOINT, serving_role=serving,
        security_group_id="sg-0123", subnet_ids=["subnet-a", "subnet-b"],
        vpc=vpc, subnets=subnets, rollback_alarm_names=ALARMS,
    )  # fmt: skip
    Aspects.of(stack).add(ApprovalGuard(approver=approver, models_writer=trainer,
                                        models_prefix_arn=artifacts.arn_for_objects("models/*"),
                                        group_name=GROUP))  # fmt: skip
    acknowledge_inline_policies(stack)
    Validations.of(stack).add_plugins(AwsSolutionsChecks(stack), HIPAASecurityChecks(stack))
    assembly = app.synth()  # raises when a nag finding is not acknowledged
    template = assembly.get_stack_by_name("Bare").template
    return deploy, template


def _resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def _role_statements(template: dict[str, Any], role_fragment: str) -> list[dict[str, Any]]:
    roles = [k for k in _resources(template, "AWS::IAM::Role") if role_fragment in k]
    assert len(roles) == 1, roles
    return [s for p in _resources(template, "AWS::IAM::Policy").values()
            if {"Ref": roles[0]} in p["Properties"]["Roles"]
            for s in p["Properties"]["PolicyDocument"]["Statement"]]  # fmt: skip


def _definition(template: dict[str, Any]) -> dict[str, Any]:
    (machine,) = _resources(template, "AWS::StepFunctions::StateMachine").values()
    parts = machine["Properties"]["DefinitionString"]["Fn::Join"][1]
    return json.loads("".join(p if isinstance(p, str) else "TOKEN" for p in parts))


def test_approvals_of_the_group_start_the_state_machine_with_the_package_arn(built: Any) -> None:
    _, template = built
    pattern = {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved"]},
    }
    Template.from_json(template).has_resource_properties("AWS::Events::Rule", {
        "EventPattern": pattern,
        "Targets": [Match.object_like({"RetryPolicy": Match.any_value(),
                                       "DeadLetterConfig": Match.any_value()})],
    })  # fmt: skip
    (rule,) = _resources(template, "AWS::Events::Rule").values()
    (target,) = rule["Properties"]["Targets"]
    machine = next(iter(_resources(template, "AWS::StepFunctions::StateMachine")))
    assert target["Arn"] == {"Ref": machine}
    transformer = target["InputTransformer"]
    assert transformer["InputPathsMap"] == {"detail-ModelPackageArn": "$.detail.ModelPackageArn"}
    assert json.loads(transformer["InputTemplate"].replace("<detail-ModelPackageArn>", '"A"')) == {
        "package_arn": "A"}  # fmt: skip
    assert "Arn" in target["DeadLetterConfig"] and target["RetryPolicy"]["MaximumRetryAttempts"]


def test_the_state_machine_verifies_applies_waits_and_publishes_the_baseline(built: Any) -> None:
    _, template = built
    definition = _definition(template)
    states = definition["States"]
    assert definition["StartAt"] == "Verify"
    assert states["Verify"]["Next"] == "Prepare" and states["Prepare"]["Next"] == "EndpointAction"
    action = states["EndpointAction"]
    assert {c["StringEquals"]: c["Next"] for c in action["Choices"]} == {
        "busy": "WaitForOtherDeployment", "current": "WaitForEndpoint"}  # fmt: skip
    assert action["Default"] == "Apply" and states["Apply"]["Next"] == "WaitForEndpoint"
    assert states["WaitForEndpoint"] == {"Type": "Wait", "Seconds": 60, "Next": "Status"}
    assert states["WaitForOtherDeployment"]["Next"] == "Prepare"
    rollout = states["Rollout"]
    assert {c["StringEquals"]: c["Next"] for c in rollout["Choices"]} == {
        "InService": "PublishBaseline", "InProgress": "WaitForEndpoint"}  # fmt: skip
    assert states[rollout["Default"]]["Type"] == "Fail"
    assert states["PublishBaseline"]["Next"] == "Deployed"
    assert states["Deployed"]["Type"] == "Succeed"
    # a refusal (DeployError) of Verify or Prepare ends in the DeployRefused Fail state
    for name in ("Verify", "Prepare"):
        (catch,) = states[name]["Catch"]
        assert catch["ErrorEquals"] == ["DeployError"]
        assert states[catch["Next"]] == {"Type": "Fail", "Error": REFUSED,
                                         "CausePath": "$.refusal.Cause"}  # fmt: skip
    # retries on Lambda service errors only: a refusal is never retried
    for name in ("Verify", "Prepare", "Apply", "Status", "PublishBaseline"):
        errors = [e for r in states[name]["Retry"] for e in r["ErrorEquals"]]
        assert errors and all(e.startswith("Lambda.") for e in errors), (name, errors)
        assert states[name]["Parameters"]["step"] in (
            "verify", "prepare", "apply", "status", "baseline")  # fmt: skip


def test_the_state_machine_is_standard_traced_and_logged_encrypted(built: Any) -> None:
    _, template = built
    (machine,) = _resources(template, "AWS::StepFunctions::StateMachine").values()
    props = machine["Properties"]
    assert props.get("StateMachineType", "STANDARD") == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ALL"
    (destination,) = props["LoggingConfiguration"]["Destinations"]
    log_group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert "KmsKeyId" in template["Resources"][log_group]["Properties"]
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False  # no package data


def test_the_function_is_scoped_to_its_group_endpoint_and_prefixes(built: Any) -> None:
    deploy, template = built
    statements = _role_statements(template, "ModelDeployStepsRole")
    by_action: dict[str, list[str]] = {}
    for s in statements:
        assert s["Effect"] == "Allow"
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for action in _actions(s):
            by_action.setdefault(action, []).extend(json.dumps(r) for r in resources)
    name = ENDPOINT.lower()
    expected = {
        "sagemaker:DescribeModelPackage": [f"model-package/{GROUP}/*"],
        "sagemaker:UpdateModelPackage": [f"model-package/{GROUP}/*"],
        "sagemaker:CreateModel": [f"model/{name}-v*"],
        "sagemaker:CreateEndpointConfig": [f"endpoint-config/{name}-v*"],
        "sagemaker:CreateEndpoint": [f'endpoint/{name}"', f"endpoint-config/{name}-v*"],
        "sagemaker:UpdateEndpoint": [f'endpoint/{name}"', f"endpoint-config/{name}-v*"],
        "sagemaker:DescribeEndpoint": [f'endpoint/{name}"'],
        "cloudwatch:DescribeAlarms": [f'alarm:{a}"' for a in ALARMS],
    }
    for action, fragments in expected.items():
        assert len(by_action[action]) == len(fragments), (action, by_action[action])
        for fragment in fragments:
            assert any(fragment in r for r in by_action[action]), (action, fragment)
    assert not any(a.startswith("sagemaker:") and a not in expected
                   and a not in ("sagemaker:DescribeModel", "sagemaker:DescribeEndpointConfig")
                   for a in by_action)  # fmt: skip
    (passing,) = [s for s in statements if "iam:PassRole" in _actions(s)]
    assert passing["Condition"] == {"StringEquals": {
        "iam:PassedToService": "sagemaker.amazonaws.com"}}  # fmt: skip
    assert "ServingRole" in json.dumps(passing["Resource"])
    # S3: read of models/ (artefact) and evaluation/ (baseline), write of monitor/baselines/
    reads = " ".join(by_action["s3:GetObject"])
    writes = " ".join(by_action["s3:PutObject"])
    assert "/models/*" in reads and "/evaluation/*" in reads
    assert len(by_action["s3:GetObject"]) == 2
    assert "/monitor/baselines/*" in writes and len(by_action["s3:PutObject"]) == 1
    assert "s3:DeleteObject" not in by_action
    for grant in ("kms:CreateGrant", "kms:DescribeKey"):
        (s,) = [s for s in statements if grant in _actions(s)]
        assert "sagemaker." in json.dumps(s["Condition"]["StringEquals"]["kms:ViaService"])
    assert deploy.endpoint_name == ENDPOINT


def test_the_function_environment_names_what_it_deploys(built: Any) -> None:
    _, template = built
    handler = "lambdas.model_deploy.handler.lambda_handler"
    (function,) = [f for f in _resources(template, "AWS::Lambda::Function").values()
                   if f["Properties"]["Handler"] == handler]  # fmt: skip
    env = function["Properties"]["Environment"]["Variables"]
    assert env[ENV["group"]] == GROUP and env[ENV["endpoint_name"]] == ENDPOINT
    assert json.loads(env[ENV["rollback_alarm_names"]]) == ALARMS
    assert env["DEPLOY_TRAFFIC"] == "ALL_AT_ONCE"


def test_the_approval_guard_covers_the_role_and_leaves_it_only_rejecting(built: Any) -> None:
    _, template = built
    roles = [k for k in _resources(template, "AWS::IAM::Role") if "ModelDeployStepsRole" in k]
    guards = [p for p in _resources(template, "AWS::IAM::ManagedPolicy").values()
              if {"Ref": roles[0]} in p["Properties"].get("Roles", [])]  # fmt: skip
    assert guards, "the approval guard is not attached to the deploy role"
    denies = [s for g in guards for s in g["Properties"]["PolicyDocument"]["Statement"]]
    allowed = {a for s in _role_statements(template, "ModelDeployStepsRole")
               for a in _actions(s)}  # fmt: skip
    by_sid = {d["Sid"]: d for d in denies}
    # it may still reject (the four-eyes check), never approve
    approve = by_sid["OnlyModelApproverApproves"]
    assert approve["Condition"] == {"StringEquals": {"sagemaker:ModelApprovalStatus": "Approved"}}
    assert "sagemaker:UpdateModelPackage" in allowed
    assert "sagemaker:CreateModelPackage" not in allowed  # registers nothing
    # trained artefacts stay immutable: its one write is outside models/
    assert "models/*" in json.dumps(by_sid["TrainedModelsAreImmutable"]["Resource"])
    writes = [s for s in _role_statements(template, "ModelDeployStepsRole")
              if "s3:PutObject" in _actions(s)]  # fmt: skip
    assert len(writes) == 1 and "/models/" not in json.dumps(writes[0]["Resource"])


def test_bad_arguments_are_refused_at_synth() -> None:
    app = App(context=cdk_context(env="dev"))
    config = _config(app)
    stack = Stack(app, "Bad")
    key = kms.Key(stack, "Key")
    bucket = s3.Bucket(stack, "B", encryption_key=key)
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-0123456789abcdef0",
                                      availability_zones=["eu-west-1a"],
                                      isolated_subnet_ids=["subnet-a"])  # fmt: skip
    role = iam.Role(stack, "R", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"))
    common: dict[str, Any] = dict(config=config, key=key, artifacts=bucket, group_name=GROUP,
                                  serving_role=role, security_group_id="sg-1", subnet_ids=["s-1"],
                                  vpc=vpc, subnets=ec2.SubnetSelection())  # fmt: skip
    with pytest.raises(ValueError, match="at most 55 characters"):
        ModelDeploy(stack, "Long", endpoint_name="e" * 56, rollback_alarm_names=[], **common)
    with pytest.raises(ValueError, match="at most 10"):
        ModelDeploy(stack, "Alarms", endpoint_name="e", rollback_alarm_names=["a"] * 11, **common)
    from oncopipe.errors import ConfigError

    with pytest.raises(ConfigError, match="canary_percent"):
        ModelDeploy(stack, "Canary", endpoint_name="e", rollback_alarm_names=[], **common,
                    blue_green=BlueGreen(traffic="CANARY", canary_percent=90))  # fmt: skip


def test_nag_report_has_no_violation(built: Any) -> None:
    # synth raised on an unacknowledged finding; the report, when written, is empty too
    deploy, _ = built
    outdir = Path(deploy.node.root.outdir)  # type: ignore[attr-defined]
    report = outdir / "validation-report.json"
    if report.exists():
        document = json.loads(report.read_text())
        assert [v for p in document["pluginReports"] for v in p.get("violations", [])] == []
