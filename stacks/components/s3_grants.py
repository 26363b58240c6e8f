"""Prefix-scoped S3 and KMS grants for stage roles, each paired with its nag acknowledgement.

CDK's ``bucket.grant_*`` methods are too wide for a PHI platform: ``grant_read`` gives
``s3:List*`` on the whole bucket (key names are PHI: exports name files after patients),
``grant_delete`` gives ``s3:DeleteObject*`` (which includes ``s3:DeleteObjectVersion``, a
permanent delete) and the key grants allow any use of the key, not only through S3 for
that bucket. :func:`grant_objects` is the one way a stage role gets bucket access here:

- read: ``s3:GetObject``/``GetObjectVersion``/``GetObjectTagging`` on ``<prefix>*`` and
  ``s3:ListBucket`` on the bucket only with ``s3:prefix`` ``StringLike <prefix>*``
  (and ``s3:GetBucketLocation``, which SageMaker and Athena call first);
- write: ``s3:PutObject``/``PutObjectTagging``/``AbortMultipartUpload`` on ``<prefix>*``;
- delete: ``s3:DeleteObject`` only. A failed item's cleanup leaves a delete marker; the
  bucket's noncurrent-version expiry removes the data later. No ``DeleteObjectVersion``;
- KMS: ``kms:Decrypt`` (read) and ``kms:GenerateDataKey`` (write) on the bucket's key,
  only through S3 (``kms:ViaService``) and only for this bucket (the S3 encryption
  context; with S3 Bucket Keys on, that context is the bucket ARN, not the object's).

Every wildcard resource it writes is acknowledged on the role's policy, with the reason
the caller gives for that prefix, in the same call.

A consequence for the workload code: S3 answers ``HeadObject`` of a missing key with 404
only to a principal holding ``s3:ListBucket`` without conditions; with the prefix-scoped
listing it answers 403. A store telling "missing" from "forbidden" lists the key as a
prefix (``ListObjectsV2 Prefix=<key>``), which the ``s3:prefix`` condition allows under
the listed prefixes: so read prefixes are listable by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Stack, aws_iam as iam, aws_kms as kms, aws_s3 as s3

from stacks.nag import acknowledge

READ_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging")
WRITE_ACTIONS = ("s3:PutObject", "s3:PutObjectTagging", "s3:AbortMultipartUpload")
DELETE_ACTIONS = ("s3:DeleteObject",)


def objects_finding(bucket: s3.IBucket, pattern: str) -> str:
    """Return how cdk-nag names the resource ``<bucket ARN>/<pattern>`` of a policy.

    Works for a bucket of the same stack (``<LogicalId.Arn>``) and for one imported
    through an export (``<export name>``).
    """
    resolved = Stack.of(bucket).resolve(bucket.bucket_arn)
    if isinstance(resolved, dict) and "Fn::ImportValue" in resolved:
        return f"Resource::{resolved['Fn::ImportValue']}/{pattern}"
    if isinstance(resolved, dict) and "Fn::GetAtt" in resolved:
        logical_id, attribute = resolved["Fn::GetAtt"]
        return f"Resource::<{logical_id}.{attribute}>/{pattern}"
    raise ValueError(f"cannot name the nag finding of bucket ARN {resolved!r}")


def _pattern(prefix: str) -> str:
    if prefix.endswith("*"):
        raise ValueError(f"prefix {prefix!r}: give the prefix, the grant adds '*'")
    return f"{prefix}*"


def bucket_key(bucket: s3.IBucket) -> kms.IKey:
    """Return the KMS key of a bucket, or raise ValueError for an SSE-S3 bucket."""
    key = bucket.encryption_key
    if key is None:
        raise ValueError(f"bucket {bucket.node.path} has no KMS key to grant")
    return key


def grant_key_via_s3(
    role: iam.IRole, bucket: s3.IBucket, *, decrypt: bool = True, encrypt: bool = False
) -> None:
    """Let ``role`` use the bucket's key only through S3 and only for this bucket."""
    stack = Stack.of(role)
    actions = (["kms:Decrypt"] if decrypt else []) + (["kms:GenerateDataKey"] if encrypt else [])
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=actions,
            resources=[bucket_key(bucket).key_arn],
            conditions={
                "StringEquals": {
                    "kms:ViaService": f"s3.{stack.region}.amazonaws.com",
                    # S3 Bucket Keys are on: S3 asks KMS with the bucket's ARN as context.
                    "kms:EncryptionContext:aws:s3:arn": bucket.bucket_arn,
                }
            },
        )
    )


def grant_objects(
    role: iam.IRole,
    bucket: s3.IBucket,
    *,
    read: Mapping[str, str] | None = None,
    write: Mapping[str, str] | None = None,
    delete: bool = False,
    list_prefixes: Sequence[str] | None = None,
) -> None:
    """Grant ``role`` prefix-scoped access to ``bucket`` and its key (see the module doc).

    ``read`` and ``write`` map a key prefix (``"fastq/"``; ``""`` is the whole bucket) to
    the reason acknowledged for the nag finding its ``<prefix>*`` resource raises.
    ``delete`` adds ``s3:DeleteObject`` on the write prefixes. ``list_prefixes`` are the
    prefixes ``s3:ListBucket`` is allowed for (default: the read prefixes; ``()`` none).

    Raises:
        ValueError: nothing to grant, a prefix ending in ``*``, or a bucket without key.
    """
    read = dict(read or {})
    write = dict(write or {})
    if not read and not write:
        raise ValueError(f"grant_objects on {bucket.node.path}: nothing to grant")
    listed = list(read) if list_prefixes is None else list(list_prefixes)
    findings: dict[str, str] = {}

    def objects(prefixes: Mapping[str, str]) -> list[str]:
        arns = []
        for prefix, reason in prefixes.items():
            pattern = _pattern(prefix)
            arns.append(bucket.arn_for_objects(pattern))
            findings.setdefault(objects_finding(bucket, pattern), reason)
        return arns

    if read:
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=list(READ_ACTIONS), resources=objects(read))
        )
    if listed:
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [_pattern(p) for p in listed]}},
            )
        )
    # The bucket's region, which SageMaker and Athena ask before they read or write it;
    # it names no key.
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetBucketLocation"], resources=[bucket.bucket_arn])
    )
    if write:
        actions = [*WRITE_ACTIONS, *(DELETE_ACTIONS if delete else ())]
        role.add_to_principal_policy(iam.PolicyStatement(actions=actions, resources=objects(write)))
    # Writes read the key too: multipart uploads and copies decrypt what S3 encrypted.
    grant_key_via_s3(role, bucket, decrypt=True, encrypt=bool(write))
    policy = role.node.try_find_child("DefaultPolicy")
    if policy is None:  # an imported role: its policy is not in this app
        return
    for finding, reason in findings.items():
        acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
