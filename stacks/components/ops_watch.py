"""What the ops stack watches, found in the app's construct trees (no hand-kept list).

:func:`discover` walks every stack given and returns, each with the pipeline stage
(:data:`oncopipe.metrics.STAGES`) whose dashboard row shows it:

- every SQS queue used as a dead-letter queue: of a Lambda function (``DeadLetterConfig``),
  of another queue (``RedrivePolicy``) or of an EventBridge rule target
  (``Targets[].DeadLetterConfig``, read from the rule's resolved targets);
- every Step Functions state machine, every AWS Batch job queue;
- every SageMaker endpoint with the variant names of its endpoint configuration.

A new stage's function, queue or state machine is therefore watched without editing the
ops stack. The stage comes from the construct's path (:data:`PATH_STAGES`), else from its
stack (:data:`STACK_STAGES`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aws_cdk import (
    Stack,
    aws_batch as batch,
    aws_events as events,
    aws_lambda as lambda_,
    aws_sagemaker as sagemaker,
    aws_sqs as sqs,
    aws_stepfunctions as sfn,
)
from constructs import IConstruct

from oncopipe.metrics import STAGES

#: (pattern in a construct path below its stack, case-insensitive) -> stage; first match wins.
PATH_STAGES: tuple[tuple[str, str], ...] = (
    ("deid", "deid"),
    ("align", "align"),
    ("call", "call"),
    ("volume|seriesimaging|seriessettle", "volumes"),
    ("radiomics|imagingfeatures", "radiomics"),
    ("note", "notes"),
    ("cohort", "cohort"),
    ("endpoint|serving", "endpoint"),
    ("drift", "drift"),
    ("train|modelpipeline", "training"),
    ("ingest|router|quarantine|reconcile", "ingest"),
)
#: Stack kind (the last part of ``Oncopipe-<env>-<Kind>``) -> the stages of what is left.
STACK_STAGES: dict[str, tuple[str, ...]] = {
    "Ingest": ("ingest",),
    "Genomics": ("align", "call"),
    "Features": ("radiomics",),
    "Model": ("training",),
    "Ops": ("drift",),
}


def stages_of(node: IConstruct) -> tuple[str, ...]:
    """Return the stages whose dashboard row shows ``node`` (empty: no stage fits).

    The path below the stack is searched for :data:`PATH_STAGES`, then the stack's kind
    gives :data:`STACK_STAGES`.
    """
    stack = Stack.of(node)
    below = node.node.path.removeprefix(stack.node.path).lower()
    for pattern, stage in PATH_STAGES:
        if re.search(pattern, below):
            return (stage,)
    kind = stack.node.id.rsplit("-", 1)[-1]
    return STACK_STAGES.get(kind, ())


@dataclass(frozen=True)
class Watched:
    """One watched resource and the stages whose rows show it."""

    construct: IConstruct
    stages: tuple[str, ...]

    @property
    def label(self) -> str:
        """Return a short, stable label: the construct path below its stack."""
        path = self.construct.node.path
        stack = Stack.of(self.construct)
        return f"{stack.node.id.rsplit('-', 1)[-1]}/{path.removeprefix(stack.node.path + '/')}"


@dataclass(frozen=True)
class Endpoint:
    """A SageMaker endpoint and the variant names of its endpoint configuration."""

    endpoint: sagemaker.CfnEndpoint
    variants: tuple[str, ...]
    stages: tuple[str, ...] = ("endpoint",)


@dataclass
class Discovered:
    """Everything :func:`discover` found, in construct-tree order."""

    dead_letter_queues: list[Watched] = field(default_factory=list)
    state_machines: list[Watched] = field(default_factory=list)
    job_queues: list[Watched] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)

    def for_stage(self, stage: str) -> dict[str, list[Watched]]:
        """Return the watched resources of ``stage`` by kind (dlq, sfn, batch)."""
        return {
            "dlq": [w for w in self.dead_letter_queues if stage in w.stages],
            "sfn": [w for w in self.state_machines if stage in w.stages],
            "batch": [w for w in self.job_queues if stage in w.stages],
        }


def _ref(stack: Stack, value: object) -> str:
    """Return a resolved reference as a comparable string."""
    return json.dumps(stack.resolve(value), sort_keys=True)


def _rule_dead_letter_refs(stack: Stack, rule: events.CfnRule) -> set[str]:
    targets = stack.resolve(rule.targets) or []
    refs: set[str] = set()
    for target in targets if isinstance(targets, list) else []:
        config = target.get("deadLetterConfig") if isinstance(target, dict) else None
        if isinstance(config, dict) and config.get("arn") is not None:
            refs.add(json.dumps(config["arn"], sort_keys=True))
    return refs


def _dead_letter_refs(stack: Stack, nodes: Sequence[IConstruct]) -> set[str]:
    refs: set[str] = set()
    for node in nodes:
        if isinstance(node, lambda_.Function) and node.dead_letter_queue is not None:
            refs.add(_ref(stack, node.dead_letter_queue.queue_arn))
        elif isinstance(node, sqs.Queue) and node.dead_letter_queue is not None:
            refs.add(_ref(stack, node.dead_letter_queue.queue.queue_arn))
        elif isinstance(node, events.CfnRule):
            refs |= _rule_dead_letter_refs(stack, node)
    return refs


def _variants(
    stack: Stack, endpoint: sagemaker.CfnEndpoint, nodes: Sequence[IConstruct]
) -> tuple[str, ...]:
    wanted = _ref(stack, endpoint.endpoint_config_name)
    for node in nodes:
        if isinstance(node, sagemaker.CfnEndpointConfig) and (
            _ref(stack, node.attr_endpoint_config_name) == wanted
        ):
            variants = stack.resolve(node.production_variants) or []
            return tuple(
                str(v["variantName"])
                for v in variants
                if isinstance(v, dict) and "variantName" in v
            )
    return ()


def discover(stacks: Iterable[Stack]) -> Discovered:
    """Return the dead-letter queues, state machines, job queues and endpoints of ``stacks``.

    Call it once every stack is built (the ops stack is the app's last): later additions
    are not seen.
    """
    found = Discovered()
    for stack in stacks:
        nodes = stack.node.find_all()
        dead_letters = _dead_letter_refs(stack, nodes)
        for node in nodes:
            if isinstance(node, sqs.Queue) and _ref(stack, node.queue_arn) in dead_letters:
                found.dead_letter_queues.append(Watched(node, stages_of(node)))
            elif isinstance(node, sfn.StateMachine):
                found.state_machines.append(Watched(node, stages_of(node)))
            elif isinstance(node, batch.JobQueue):
                found.job_queues.append(Watched(node, stages_of(node)))
            elif isinstance(node, sagemaker.CfnEndpoint):
                found.endpoints.append(Endpoint(node, _variants(stack, node, nodes)))
    return found


def unassigned(found: Discovered) -> list[Watched]:
    """Return the watched resources no stage row shows (the dashboard's last row)."""
    every = found.dead_letter_queues + found.state_machines + found.job_queues
    return [w for w in every if not set(w.stages) & set(STAGES)]
