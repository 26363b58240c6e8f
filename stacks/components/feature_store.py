"""PatientFeatureStore: the unified patient vector in SageMaker Feature Store (opt-in).

With ``lifecycle.feature_store`` on, the cohort step publishes each patient's model
inputs (:mod:`oncopipe.cohort.feature_store`: the one source of the features, at synth
and at run time) to the feature group ``<prefix>-patient-inputs``.

The offline store is the history: Feature Store appends every record (Parquet) under
``cohort/feature-store/`` of the curated bucket, encrypted with the curated key, and
creates its Glue table ``patient_inputs`` in the curated database itself
(``DisableGlueTableCreation`` false with a ``DataCatalogConfig``), so the table is one more
curated table: the analysts' Lake Formation grant on every table of that database and
the curated location cover it, and Athena queries it in the analytics workgroup. A table
written by hand would have to track Feature Store's own columns (``write_time``,
``api_invocation_time``, ``is_deleted``) and file layout.

The online store (the latest record per patient, for low-latency lookups at serving
time) is off unless ``lifecycle.feature_store_online``; it is encrypted with the platform
key, not the curated key: Feature Store uses an online store's key through SageMaker,
and the curated key may be used only through S3, Glue and Athena
(:data:`stacks.data_lake_stack.KEY_SERVICES`).
"""

from __future__ import annotations

