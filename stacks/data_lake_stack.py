"""The stateful stack: keys, buckets, catalog, Athena, Lake Formation, the pseudonym secret."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    ArnFormat,
    Duration,
    Fn,
    RemovalPolicy,
    Stack,
    aws_athena as athena,
    aws_glue as glue,
    aws_iam as iam,
    aws_kms as kms,
    aws_lakeformation as lakeformation,
    aws_s3 as s3,
    aws_secretsmanager as secretsmanager,
)
from constructs import Construct

from oncopipe import catalog, layout
from oncopipe.deployment import EnvConfig
from stacks.components.ingest_readers import INGEST_READERS, ingest_reader_role_name
from stacks.components.s3_grants import grant_objects
from stacks.components.secure_bucket import SecureBucket
from stacks.nag import acknowledge

#: The services each key may be used through (``kms:ViaService``): ingest and quarantine
#: objects only through S3; curated through S3 and the query path (Glue catalog, Athena);
#: the platform key through the services that store data under it.
KEY_SERVICES: dict[str, tuple[str, ...]] = {
    "ingest_key": ("s3",),
    "curated_key": ("s3", "glue", "athena"),
    "platform_key": (
        "s3", "sqs", "secretsmanager", "lambda", "sagemaker", "ec2", "athena",
        # the series settle table and the retrain gate's lease table; the budget topic
        "dynamodb", "sns",
    ),
}  # fmt: skip


def only_through(key: kms.Key, services: tuple[str, ...]) -> None:
    """Deny use of ``key`` by principals of the account except through ``services``.

    The key policy's account statement lets IAM policies grant the key; this denial
    caps what any such grant can do: encrypt and decrypt only as a request of one of
    the services that store data under the key (``kms:ViaService``), never directly
    (a direct ``kms:Decrypt`` of stolen ciphertext). AWS services acting as themselves
    (CloudWatch Logs, EventBridge, CloudWatch alarms) are allowed by their own statements.
    """
    region = Stack.of(key).region
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="OnlyThroughItsServices",
            effect=iam.Effect.DENY,
            principals=[iam.AnyPrincipal()],
            actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
            resources=["*"],  # in a key policy, "*" is this key
            conditions={
                "StringNotEquals": {
                    "kms:ViaService": [f"{s}.{region}.amazonaws.com" for s in services]
                },
                "Bool": {"aws:PrincipalIsAWSService": "false"},
            },
        )
    )


class DataLakeStack(Stack):
    """Everything that holds data and must outlive the compute stacks (RETAIN).

    Creates:
        - KMS customer-managed keys with rotation: ``ingest_key`` (ingest and quarantine,
          PHI), ``curated_key`` (curated zone), ``platform_key`` (artifacts, logs, queues,
          the pseudonym secret).
        - Buckets ``ingest`` (events to EventBridge), ``quarantine``, ``curated``,
          ``artifacts`` from :class:`SecureBucket`, and ``access_logs`` for their server
          access logs.
        - The Glue database of the curated zone and a table per dataset
          (:mod:`oncopipe.catalog`).
        - An Athena workgroup with enforced, KMS-encrypted results in ``artifacts``.
        - Lake Formation: administrators, the curated location registered with a
          dedicated role, and ``analyst_role`` granted read on the curated database only.
        - The Secrets Manager secret of the pseudonymisation key.

        - The ingest bucket's policy denies reading and listing to every principal but
          the stage roles that read it and the configured ``data_admin_role_names``
          (:meth:`_ingest_readers_only`); each key's policy denies encrypting and
          decrypting except through the services of :data:`KEY_SERVICES`.

    Grants: ``analyst_role`` may query through Athena and Lake Formation (its Athena
    results prefix; the curated key, with catalog encryption, only via Athena, Glue and
    S3); it has no S3 access to ingest or quarantine.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvConfig, **kwargs: Any):
        super().__init__(
            scope,
            construct_id,
            termination_protection=config.termination_protection,
            **kwargs,
        )
        self.config = config
        self._exports: dict[str, str] = {}
        self.ingest_key = self._key("IngestKey", "ingest and quarantine zones (PHI)")
        self.curated_key = self._key("CuratedKey", "curated zone (de-identified)")
        self.platform_key = self._key("PlatformKey", "artifacts, logs, queues and secrets")
        self._allow_logs_service(self.platform_key)
        self._allow_eventbridge_dead_letters(self.platform_key)
        for key, services in KEY_SERVICES.items():
            only_through(getattr(self, key), services)

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            # S3 server access logging delivers only to SSE-S3 target buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="ExpireAccessLogs",
                    expiration=Duration.days(config.log_retention_days),
                    noncurrent_version_expiration=Duration.days(1),
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "This is the access-log target bucket; logging it into itself would loop.",
        )
        acknowledge(
            self.access_logs,
            "HIPAA.Security-S3BucketLoggingEnabled",
            "This is the access-log target bucket; logging it into itself would loop.",
        )
        acknowledge(
            self.access_logs,
            "HIPAA.Security-S3BucketReplicationEnabled",
            "Access logs are an audit copy kept in-region; they hold no primary data.",
        )
        acknowledge(
            self.access_logs,
            "HIPAA.Security-S3DefaultEncryptionKMS",
            "S3 server access log delivery supports only SSE-S3 on the target bucket.",
        )

        common: dict[str, Any] = {
            "access_logs": self.access_logs,
            "noncurrent_version_expiration_days": config.noncurrent_version_expiration_days,
            "infrequent_access_days": config.raw_data_infrequent_access_days,
            "glacier_days": config.raw_data_glacier_days,
        }
        self.ingest = SecureBucket(
            self,
            "Ingest",
            encryption_key=self.ingest_key,
            raw_prefixes=layout.RAW_SEQUENCE_PREFIXES_INGEST,
            event_bridge=True,
            **common,
        ).bucket
        self._ingest_readers_only()
        self.quarantine = SecureBucket(
            self, "Quarantine", encryption_key=self.ingest_key, **common
        ).bucket
        self.curated = SecureBucket(
            self,
            "Curated",
            encryption_key=self.curated_key,
            raw_prefixes=layout.RAW_SEQUENCE_PREFIXES_CURATED,
            # shards and plans of scattered whole genomes, kept for reruns and inspection
            scratch_prefixes={
                layout.CURATED_GENOMICS_SCRATCH: config.scatter.scratch_expiration_days
            },
            **common,
        ).bucket
        self.artifacts = SecureBucket(
            self, "Artifacts", encryption_key=self.platform_key, **common
        ).bucket
        for bucket in (self.ingest, self.quarantine, self.curated, self.artifacts):
            acknowledge(
                bucket,
                "HIPAA.Security-S3BucketReplicationEnabled",
                (
                    "Single-region deployment: versioning and RETAIN protect the data; "
                    "cross-region replication of PHI needs a second region the user chooses."
                ),
            )

        self.pseudonym_secret = secretsmanager.Secret(
            self,
            "PseudonymSecret",
            description="HMAC key of the pseudonymous patient key (64 hex characters)",
            encryption_key=self.platform_key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64,
                exclude_punctuation=True,
                exclude_uppercase=True,
                include_space=False,
                exclude_characters="ghijklmnopqrstuvwxyz",
            ),
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.pseudonym_secret,
            "AwsSolutions-SMG4",
            (
                "Rotating the pseudonymisation key would give every patient a new key and "
                "break joins across modalities and runs; it must stay fixed."
            ),
        )
        acknowledge(
            self.pseudonym_secret,
            "HIPAA.Security-SecretsManagerRotationEnabled",
            (
                "Rotating the pseudonymisation key would give every patient a new key and "
                "break joins across modalities and runs; it must stay fixed."
            ),
        )

        self.database_name = catalog.database_name(config.project, config.name)
        self._catalog()
        self._athena()
        self._lake_formation()

    def grant_pseudonym_secret(self, role: iam.IRole) -> None:
        """Let a role read the pseudonymisation secret.

        Secret.grant_read would add the role to the key policy of the stateful stack, a
        dependency cycle; the same access is granted on the role's side. The platform key
        decrypts only as a request of Secrets Manager for this secret (its encryption
        context), not anything else the key protects.
        """
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=[self.pseudonym_secret.secret_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt"],
                resources=[self.platform_key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"secretsmanager.{Stack.of(role).region}.amazonaws.com",
                        "kms:EncryptionContext:SecretARN": self.pseudonym_secret.secret_arn,
                    }
                },
            )
        )

    def export_bucket(self, consumer: Stack, bucket: s3.IBucket, key: kms.IKey) -> s3.IBucket:
        """Return ``bucket`` as seen from ``consumer``, through an export with a stable name.

        The automatic export names of cross-stack references embed hashes; a named export
        keeps the policy findings of grants on it (``<export>/*``) nameable one by one.
        """
        name = f"{self.stack_name}-{self.get_logical_id(bucket.node.default_child)}Arn"  # type: ignore[arg-type]
        if name not in self._exports:  # one export, however many stacks import it
            self._exports[name] = self.export_value(bucket.bucket_arn, name=name)
        arn = self._exports[name]
        owner = bucket.node.scope
        assert owner is not None  # a bucket always sits in a construct (its SecureBucket)
        return s3.Bucket.from_bucket_attributes(
            consumer, f"{owner.node.id}Bucket", bucket_arn=arn, encryption_key=key
        )

    # -- keys --------------------------------------------------------------------------------
    def _key(self, construct_id: str, purpose: str) -> kms.Key:
        return kms.Key(
            self,
            construct_id,
            description=f"oncopipe {self.config.name}: {purpose}",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _allow_logs_service(self, key: kms.Key) -> None:
        """Let CloudWatch Logs use the key for this account's log groups only."""
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=[
                    "kms:Encrypt*",
                    "kms:Decrypt*",
                    "kms:ReEncrypt*",
                    "kms:GenerateDataKey*",
                    "kms:Describe*",
                ],
                principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": self.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )

    def _allow_eventbridge_dead_letters(self, key: kms.Key) -> None:
        """Let EventBridge write failed events to KMS-encrypted dead-letter queues.

        A rule's dead-letter delivery is made by the EventBridge service, not a role of
        ours, so the key policy must allow it (for this account's rules only).
        """
        key.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            )
        )

    def _ingest_readers_only(self) -> None:
        """Deny reading or listing ingest (PHI) to all but its stage readers and data admins.

        The readers live in the compute stacks; referring to their ARNs here would make
        this stack depend on them while they depend on it (a CloudFormation cycle). They
        have deterministic names (:mod:`stacks.components.ingest_readers`), so the policy
        builds their ARNs from the same names in this account. The denial is on the
        principal's ARN (``aws:PrincipalArn``: the role, whatever the session). With the
        opt-in de-identification on read, requests made by S3 Object Lambda (for the
        de-identifying function) are left to the access points' own policies.
        """

        def role_arn(name: str) -> str:
            return self.format_arn(service="iam", region="", resource="role", resource_name=name)

        allowed = [
            role_arn(ingest_reader_role_name(self.config, stage)) for stage in INGEST_READERS
        ]
        allowed += [role_arn(name) for name in self.config.data_admin_role_names]
        conditions: dict[str, Any] = {"ArnNotLike": {"aws:PrincipalArn": allowed}}
        if self.config.deid_on_read:
            conditions["ForAllValues:StringNotEquals"] = {
                "aws:CalledVia": ["s3-object-lambda.amazonaws.com"]
            }
        self.ingest.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlyIngestReadersReadOrList",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["s3:GetObject*", "s3:ListBucket*", "s3:ListMultipartUploadParts"],
                resources=[self.ingest.bucket_arn, self.ingest.arn_for_objects("*")],
                conditions=conditions,
            )
        )

    # -- catalog -----------------------------------------------------------------------------
    def _catalog(self) -> None:
        self.database = glue.CfnDatabase(
            self,
            "CuratedDatabase",
            catalog_id=self.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name,
                description="oncopipe curated zone: de-identified, query-able features",
            ),
        )
        self.tables: dict[str, glue.CfnTable] = {}
        for spec in catalog.TABLES.values():
            table = glue.CfnTable(
                self,
                f"Table{spec.name.title().replace('_', '')}",
                catalog_id=self.account,
                database_name=self.database_name,
                table_input=catalog.glue_table_input(spec, self.curated.bucket_name),
            )
            table.node.add_dependency(self.database)
            self.tables[spec.name] = table
        if self.config.manage_glue_catalog_encryption:
            glue.CfnDataCatalogEncryptionSettings(
                self,
                "CatalogEncryption",
                catalog_id=self.account,
                data_catalog_encryption_settings=glue.CfnDataCatalogEncryptionSettings.DataCatalogEncryptionSettingsProperty(
                    encryption_at_rest=glue.CfnDataCatalogEncryptionSettings.EncryptionAtRestProperty(
                        catalog_encryption_mode="SSE-KMS",
                        sse_aws_kms_key_id=self.curated_key.key_id,
                    ),
                    connection_password_encryption=glue.CfnDataCatalogEncryptionSettings.ConnectionPasswordEncryptionProperty(
                        return_connection_password_encrypted=True,
                        kms_key_id=self.curated_key.key_id,
                    ),
                ),
            )

    # -- athena ------------------------------------------------------------------------------
    def _athena(self) -> None:
        self.workgroup = athena.CfnWorkGroup(
            self,
            "AnalyticsWorkGroup",
            name=f"{self.config.prefix}-analytics",
            description="oncopipe analysts: enforced settings, KMS-encrypted results",
            state="ENABLED",
            recursive_delete_option=False,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=self.config.athena_bytes_scanned_cutoff,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3"
                ),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=self.artifacts.s3_url_for_object(
                        layout.ARTIFACTS_ATHENA_RESULTS
                    ),
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=self.platform_key.key_arn
                    ),
                ),
            ),
        )
        self.workgroup.apply_removal_policy(RemovalPolicy.RETAIN)

    # -- lake formation ----------------------------------------------------------------------
    def _lake_formation(self) -> None:
        synthesizer_role = getattr(self.synthesizer, "cloud_formation_execution_role_arn", None)
        admins = [
            iam.Role.from_role_name(self, f"LakeAdmin{i}", name).role_arn
            for i, name in enumerate(self.config.lake_formation_admin_role_names)
        ]
        if synthesizer_role:
            # The deploy role must administer Lake Formation to create the grants below.
            admins.append(Fn.sub(synthesizer_role))
        settings = lakeformation.CfnDataLakeSettings(
            self,
            "LakeSettings",
            admins=[
                lakeformation.CfnDataLakeSettings.DataLakePrincipalProperty(
                    data_lake_principal_identifier=arn
                )
                for arn in admins
            ],
            # Only explicit Lake Formation grants, not IAM-only access, for new tables.
            create_database_default_permissions=[],
            create_table_default_permissions=[],
        )

        self.lake_location_role = iam.Role(
            self,
            "LakeLocationRole",
            assumed_by=iam.ServicePrincipal("lakeformation.amazonaws.com"),
            description="Lake Formation reads the curated zone on behalf of granted principals",
        )
        grant_objects(
            self.lake_location_role,
            self.curated,
            read={"": "Lake Formation reads every curated object for granted queries (read only)."},
        )
        # The catalog must be created after the settings that turn off IAM-only defaults,
        # or the database and tables get IAMAllowedPrincipals permissions.
        self.database.node.add_dependency(settings)
        for table in self.tables.values():
            table.node.add_dependency(settings)
        location = lakeformation.CfnResource(
            self,
            "CuratedLocation",
            resource_arn=self.curated.bucket_arn,
            use_service_linked_role=False,
            role_arn=self.lake_location_role.role_arn,
        )
        location.node.add_dependency(settings)

        self.analyst_role = iam.Role(
            self,
            "AnalystRole",
            assumed_by=iam.AccountPrincipal(self.account),
            description="Analysts: Athena queries on the curated database, nothing raw",
            max_session_duration=Duration.hours(4),
        )
        workgroup_arn = self.format_arn(
            service="athena", resource="workgroup", resource_name=self.workgroup.ref
        )
        self.analyst_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "athena:StartQueryExecution",
                    "athena:StopQueryExecution",
                    "athena:GetQueryExecution",
                    "athena:GetQueryResults",
                    "athena:GetQueryResultsStream",
                    "athena:ListQueryExecutions",
                    "athena:GetWorkGroup",
                ],
                resources=[workgroup_arn],
            )
        )
        self.analyst_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "glue:GetDatabase",
                    "glue:GetTable",
                    "glue:GetTables",
                    "glue:GetPartitions",
                ],
                resources=[
                    self.format_arn(service="glue", resource="catalog"),
                    self.format_arn(
                        service="glue",
                        resource="database",
                        resource_name=self.database_name,
                    ),
                    self.format_arn(
                        service="glue",
                        resource="table",
                        resource_name=f"{self.database_name}/*",
                    ),
                ],
            )
        )
        self.analyst_role.add_to_policy(
            iam.PolicyStatement(actions=["lakeformation:GetDataAccess"], resources=["*"])
        )
        results = {
            layout.ARTIFACTS_ATHENA_RESULTS: (
                "Athena query results of this role, under the athena-results/ prefix only."
            )
        }
        grant_objects(self.analyst_role, self.artifacts, read=results, write=results)
        # Athena writes large results in multipart uploads with the caller's credentials.
        self.analyst_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListMultipartUploadParts"],
                resources=[self.artifacts.arn_for_objects(f"{layout.ARTIFACTS_ATHENA_RESULTS}*")],
            )
        )
        if self.config.manage_glue_catalog_encryption:
            # Reading table metadata of an encrypted catalog needs the catalog's key, only
            # as a request of the query path (Athena, Glue, S3), never a direct decrypt.
            self.analyst_role.add_to_policy(
                iam.PolicyStatement(
                    actions=["kms:Decrypt"],
                    resources=[self.curated_key.key_arn],
                    conditions={"StringEquals": {"kms:ViaService": [
                        f"{s}.{self.region}.amazonaws.com" for s in ("athena", "glue", "s3")]}},
                )
            )  # fmt: skip
        policy = self.analyst_role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Resource::*": (
                "lakeformation:GetDataAccess has no resource-level permissions; Lake "
                "Formation grants decide which tables the role reads."
            ),
            f"Resource::arn:<AWS::Partition>:glue:<AWS::Region>:<AWS::AccountId>:table/{self.database_name}/*": (  # noqa: E501
                "Table metadata of the curated database only; row access is decided by Lake "
                "Formation grants."
            ),
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)

        analyst = lakeformation.CfnPrincipalPermissions.DataLakePrincipalProperty(
            data_lake_principal_identifier=self.analyst_role.role_arn
        )
        grants = {
            "AnalystDatabaseGrant": (
                lakeformation.CfnPrincipalPermissions.ResourceProperty(
                    database=lakeformation.CfnPrincipalPermissions.DatabaseResourceProperty(
                        catalog_id=self.account, name=self.database_name
                    )
                ),
                ["DESCRIBE"],
            ),
            "AnalystTablesGrant": (
                lakeformation.CfnPrincipalPermissions.ResourceProperty(
                    table=lakeformation.CfnPrincipalPermissions.TableResourceProperty(
                        catalog_id=self.account, database_name=self.database_name, table_wildcard={}
                    )
                ),
                ["SELECT", "DESCRIBE"],
            ),
        }
        for construct_id, (resource, permissions) in grants.items():
            grant = lakeformation.CfnPrincipalPermissions(
                self,
                construct_id,
                principal=analyst,
                resource=resource,
                permissions=permissions,
                permissions_with_grant_option=[],
            )
            grant.node.add_dependency(settings)
            grant.node.add_dependency(self.database)
