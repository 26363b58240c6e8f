"""Create, on an S3-compatible endpoint, the resources the stacks define.

Names come from the cdk.json configuration (:func:`oncopipe.layout.local_bucket_names`,
:func:`oncopipe.catalog.database_name`). Every call is idempotent: running ``local up``
twice changes nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import boto3

from oncopipe import catalog
from oncopipe.layout import Buckets, local_bucket_names

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provisioned:
    buckets: Buckets
    queue_url: str
    dead_letter_queue_url: str
    secret_arn: str
    database: str
    key_arns: dict[str, str]  # ingest / curated / platform -> KMS key ARN


@dataclass(frozen=True)
class IamProvisioned:
    """The worker's own principal and the stages' roles, created before enforcement."""

    credentials: dict[str, str]
    stage_roles: dict[str, str]  # stage -> role ARN


def _client(service: str, kwargs: dict[str, Any]) -> Any:
    return boto3.client(service, **kwargs)  # type: ignore[call-overload]


def provision(project: str, env: str, client_kwargs: dict[str, Any]) -> Provisioned:
    """Create buckets, KMS keys, the ingest event route, the catalog and the secret.

    Returns:
        The names and URLs created (or found).
    """
    region = client_kwargs["region_name"]
    s3 = _client("s3", client_kwargs)
    kms = _client("kms", client_kwargs)
    sqs = _client("sqs", client_kwargs)
    events = _client("events", client_kwargs)
    glue = _client("glue", client_kwargs)
    secretsmanager = _client("secretsmanager", client_kwargs)
    base = f"{project}-{env}"

    keys = {zone: _key(kms, f"alias/{base}-{zone}") for zone in ("ingest", "curated", "platform")}
    buckets = local_bucket_names(project, env)
    zone_keys = {
        buckets.ingest: keys["ingest"],
        buckets.quarantine: keys["ingest"],
        buckets.curated: keys["curated"],
        buckets.artifacts: keys["platform"],
    }
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name, key_id in zone_keys.items():
        _secure_bucket(s3, name, key_id, region, exists=name in existing)

    # S3 -> EventBridge -> SQS, the local worker's view of the state machine's rule.
    dlq_url = sqs.create_queue(QueueName=f"{base}-ingest-events-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=f"{base}-ingest-events",
        Attributes={
            "VisibilityTimeout": "900",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=buckets.ingest,
        NotificationConfiguration={"EventBridgeConfiguration": {}},
    )
    rule = f"{base}-ingest-object-created"
    events.put_rule(
        Name=rule,
        EventPattern=json.dumps(
            {
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {"bucket": {"name": [buckets.ingest]}},
            }
        ),
        State="ENABLED",
    )
    events.put_targets(Rule=rule, Targets=[{"Id": "local-worker", "Arn": queue_arn}])

    database = catalog.database_name(project, env)
    try:
        glue.create_database(DatabaseInput={"Name": database})
    except glue.exceptions.AlreadyExistsException:
        pass
    for spec in catalog.TABLES.values():
        table_input = catalog.glue_table_input(spec, buckets.curated)
        try:
            glue.create_table(DatabaseName=database, TableInput=table_input)
        except glue.exceptions.AlreadyExistsException:
            glue.update_table(DatabaseName=database, TableInput=table_input)

    secret_name = f"{base}/pseudonym-key"
    try:
        secret_arn = secretsmanager.describe_secret(SecretId=secret_name)["ARN"]
    except secretsmanager.exceptions.ResourceNotFoundException:
        secret_arn = secretsmanager.create_secret(
            Name=secret_name,
            KmsKeyId=keys["platform"],
            SecretString=secrets.token_hex(32),
            Description="HMAC key of the pseudonymous patient key (local mode)",
        )["ARN"]
    return Provisioned(
        buckets=buckets,
        queue_url=queue_url,
        dead_letter_queue_url=dlq_url,
        secret_arn=secret_arn,
        database=database,
        key_arns={
            zone: str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])
            for zone, key_id in keys.items()
        },
    )


def provision_iam(
    made: Provisioned, env: str, client_kwargs: dict[str, Any], endpoint_url: str
) -> IamProvisioned:
    """Create the stages' roles from the synthesized policies, then switch enforcement on.

    Runs while the embedded endpoint still accepts any credentials: it creates the
    worker's own principal (all actions: it plays the user uploading, and the services
    that pass events on) and one role per stage with that stage's resolved policies. From
    the next request on, every request is authenticated and authorised by moto.

    Raises:
        IamResolutionError: synthesis failed, or a policy has no local resolution.
    """
    from oncopipe.local import iam as local_iam

    templates = local_iam.synthesized_templates(env)
    resources = local_iam.LocalResources(
        region=client_kwargs["region_name"],
        buckets={
            zone: getattr(made.buckets, zone)
            for zone in ("ingest", "quarantine", "curated", "artifacts")
        },
        key_arns=made.key_arns,
        secret_arn=made.secret_arn,
        database=made.database,
    )
    policies = local_iam.stage_policies(templates, env, resources)
    iam_client = _client("iam", client_kwargs)
    principal, credentials = local_iam.create_admin(iam_client)
    stage_roles = local_iam.create_stage_roles(iam_client, policies, principal)
    local_iam.enable_enforcement(endpoint_url)
    logger.info("IAM enforcement on: %d stage roles", len(stage_roles))
    return IamProvisioned(credentials=credentials, stage_roles=stage_roles)


def _secure_bucket(s3: Any, name: str, key_id: str, region: str, *, exists: bool) -> None:
    """Create (unless ``exists``) a bucket as the stacks do: versioned, SSE-KMS, private."""
    if not exists:
        create: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**create)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": key_id,
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )


def _empty_bucket(s3: Any, name: str) -> int:
    """Delete every object version and delete marker of a bucket; return how many."""
    deleted = 0
    while True:  # the first page again each time: a marker past deleted keys skips pages
        page = s3.list_object_versions(Bucket=name, MaxKeys=1000)
        items = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                 for v in (*page.get("Versions", []), *page.get("DeleteMarkers", []))]  # fmt: skip
        if not items:
            return deleted
        for start in range(0, len(items), 1000):
            answer = s3.delete_objects(Bucket=name, Delete={
                "Objects": items[start : start + 1000], "Quiet": True})  # fmt: skip
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise RuntimeError(f"s3://{name}: emptying failed ({error.get('Code')}) "
                                   f"at {error.get('Key')}")  # fmt: skip
        deleted += len(items)


@dataclass(frozen=True)
class LifecycleProvisioned:
    """The resources of one local lifecycle scenario: its two buckets and the gate's table."""

    curated: str
    artifacts: str
    lease_table: str
    key_arns: dict[str, str]  # curated / platform -> KMS key ARN


