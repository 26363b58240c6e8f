"""Event-driven ingest: S3 -> EventBridge -> one state machine execution per object."""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import (
    Duration,
    Stack,
    aws_ec2 as ec2,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_s3 as s3,
    aws_s3objectlambda as s3objectlambda,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deployment import EnvConfig
from oncopipe.flow import INGEST, Branch, Retry
from oncopipe.manifest import MANIFEST_ROOT
from oncopipe.settings import bucket_env
from stacks.components.ingest_readers import ingest_reader_role_name
from stacks.components.log_group import encrypted_log_group
from stacks.components.notes_arrival import NotesOnArrival
from stacks.components.s3_grants import grant_objects
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.data_lake_stack import DataLakeStack
from stacks.genomics_stack import GenomicsStack
from stacks.nag import acknowledge

#: The ingest prefixes the router may list (a sample sheet names folders under them).
INGEST_DATA_PREFIXES = (
    layout.INGEST_SAMPLESHEETS, layout.INGEST_FASTQ, layout.INGEST_DICOM, layout.INGEST_NOTES,
)  # fmt: skip


class IngestStack(Stack):
    """Routes every object uploaded to the ingest bucket.

    Creates:
        - ``router``: the ingest router function (:mod:`lambdas.ingest_router`), which
          classifies the object, validates sample sheets and quarantines what no stage
          can take, writing a manifest per object.
        - ``quarantine_on_error``: the catch-all (:mod:`lambdas.ingest_quarantine`) that
          quarantines an object whose routing failed after retries.
        - ``state_machine``: Route -> Outcome (quarantined: a failed execution a user sees;
          accepted sample sheet / received data: success). Later stages add branches to
          :attr:`outcome`. Logs (ALL, KMS) and X-Ray on.
        - An EventBridge rule for "Object Created" in the ingest bucket starting one
          execution per object, with retries and a KMS-encrypted dead-letter queue.

    Grants (:func:`stacks.components.s3_grants.grant_objects`: prefix-scoped, listing
    only under ``s3:prefix``, no permanent deletes, keys only through S3): the router
    reads ingest and writes the sample tables of curated and the quarantine zone; the
    catch-all and the reconcile read ingest and write only the quarantine zone; the
    de-identification reads ``dicom/`` and writes ``imaging/dicom/`` and quarantine. Each
    ingest reader has the deterministic name the ingest bucket policy allows
    (:mod:`stacks.components.ingest_readers`).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        genomics: GenomicsStack,
        notes_arrival: NotesOnArrival | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.genomics = genomics
        self.notes_arrival = notes_arrival
        ingest = lake.export_bucket(self, lake.ingest, lake.ingest_key)
        quarantine = lake.export_bucket(self, lake.quarantine, lake.ingest_key)
        curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        environment = bucket_env(
            ingest=ingest.bucket_name,
            quarantine=quarantine.bucket_name,
            curated=curated.bucket_name,
            artifacts=lake.artifacts.bucket_name,
        )
        common: dict[str, Any] = {
            "key": lake.platform_key,
            "vpc": vpc,
            "subnets": subnets,
            "reserved_concurrency": config.lambda_reserved_concurrency,
            "log_retention_days": config.log_retention_days,
        }
        self.router = StageFunction(
            self,
            "Router",
            handler="ingest_router",
            role_name=ingest_reader_role_name(config, "router"),
            description="oncopipe: classify, validate and route an ingest object",
            environment={
                **environment,
                "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn,
            },
            **common,
        )
        # Reads every upload (it routes each, whatever its prefix); lists only the data
        # prefixes a sample sheet's folders may name.
        grant_objects(
            self.router.role, ingest,
            read={"": "Reads the uploaded object it routes (every prefix: it routes all)."},
            list_prefixes=INGEST_DATA_PREFIXES,
        )  # fmt: skip
        _grant_quarantine_zone(self.router.role, quarantine)
        # The sample tables and their symlink files (checked, repaired, retracted).
        tables = {layout.CURATED_SAMPLES: "Writes the pseudonymised sample table of a sheet."}
        grant_objects(self.router.role, curated, read=tables, write=tables, delete=True)
        lake.grant_pseudonym_secret(self.router.role)

        self.quarantine_on_error = StageFunction(
            self,
            "QuarantineOnError",
            handler="ingest_quarantine",
            role_name=ingest_reader_role_name(config, "quarantine_on_error"),
            description="oncopipe: quarantine an ingest object whose routing failed",
            environment=environment,
            **common,
        )
        grant_objects(
            self.quarantine_on_error.role, ingest, list_prefixes=(),
            read={"": "Copies the object whose routing failed (any prefix) to quarantine."},
        )  # fmt: skip
        _grant_quarantine_zone(self.quarantine_on_error.role, quarantine)

        # Daily: FASTQ files of yesterday's run that no sheet named are quarantined.
        self.reconcile = StageFunction(
            self,
            "Reconcile",
            handler="ingest_reconcile",
            role_name=ingest_reader_role_name(config, "reconcile"),
            description="oncopipe: quarantine FASTQ files no sample sheet names (daily)",
            environment=environment,
            timeout_seconds=900,
            **common,
        )
        grant_objects(
            self.reconcile.role, ingest, list_prefixes=(),
            read={layout.INGEST_FASTQ: "Copies FASTQ files no sheet named to quarantine."},
        )  # fmt: skip
        _grant_quarantine_zone(self.reconcile.role, quarantine)
        self.reconcile_dead_letters = encrypted_queue(
            self, "ReconcileDeadLetters", key=lake.platform_key
        )
        events.Rule(
            self,
            "DailyReconcile",
            description="Reconcile the previous UTC day's ingest run",
            schedule=events.Schedule.cron(minute="30", hour="2"),
            targets=[
                targets.LambdaFunction(
                    self.reconcile.function,
                    dead_letter_queue=self.reconcile_dead_letters,
                    retry_attempts=4,
                    max_event_age=Duration.hours(6),
                )
            ],
        )

        # De-identification on write: dicom/ objects -> curated/imaging/dicom/
        deid_environment = {
            **environment,
            "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn,
            "DEID_OPTIONS": json.dumps(dict(config.deid_options)),
        }
        self.deid = StageFunction(
            self,
            "DicomDeid",
            handler="dicom_deid",
            role_name=ingest_reader_role_name(config, "dicom_deid"),
            description="oncopipe: de-identify a DICOM object on write (PS3.15 Annex E)",
            environment=deid_environment,
            memory_mb=1024,
            **common,
        )
        grant_objects(
            self.deid.role, ingest, list_prefixes=(),
            read={layout.INGEST_DICOM: "Reads DICOM uploads only."},
        )  # fmt: skip
        # Its outputs, read back where a re-run retracts an earlier version.
        released = {
            f"{layout.CURATED_IMAGING}dicom/": "Writes de-identified DICOM only.",
            f"{MANIFEST_ROOT}/": "Writes (and reads) its manifests (opaque references).",
        }
        grant_objects(self.deid.role, curated, read=released, write=released, delete=True)
        _grant_quarantine_zone(self.deid.role, quarantine)
        lake.grant_pseudonym_secret(self.deid.role)

        if config.deid_on_read:
            self._deid_on_read(config, lake, ingest, deid_environment, common)

        self.state_machine = self._state_machine(config, lake)

        self.rule_dead_letters = encrypted_queue(self, "RuleDeadLetters", key=lake.platform_key)
        self.rule = events.Rule(
            self,
            "IngestObjectCreated",
            description="Start the ingest state machine for every object created in ingest",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={"bucket": {"name": [lake.ingest.bucket_name]}},
            ),
            targets=[
                targets.SfnStateMachine(
                    self.state_machine,
                    dead_letter_queue=self.rule_dead_letters,
                    retry_attempts=8,
                    max_event_age=Duration.hours(24),
                )
            ],
        )

    def _deid_on_read(
        self,
        config: EnvConfig,
        lake: DataLakeStack,
        ingest: s3.IBucket,
        environment: dict[str, str],
        common: dict[str, Any],
    ) -> None:
        """Opt-in: an Object Lambda access point serving ingest DICOM de-identified."""
        self.deid_on_read = StageFunction(
            self,
            "DicomDeidOnRead",
            handler="dicom_deid_on_read",
            description="oncopipe: de-identify DICOM on read (S3 Object Lambda, opt-in)",
            environment=environment,
            memory_mb=1024,
            timeout_seconds=60,  # the Object Lambda response limit
            **{**common, "vpc": None, "subnets": None},
        )
        role = self.deid_on_read.role
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3-object-lambda:WriteGetObjectResponse"], resources=["*"]
            )
        )
        lake.grant_pseudonym_secret(role)
        # The presigned inputS3Url is signed with the caller's credentials; the caller also
        # needs kms:Decrypt on the ingest key, as for any read of that bucket.
        # The supporting access point serves reads made by S3 Object Lambda only: a direct
        # GetObject through it would return the DICOM with its PHI.
        name = f"{config.prefix}-ingest-deid"
        objects = self.format_arn(
            service="s3", resource="accesspoint", resource_name=f"{name}/object/*"
        )
        access_point = s3.CfnAccessPoint(
            self, "IngestAccessPoint", bucket=ingest.bucket_name, name=name,
            policy={"Version": "2012-10-17", "Statement": [{
                "Sid": "OnlyThroughObjectLambda",
                "Effect": "Deny",
                "Principal": {"AWS": "*"},
                "Action": "s3:*",
                "Resource": [objects],
                "Condition": {"ForAllValues:StringNotEquals": {
                    "aws:CalledVia": ["s3-object-lambda.amazonaws.com"]}},
            }]},
            public_access_block_configuration=s3.CfnAccessPoint.PublicAccessBlockConfigurationProperty(
                block_public_acls=True, block_public_policy=True, ignore_public_acls=True,
                restrict_public_buckets=True,
            ),
        )  # fmt: skip
        self.object_lambda_access_point = s3objectlambda.CfnAccessPoint(
            self,
            "DeidOnReadAccessPoint",
            object_lambda_configuration=s3objectlambda.CfnAccessPoint.ObjectLambdaConfigurationProperty(
                supporting_access_point=access_point.attr_arn,
                cloud_watch_metrics_enabled=True,
                transformation_configurations=[
                    s3objectlambda.CfnAccessPoint.TransformationConfigurationProperty(
                        actions=["GetObject"],
                        content_transformation={
                            "AwsLambda": {"FunctionArn": self.deid_on_read.function.function_arn}
                        },
                    )
                ],
            ),
        )
        policy = role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "WriteGetObjectResponse and X-Ray support no resource-level scoping.",
        )

    def _deid_branch(self) -> sfn.IChainable:
        """DICOM object: de-identify on write; quarantined objects fail visibly."""
        task = tasks.LambdaInvoke(
            self,
            INGEST.deidentify.name,
            lambda_function=self.deid.function,
            comment="De-identify the DICOM object into curated/imaging/dicom/",
            # the S3 event (it names the ingest key) is read from the execution input:
            # no state output carries it
            payload=sfn.TaskInput.from_json_path_at("$$.Execution.Input"),
            result_selector={"result.$": "$.Payload"},
            result_path="$.deid",
            retry_on_service_exceptions=True,
        )
        _add_retries(task, INGEST.deidentify.retries)
        branch = INGEST.branch(INGEST.deidentify.name)
        quarantined, errored = branch.failures
        failed = sfn.Fail(self, errored, error=errored, cause_path="$.deid_error.Error")
        task.add_catch(failed, errors=["States.ALL"], result_path="$.deid_error")
        refused = sfn.Fail(
            self, quarantined, error=quarantined,
            cause_path="$.deid.result.reason_code",  # the readable reason is in quarantine
            comment="Not released (burned-in text, no patient, unreadable): in quarantine",
        )  # fmt: skip
        return task.next(
            sfn.Choice(self, INGEST.deid_outcome_choice)
            .when(sfn.Condition.string_equals("$.deid.result.status", "quarantined"), refused)
            .otherwise(sfn.Succeed(self, str(branch.success)))
        )

    def _genomics_branch(self) -> sfn.IChainable:
        """Accepted sample sheet: start the genomics state machine for its samples.

        Request-response: this execution ends once the genomics one started (alignment and
        calling run for hours; the genomics machine fails visibly and alarms on its own).
        The input names ids only: the run, the sample table, the samples and the tumours.
        """
        start = tasks.StepFunctionsStartExecution(
            self,
            INGEST.start_genomics.name,
            state_machine=self.genomics.state_machine,
            comment="Align every sample, then call every tumour (whole genomes scattered)",
            input=sfn.TaskInput.from_object(
                {
                    "run_id": sfn.JsonPath.string_at("$.route.result.run_id"),
                    "sample_table": sfn.JsonPath.string_at("$.route.result.sample_table"),
                    "sample_ids": sfn.JsonPath.list_at("$.route.result.sample_ids"),
                    "tumour_ids": sfn.JsonPath.list_at("$.route.result.tumour_ids"),
                    # each id with its pseudonymous key (the jobs' sample cost tag)
                    "sample_tags": sfn.JsonPath.list_at("$.route.result.sample_tags"),
                    "tumour_tags": sfn.JsonPath.list_at("$.route.result.tumour_tags"),
                }
            ),
            integration_pattern=sfn.IntegrationPattern.REQUEST_RESPONSE,
            result_selector={"execution_arn": sfn.JsonPath.string_at("$.ExecutionArn")},
            result_path="$.genomics",
        )
        _add_retries(start, INGEST.start_genomics.retries)
        branch = INGEST.branch(INGEST.start_genomics.name)
        (not_started,) = branch.failures
        failed = sfn.Fail(
            self,
            not_started,
            error=not_started,
            cause_path="$.genomics_error.Error",
            comment="The genomics state machine could not be started; re-upload the sheet",
        )
        start.add_catch(failed, errors=["States.ALL"], result_path="$.genomics_error")
        return start.next(
            sfn.Succeed(self, str(branch.success), comment="Genomics execution started")
        )

    def _state_machine(self, config: EnvConfig, lake: DataLakeStack) -> sfn.StateMachine:
        route = tasks.LambdaInvoke(
            self,
            INGEST.route.name,
            lambda_function=self.router.function,
            comment="Classify, validate (sample sheets) and route the object",
            payload=sfn.TaskInput.from_json_path_at("$"),
            # The output replaces the event (which names the ingest key, PHI): from here on
            # the state holds the router's result only (opaque ref, codes, counts); a
            # later task that needs the event reads $$.Execution.Input.
            result_selector={"route": {"result.$": "$.Payload"}},
            result_path="$",
            retry_on_service_exceptions=True,
        )
        _add_retries(route, INGEST.route.retries)
        quarantine = tasks.LambdaInvoke(
            self,
            INGEST.quarantine_after_error.name,
            lambda_function=self.quarantine_on_error.function,
            comment="Routing failed after retries: keep the object in quarantine with why",
            payload=sfn.TaskInput.from_object(
                {
                    "event": sfn.JsonPath.object_at("$$.Execution.Input"),
                    "error": sfn.JsonPath.object_at("$"),  # the caught error alone
                }
            ),
            result_selector={"result.$": "$.Payload"},
            result_path="$.quarantine",
            retry_on_service_exceptions=True,
        )
        _add_retries(quarantine, INGEST.quarantine_after_error.retries)
        routing_failed = sfn.Fail(
            self,
            INGEST.routing_failed,
            error=INGEST.routing_failed,
            cause_path="$.Error",
            comment="The object could not be routed; it is in quarantine",
        )
        # The caught error replaces the event in the state (the event names the key).
        route.add_catch(quarantine.next(routing_failed), errors=["States.ALL"], result_path="$")

        (input_quarantined,) = INGEST.branch("InputQuarantined").failures
        rejected = sfn.Fail(
            self,
            input_quarantined,
            error=input_quarantined,
            # A code: the readable reason names the object, so it stays in quarantine.
            cause_path="$.route.result.reason_code",
            comment="Invalid input: copied to quarantine with a reason document",
        )
        branches: dict[str, sfn.IChainable | None] = {
            "InputQuarantined": rejected,
            INGEST.start_genomics.name: self._genomics_branch(),
            INGEST.deidentify.name: self._deid_branch(),
            # A routed note: its run's notes job starts within ops.notes_batch_seconds.
            "QueueNote": None
            if self.notes_arrival is None
            else self.notes_arrival.queue_note(self, "QueueNote").next(
                sfn.Succeed(
                    self,
                    str(INGEST.branch("QueueNote").success),
                    comment="Notes job of the run follows",
                )
            ),
        }
        self.outcome = sfn.Choice(self, INGEST.outcome_choice)
        for branch in INGEST.branches:
            chain = branches[branch.start]
            if chain is not None:
                self.outcome.when(_condition(branch), chain)
        self.outcome.otherwise(sfn.Succeed(self, INGEST.default, comment="Data object recorded"))
        logs_group = encrypted_log_group(
            self,
            "StateMachineLogs",
            key=lake.platform_key,
            retention_days=config.log_retention_days,
        )
        machine = sfn.StateMachine(
            self,
            "IngestStateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(route.next(self.outcome)),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(1),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs_group,
                level=sfn.LogLevel.ALL,
                include_execution_data=False,
            ),
            comment="oncopipe ingest: route each uploaded object",
        )
        policy = machine.role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Resource::*": (
                "CloudWatch Logs delivery and X-Ray actions of Step Functions support no "
                "resource-level scoping."
            ),
            f"Resource::<{_logical(self.router.function)}.Arn>:*": (
                "Invoke any version/alias of the router function (CDK LambdaInvoke)."
            ),
            f"Resource::<{_logical(self.quarantine_on_error.function)}.Arn>:*": (
                "Invoke any version/alias of the quarantine function (CDK LambdaInvoke)."
            ),
            f"Resource::<{_logical(self.deid.function)}.Arn>:*": (
                "Invoke any version/alias of the de-identification function (CDK LambdaInvoke)."
            ),
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
        if self.notes_arrival is not None:
            self.notes_arrival.acknowledge_sender(machine.role)
        return machine


def _logical(construct: Construct) -> str:
    """Return the logical ID of a construct's CloudFormation resource (for a nag finding)."""
    child = construct.node.default_child
    assert child is not None
    return Stack.of(construct).get_logical_id(child)  # type: ignore[arg-type]


def _grant_quarantine_zone(role: iam.IRole, quarantine: s3.IBucket) -> None:
    """What every quarantining stage needs of the quarantine zone, and nothing more.

    Writes copies and reason documents (under run IDs) and its manifests anywhere in the
    zone, reads back what it wrote (a copy is checked after it lands), lists only the
    manifests of a run, deletes a failed item's partial outputs (delete markers only).
    """
    grant_objects(
        role, quarantine, delete=True, list_prefixes=(f"{MANIFEST_ROOT}/",),
        read={"": "Reads back its quarantine copies and the manifests of its runs."},
        write={"": "Quarantines rejected objects with their reasons, writes its manifests."},
    )  # fmt: skip


def _add_retries(task: sfn.TaskStateBase, retries: tuple[Retry, ...]) -> None:
    """Add a flow task's retriers (:mod:`oncopipe.flow`) to its state, in order."""
    for retry in retries:
        task.add_retry(
            errors=list(retry.errors),
            interval=Duration.seconds(retry.interval_seconds),
            max_attempts=retry.max_attempts,
            backoff_rate=retry.backoff_rate,
            max_delay=None
            if retry.max_delay_seconds is None
            else Duration.seconds(retry.max_delay_seconds),
            jitter_strategy=sfn.JitterType.FULL if retry.jitter else None,
        )


def _condition(branch: Branch) -> sfn.Condition:
    """Return the ``Outcome`` Choice's condition of a flow branch."""
    status = sfn.Condition.string_equals("$.route.result.status", branch.status)
    if branch.kind is None:
        return status
    return sfn.Condition.and_(
        sfn.Condition.string_equals("$.route.result.kind", branch.kind), status
    )
