"""SecureBucket: the one way this project makes an S3 bucket."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Annotations, Duration, RemovalPolicy, aws_kms as kms, aws_s3 as s3
from constructs import Construct


class SecureBucket(Construct):
    """An S3 bucket with the project's secure defaults.

    Creates: one bucket, SSE-KMS with the given customer-managed key (S3 Bucket Keys on),
    versioning, block public access, an enforce-TLS (>= 1.2) bucket policy, server access
    logs to ``access_logs``, noncurrent-version expiry, optional transitions of raw
    sequencing prefixes to STANDARD_IA and GLACIER_IR, and RETAIN on stack deletion.
    With ``event_bridge=True`` S3 sends every event to EventBridge (set on the CloudFormation
    resource, so no notifications custom resource is deployed).

    Grants: none by itself; use :attr:`bucket`'s ``grant_*`` methods, which also grant the
    key.

    Overriding a default (``removal_policy=DESTROY``) is allowed for throw-away test stacks
    and produces a synth warning.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        access_logs: s3.IBucket,
        noncurrent_version_expiration_days: int,
        raw_prefixes: Sequence[str] = (),
        scratch_prefixes: Mapping[str, int] | None = None,
        infrequent_access_days: int = 30,
        glacier_days: int = 90,
        event_bridge: bool = False,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        if removal_policy != RemovalPolicy.RETAIN:
            Annotations.of(self).add_warning_v2(
                "oncopipe:SecureBucketRemovalPolicy",
                "bucket is not retained on stack deletion: its data can be lost",
            )
        rules = [
            s3.LifecycleRule(
                id="ExpireNoncurrentVersions",
                noncurrent_version_expiration=Duration.days(noncurrent_version_expiration_days),
                abort_incomplete_multipart_upload_after=Duration.days(7),
            )
        ]
        for prefix in raw_prefixes:
            rules.append(
                s3.LifecycleRule(
                    id="RawSequence" + "".join(p.title() for p in prefix.strip("/").split("/")),
                    prefix=prefix,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(infrequent_access_days),
                        ),
                        s3.Transition(
                            storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                            transition_after=Duration.days(glacier_days),
                        ),
                    ],
                )
            )
        for prefix, days in (scratch_prefixes or {}).items():
            # intermediate files of a stage (shards, plans): expire, versions included
            rules.append(
                s3.LifecycleRule(
                    id="Scratch"
                    + "".join(p.strip("_").title() for p in prefix.strip("/").split("/")),
                    prefix=prefix,
                    expiration=Duration.days(days),
                    noncurrent_version_expiration=Duration.days(1),
                )
            )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=encryption_key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix=f"{construct_id.lower()}/",
            lifecycle_rules=rules,
            removal_policy=removal_policy,
        )
        if event_bridge:
            cfn = self.bucket.node.default_child
            assert isinstance(cfn, s3.CfnBucket)
            cfn.add_property_override(
                "NotificationConfiguration.EventBridgeConfiguration.EventBridgeEnabled",
                True,
            )
