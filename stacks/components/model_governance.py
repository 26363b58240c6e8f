"""Governance of the model registry: who may approve, four eyes, immutable artefacts.

- :class:`ModelApprover`: the one role allowed to change a version's approval status.
- :class:`ApprovalGuard`: an Aspect that attaches to every other role of the app a
  per-stack managed policy denying approval, the registration of a version that is not
  ``PendingManualApproval``, and writes to the trained models' prefix (except for the
  training role, the one writer of ``models/``).
- :class:`FourEyes`: the EventBridge rule on approvals of the group and the function
  that rejects a version approved by its creator (:mod:`oncopipe.governance`).
"""

from __future__ import annotations

import jsii
from aws_cdk import (
    CfnResource,
    Duration,
    IAspect,
    Stack,
    aws_ec2 as ec2,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_kms as kms,
)
from constructs import Construct, IConstruct

from oncopipe.deployment import EnvConfig
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.nag import acknowledge

#: The condition key SageMaker sets from the request's ModelApprovalStatus.
APPROVAL_STATUS_KEY = "sagemaker:ModelApprovalStatus"
#: The construct ID of each stack's guard policy.
GUARD_POLICY_ID = "ModelApprovalGuard"


def package_arns(scope: Construct, group_name: str) -> list[str]:
    """Return the ARN pattern of every version of the model package group."""
    return [Stack.of(scope).format_arn(service="sagemaker", resource="model-package",
                                       resource_name=f"{group_name}/*")]  # fmt: skip


