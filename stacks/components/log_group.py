"""KMS-encrypted log groups with the configured retention."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, aws_kms as kms, aws_logs as logs
from constructs import Construct

from oncopipe.deployment import LOG_RETENTION_DAYS


def retention(days: int) -> logs.RetentionDays:
    """Return the RetentionDays member for a number of days (the config validates it).

    Raises:
        ValueError: CloudWatch Logs has no such retention.
    """
    members = [m for m in logs.RetentionDays if m.name != "INFINITE"]
    by_days = dict(zip(LOG_RETENTION_DAYS, members, strict=True))
    if days not in by_days:
        raise ValueError(f"no CloudWatch Logs retention of {days} days")
    return by_days[days]


def encrypted_log_group(
    scope: Construct, construct_id: str, *, key: kms.IKey, retention_days: int
) -> logs.LogGroup:
    """Return a new log group encrypted with ``key``, retained on stack deletion."""
    return logs.LogGroup(
        scope,
        construct_id,
        encryption_key=key,
        retention=retention(retention_days),
        removal_policy=RemovalPolicy.RETAIN,
    )
