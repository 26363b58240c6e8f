"""ModelDeploy: an approved model package version goes to the endpoint (issue 12 §3).

A Step Functions state machine rather than one Lambda: a blue/green update runs for many
minutes (baking, termination wait), longer than a function may, and its state (which
version, which step) belongs in an execution history, not in a function's memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import (
    ArnFormat,
    Duration,
    Fn,
    Stack,
    Token,
    aws_ec2 as ec2,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_kms as kms,
    aws_s3 as s3,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deploy import (
    ENDPOINT_NAME_MAX,
    ENV,
    MAX_ALARMS,
    NAME_RE,
    BlueGreen,
    DeploySettings,
)
from oncopipe.deployment import EnvConfig
from oncopipe.monitor.job import BASELINES_PREFIX
from stacks.components.log_group import encrypted_log_group
from stacks.components.model_governance import package_arns
from stacks.components.s3_grants import bucket_key, grant_objects
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.nag import acknowledge

#: Seconds between two looks at the endpoint while it deploys.
POLL_SECONDS = 60
#: The Fail state's error when Verify (or Prepare) refuses a version.
REFUSED = "DeployRefused"


def _nag_name(stack: Stack, value: str) -> str:
    """Return how cdk-nag writes a resource string (``<AWS::Region>``, ``<Id.Arn>``)."""
    resolved = stack.resolve(value)
    if isinstance(resolved, str):
        return resolved
    parts = resolved["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else f"<{p['Ref']}>" if "Ref" in p
                   else f"<{'.'.join(p['Fn::GetAtt'])}>" for p in parts)  # fmt: skip


class ModelDeploy(Construct):
    """Deploys each approved version of ``group_name`` to the endpoint ``endpoint_name``.

    Creates: the ``model_deploy`` function (:class:`StageFunction`), a STANDARD state
    machine (encrypted log group, X-Ray) Verify -> Prepare -> (create/update) Apply ->
    Wait -> Status -> InService: PublishBaseline / InProgress: Wait / Failed: Fail; a
    version Verify or Prepare refuses ends in the Fail state ``DeployRefused``; an
    endpoint busy with another version waits and prepares again. An EventBridge rule:
    ``SageMaker Model Package State Change`` of the group with status Approved -> the
    state machine with ``{"package_arn": detail.ModelPackageArn}`` (retries, dead letters).

    Grants the function: Describe/UpdateModelPackage on the group's versions (the
    four-eyes check may reject; the approval guard still denies approving), Create/Describe
    of models and endpoint configurations ``<endpoint_name>-v*``, Create/Update/Describe of
    the one endpoint, DescribeAlarms of the rollback alarms, PassRole of ``serving_role`` to
    SageMaker only, CreateGrant/DescribeKey of ``key`` through SageMaker, read of
    ``models/`` (artefacts) and ``evaluation/`` (the registered drift baselines), write of
    ``monitor/baselines/``. Attributes: ``function``, ``state_machine``, ``rule``,
    ``endpoint_name``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        key: kms.IKey,
        artifacts: s3.IBucket,
        group_name: str,
        endpoint_name: str,
        serving_role: iam.IRole,
        security_group_id: str,
        subnet_ids: list[str],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        rollback_alarm_names: Sequence[str],
        blue_green: BlueGreen | None = None,
        instance_count: int = 1,
    ) -> None:
        super().__init__(scope, construct_id)
        if (
            Token.is_unresolved(endpoint_name)
            or not NAME_RE.match(endpoint_name)
            or (len(endpoint_name) > ENDPOINT_NAME_MAX)
        ):
            raise ValueError(f"endpoint_name {endpoint_name!r}: a literal SageMaker name of at "
                             f"most {ENDPOINT_NAME_MAX} characters (IAM scopes by it)")  # fmt: skip
        if len(rollback_alarm_names) > MAX_ALARMS:
            raise ValueError(f"rollback_alarm_names: SageMaker takes at most {MAX_ALARMS}")
        self.endpoint_name = endpoint_name
        settings = DeploySettings(
            group=group_name, endpoint_name=endpoint_name,
            artifacts_bucket=artifacts.bucket_name,
            artifacts_key_arn=bucket_key(artifacts).key_arn, kms_key_arn=key.key_arn,
            serving_role_arn=serving_role.role_arn,
            instance_type=config.serving_instance_type, instance_count=instance_count,
            security_group_ids=(security_group_id,), subnet_ids=tuple(subnet_ids),
            rollback_alarm_names=tuple(rollback_alarm_names),
            blue_green=blue_green or BlueGreen(),
        )  # fmt: skip
        self.function = StageFunction(
            self,
            "Steps",
            handler="model_deploy",
            description="oncopipe: deploys an approved model version to the endpoint",
            key=key,
            vpc=vpc,
            subnets=subnets,
            # Fn.join: subnet IDs may be one list token (an imported VPC's)
            environment={**settings.as_env(), ENV["subnet_ids"]: Fn.join(",", list(subnet_ids))},
            reserved_concurrency=2,
            log_retention_days=config.log_retention_days,
            timeout_seconds=300,  # hashing the artefact streams it once
            memory_mb=512,
        )
        self._grant(key=key, artifacts=artifacts, group_name=group_name,
                    serving_role=serving_role, alarms=rollback_alarm_names)  # fmt: skip
        self.state_machine = self._state_machine(config, key, settings.blue_green)
        dead_letters = encrypted_queue(self, "RuleDeadLetters", key=key)
        self.rule = events.Rule(
            self,
            "OnApproval",
            description="A version of the response model was approved: deploy it",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Package State Change"],
                detail={"ModelPackageGroupName": [group_name],
                        "ModelApprovalStatus": ["Approved"]},
            ),
            targets=[targets.SfnStateMachine(
                self.state_machine,
                input=events.RuleTargetInput.from_object(
                    {"package_arn": events.EventField.from_path("$.detail.ModelPackageArn")}),
                dead_letter_queue=dead_letters,  # type: ignore[arg-type]
                retry_attempts=8, max_event_age=Duration.hours(6))],
        )  # fmt: skip

    def _grant(
        self,
        *,
        key: kms.IKey,
        artifacts: s3.IBucket,
        group_name: str,
        serving_role: iam.IRole,
        alarms: Sequence[str],
    ) -> None:
        stack = Stack.of(self)
        role = self.function.role
        name = self.endpoint_name.lower()  # SageMaker ARNs carry lower-case names

        def arn(resource: str, resource_name: str) -> str:
            return stack.format_arn(service="sagemaker", resource=resource,
                                    resource_name=resource_name)  # fmt: skip

        statements = [
            (["sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage"],
             package_arns(self, group_name)),
            (["sagemaker:CreateModel", "sagemaker:DescribeModel"], [arn("model", f"{name}-v*")]),
            (["sagemaker:CreateEndpointConfig", "sagemaker:DescribeEndpointConfig"],
             [arn("endpoint-config", f"{name}-v*")]),
            # CreateEndpoint and UpdateEndpoint authorise the configuration they deploy too
            (["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"],
             [arn("endpoint", name), arn("endpoint-config", f"{name}-v*")]),
            (["sagemaker:DescribeEndpoint"], [arn("endpoint", name)]),
        ]  # fmt: skip
        for actions, resources in statements:
            role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=resources))
        if alarms:  # SageMaker reads the rollback alarms as the caller of UpdateEndpoint
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["cloudwatch:DescribeAlarms"],
                resources=[stack.format_arn(service="cloudwatch", resource="alarm",
                                            resource_name=a,
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)
                           for a in alarms],
            ))  # fmt: skip
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[serving_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        ))  # fmt: skip
        via_sagemaker = {"kms:ViaService": f"sagemaker.{stack.region}.amazonaws.com"}
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["kms:CreateGrant"], resources=[key.key_arn],
            conditions={"StringEquals": via_sagemaker,
                        "Bool": {"kms:GrantIsForAWSResource": "true"}},
        ))  # fmt: skip
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["kms:DescribeKey"], resources=[key.key_arn],
            conditions={"StringEquals": via_sagemaker}))  # fmt: skip
        grant_objects(
            role, artifacts,
            read={layout.ARTIFACTS_MODELS: "Hashes the registered model.tar.gz before deploying "
                  "it (and reads a baseline registered under models/evaluation/).",
                  layout.ARTIFACTS_EVALUATION: "Reads the drift baseline the pipeline's "
                  "evaluation step registered with the version."},
            write={BASELINES_PREFIX: "Publishes the deployed version's drift baseline "
                   "(monitor/baselines/v<version>/baseline.json)."},
        )  # fmt: skip
        policy = role.node.find_child("DefaultPolicy")
        for resource, reason in {
            package_arns(self, group_name)[0]: (
                "Verifies whichever version of its one group was approved (numbered as "
                "registered); the approval guard denies it approving."),
            arn("model", f"{name}-v*"): "One model per deployed version of its one endpoint.",
            arn("endpoint-config", f"{name}-v*"): (
                "One endpoint configuration per deployed version of its one endpoint."),
        }.items():  # fmt: skip
            acknowledge(policy, f"AwsSolutions-IAM5[Resource::{_nag_name(stack, resource)}]",
                        reason)  # fmt: skip

    def _state_machine(
        self, config: EnvConfig, key: kms.IKey, blue_green: BlueGreen
    ) -> sfn.StateMachine:
        function = self.function.function

        def step(state_id: str, name: str, payload: dict[str, str], result: str | None,
                 comment: str) -> tasks.LambdaInvoke:  # fmt: skip
            # the default retry covers Lambda service errors only; refusals are not retried
            return tasks.LambdaInvoke(
                self, state_id, lambda_function=function, comment=comment,
                payload=sfn.TaskInput.from_object({"step": name, **payload}),
                payload_response_only=True,
                result_path=result if result is not None else sfn.JsonPath.DISCARD,
            )  # fmt: skip

        plan = {"plan.$": "$.plan"}
        verify = step("Verify", "verify", {"package_arn.$": "$.package_arn"}, "$.plan",
                      "Approved, four eyes, drift baseline, artefact digest")  # fmt: skip
        prepare = step("Prepare", "prepare", plan, "$.prepared",
                       "The version's model and endpoint configuration; the action")  # fmt: skip
        apply = step("Apply", "apply", {**plan, "action.$": "$.prepared.action"}, None,
                     "CreateEndpoint, or UpdateEndpoint blue/green with auto-rollback")  # fmt: skip
        check = step("Status", "status", plan, "$.endpoint", "Where the rollout stands")
        baseline = step("PublishBaseline", "baseline", plan, None,
                        "The version's drift baseline for the drift monitor")  # fmt: skip
        refused = sfn.Fail(self, "Refused", error=REFUSED, cause_path="$.refusal.Cause")
        for task in (verify, prepare):
            task.add_catch(refused, errors=["DeployError"], result_path="$.refusal")
        failed = sfn.Fail(self, "RolloutFailed", error="DeployFailed",
                          cause_path="$.endpoint.reason")  # fmt: skip
        wait = sfn.Wait(self, "WaitForEndpoint",
                        time=sfn.WaitTime.duration(Duration.seconds(POLL_SECONDS)))  # fmt: skip
        busy = sfn.Wait(self, "WaitForOtherDeployment",
                        time=sfn.WaitTime.duration(Duration.seconds(POLL_SECONDS)))  # fmt: skip
        action = sfn.JsonPath.string_at("$.prepared.action")
        rollout = sfn.JsonPath.string_at("$.endpoint.status")
        wait.next(check).next(
            sfn.Choice(self, "Rollout")
            .when(sfn.Condition.string_equals(rollout, "InService"),
                  baseline.next(sfn.Succeed(self, "Deployed")))
            .when(sfn.Condition.string_equals(rollout, "InProgress"), wait)
            .otherwise(failed))  # fmt: skip
        busy.next(prepare)
        definition = verify.next(prepare).next(
            sfn.Choice(self, "EndpointAction")
            .when(sfn.Condition.string_equals(action, "busy"), busy)
            .when(sfn.Condition.string_equals(action, "current"), wait)
            .otherwise(apply.next(wait)))  # fmt: skip
        log_group = encrypted_log_group(self, "Logs", key=key,
                                        retention_days=config.log_retention_days)  # fmt: skip
        machine = sfn.StateMachine(
            self,
            "StateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            # the update's own bound, and time to wait for another version's deployment
            timeout=Duration.seconds(2 * blue_green.max_execution_seconds + 3600),
            tracing_enabled=True,
            logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL,
                                include_execution_data=False),
            comment="oncopipe model deploy: verify -> prepare -> apply -> wait -> baseline",
        )  # fmt: skip
        policy = machine.role.node.find_child("DefaultPolicy")
        acknowledge(policy, "AwsSolutions-IAM5[Resource::*]",
                    "CloudWatch Logs delivery and X-Ray actions of Step Functions support no "
                    "resource-level scoping.")  # fmt: skip
        logical_id = Stack.of(self).get_logical_id(function.node.default_child)  # type: ignore[arg-type]
        acknowledge(policy, f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>:*]",
                    "CDK's LambdaInvoke grant: the versions and aliases of the one deploy "
                    "function.")  # fmt: skip
        return machine
