"""Every state machine can do what its definition asks, with the role it is deployed with.

The whole app is synthesized; for each ``AWS::StepFunctions::StateMachine`` the definition
is parsed (CloudFormation intrinsics resolved to stable names), every state walked
(Parallel branches and Map processors included) and, for each Task, the permissions its
service integration needs are derived from the integration and its parameters:

- ``iam:PassRole`` on every role the parameters name (any key ending in ``RoleArn``),
  with ``iam:PassedToService`` allowing the service the role is passed to;
- the integration's actions on its resources (submit/describe/terminate for Batch,
  create/describe/stop for SageMaker jobs, invoke on the function ...);
- ``events:PutTargets/PutRule/DescribeRule`` on the managed rule of a ``.sync`` job.

Each need is then checked against the statements of the policies attached to the
machine's role (IAM wildcards honoured, explicit denies win, an unknown condition does
not count as granting). An integration this test does not know fails the test, so a new
kind of task cannot slip through unchecked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App

from stacks.app_factory import build_app
from tests.conftest import cdk_context, stack_templates, synthesized_app

pytestmark = pytest.mark.slow

ACCOUNT = "123456789012"
REGION = "eu-west-1"
PARTITION = "aws"
#: Stands for a part of an ARN only known at run time (a generated job name): only a
#: wildcard in the granted resource matches it.
UNKNOWN = "\x00"
#: The resource of an AWS SDK integration: the API's resource is the stack's choice, so
#: any grant of the action counts (its scoping is what the nag findings review).
ANY = "\x02"

Template = dict[str, Any]


#: References that resolve to ARNs (or names) a grant's wildcards can be checked against:
#: (type, attribute) -> (the property naming the resource, the ARN with ``{name}``).
_CONCRETE_ARNS = {
    ("AWS::S3::Bucket", "Arn"): ("BucketName", f"arn:{PARTITION}:s3:::{{name}}"),
    ("AWS::S3::Bucket", "Ref"): ("BucketName", "{name}"),
    ("AWS::Lambda::Function", "Arn"): (
        "FunctionName", f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{{name}}"),
    ("AWS::Batch::JobQueue", "JobQueueArn"): (
        "JobQueueName", f"arn:{PARTITION}:batch:{REGION}:{ACCOUNT}:job-queue/{{name}}"),
    ("AWS::Batch::JobQueue", "Ref"): (
        "JobQueueName", f"arn:{PARTITION}:batch:{REGION}:{ACCOUNT}:job-queue/{{name}}"),
    ("AWS::Batch::JobDefinition", "Ref"): (
        "JobDefinitionName", f"arn:{PARTITION}:batch:{REGION}:{ACCOUNT}:job-definition/{{name}}:1"),
    ("AWS::StepFunctions::StateMachine", "Ref"): (
        "StateMachineName", f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{{name}}"),
}  # fmt: skip


# -- resolving CloudFormation intrinsics -------------------------------------------------------
class Resolver:
    """Turns CloudFormation values of a set of templates into plain strings.

    ``GetAtt X.Arn`` of a role becomes a role ARN (so wildcard grants on ``role/...`` can
    be checked); any other reference becomes ``<Stack/LogicalId.Attribute>``, the same
    string whichever stack refers to it (imports are followed to their export).
    """

    def __init__(self, templates: Mapping[str, Template]) -> None:
        self.templates = templates
        self.exports: dict[str, tuple[str, Any]] = {}
        for stack, template in templates.items():
            for output in template.get("Outputs", {}).values():
                name = output.get("Export", {}).get("Name")
                if name is not None:
                    self.exports[self._plain(stack, name)] = (stack, output["Value"])

    def _plain(self, stack: str, value: Any) -> str:
        resolved = self.resolve(stack, value)
        assert isinstance(resolved, str), value
        return resolved

    def _reference(self, stack: str, logical_id: str, attribute: str) -> str:
        pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack,
        }
        if logical_id in pseudo:
            return pseudo[logical_id]
        resource = self.templates[stack]["Resources"].get(logical_id)
        if resource is None:
            raise AssertionError(f"{stack}: reference to unknown resource {logical_id}")
        if resource["Type"] == "AWS::IAM::Role" and attribute == "Arn":
            name = resource["Properties"].get("RoleName", f"{stack}-{logical_id}")
            return f"arn:{PARTITION}:iam::{ACCOUNT}:role/{self._plain(stack, name)}"
        concrete = _CONCRETE_ARNS.get((resource["Type"], attribute))
        if concrete is not None:
            name_key, arn = concrete
            name = resource["Properties"].get(name_key, f"{stack}-{logical_id}")
            return arn.format(name=self._plain(stack, name))
        return f"<{stack}/{logical_id}.{attribute}>"

    def resolve(self, stack: str, value: Any) -> Any:
        """Return ``value`` with every intrinsic function replaced by a string.

        Raises:
            AssertionError: an intrinsic this resolver does not know (fail loudly rather
                than guess).
        """
        if isinstance(value, list):
            return [self.resolve(stack, v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
            return {k: self.resolve(stack, v) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref":
            return self._reference(stack, argument, "Ref")
        if function == "Fn::GetAtt":
            logical_id, attribute = (
                argument if isinstance(argument, list) else argument.split(".", 1)
            )
            return self._reference(stack, logical_id, attribute)
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(self._plain(stack, p) for p in self.resolve(stack, parts))
        if function == "Fn::ImportValue":
            name = self._plain(stack, argument)
            if name not in self.exports:
                raise AssertionError(f"{stack}: import of unknown export {name}")
            exporter, exported = self.exports[name]
            return self.resolve(exporter, exported)
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in variables:
                    return self._plain(stack, variables[name])
                logical_id, _, attribute = name.partition(".")
                return self._reference(stack, logical_id, attribute or "Ref")

            return re.sub(r"\$\{([^}!]+)\}", substitute, text)
        if function == "Fn::Select":
            index, items = argument
            resolved = self.resolve(stack, items)
            if not 0 <= int(index) < len(resolved):
                raise AssertionError(f"{stack}: Fn::Select {index} of {resolved}")
            return resolved[int(index)]
        if function == "Fn::Split":
            separator, text = argument
            return self._plain(stack, text).split(separator)
        raise AssertionError(f"{stack}: intrinsic {function} is not resolved by this test")


# -- what a task needs --------------------------------------------------------------------------
@dataclass(frozen=True)
class Need:
    """One permission a state needs: an action on a resource (and PassRole's service)."""

    state: str
    action: str
    resource: str
    passed_to: str | None = None
    #: Condition keys the call sets, as far as the definition tells (literal parameters).
    context: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        to = f" (to {self.passed_to})" if self.passed_to else ""
        resource = "any resource" if self.resource == ANY else self.resource.replace(UNKNOWN, "*")
        return f"{self.state}: {self.action} on {resource}{to}"


def _arn(service: str, resource: str) -> str:
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{resource}"


def _name(parameters: Mapping[str, Any], key: str) -> str:
    """The job name a task will use: literal, a ``States.Format`` of a literal, or unknown."""
    if key in parameters:
        return str(parameters[key])
    dynamic = parameters.get(f"{key}.$", "")
    match = re.fullmatch(r"States\.Format\('([^']*)'.*\)", dynamic)
    if match:
        return match.group(1).replace("{}", UNKNOWN)
    return UNKNOWN


def _passed_roles(parameters: Any) -> Iterator[str]:
    """Every role ARN in a task's parameters: the values of keys ending in ``RoleArn``."""
    if isinstance(parameters, dict):
        for key, value in parameters.items():
            if key.endswith("RoleArn") and isinstance(value, str):
                yield value
            elif key.endswith("RoleArn.$"):
                yield UNKNOWN  # a role chosen at run time: only a wildcard grant covers it
            else:
                yield from _passed_roles(value)
    elif isinstance(parameters, list):
        for item in parameters:
            yield from _passed_roles(item)


#: SageMaker ``.sync`` jobs: ARN resource type, actions besides create/describe/stop, the
#: managed EventBridge rule Step Functions watches the job with, the name parameter.
_SAGEMAKER_JOBS = {
    "createProcessingJob": ("processing-job", "ProcessingJob", (),
                            "StepFunctionsGetEventsForSageMakerProcessingJobsRule",
                            "ProcessingJobName"),
    "createTrainingJob": ("training-job", "TrainingJob", (),
                          "StepFunctionsGetEventsForSageMakerTrainingJobsRule",
                          "TrainingJobName"),
    "createTransformJob": ("transform-job", "TransformJob", (),
                           "StepFunctionsGetEventsForSageMakerTransformJobsRule",
                           "TransformJobName"),
    "createHyperParameterTuningJob": (
        "hyper-parameter-tuning-job", "HyperParameterTuningJob",
        ("sagemaker:ListTrainingJobsForHyperParameterTuningJob",),
        "StepFunctionsGetEventsForSageMakerTuningJobsRule", "HyperParameterTuningJobName"),
}  # fmt: skip
#: Services the roles of a task's parameters are passed to, by integration service.
_PASSED_TO = {"sagemaker": "sagemaker.amazonaws.com", "batch": "batch.amazonaws.com",
              "glue": "glue.amazonaws.com", "ecs": "ecs-tasks.amazonaws.com"}  # fmt: skip


def task_needs(state_name: str, state: Mapping[str, Any]) -> list[Need]:
    """Return what one Task state needs on the machine's role.

    Raises:
        AssertionError: the integration is unknown to this test.
    """
    resource = str(state["Resource"])
    parameters = state.get("Parameters", {})
    if re.fullmatch(r"arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:function:[\w-]+(:[\w$-]+)?",
                    resource):  # fmt: skip
        # a Lambda function's ARN as the Resource: Step Functions invokes it directly
        return [Need(state_name, "lambda:InvokeFunction", resource)]
    match = re.fullmatch(r"arn:aws[a-z-]*:states:::(aws-sdk:)?([a-zA-Z0-9-]+):([a-zA-Z]+)"
                         r"(\.sync(?::2)?|\.waitForTaskToken)?", resource)  # fmt: skip
    if not match:
        raise AssertionError(f"{state_name}: {resource} is not a service integration")
    sdk, service, api, pattern = match.groups()
    sync = bool(pattern and pattern.startswith(".sync"))
    needs: list[Need] = []

    def need(action: str, arn: str, passed_to: str | None = None,
             context: Mapping[str, str] | None = None) -> None:  # fmt: skip
        known = dict(context or {})
        if passed_to is not None:
            known["iam:PassedToService"] = passed_to
        needs.append(Need(state_name, action, arn, passed_to, tuple(sorted(known.items()))))

    for role in _passed_roles(parameters):
        need("iam:PassRole", role, _PASSED_TO.get(service, f"{service}.amazonaws.com"))
    if sdk:
        # AWS SDK integrations call the API named: service:Api.
        context = {}
        status = parameters.get("ModelApprovalStatus")
        if service == "sagemaker" and isinstance(status, str):
            context["sagemaker:ModelApprovalStatus"] = status
        need(f"{service}:{api[0].upper()}{api[1:]}", ANY, context=context)
        return needs
    if service == "lambda" and api == "invoke":
        need("lambda:InvokeFunction", str(parameters["FunctionName"]))
    elif service == "batch" and api == "submitJob":
        need("batch:SubmitJob", str(parameters["JobQueue"]))
        need("batch:SubmitJob", str(parameters["JobDefinition"]))
        if parameters.get("Tags"):
            # tags on a submitted job: Batch authorises TagResource on the new job
            need("batch:TagResource", _arn("batch", f"job/{UNKNOWN}"),
                 context={"batch:CreateAction": "SubmitJob"})  # fmt: skip
        if sync:
            job = _arn("batch", f"job/{UNKNOWN}")
            need("batch:DescribeJobs", job)
            need("batch:TerminateJob", job)
            for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
                need(action, _arn("events", "rule/StepFunctionsGetEventsForBatchJobsRule"))
    elif service == "sagemaker" and api in _SAGEMAKER_JOBS:
        kind, noun, extra, rule, name_key = _SAGEMAKER_JOBS[api]
        job = _arn("sagemaker", f"{kind}/{_name(parameters, name_key).lower()}")
        need(f"sagemaker:Create{noun}", job)
        if parameters.get("Tags"):
            need("sagemaker:AddTags", job)
        if sync:
            for action in (f"sagemaker:Describe{noun}", f"sagemaker:Stop{noun}", *extra):
                need(action, job)
            for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
                need(action, _arn("events", f"rule/{rule}"))
    elif service == "states" and api == "startExecution":
        machine = str(parameters["StateMachineArn"])
        need("states:StartExecution", machine)
        if sync:
            execution = machine.replace(":stateMachine:", ":execution:") + f":{UNKNOWN}"
            need("states:DescribeExecution", execution)
            need("states:StopExecution", execution)
            for action in ("events:PutTargets", "events:PutRule", "events:DescribeRule"):
                need(
                    action,
                    _arn("events", "rule/StepFunctionsGetEventsForStepFunctionsExecutionRule"),
                )
    elif service == "sns" and api == "publish":
        need("sns:Publish", str(parameters.get("TopicArn", UNKNOWN)))
    elif service == "sqs" and api == "sendMessage":
        # the task names the queue by URL (Ref); grants name it by ARN (GetAtt Arn)
        queue = str(parameters.get("QueueUrl", UNKNOWN))
        need("sqs:SendMessage", re.sub(r"\.Ref>$", ".Arn>", queue))
    elif service == "events" and api == "putEvents":
        need("events:PutEvents", UNKNOWN)
    else:
        raise AssertionError(
            f"{state_name}: integration {resource} is not known to this test; add what it "
            "needs to task_needs()"
        )
    return needs


def walk_states(states: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield every state, descending into Parallel branches and Map processors."""
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from walk_states(branch["States"])
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            yield from walk_states(processor["States"])


# -- what a role is granted ---------------------------------------------------------------------
def _glob(pattern: str) -> re.Pattern[str]:
    """An IAM pattern (``*`` any run, ``?`` one character) as a regular expression."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _matches(pattern: str, value: str, *, case: bool = True) -> bool:
    if value == ANY:
        return True
    if UNKNOWN in value:
        # A run-time part is covered only where the pattern has a wildcard: try the value
        # with a character no literal pattern contains.
        value = value.replace(UNKNOWN, "\x01")
    flags = 0 if case else re.IGNORECASE
    return re.fullmatch(_glob(pattern).pattern, value, flags) is not None


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


_POSITIVE = {
    "StringEquals": True,
    "StringLike": True,
    "StringNotEquals": False,
    "StringNotLike": False,
}


def _condition(operator: str, key: str, expected: Any, need: Need) -> bool | None:
    """Whether one condition holds for the call: True, False, or None (not known here)."""
    context = dict(need.context)
    if operator not in _POSITIVE:
        return None
    like = operator.endswith("Like")
    if key not in context:
        # IAM: a negated operator holds when the key is absent; a positive one does not.
        # Only keys this test derives are known to be absent.
        derived = key in ("iam:PassedToService", "sagemaker:ModelApprovalStatus",
                          "batch:CreateAction")  # fmt: skip
        return (not _POSITIVE[operator]) if derived else None
    value = context[key]
    hit = any(_matches(str(e), value) if like else str(e) == value for e in _listed(expected))
    return hit if _POSITIVE[operator] else not hit


def _conditions_hold(statement: Mapping[str, Any], need: Need) -> bool:
    """Whether an Allow's conditions all hold for the call (an unknown one does not)."""
    return all(
        _condition(operator, key, expected, need) is True
        for operator, entries in statement.get("Condition", {}).items()
        for key, expected in entries.items()
    )


def _deny_applies(statement: Mapping[str, Any], need: Need) -> bool:
    """Whether a Deny applies to the call: unless one of its conditions is known false."""
    return all(
        _condition(operator, key, expected, need) is not False
        for operator, entries in statement.get("Condition", {}).items()
        for key, expected in entries.items()
    )


def _statement_covers(statement: Mapping[str, Any], need: Need) -> bool:
    actions = _listed(statement.get("Action", []))
    resources = _listed(statement.get("Resource", []))
    return (
        any(_matches(str(a), need.action, case=False) for a in actions)
        and any(_matches(str(r), need.resource) for r in resources)
        and _conditions_hold(statement, need)
    )


def role_statements(resolver: Resolver, stack: str, role_id: str) -> list[dict[str, Any]]:
    """Every statement of the policies attached to a role of ``stack`` (inline ones too)."""
    template = resolver.templates[stack]
    statements: list[dict[str, Any]] = []
    role = template["Resources"][role_id]
    for policy in role["Properties"].get("Policies", []):
        statements += resolver.resolve(stack, policy["PolicyDocument"])["Statement"]
    for resource in template["Resources"].values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and {
            "Ref": role_id
        } in resource["Properties"].get("Roles", []):
            statements += resolver.resolve(stack, resource["Properties"]["PolicyDocument"])[
                "Statement"
            ]
    assert not role["Properties"].get("ManagedPolicyArns"), (
        f"{stack}/{role_id}: AWS-managed policies on a state machine role are not checked"
    )
    return statements


def missing_permissions(resolver: Resolver, stack: str, machine_id: str) -> list[str]:
    """Return each need of a state machine that its role's policies do not grant."""
    machine = resolver.templates[stack]["Resources"][machine_id]["Properties"]
    role_arn = machine["RoleArn"]
    assert set(role_arn) == {"Fn::GetAtt"}, f"{machine_id}: role from outside its stack"
    role_id = role_arn["Fn::GetAtt"][0]
    definition = json.loads(resolver.resolve(stack, machine["DefinitionString"]))
    statements = role_statements(resolver, stack, role_id)
    allows = [s for s in statements if s["Effect"] == "Allow"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    missing = []
    for name, state in walk_states(definition["States"]):
        if state["Type"] != "Task":
            continue
        for need in task_needs(name, state):
            granted = any(_statement_covers(s, need) for s in allows)
            denied = any(_statement_covers({**s, "Condition": {}}, need)
                         and _deny_applies(s, need) for s in denies)  # fmt: skip
            if not granted or denied:
                missing.append(f"{stack}/{machine_id} {need}")
    return missing


def state_machines(templates: Mapping[str, Template]) -> list[tuple[str, str]]:
    return [
        (stack, logical_id)
        for stack, template in templates.items()
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::StepFunctions::StateMachine"
    ]


def synthesized_templates(
    tmp: Path, env: str, *, path_metadata: bool = False, **overrides: Any
) -> dict[str, Template]:
    """Return the templates of the app (nag off: the infrastructure tests run it)."""
    context = cdk_context(env=env)
    context["oncopipe:environments"][env].update(overrides)
    context["aws:cdk:enable-path-metadata"] = path_metadata
    built = build_app(App(context=context, outdir=str(tmp)), nag=False)
    assembly = built.app.synth()
    return {stack.stack_name: stack.template for stack in assembly.stacks}


# -- the tests ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["dev", "prod"])
def templates(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Template]:
    return stack_templates(synthesized_app(request.param, tmp_path_factory))


def test_every_state_machine_role_grants_what_its_tasks_need(
    templates: dict[str, Template],
) -> None:
    resolver = Resolver(templates)
    machines = state_machines(templates)
    # ingest, genomics, daily features, series imaging, notes on arrival, model pipeline,
    # deployment on approval
    assert len(machines) == 7
    missing = [
        m for stack, machine in machines for m in missing_permissions(resolver, stack, machine)
    ]
    assert missing == [], "\n".join(missing)


def test_with_the_opt_in_endpoints_every_state_machine_still_has_its_permissions(
    tmp_path: Path,
) -> None:
    templates = synthesized_templates(
        tmp_path,
        "dev",
        deid_on_read=True,
        serving_model_package_arn=(
            "arn:aws:sagemaker:eu-west-1:123456789012:model-package/oncopipe-dev-response/3"
        ),
        serving_serverless=True,
    )
    resolver = Resolver(templates)
    missing = [
        m for stack, machine in state_machines(templates)
        for m in missing_permissions(resolver, stack, machine)
    ]  # fmt: skip
    assert missing == [], "\n".join(missing)


# -- the checker itself: it finds what is missing ------------------------------------------------
def _machine_template(definition: dict[str, Any], statements: list[dict[str, Any]]) -> Template:
    return {
        "Resources": {
            "Role": {"Type": "AWS::IAM::Role", "Properties": {}},
            "Other": {"Type": "AWS::IAM::Role", "Properties": {"RoleName": "job-role"}},
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {}},
            "Policy": {
                "Type": "AWS::IAM::Policy",
                "Properties": {
                    "Roles": [{"Ref": "Role"}],
                    "PolicyDocument": {"Statement": statements},
                },
            },
            "Machine": {
                "Type": "AWS::StepFunctions::StateMachine",
                "Properties": {
                    "RoleArn": {"Fn::GetAtt": ["Role", "Arn"]},
                    "DefinitionString": json.dumps(definition),
                },
            },
        }
    }


_ROLE = f"arn:aws:iam::{ACCOUNT}:role/job-role"
_PROCESSING = {
    "StartAt": "Outer",
    "States": {
        "Outer": {
            "Type": "Parallel",
            "End": True,
            "Branches": [
                {
                    "StartAt": "Job",
                    "States": {
                        "Job": {
                            "Type": "Task",
                            "End": True,
                            "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
                            "Parameters": {
                                "ProcessingJobName.$": "States.Format('job-{}', States.UUID())",
                                "RoleArn": _ROLE,
                            },
                        }
                    },
                }
            ],
        }
    },
}
_GRANTED = [
    {
        "Effect": "Allow",
        "Action": [
            "sagemaker:CreateProcessingJob",
            "sagemaker:DescribeProcessingJob",
            "sagemaker:StopProcessingJob",
        ],
        "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/*",
    },
    {
        "Effect": "Allow",
        "Action": ["events:PutTargets", "events:PutRule", "events:DescribeRule"],
        "Resource": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/"
        "StepFunctionsGetEventsForSageMakerProcessingJobsRule",
    },
]
_PASS = {
    "Effect": "Allow",
    "Action": "iam:PassRole",
    "Resource": _ROLE,
    "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
}


def _missing(definition: dict[str, Any], statements: list[dict[str, Any]]) -> list[str]:
    templates = {"S": _machine_template(definition, statements)}
    return missing_permissions(Resolver(templates), "S", "Machine")


def test_checker_passes_a_complete_grant() -> None:
    assert _missing(_PROCESSING, [*_GRANTED, _PASS]) == []


def test_checker_finds_a_missing_pass_role_in_a_nested_branch() -> None:
    assert _missing(_PROCESSING, _GRANTED) == [
        f"S/Machine Job: iam:PassRole on {_ROLE} (to sagemaker.amazonaws.com)"
    ]


def test_checker_refuses_pass_role_to_another_service_or_under_a_deny() -> None:
    to_lambda = {
        **_PASS,
        "Condition": {"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}},
    }
    assert len(_missing(_PROCESSING, [*_GRANTED, to_lambda])) == 1
    deny = {"Effect": "Deny", "Action": "iam:*", "Resource": "*"}
    assert len(_missing(_PROCESSING, [*_GRANTED, _PASS, deny])) == 1


def test_checker_needs_the_sync_rule_and_a_wildcard_for_generated_names() -> None:
    exact_name = {
        **_GRANTED[0],
        "Resource": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/job-1",
    }
    missing = _missing(_PROCESSING, [exact_name, _PASS])
    assert any("CreateProcessingJob" in m for m in missing)
    assert any("events:PutRule" in m for m in missing)


def test_checker_fails_on_an_integration_it_does_not_know() -> None:
    definition = {"StartAt": "X", "States": {"X": {
        "Type": "Task", "End": True, "Resource": "arn:aws:states:::glue:startJobRun.sync",
        "Parameters": {"JobName": "j"}}}}  # fmt: skip
    with pytest.raises(AssertionError, match="not known to this test"):
        _missing(definition, [])


def test_resolver_follows_imports_to_the_exporting_stack() -> None:
    templates = {
        "A": {
            "Resources": {"Queue": {"Type": "AWS::Batch::JobQueue", "Properties": {}}},
            "Outputs": {"Q": {"Value": {"Ref": "Queue"}, "Export": {"Name": "A:Queue"}}},
        },
        "B": {"Resources": {}},
    }
    resolver = Resolver(templates)
    queue = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/A-Queue"
    assert resolver.resolve("B", {"Fn::ImportValue": "A:Queue"}) == queue
    assert resolver.resolve("A", {"Fn::Sub": "${Queue}/x"}) == f"{queue}/x"
    assert resolver.resolve("A", {"Fn::Sub": "arn:${AWS::Partition}:x:${Queue.Name}"}) == (
        "arn:aws:x:<A/Queue.Name>"
    )
    with pytest.raises(AssertionError, match="not resolved"):
        resolver.resolve("A", {"Fn::Base64": "x"})


def _register(status: str) -> dict[str, Any]:
    return {"StartAt": "Register", "States": {"Register": {
        "Type": "Task", "End": True,
        "Resource": "arn:aws:states:::aws-sdk:sagemaker:createModelPackage",
        "Parameters": {"ModelPackageGroupName": "g", "ModelApprovalStatus": status}}}}  # fmt: skip


_REGISTER = {"Effect": "Allow", "Action": "sagemaker:CreateModelPackage", "Resource": "*"}
#: The governance guard: registering anything but a pending version is denied.
_PENDING_ONLY = {
    "Effect": "Deny", "Action": "sagemaker:CreateModelPackage", "Resource": "*",
    "Condition": {"StringNotEquals": {"sagemaker:ModelApprovalStatus": "PendingManualApproval"}},
}  # fmt: skip


def test_checker_applies_a_conditional_deny_only_where_its_condition_holds() -> None:
    assert _missing(_register("PendingManualApproval"), [_REGISTER, _PENDING_ONLY]) == []
    (missing,) = _missing(_register("Approved"), [_REGISTER, _PENDING_ONLY])
    assert "sagemaker:CreateModelPackage" in missing
    # a condition key the checker cannot know: the deny is taken to apply
    unknown = {**_PENDING_ONLY, "Condition": {"StringEquals": {"aws:SourceVpc": "vpc-1"}}}
    assert len(_missing(_register("PendingManualApproval"), [_REGISTER, unknown])) == 1


def test_checker_needs_tag_on_create_for_a_tagged_batch_job() -> None:
    queue = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/q"
    definition = {"StartAt": "Job", "States": {"Job": {
        "Type": "Task", "End": True, "Resource": "arn:aws:states:::batch:submitJob",
        "Parameters": {"JobName": "j", "JobQueue": queue, "JobDefinition": "d",
                       "Tags": {"oncopipe:stage": "align"}}}}}  # fmt: skip
    submit = {"Effect": "Allow", "Action": "batch:SubmitJob", "Resource": [queue, "d"]}
    tag = {"Effect": "Allow", "Action": "batch:TagResource",
           "Resource": f"arn:aws:batch:{REGION}:{ACCOUNT}:job/*"}  # fmt: skip
    (missing,) = _missing(definition, [submit])
    assert "batch:TagResource" in missing
    on_submit = {**tag, "Condition": {"StringEquals": {"batch:CreateAction": "SubmitJob"}}}
    assert _missing(definition, [submit, on_submit]) == []
    on_other = {**tag, "Condition": {"StringEquals": {"batch:CreateAction": "CreateJobQueue"}}}
    assert len(_missing(definition, [submit, on_other])) == 1