class ModelApprover(Construct):
    """The ``ModelApprover`` role: the only principal that may approve a model version.

    Creates: the role, assumable by the IAM roles named in
    ``lifecycle.approver_role_names`` (of this account) or, with none named, by the
    account (whose administrators then grant ``sts:AssumeRole`` on it to the approvers).
    Grants: read of the group and its versions, and ``UpdateModelPackage`` on its versions
    (approve, reject, roll back). Nothing else: no data, no registration.
    Attribute: ``role``.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EnvConfig, group_name: str
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        names = config.lifecycle.approver_role_names
        principal: iam.IPrincipal = (
            iam.CompositePrincipal(*(
                iam.ArnPrincipal(stack.format_arn(service="iam", region="", resource="role",
                                                  resource_name=name))
                for name in names))
            if names else iam.AccountRootPrincipal()
        )  # fmt: skip
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=principal,
            description="oncopipe ModelApprover: approves, rejects and rolls back model versions",
            max_session_duration=Duration.hours(1),
        )
        packages = package_arns(self, group_name)
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:UpdateModelPackage", "sagemaker:DescribeModelPackage"],
            resources=packages,
        ))  # fmt: skip
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeModelPackageGroup", "sagemaker:ListModelPackages"],
            resources=[stack.format_arn(service="sagemaker", resource="model-package-group",
                                        resource_name=group_name)],
        ))  # fmt: skip
        acknowledge(
            self.role.node.find_child("DefaultPolicy"),
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:model-package/{group_name}/*]",
            "Every version of its one model package group: versions are numbered as they "
            "are registered.",
        )


def guard_statements(
    *, models_prefix_arn: str | None, group_name: str, scope: Construct
) -> list[iam.PolicyStatement]:
    """Return the guard's Deny statements (``models_prefix_arn``: ``None`` for the writer).

    - no approval of any version of the group (``UpdateModelPackage`` with status
      Approved): only :class:`ModelApprover` approves;
    - no registration of a version in the group with a status other than
      ``PendingManualApproval`` (a missing status counts as another status);
    - with ``models_prefix_arn``: no write or delete of trained model artefacts.
    """
    packages = package_arns(scope, group_name)
    statements = [
        iam.PolicyStatement(
            sid="OnlyModelApproverApproves",
            effect=iam.Effect.DENY,
            actions=["sagemaker:UpdateModelPackage"],
            resources=packages,
            conditions={"StringEquals": {APPROVAL_STATUS_KEY: "Approved"}},
        ),
        iam.PolicyStatement(
            sid="RegisterPendingOnly",
            effect=iam.Effect.DENY,
            actions=["sagemaker:CreateModelPackage"],
            resources=packages,
            conditions={"StringNotEquals": {APPROVAL_STATUS_KEY: "PendingManualApproval"}},
        ),
    ]
    if models_prefix_arn is not None:
        statements.append(iam.PolicyStatement(
            sid="TrainedModelsAreImmutable",
            effect=iam.Effect.DENY,
            actions=["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion",
                     "s3:PutObjectRetention", "s3:PutObjectLegalHold"],
            resources=[models_prefix_arn],
        ))  # fmt: skip
    return statements


@jsii.implements(IAspect)
class ApprovalGuard:
    """Attaches the guard policy to every role the app creates, except the approver.

    One managed policy per stack (``ModelApprovalGuard``, attached by its ``Roles``, so
    the local IAM mode and the permission checks see it with the role). The writer of
    the models prefix (the training role) gets a second policy without the artefact
    denial. Roles imported by ARN are not the app's and are left alone.
    """

    def __init__(
        self,
        *,
        approver: iam.IRole,
        models_writer: iam.IRole,
        models_prefix_arn: str,
        group_name: str,
    ) -> None:
        self._approver = approver
        self._writer = models_writer
        self._models = models_prefix_arn
        self._group = group_name
        self._policies: dict[tuple[str, bool], iam.ManagedPolicy] = {}

    def visit(self, node: IConstruct) -> None:
        """Attach the stack's guard policy to ``node`` when it is one of the app's roles.

        Roles are ``iam.Role`` constructs or, for CDK's own custom-resource providers,
        plain ``AWS::IAM::Role`` resources (attached through their ``Ref``).
        """
        if isinstance(node, iam.Role):
            if node is not self._approver:
                self._policy(Stack.of(node), node is self._writer).attach_to_role(node)
            return
        if (
            isinstance(node, CfnResource)
            and node.cfn_resource_type == "AWS::IAM::Role"
            and not isinstance(node.node.scope, iam.Role)
        ):
            stack = Stack.of(node)
            role = iam.Role.from_role_name(stack, f"Guarded{node.node.addr}", node.ref)
            self._policy(stack, False).attach_to_role(role)

    def _policy(self, stack: Stack, writer: bool) -> iam.ManagedPolicy:
        key = (stack.node.path, writer)
        construct_id = f"{GUARD_POLICY_ID}Writer" if writer else GUARD_POLICY_ID
        existing = stack.node.try_find_child(construct_id)
        if isinstance(existing, iam.ManagedPolicy):  # a second guard on the same app
            self._policies[key] = existing
        if key not in self._policies:
            self._policies[key] = iam.ManagedPolicy(
                stack,
                construct_id,
                description="oncopipe: only ModelApprover approves model versions; versions "
                "register as PendingManualApproval"
                + ("" if writer else "; trained model artefacts are not overwritten"),
                statements=guard_statements(
                    models_prefix_arn=None if writer else self._models,
                    group_name=self._group,
                    scope=stack,
                ),
            )
        return self._policies[key]


class FourEyes(Construct):
    """The four-eyes check of approvals.

    Creates: the ``model_four_eyes`` function (:class:`StageFunction`: VPC, DLQ, tracing,
    KMS) and an EventBridge rule: ``SageMaker Model Package State Change`` of
    ``group_name`` with status Approved -> the function (retried, dead letters).
    Grants the function ``DescribeModelPackage`` and ``UpdateModelPackage`` on the group's
    versions; the guard still denies it approving anything, so it can only reject.
    Attributes: ``function``, ``rule``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        group_name: str,
        key: kms.IKey,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = StageFunction(
            self,
            "Check",
            handler="model_four_eyes",
            description="oncopipe: rejects a model version approved by its own creator",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={"MODEL_PACKAGE_GROUP": group_name},
            reserved_concurrency=2,
            log_retention_days=config.log_retention_days,
            timeout_seconds=30,
            memory_mb=256,
        )
        self.function.role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:DescribeModelPackage", "sagemaker:UpdateModelPackage"],
            resources=package_arns(self, group_name),
        ))  # fmt: skip
        acknowledge(
            self.function.role.node.find_child("DefaultPolicy"),
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
            f"<AWS::AccountId>:model-package/{group_name}/*]",
            "Reviews whichever version of its one group was approved (numbered as registered).",
        )
        dead_letters = encrypted_queue(self, "RuleDeadLetters", key=key)
        self.rule = events.Rule(
            self,
            "OnApproval",
            description="A version of the response model was approved: check four eyes",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Package State Change"],
                detail={"ModelPackageGroupName": [group_name],
                        "ModelApprovalStatus": ["Approved"]},
            ),
            targets=[targets.LambdaFunction(
                self.function.function, dead_letter_queue=dead_letters,  # type: ignore[arg-type]
                retry_attempts=8, max_event_age=Duration.hours(6))],
        )  # fmt: skip
