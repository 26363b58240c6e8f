"""AlarmTopic: the KMS-encrypted SNS topic every alarm of the ops stack notifies."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import (
    ArnFormat,
    RemovalPolicy,
    Stack,
    aws_iam as iam,
    aws_kms as kms,
    aws_sns as sns,
    aws_sns_subscriptions as subscriptions,
)
from constructs import Construct

from stacks.data_lake_stack import only_through


class AlarmTopic(Construct):
    """An SNS topic with its own customer-managed KMS key and e-mail subscriptions.

    Creates: a KMS key (rotation on) whose policy lets CloudWatch (the alarms) use it —
    ``kms:GenerateDataKey*`` and ``kms:Decrypt`` for ``cloudwatch.amazonaws.com`` from this
    account only; without it an alarm's notification is silently dropped —, the topic
    encrypted with it, a topic policy that denies any request without TLS and lets this
    account's CloudWatch alarms publish, and one e-mail subscription per address (each
    recipient confirms by mail).
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, prefix: str, emails: Sequence[str]
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.key = kms.Key(
            self,
            "Key",
            description=f"{prefix}: alarm notifications",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        only_through(self.key, ("sns",))  # people and roles: only as SNS requests
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarms",
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name=f"{prefix} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsPublish",
                actions=["sns:Publish"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=[self.topic.topic_arn],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                },
            )
        )
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
