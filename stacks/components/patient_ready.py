"""PatientReady: a patient's cohort row and prediction as soon as its data is complete.

The event-driven prediction path of :mod:`oncopipe.completeness`: whenever a flow that
writes features of a run finishes, the run is queued; the patient-ready function predicts
every patient of that run whose sample sheet's modalities are all query-able and that has
no prediction yet, through the serving endpoint when one is deployed.

What queues a run (EventBridge rules into one queue, so a burst of finished series or
jobs of the same run is handled once per batch):

- ``Step Functions Execution Status Change`` SUCCEEDED of the per-run state machines
  (notes on arrival, series imaging): their input names the run (``{"run_id", ...}``;
  pseudonymous keys and de-identified UIDs, no PHI); the event is queued as it is;
- the same for the daily sweep state machines, whose input (the schedule's event) names no
  run: the message is ``{"sweep_started_ms": <execution start>}`` and the function takes
  the previous UTC day's ingest run, as the sweep's jobs do;
- ``Batch Job State Change`` SUCCEEDED on the genomics job queue of a job submitted with a
  ``run_id`` parameter (alignment and variant calling): ``{"run_id": <parameter>}`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import (
    Duration,
    Stack,
    aws_batch as batch,
    aws_ec2 as ec2,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_kms as kms,
    aws_lambda_event_sources as sources,
    aws_s3 as s3,
    aws_sagemaker as sagemaker,
    aws_sqs as sqs,
    aws_stepfunctions as sfn,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.catalog import TABLES
from oncopipe.completeness import CURATED_PREDICTIONS, FEATURE_TABLES
from oncopipe.deployment import EnvConfig
from oncopipe.manifest import MANIFEST_ROOT
from oncopipe.settings import BUCKET_ENV, bucket_env
from stacks.components.s3_grants import grant_objects
from stacks.components.stage_function import StageFunction, encrypted_queue

#: The environment variable of the serving endpoint's name (``lambdas/patient_ready``).
ENDPOINT_ENV = "SERVING_ENDPOINT_NAME"
#: The message key of a daily sweep's execution start (milliseconds since the epoch).
SWEEP_STARTED_KEY = "sweep_started_ms"
#: Seconds the queue gathers finished flows before the function runs (one pass per run).
BATCH_SECONDS = 60
#: The function's timeout: it reads every manifest of a run and the patients' features.
FUNCTION_TIMEOUT_SECONDS = 300
SFN_STATUS_CHANGE = "Step Functions Execution Status Change"
BATCH_STATUS_CHANGE = "Batch Job State Change"


class PatientReady(Construct):
    """The patient-ready queue, the rules that fill it and the patient-ready function.

    Creates:
        - ``queue``: runs whose features may have completed a patient (KMS with ``key``,
          TLS only, a dead-letter queue after 5 receives), filled by ``run_rule``
          (per-run state machines), ``sweep_rule`` (daily sweeps) and ``genomics_rule``
          (genomics Batch jobs), each with retries and a KMS-encrypted dead-letter queue.
        - ``function``: ``lambdas/patient_ready`` on the queue (batches gathered for at
          most :data:`BATCH_SECONDS`, partial batch responses), in the private subnets,
          with ``SERVING_ENDPOINT_NAME`` the endpoint's name (empty: no model deployed,
          nothing is predicted).

    Grants (function role, prefix-scoped through
    :func:`stacks.components.s3_grants.grant_objects`): read the run manifests of the
    quarantine zone (the notes' and the sheets': only keys and timestamps are used);
    read the sample table, the feature tables the cohort row is built from and the
    manifests of curated; write ``cohort/predictions/`` and its ``predict`` manifests;
    ``sagemaker:InvokeEndpoint`` on ``endpoint`` only (none without an endpoint).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        key: kms.IKey,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        buckets: dict[str, s3.IBucket],
        run_state_machines: Sequence[sfn.IStateMachine],
        sweep_state_machines: Sequence[sfn.IStateMachine] = (),
        genomics_job_queue: batch.IJobQueue | None = None,
        endpoint: sagemaker.CfnEndpoint | None = None,
        endpoint_name: str | None = None,
    ) -> None:
        """``buckets`` maps ``ingest``, ``quarantine``, ``curated`` and ``artifacts`` to
        the buckets (imported into this stack); only quarantine and curated are granted.
        The serving endpoint is ``endpoint`` (one this app's template creates) or else the
        endpoint named ``endpoint_name`` (one that deployment on approval manages).

        Raises:
            ValueError: no state machine to watch, or a bucket missing.
        """
        super().__init__(scope, construct_id)
        if not run_state_machines:
            raise ValueError("PatientReady: give at least one per-run state machine")
        missing = set(BUCKET_ENV) - set(buckets)
        if missing:
            raise ValueError(f"PatientReady: buckets missing: {', '.join(sorted(missing))}")
        self.endpoint = endpoint
        self.dead_letters = encrypted_queue(self, "ReadyDeadLetters", key=key)
        self.queue = sqs.Queue(
            self,
            "ReadyQueue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(4),
            visibility_timeout=Duration.seconds(6 * FUNCTION_TIMEOUT_SECONDS + BATCH_SECONDS),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.dead_letters),
        )
        self.rule_dead_letters = encrypted_queue(self, "RuleDeadLetters", key=key)
        self.run_rule = self._rule(
            "RunFlowSucceeded",
            "A per-run features flow succeeded: queue its run for patient readiness",
            events.EventPattern(
                source=["aws.states"],
                detail_type=[SFN_STATUS_CHANGE],
                detail={
                    "status": ["SUCCEEDED"],
                    "stateMachineArn": [m.state_machine_arn for m in run_state_machines],
                },
            ),
            None,  # the event: run_id_of reads the run from the execution input
        )
        self.sweep_rule = (
            self._rule(
                "SweepSucceeded",
                "A daily features sweep succeeded: queue the previous day's run",
                events.EventPattern(
                    source=["aws.states"],
                    detail_type=[SFN_STATUS_CHANGE],
                    detail={
                        "status": ["SUCCEEDED"],
                        "stateMachineArn": [m.state_machine_arn for m in sweep_state_machines],
                    },
                ),
                events.RuleTargetInput.from_object(
                    {SWEEP_STARTED_KEY: events.EventField.from_path("$.detail.startDate")}
                ),
            )
            if sweep_state_machines
            else None
        )
        self.genomics_rule = (
            self._rule(
                "GenomicsJobSucceeded",
                "A genomics Batch job of a run succeeded: queue the run (its run_id only)",
                events.EventPattern(
                    source=["aws.batch"],
                    detail_type=[BATCH_STATUS_CHANGE],
                    detail={
                        "status": ["SUCCEEDED"],
                        "jobQueue": [genomics_job_queue.job_queue_arn],
                        "parameters": {"run_id": events.Match.exists()},
                    },
                ),
                events.RuleTargetInput.from_object(
                    {"run_id": events.EventField.from_path("$.detail.parameters.run_id")}
                ),
            )
            if genomics_job_queue is not None
            else None
        )
        self.ready = StageFunction(
            self,
            "PatientReady",
            handler="patient_ready",
            description="oncopipe: cohort row and prediction of each patient whose data is "
            "complete",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={
                **bucket_env(**{zone: buckets[zone].bucket_name for zone in BUCKET_ENV}),
                ENDPOINT_ENV: endpoint.attr_endpoint_name
                if endpoint is not None
                else (endpoint_name or ""),
            },
            reserved_concurrency=config.lambda_reserved_concurrency,
            log_retention_days=config.log_retention_days,
            timeout_seconds=FUNCTION_TIMEOUT_SECONDS,
            memory_mb=1024,
        )
        self.function = self.ready.function
        self.role = self.ready.role
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=100,
                max_batching_window=Duration.seconds(BATCH_SECONDS),
                report_batch_item_failures=True,
            )
        )
        self._grant_data(buckets["quarantine"], buckets["curated"])
        if endpoint is not None:
            # Ref of AWS::SageMaker::Endpoint is the endpoint's ARN: that one endpoint only.
            self.role.add_to_principal_policy(
                iam.PolicyStatement(actions=["sagemaker:InvokeEndpoint"], resources=[endpoint.ref])
            )
        elif endpoint_name:
            # SageMaker writes endpoint ARNs with the name in lower case
            arn = Stack.of(self).format_arn(service="sagemaker", resource="endpoint",
                                            resource_name=endpoint_name.lower())  # fmt: skip
            self.role.add_to_principal_policy(
                iam.PolicyStatement(actions=["sagemaker:InvokeEndpoint"], resources=[arn])
            )

    def _rule(
        self,
        construct_id: str,
        description: str,
        pattern: events.EventPattern,
        message: events.RuleTargetInput | None,
    ) -> events.Rule:
        return events.Rule(
            self,
            construct_id,
            description=description,
            event_pattern=pattern,
            targets=[
                targets.SqsQueue(
                    self.queue,
                    message=message,
                    dead_letter_queue=self.rule_dead_letters,
                    retry_attempts=8,
                    max_event_age=Duration.hours(24),
                )
            ],
        )

    def _grant_data(self, quarantine: s3.IBucket, curated: s3.IBucket) -> None:
        manifests = f"{MANIFEST_ROOT}/"
        grant_objects(self.role, quarantine, read={
            manifests: "Reads the run's notes and sheet manifests (keys and timestamps only).",
        })  # fmt: skip
        tables = {TABLES[name].prefix: f"Reads the committed {name} table of the cohort row."
                  for name, _ in FEATURE_TABLES}  # fmt: skip
        grant_objects(self.role, curated, read={
            layout.CURATED_SAMPLES: "Reads the run's sample table: the modalities it names.",
            manifests: "Reads the run's manifests: which features are committed.",
            **tables,
        })  # fmt: skip
        outputs = {CURATED_PREDICTIONS: "Writes each complete patient's prediction.",
                   manifests: "Writes (and reads back) its predict manifests."}  # fmt: skip
        grant_objects(self.role, curated, read=outputs, write=outputs, delete=True)