from aws_cdk import (
    Stack,
    aws_iam as iam,
    aws_kms as kms,
    aws_lakeformation as lakeformation,
    aws_s3 as s3,
    aws_sagemaker as sagemaker,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.cohort.feature_store import (
    EVENT_TIME,
    GLUE_TABLE,
    RECORD_IDENTIFIER,
    feature_definitions,
    feature_group_name,
)
from oncopipe.deployment import EnvConfig
from stacks.components.s3_grants import grant_objects

#: The cohort step's environment variable naming the feature group (``processing/cohort``).
FEATURE_GROUP_ENV = "FEATURE_GROUP_NAME"


class PatientFeatureStore(Construct):
    """The feature group of the patients' model inputs and the role of its offline store.

    Creates:
        - ``role`` (``OfflineStoreRole``): the role Feature Store writes the offline store
          as: read and write ``cohort/feature-store/`` of the curated bucket only (its key
          only through S3 for that bucket, :func:`stacks.components.s3_grants.grant_objects`),
          ``s3:GetBucketAcl`` on the bucket, ``glue:GetTable``/``UpdateTable`` on the
          catalog, the curated database and the table ``patient_inputs`` only, and the
          Lake Formation permissions ``DESCRIBE``/``ALTER`` on that table.
        - ``feature_group``: ``<prefix>-patient-inputs``, record identifier
          ``patient_key``, event time ``event_time``, the features of
          :func:`oncopipe.cohort.feature_store.feature_definitions`; the offline store
          (Glue table format) on the curated bucket with ``curated_key``; the online store
          only with ``lifecycle.feature_store_online``, encrypted with ``online_key``.

    Grants: :meth:`grant_publish` (``sagemaker:PutRecord`` on this feature group only, and
    ``kms:Decrypt`` of the online store's key when there is one). ``environment`` is what
    a publishing job needs: ``{"FEATURE_GROUP_NAME": <name>}``.

    The group keeps CloudFormation's default removal (deleted with the stack or when the
    option is turned off): the offline store's files stay in the retained curated bucket,
    and the online store is a cache the next cohort run fills again.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        curated: s3.IBucket,
        curated_key: kms.IKey,
        database_name: str,
        online_key: kms.IKey | None = None,
    ) -> None:
        """Raises: ValueError: the group name is invalid, or the online store is on
        without ``online_key``."""
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.online = config.lifecycle.feature_store_online
        if self.online and online_key is None:
            raise ValueError("lifecycle.feature_store_online needs an online_key")
        self.online_key = online_key if self.online else None
        self.feature_group_name = feature_group_name(config.prefix)
        self.feature_group_arn = stack.format_arn(
            service="sagemaker", resource="feature-group", resource_name=self.feature_group_name
        )
        prefix = layout.CURATED_COHORT_FEATURE_STORE

        self.role = iam.Role(
            self,
            "OfflineStoreRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="oncopipe Feature Store: writes the patient-inputs offline store",
        )
        store = {prefix: "Feature Store writes (and reads its own metadata in) the "
                 "patient-inputs offline store under this prefix only."}  # fmt: skip
        grant_objects(self.role, curated, read=store, write=store)
        # Feature Store checks the bucket's ownership before it writes (no key names)
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["s3:GetBucketAcl"], resources=[curated.bucket_arn])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["glue:GetTable", "glue:UpdateTable"],
                resources=[
                    stack.format_arn(service="glue", resource="catalog"),
                    stack.format_arn(
                        service="glue", resource="database", resource_name=database_name
                    ),
                    stack.format_arn(
                        service="glue",
                        resource="table",
                        resource_name=f"{database_name}/{GLUE_TABLE}",
                    ),
                ],
            )
        )

        # the store configurations are plain JSON in CloudFormation's spelling: CDK types
        # them as Any and passes them as they are
        online_config = None
        if self.online_key is not None:
            online_config = {
                "EnableOnlineStore": True,
                "StorageType": "Standard",
                "SecurityConfig": {"KmsKeyId": self.online_key.key_arn},
            }
        self.feature_group = sagemaker.CfnFeatureGroup(
            self,
            "FeatureGroup",
            feature_group_name=self.feature_group_name,
            description="oncopipe: each patient's model inputs from the cohort step "
            "(record per patient key and cohort build)",
            record_identifier_feature_name=RECORD_IDENTIFIER,
            event_time_feature_name=EVENT_TIME,
            feature_definitions=[
                sagemaker.CfnFeatureGroup.FeatureDefinitionProperty(
                    feature_name=f.name, feature_type=f.type
                )
                for f in feature_definitions()
            ],
            role_arn=self.role.role_arn,
            offline_store_config={
                "S3StorageConfig": {
                    # no trailing "/": Feature Store appends "/<account>/sagemaker/..."
                    "S3Uri": f"s3://{curated.bucket_name}/{prefix.rstrip('/')}",
                    "KmsKeyId": curated_key.key_arn,
                },
                "DisableGlueTableCreation": False,
                "DataCatalogConfig": {
                    "Catalog": "AwsDataCatalog",
                    "Database": database_name,
                    "TableName": GLUE_TABLE,
                },
                "TableFormat": "Glue",
            },
            online_store_config=online_config,
        )
        # Feature Store checks the role's access when it creates the offline store: the
        # role's policy first (the role itself is a dependency through its ARN)
        policy = self.role.node.find_child("DefaultPolicy")
        self.feature_group.node.add_dependency(policy)

        # Lake Formation decides catalog access in the curated database (no IAM-only
        # defaults): the offline store reads and updates its table's metadata
        table_grant = lakeformation.CfnPrincipalPermissions(
            self,
            "OfflineStoreTableGrant",
            principal=lakeformation.CfnPrincipalPermissions.DataLakePrincipalProperty(
                data_lake_principal_identifier=self.role.role_arn
            ),
            resource=lakeformation.CfnPrincipalPermissions.ResourceProperty(
                table=lakeformation.CfnPrincipalPermissions.TableResourceProperty(
                    catalog_id=stack.account, database_name=database_name, name=GLUE_TABLE
                )
            ),
            permissions=["DESCRIBE", "ALTER"],
            permissions_with_grant_option=[],
        )
        table_grant.node.add_dependency(self.feature_group)  # the group creates the table

    @property
    def environment(self) -> dict[str, str]:
        """The environment a publishing job needs: ``{"FEATURE_GROUP_NAME": <name>}``."""
        return {FEATURE_GROUP_ENV: self.feature_group_name}

    def grant_publish(self, role: iam.IRole) -> None:
        """Let ``role`` put records into this feature group (and nothing else of it)."""
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=["sagemaker:PutRecord"], resources=[self.feature_group_arn])
        )
        if self.online_key is not None:
            # PutRecord callers decrypt with the online store's key (through SageMaker)
            self.online_key.grant_decrypt(role)
