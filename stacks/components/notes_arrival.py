"""NotesOnArrival: clinical notes processed minutes after they are routed, not the next day.

The event-driven notes path of :mod:`oncopipe.local.arrival`: the ingest state machine
sends ``{"run_id": ...}`` to this construct's queue for every note it routes
(:meth:`NotesOnArrival.queue_note`); the notes-arrival function receives what the queue
gathered for at most ``ops.notes_batch_seconds`` and starts one execution of this
construct's state machine per run named, which runs the notes processing job with
``--run-id`` (notes already processed are skipped by their manifests). The daily features
state machine stays as the sweeper for anything missed.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    Duration,
    aws_ec2 as ec2,
    aws_iam as iam,
    aws_kms as kms,
    aws_lambda_event_sources as sources,
    aws_sqs as sqs,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe.deployment import EnvConfig
from stacks.components.log_group import encrypted_log_group
from stacks.components.sagemaker_jobs import ProcessingStep
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.nag import acknowledge

#: The environment variable the notes-arrival function reads its state machine from
#: (``lambdas/notes_arrival/handler.py``).
STATE_MACHINE_ENV = "NOTES_STATE_MACHINE_ARN"
#: The notes-arrival function's timeout; the queue's visibility is derived from it.
FUNCTION_TIMEOUT_SECONDS = 60
#: Receives of one message before it goes to the dead-letter queue.
MAX_RECEIVES = 5
#: Where the ingest state machine finds a routed object's run (its router's result).
ROUTED_RUN_PATH = "$.route.result.run_id"


class NotesOnArrival(Construct):
    """The notes queue, the notes-arrival function and the per-run notes state machine.

    Creates:
        - ``queue``: the runs of routed notes (KMS with ``key``, TLS only, a dead-letter
          queue after :data:`MAX_RECEIVES` receives; visibility six times the function's
          timeout plus the batching window, as Lambda's SQS integration asks).
        - ``function``: ``lambdas/notes_arrival`` on the queue, batches gathered for at
          most ``config.ops.notes_batch_seconds`` (up to 100 messages; 0: no window, up to
          10), partial batch responses, in the private subnets.
        - ``state_machine`` (``NotesOnArrival``): input ``{"run_id"}``; the notes
          processing job (``processing.notes stage --run-id <run>``, the notes role and
          environment of the features stack), retried on SageMaker throttling; a failure
          ends in a visible failed execution.

    Grants: the function receives from the queue and starts this state machine only; the
    state machine starts, watches and stops the notes processing jobs and passes the notes
    role to SageMaker only. :meth:`queue_note` gives a state machine the task that sends a
    routed note's run (SendMessage on this queue and the key's encrypt use, nothing else);
    :meth:`acknowledge_sender` names that grant's key wildcards for cdk-nag.
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
        processing: dict[str, Any],
    ) -> None:
        super().__init__(scope, construct_id)
        self.batch_seconds = config.ops.notes_batch_seconds
        self.dead_letters = encrypted_queue(self, "NotesDeadLetters", key=key)
        self.queue = sqs.Queue(
            self,
            "NotesQueue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(4),
            visibility_timeout=Duration.seconds(6 * FUNCTION_TIMEOUT_SECONDS + self.batch_seconds),
            dead_letter_queue=sqs.DeadLetterQueue(
                max_receive_count=MAX_RECEIVES, queue=self.dead_letters
            ),
        )
        self.notes_step = ProcessingStep(
            self,
            "ArrivalNotesJob",
            job_prefix="notes-arrival",
            arguments=[],
            arguments_path="States.Array('processing.notes', 'stage', '--run-id', $.run_id)",
            **processing,
        )
        self.state_machine = self._state_machine(config, key)
        self.arrival = StageFunction(
            self,
            "NotesArrival",
            handler="notes_arrival",
            description="oncopipe: start the notes job of each run whose notes just arrived",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={STATE_MACHINE_ENV: self.state_machine.state_machine_arn},
            reserved_concurrency=config.lambda_reserved_concurrency,
            log_retention_days=config.log_retention_days,
            timeout_seconds=FUNCTION_TIMEOUT_SECONDS,
        )
        self.function = self.arrival.function
        self.state_machine.grant_start_execution(self.arrival.role)
        # No window (0 s): each message is handled at once; Lambda then takes at most 10.
        window = Duration.seconds(self.batch_seconds) if self.batch_seconds else None
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=100 if window else 10,
                max_batching_window=window,
                report_batch_item_failures=True,
            )
        )

    def queue_note(self, scope: Construct, construct_id: str) -> tasks.SqsSendMessage:
        """Return a task (in ``scope``) sending the routed note's run to :attr:`queue`.

        The message is ``{"run_id": <$.route.result.run_id>}``: a run id only, never the
        note's key. The task's output is discarded (the state keeps the router's result).
        The state machine using it gets SendMessage on this queue and the key's encrypt
        use through the task; call :meth:`acknowledge_sender` with its role afterwards.
        """
        return tasks.SqsSendMessage(
            scope,
            construct_id,
            queue=self.queue,
            comment="A note was routed: process its run's notes within minutes",
            message_body=sfn.TaskInput.from_object(
                {"run_id": sfn.JsonPath.string_at(ROUTED_RUN_PATH)}
            ),
            result_path=sfn.JsonPath.DISCARD,
        )

    def acknowledge_sender(self, role: iam.IRole) -> None:
        """Acknowledge the key wildcard of the :meth:`queue_note` grant on ``role``'s policy."""
        acknowledge(
            role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]",
            "Step Functions' SendMessage grant on the notes queue encrypts the message with "
            "the platform key; scoped to that one key.",
        )

    def _state_machine(self, config: EnvConfig, key: kms.IKey) -> sfn.StateMachine:
        failed = sfn.Fail(self, "ArrivalNotesFailed", error="NotesOnArrivalFailed",
                          cause="the notes processing job failed; see its logs")  # fmt: skip
        job = self.notes_step.state
        job.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        definition = job.next(sfn.Succeed(self, "ArrivalNotesProcessed"))
        logs = encrypted_log_group(
            self, "StateMachineLogs", key=key, retention_days=config.log_retention_days
        )
        machine = sfn.StateMachine(
            self,
            "NotesOnArrival",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            # the job's bound plus a margin for its start and SageMaker retries
            timeout=Duration.minutes(config.processing_max_runtime_minutes + 30),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="oncopipe: the notes of one ingest run, processed on arrival",
        )
        self.notes_step.grant_start(machine)
        policy = machine.role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Resource::*": (
                "CloudWatch Logs delivery and X-Ray actions of Step Functions support no "
                "resource-level scoping."
            ),
            "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
            "processing-job/*": "Processing job names are generated per execution (prefix + UUID).",
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
        return machine
