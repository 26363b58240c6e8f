"""cdk-nag acknowledgements: one rule (or one finding of a rule) on one construct."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk.aws_s3 import IBucket
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding on one construct, with the specific reason.

    ``rule`` is a rule ID (``AwsSolutions-S1``) or one finding of it
    (``AwsSolutions-IAM5[Resource::*]``): cdk-nag 3 has no prefix matching, so every
    wildcard a policy contains is acknowledged by name.
    """
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def acknowledge_inline_policies(scope: IConstruct) -> None:
    """Acknowledge HIPAA.Security-IAMNoInlinePolicy on each role's CDK-generated policy.

    CDK ``grant_*`` methods write their least-privilege statements into the ``DefaultPolicy``
    of the one role they grant to. That policy is attached to that role alone, deployed and
    deleted with it; a customer-managed policy would add a second object to keep in step
    and no control. Every such policy is acknowledged by itself, not the stack.
    """
    from aws_cdk import aws_iam as iam

    for node in scope.node.find_all():
        if isinstance(node, iam.Policy) and node.node.id == "DefaultPolicy":
            acknowledge(
                node,
                "HIPAA.Security-IAMNoInlinePolicy",
                f"CDK grant statements of the single role {node.node.scope.node.path}; "  # type: ignore[union-attr]
                "attached to that role only and deployed with it.",
            )


def bucket_objects_finding(bucket: IBucket, pattern: str = "*") -> str:
    """Return how cdk-nag names ``<bucket>/<pattern>`` of an imported (exported) bucket."""
    resolved = Stack.of(bucket).resolve(bucket.bucket_arn)
    return f"Resource::{resolved['Fn::ImportValue']}/{pattern}"