def provision_lifecycle(
    project: str, env: str, scenario: str, client_kwargs: dict[str, Any]
) -> LifecycleProvisioned:
    """Create, empty, the resources of one lifecycle scenario (``oncopipe local lifecycle``).

    A curated and an artifacts bucket like the zone buckets (versioned, SSE-KMS with the
    local mode's curated and platform keys, public access blocked), named
    ``<project>-<env>-lifecycle-<scenario>-...``, and the retrain gate's lease table as the
    monitor stack defines it (partition key ``pk``, on-demand, KMS, TTL ``expires_at``).
    Whatever an earlier run left in them is deleted first: each run starts from nothing.
    """
    region = client_kwargs["region_name"]
    s3 = _client("s3", client_kwargs)
    kms = _client("kms", client_kwargs)
    dynamodb = _client("dynamodb", client_kwargs)
    base = f"{project}-{env}"
    keys = {zone: _key(kms, f"alias/{base}-{zone}") for zone in ("curated", "platform")}
    buckets = local_bucket_names(project, f"{env}-lifecycle-{scenario}")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name, zone in ((buckets.curated, "curated"), (buckets.artifacts, "platform")):
        _secure_bucket(s3, name, keys[zone], region, exists=name in existing)
        if name in existing:
            _empty_bucket(s3, name)
    table = f"{base}-lifecycle-{scenario}-retrain-lease"
    if table in dynamodb.list_tables().get("TableNames", []):
        dynamodb.delete_table(TableName=table)
        dynamodb.get_waiter("table_not_exists").wait(TableName=table)
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        SSESpecification={"Enabled": True, "SSEType": "KMS", "KMSMasterKeyId": keys["platform"]},
    )
    dynamodb.get_waiter("table_exists").wait(TableName=table)
    dynamodb.update_time_to_live(
        TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    arns = {zone: str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])
            for zone, key_id in keys.items()}  # fmt: skip
    logger.info("lifecycle scenario %s provisioned", scenario)
    return LifecycleProvisioned(buckets.curated, buckets.artifacts, table, arns)


def _key(kms: Any, alias: str) -> str:
    """Return the key id behind ``alias``, creating a rotating key when there is none."""
    for page in kms.get_paginator("list_aliases").paginate():
        for entry in page.get("Aliases", []):
            if entry["AliasName"] == alias and entry.get("TargetKeyId"):
                return str(entry["TargetKeyId"])
    key_id = str(kms.create_key(Description=f"oncopipe local {alias}")["KeyMetadata"]["KeyId"])
    kms.enable_key_rotation(KeyId=key_id)
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return key_id
