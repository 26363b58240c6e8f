"""Least privilege proven by execution: each local stage runs as its synthesized IAM role.

``local up`` synthesizes the CDK app (bundling skipped, path metadata on; cached under
``.oncopipe/iam/`` by a hash of the infrastructure code and ``cdk.json``), finds each
stage's role in the templates by construct path (the Lambda function's ``Role``, the
Batch job definition's ``JobRoleArn``, or the SageMaker role itself — never by generated
logical ID), collects every policy attached to it, resolves the CloudFormation
intrinsics to the local resources (the same buckets, keys, secret and catalog, created
from the same ``cdk.json``), creates the role in the embedded endpoint and then switches
the endpoint's IAM enforcement on. Each stage subprocess gets the credentials of an
``sts:AssumeRole`` of its role, so a missing grant fails the local run with the
``AccessDenied`` it would meet in AWS.

What the emulator (moto 5.2) checks, read from ``moto/iam/access_control.py`` and
``moto/core/authorization.py``, and so what this run proves:

- Identity policies of the caller (inline and attached): ``Action`` (with wildcards,
  ``NotAction``) and explicit ``Deny``, for every service.
- ``Resource`` for S3 (bucket ARN for bucket operations, ``bucket/key`` for object
  operations), SQS, IAM and STS only. Every other service (KMS, Secrets Manager, Glue,
  Lake Formation, EventBridge...) is evaluated against the resource ``"*"``: a policy
  with a specific ARN would never match it, so for those services :func:`emulated_policy`
  keeps the actions and widens the resource to ``"*"``: the action is proven, the
  resource is not.

What it cannot check (the static tests of ``tests/infrastructure/test_infrastructure.py`` and
cdk-nag cover those):

- ``Condition`` blocks of identity policies: moto evaluates identity policies with no
  request context at all (only a trust policy's ``sts:ExternalId`` is ever compared), so
  ``s3:prefix``, ``kms:ViaService``, ``kms:EncryptionContext:*``,
  ``kms:GrantIsForAWSResource``, ``aws:SecureTransport``, ``iam:PassedToService``... are
  all ignored: a conditional ``Allow`` counts as unconditional. A conditional ``Deny``
  would deny unconditionally, so :func:`emulated_policy` leaves it out.
- Resource policies: bucket policies (TLS-only, deny statements), KMS key policies and
  secret policies are never evaluated; neither are the KMS permissions S3 needs for
  SSE-KMS objects, nor ``kms:Decrypt`` behind ``secretsmanager:GetSecretValue``.
- S3 action names are moto's approximation: ``CopyObject`` is checked as ``PutObject``
  on the target only (the source read is not checked), ``GetObjectTagging`` of a version
  as ``GetObjectVersion``.
- Trust policies: the local role trusts the local worker's admin principal, since the
  service principals (``lambda.amazonaws.com``) do not exist in the emulator.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oncopipe.errors import OncopipeError

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
#: moto's default account.
LOCAL_ACCOUNT = "123456789012"
LOCAL_PARTITION = "aws"
#: Services whose ``Resource`` moto evaluates (all others are checked against ``*``).
RESOURCE_CHECKED_SERVICES = frozenset({"s3", "sqs", "iam", "sts"})
ADMIN_USER = "oncopipe-local-worker"


class IamResolutionError(OncopipeError):
    """A stage's synthesized policy cannot be mapped to the local resources.

    Raised rather than granting more than the template does: the message names the
    stack, the construct path and the value that could not be resolved.
    """


@dataclass(frozen=True)
class StageRoleSpec:
    """Where a stage's role is in the synthesized app.

    ``stack`` is the stack's suffix (``Ingest`` in ``Oncopipe-dev-Ingest``); ``path`` the
    construct path inside it; ``kind`` how the role is found from that resource:
    ``lambda`` (the function's ``Role``), ``batch`` (the job definition's ``JobRoleArn``)
    or ``role`` (the path is the role).
    """

    stack: str
    path: str
    kind: str


#: Every stage the local worker runs, and the deployed resource whose role it runs as.
STAGE_ROLES: dict[str, StageRoleSpec] = {
    "router": StageRoleSpec("Ingest", "Router/Function/Resource", "lambda"),
    "quarantine": StageRoleSpec("Ingest", "QuarantineOnError/Function/Resource", "lambda"),
    "reconcile": StageRoleSpec("Ingest", "Reconcile/Function/Resource", "lambda"),
    "deid": StageRoleSpec("Ingest", "DicomDeid/Function/Resource", "lambda"),
    "align": StageRoleSpec("Genomics", "AlignJob/Resource", "batch"),
    "call": StageRoleSpec("Genomics", "CallJob/Resource", "batch"),
    "imaging": StageRoleSpec("Genomics", "ImagingJob/Resource", "batch"),
    "radiomics": StageRoleSpec("Features", "ProcessingRole/Resource", "role"),
    "notes": StageRoleSpec("Features", "NotesRole/Resource", "role"),
}

#: Construct paths (in the data-lake stack) of the resources the local mode creates.
LAKE_BUCKETS = {
    "ingest": "Ingest/Bucket/Resource",
    "quarantine": "Quarantine/Bucket/Resource",
    "curated": "Curated/Bucket/Resource",
    "artifacts": "Artifacts/Bucket/Resource",
}
LAKE_KEYS = {
    "ingest": "IngestKey/Resource",
    "curated": "CuratedKey/Resource",
    "platform": "PlatformKey/Resource",
}
LAKE_SECRET = "PseudonymSecret/Resource"  # noqa: S105 - a construct path
LAKE_DATABASE = "CuratedDatabase"

#: Resource types with no local counterpart: references to them resolve to names that
#: exist nowhere in the emulator, so they grant nothing there.
NOT_EMULATED = {
    "AWS::Logs::LogGroup": "logs",
    "AWS::SQS::Queue": "sqs",
    # the series-settle table: the local worker tracks series itself (oncopipe.local.series)
    "AWS::DynamoDB::Table": "dynamodb",
    "AWS::Lambda::Function": "lambda",
    "AWS::Batch::JobQueue": "batch",
    "AWS::Batch::JobDefinition": "batch",
    "AWS::Batch::ComputeEnvironment": "batch",
    "AWS::StepFunctions::StateMachine": "states",
    "AWS::SageMaker::MlflowTrackingServer": "sagemaker",
    "AWS::SageMaker::Pipeline": "sagemaker",
    "AWS::SageMaker::ModelPackageGroup": "sagemaker",
    "AWS::SNS::Topic": "sns",
    "AWS::ECR::Repository": "ecr",
    "AWS::Events::Rule": "events",
    "AWS::Athena::WorkGroup": "athena",
    "AWS::CloudWatch::Alarm": "cloudwatch",
    "AWS::EC2::SecurityGroup": "ec2",
    "AWS::EC2::VPC": "ec2",
    "AWS::EC2::Subnet": "ec2",
}


@dataclass(frozen=True)
class LocalResources:
    """The local counterparts of the data-lake stack's resources."""

    region: str
    buckets: Mapping[str, str]  # zone -> bucket name
    key_arns: Mapping[str, str]  # ingest / curated / platform -> KMS key ARN
    secret_arn: str
    database: str
    account: str = LOCAL_ACCOUNT
    partition: str = LOCAL_PARTITION


# -- synthesis ----------------------------------------------------------------------------

#: Run in a subprocess: the workload package never imports aws_cdk itself.
_SYNTH_SCRIPT = """
import json, sys
from aws_cdk import App
from stacks.app_factory import build_app
context = json.loads(open(sys.argv[1], encoding="utf-8").read())["context"]
context["aws:cdk:bundling-stacks"] = []
context["aws:cdk:enable-path-metadata"] = True
context["env"] = sys.argv[3]
app = App(context=context, outdir=sys.argv[2])
build_app(app, nag=False)  # nag validates; it adds nothing to the policies
app.synth()
"""


def infrastructure_hash(repo: Path = REPO_ROOT) -> str:
    """Return a hash of what decides the templates: ``stacks/``, ``cdk.json``, ``oncopipe/*.py``."""
    digest = hashlib.sha256()
    files = sorted([*repo.glob("stacks/**/*.py"), *repo.glob("oncopipe/*.py"), repo / "cdk.json"])
    files.append(Path(__file__).resolve())
    for path in files:
        digest.update(str(path.relative_to(repo) if path.is_relative_to(repo) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Return where synthesized templates are cached (``$ONCOPIPE_IAM_CACHE`` or the repo's)."""
    return Path(os.environ.get("ONCOPIPE_IAM_CACHE", REPO_ROOT / ".oncopipe" / "iam"))


def synthesized_templates(env: str, *, timeout: float = 300.0) -> dict[str, dict[str, Any]]:
    """Return the app's templates for an environment, keyed by stack name.

    Synthesizes once per hash of the infrastructure code (about 10 s) and caches the
    result; a cache that cannot be written is skipped.

    Raises:
        IamResolutionError: synthesis failed (its last output lines are in the message).
    """
    cached = cache_dir() / f"templates-{env}-{infrastructure_hash()}.json"
    if cached.is_file():
        try:
            loaded: dict[str, dict[str, Any]] = json.loads(cached.read_text(encoding="utf-8"))
            return loaded
        except (OSError, json.JSONDecodeError):
            pass  # a broken cache is rebuilt
    with tempfile.TemporaryDirectory(prefix="oncopipe-synth-") as outdir:
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "1",
        }
        done = subprocess.run(
            [sys.executable, "-c", _SYNTH_SCRIPT, str(REPO_ROOT / "cdk.json"), outdir, env],
            cwd=str(REPO_ROOT), env=environment, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise IamResolutionError(f"cdk synth of env {env} failed:\n{tail}")
        templates = {
            path.name.removesuffix(".template.json"): json.loads(path.read_text("utf-8"))
            for path in Path(outdir).glob("*.template.json")
        }
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(templates), encoding="utf-8")
        tmp.replace(cached)
    except OSError as e:
        logger.warning("template cache not written (%s)", e.strerror)
    return templates


# -- resolution ---------------------------------------------------------------------------


class Resolver:
    """Resolves CloudFormation intrinsics of the synthesized templates to local values."""

    def __init__(
        self, templates: Mapping[str, Mapping[str, Any]], env: str, local: LocalResources
    ) -> None:
        self.templates = templates
        self.local = local
        self.prefix = f"Oncopipe-{env}-"
        self._exports: dict[str, tuple[str, Any]] = {}
        for stack, template in templates.items():
            for output in template.get("Outputs", {}).values():
                name = output.get("Export", {}).get("Name")
                if isinstance(name, str):
                    self._exports[name] = (stack, output["Value"])
        lake = self.stack("DataLake")
        self._mapped: dict[tuple[str, str], tuple[str, str]] = {}  # (stack, lid) -> kind, zone
        for zone, path in LAKE_BUCKETS.items():
            self._mapped[(lake, self.logical_id(lake, path))] = ("bucket", zone)
        for zone, path in LAKE_KEYS.items():
            self._mapped[(lake, self.logical_id(lake, path))] = ("key", zone)
        self._mapped[(lake, self.logical_id(lake, LAKE_SECRET))] = ("secret", "")
        self._mapped[(lake, self.logical_id(lake, LAKE_DATABASE))] = ("database", "")

    def stack(self, suffix: str) -> str:
        """Return the full name of a stack, e.g. ``Oncopipe-dev-Ingest``.

        Raises:
            IamResolutionError: the app has no such stack.
        """
        name = self.prefix + suffix
        if name not in self.templates:
            raise IamResolutionError(f"no stack {name} in the synthesized app")
        return name

    def logical_id(self, stack: str, path: str) -> str:
        """Return the logical ID of the resource at ``<stack>/<path>`` (``aws:cdk:path``).

        Raises:
            IamResolutionError: no resource has that construct path.
        """
        wanted = f"{stack}/{path}"
        for lid, resource in self.templates[stack].get("Resources", {}).items():
            if resource.get("Metadata", {}).get("aws:cdk:path") == wanted:
                return str(lid)
        raise IamResolutionError(f"{wanted}: no resource with this construct path")

    def resource(self, stack: str, lid: str, where: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.templates[stack]["Resources"][lid]
        except KeyError as e:
            raise IamResolutionError(f"{where}: {stack} has no resource {lid}") from e
        return found

    def role_name(self, stack: str, lid: str) -> str:
        """Return the local name of a template role: its construct path, made an IAM name."""
        path = self.resource(stack, lid, stack).get("Metadata", {}).get("aws:cdk:path", "")
        name = re.sub(r"[^\w+=,.@-]", "-", str(path).removesuffix("/Resource")) or lid
        if len(name) > 64:
            name = f"{name[:47]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        return name

    def resolve(self, value: Any, stack: str, where: str) -> Any:
        """Return ``value`` with every intrinsic resolved (lists and dicts recursively).

        Raises:
            IamResolutionError: an intrinsic, reference or export has no local value.
        """
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        if isinstance(value, list):
            return [self.resolve(item, stack, where) for item in value]
        if not isinstance(value, dict):
            raise IamResolutionError(f"{where}: unexpected value of type {type(value).__name__}")
        if len(value) == 1:
            (name, arg), = value.items()  # fmt: skip
            if name == "Ref":
                return self._ref(str(arg), stack, where)
            if name == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self._get_att(str(lid), str(attr), stack, where)
            if name == "Fn::Join":
                separator, items = arg
                parts = self.resolve(items, stack, where)
                return str(separator).join(str(p) for p in parts)
            if name == "Fn::Sub":
                return self._sub(arg, stack, where)
            if name == "Fn::Select":
                index, items = self.resolve(arg, stack, where)
                return items[int(index)]
            if name == "Fn::Split":
                separator, text = self.resolve(arg, stack, where)
                return str(text).split(str(separator))
            if name == "Fn::ImportValue":
                export = self.resolve(arg, stack, where)
                if export not in self._exports:
                    raise IamResolutionError(f"{where}: no stack exports {export!r}")
                source, exported = self._exports[export]
                return self.resolve(exported, source, f"{where} (export {export})")
            if name.startswith("Fn::") or name == "Condition":
                raise IamResolutionError(f"{where}: intrinsic {name} is not supported locally")
        return {k: self.resolve(v, stack, where) for k, v in value.items()}

    def _ref(self, name: str, stack: str, where: str) -> str:
        local = self.local
        pseudo = {
            "AWS::Partition": local.partition,
            "AWS::Region": local.region,
            "AWS::AccountId": local.account,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.templates[stack].get("Parameters", {}):
            raise IamResolutionError(f"{where}: parameter {name} has no local value")
        resource = self.resource(stack, name, where)
        kind, zone = self._mapped.get((stack, name), ("", ""))
        if kind == "bucket":
            return local.buckets[zone]
        if kind == "key":
            return local.key_arns[zone].rsplit("/", 1)[-1]
        if kind == "secret":
            return local.secret_arn
        if kind == "database":
            return local.database
        rtype = resource["Type"]
        if rtype == "AWS::IAM::Role":
            return self.role_name(stack, name)
        if rtype == "AWS::Glue::Table":
            return str(self.resolve(resource["Properties"]["TableInput"]["Name"], stack, where))
        return self._not_emulated(rtype, stack, name, where)

    def _get_att(self, lid: str, attr: str, stack: str, where: str) -> str:
        local = self.local
        resource = self.resource(stack, lid, where)
        kind, zone = self._mapped.get((stack, lid), ("", ""))
        if kind == "bucket" and attr == "Arn":
            return f"arn:{local.partition}:s3:::{local.buckets[zone]}"
        if kind == "key" and attr == "Arn":
            return local.key_arns[zone]
        if resource["Type"] == "AWS::IAM::Role" and attr == "Arn":
            return f"arn:{local.partition}:iam::{local.account}:role/{self.role_name(stack, lid)}"
        if resource["Type"] == "AWS::S3::Bucket":
            # a bucket the local mode does not create (the access-log bucket)
            return self._not_emulated("AWS::S3::Bucket", stack, lid, where)
        return self._not_emulated(resource["Type"], stack, lid, where)

    def _not_emulated(self, rtype: str, stack: str, lid: str, where: str) -> str:
        if rtype == "AWS::S3::Bucket":
            return f"arn:{self.local.partition}:s3:::not-emulated-{stack.lower()}-{lid.lower()}"
        service = NOT_EMULATED.get(rtype)
        if service is None:
            raise IamResolutionError(
                f"{where}: {stack}/{lid} ({rtype}) has no local counterpart; add it to "
                "oncopipe.local.iam.NOT_EMULATED if the local stages never use it"
            )
        local = self.local
        where_local = f"{local.partition}:{service}:{local.region}:{local.account}"
        return f"arn:{where_local}:not-emulated/{stack}/{lid}"

    def _sub(self, arg: Any, stack: str, where: str) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], self.resolve(arg[1], stack, where)
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            token = match.group(1)
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in variables:
                return str(variables[token])
            if "." in token and not token.startswith("AWS::"):
                lid, attr = token.split(".", 1)
                return self._get_att(lid, attr, stack, where)
            return self._ref(token, stack, where)

        return re.sub(r"\$\{([^}]+)\}", replace, str(text))


# -- extraction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StagePolicy:
    """A stage's role, as synthesized, with its policy statements resolved locally."""

    stage: str
    role_path: str  # construct path of the role
    role_name: str  # its local IAM name
    statements: list[dict[str, Any]]


def stage_policies(
    templates: Mapping[str, Mapping[str, Any]],
    env: str,
    local: LocalResources,
    stages: Iterable[str] = STAGE_ROLES,
) -> dict[str, StagePolicy]:
    """Return each stage's role and every statement of every policy attached to it.

    Collects the role's inline ``Policies``, the ``AWS::IAM::Policy`` and
    ``AWS::IAM::ManagedPolicy`` resources of any stack whose ``Roles`` name it, and its
    ``ManagedPolicyArns`` of the same app.

    Raises:
        IamResolutionError: a role, policy or reference cannot be resolved, or the role
            uses something the local run cannot reproduce (AWS managed policies,
            permission boundaries).
    """
    resolver = Resolver(templates, env, local)
    found: dict[str, StagePolicy] = {}
    for stage in stages:
        spec = STAGE_ROLES[stage]
        stack = resolver.stack(spec.stack)
        lid = resolver.logical_id(stack, spec.path)
        where = f"{stack}/{spec.path}"
        role_ref = _role_reference(resolver, stack, lid, spec.kind, where)
        role_stack, role_lid = _owner(resolver, role_ref, stack, where)
        role = resolver.resource(role_stack, role_lid, where)
        role_path = str(role.get("Metadata", {}).get("aws:cdk:path", role_lid))
        if role["Type"] != "AWS::IAM::Role":
            raise IamResolutionError(f"{where}: its role {role_path} is a {role['Type']}")
        name = resolver.role_name(role_stack, role_lid)
        properties = role.get("Properties", {})
        if "PermissionsBoundary" in properties:
            raise IamResolutionError(f"{role_path}: permission boundaries are not emulated")
        statements: list[dict[str, Any]] = []
        for inline in properties.get("Policies", []):
            statements += _statements(resolver, inline["PolicyDocument"], role_stack,
                                      f"{role_path} inline {inline.get('PolicyName')}")  # fmt: skip
        for arn in properties.get("ManagedPolicyArns", []):
            statements += _managed(resolver, arn, role_stack, role_path)
        for other, template in templates.items():
            for plid, policy in template.get("Resources", {}).items():
                if policy["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
                    continue
                ppath = str(policy.get("Metadata", {}).get("aws:cdk:path", f"{other}/{plid}"))
                roles = resolver.resolve(policy["Properties"].get("Roles", []), other, ppath)
                if name in roles:
                    statements += _statements(
                        resolver, policy["Properties"]["PolicyDocument"], other, ppath
                    )
        found[stage] = StagePolicy(stage, role_path, name, statements)
    return found


def _role_reference(resolver: Resolver, stack: str, lid: str, kind: str, where: str) -> Any:
    resource = resolver.resource(stack, lid, where)
    if kind == "role":
        return {"Fn::GetAtt": [lid, "Arn"]}
    if kind == "lambda":
        return resource["Properties"]["Role"]
    if kind == "batch":
        role = resource["Properties"].get("ContainerProperties", {}).get("JobRoleArn")
        if role is None:
            raise IamResolutionError(f"{where}: the job definition has no JobRoleArn")
        return role
    raise IamResolutionError(f"{where}: unknown kind {kind}")


def _owner(resolver: Resolver, reference: Any, stack: str, where: str) -> tuple[str, str]:
    """Return (stack, logical ID) of the role a Ref/GetAtt/ImportValue points at."""
    if isinstance(reference, dict) and "Fn::GetAtt" in reference:
        return stack, str(reference["Fn::GetAtt"][0])
    if isinstance(reference, dict) and "Ref" in reference:
        return stack, str(reference["Ref"])
    if isinstance(reference, dict) and "Fn::ImportValue" in reference:
        export = resolver.resolve(reference["Fn::ImportValue"], stack, where)
        source, value = resolver._exports.get(export, ("", None))
        if value is None:
            raise IamResolutionError(f"{where}: no stack exports {export!r}")
        return _owner(resolver, value, source, where)
    raise IamResolutionError(f"{where}: role {reference!r} is not a role of the app")


def _managed(resolver: Resolver, arn: Any, stack: str, role_path: str) -> list[dict[str, Any]]:
    if isinstance(arn, dict) and "Ref" in arn:
        policy = resolver.resource(stack, str(arn["Ref"]), role_path)
        if policy["Type"] == "AWS::IAM::ManagedPolicy":
            return _statements(resolver, policy["Properties"]["PolicyDocument"], stack,
                               f"{role_path} managed {arn['Ref']}")  # fmt: skip
    resolved = resolver.resolve(arn, stack, role_path)
    raise IamResolutionError(
        f"{role_path}: managed policy {resolved} is not part of the app; the local run "
        "cannot know what it grants"
    )


def _statements(resolver: Resolver, document: Any, stack: str, where: str) -> list[dict[str, Any]]:
    resolved = resolver.resolve(document, stack, where)
    statements = resolved.get("Statement", [])
    statements = statements if isinstance(statements, list) else [statements]
    for statement in statements:
        if "NotResource" in statement or "NotPrincipal" in statement:
            raise IamResolutionError(
                f"{where}: NotResource/NotPrincipal is not evaluated by the emulator"
            )
    return [dict(s) for s in statements]


# -- the emulator's view ------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def emulated_policy(statements: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the policy document to load into moto for resolved statements.

    Statements are split by service: for the services whose resource moto evaluates
    (:data:`RESOURCE_CHECKED_SERVICES`) the resources are kept; for the others moto
    compares with ``"*"``, so the resource is widened to ``"*"`` and only the action is
    enforced. ``Sid`` is dropped (statements are merged from several policies). A
    ``Deny`` with a ``Condition`` is left out: moto cannot evaluate the condition and
    would deny every request.
    """
    out: list[dict[str, Any]] = []
    for statement in statements:
        if statement.get("Effect") == "Deny" and statement.get("Condition"):
            logger.info("conditional Deny left out of the emulated policy (not evaluable)")
            continue
        if "NotAction" in statement:
            out.append({k: v for k, v in statement.items() if k != "Sid"})
            continue
        by_service: dict[str, list[str]] = {}
        for action in _as_list(statement.get("Action", [])):
            service = str(action).split(":", 1)[0] if ":" in str(action) else "*"
            by_service.setdefault(service, []).append(str(action))
        for service, actions in sorted(by_service.items()):
            emitted = {k: copy.deepcopy(v) for k, v in statement.items() if k != "Sid"}
            emitted["Action"] = sorted(actions)
            if service not in RESOURCE_CHECKED_SERVICES:
                emitted["Resource"] = "*"
            out.append(emitted)
    return {"Version": "2012-10-17", "Statement": out}


def trust_policy(principal_arn: str) -> dict[str, Any]:
    """Return the local trust policy: the worker's principal may assume the role."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": principal_arn}, "Action": "sts:AssumeRole"}
        ],
    }


def create_admin(iam: Any) -> tuple[str, dict[str, str]]:
    """Create the worker's own principal (all actions); return (its ARN, its access key).

    Must run before enforcement is on: afterwards unknown credentials are refused.
    """
    try:
        arn = str(iam.create_user(UserName=ADMIN_USER)["User"]["Arn"])
    except iam.exceptions.EntityAlreadyExistsException:
        arn = str(iam.get_user(UserName=ADMIN_USER)["User"]["Arn"])
    iam.put_user_policy(
        UserName=ADMIN_USER,
        PolicyName="local-worker",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return arn, {
        "aws_access_key_id": str(key["AccessKeyId"]),
        "aws_secret_access_key": str(key["SecretAccessKey"]),
    }


def create_stage_roles(
    iam: Any, policies: Mapping[str, StagePolicy], principal_arn: str
) -> dict[str, str]:
    """Create (or update) each stage's role with its emulated policy; return stage -> ARN."""
    arns: dict[str, str] = {}
    for stage, policy in policies.items():
        trust = json.dumps(trust_policy(principal_arn))
        try:
            arn = iam.create_role(
                RoleName=policy.role_name,
                AssumeRolePolicyDocument=trust,
                Description=f"local: {policy.role_path}",
            )["Role"]["Arn"]
        except iam.exceptions.EntityAlreadyExistsException:
            iam.update_assume_role_policy(RoleName=policy.role_name, PolicyDocument=trust)
            arn = iam.get_role(RoleName=policy.role_name)["Role"]["Arn"]
        iam.put_role_policy(
            RoleName=policy.role_name,
            PolicyName="synthesized",
            PolicyDocument=json.dumps(emulated_policy(policy.statements)),
        )
        arns[stage] = str(arn)
    return arns


def enable_enforcement(endpoint_url: str) -> None:
    """Switch the embedded endpoint's IAM enforcement on, from the next request.

    Raises:
        IamResolutionError: the endpoint refused (it is not a moto server).
    """
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - our local http endpoint
        f"{endpoint_url}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        # not a form: the server reads the raw body as the new no-auth request count
        headers={"Content-Type": "text/plain"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            if response.status != 200:
                raise IamResolutionError(f"{endpoint_url}: reset-auth answered {response.status}")
    except OSError as e:
        raise IamResolutionError(f"{endpoint_url}: cannot switch IAM enforcement on ({e})") from e


def assume(sts: Any, role_arn: str, stage: str) -> dict[str, str]:
    """Return the environment variables of a session of ``role_arn`` for a stage process."""
    credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName=f"local-{stage}")["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": str(credentials["AccessKeyId"]),
        "AWS_SECRET_ACCESS_KEY": str(credentials["SecretAccessKey"]),
        "AWS_SESSION_TOKEN": str(credentials["SessionToken"]),
    }


# -- what a stage was refused -------------------------------------------------------------


@dataclass(frozen=True)
class AccessDenial:
    """A request the endpoint refused a stage's role: a grant its policy lacks.

    ``resource`` is shortened to the bucket and the key's first segment (a layout
    prefix such as ``_manifests/``), since the rest of an object key can name a patient.
    """

    stages: tuple[str, ...]  # the stages that run as the role
    role: str  # its local name (the role's construct path)
    action: str  # as moto evaluated it: s3:PutObject, secretsmanager:GetSecretValue...
    resource: str

    def __str__(self) -> str:
        return f"{'/'.join(self.stages)} (role {self.role}): {self.action} on {self.resource}"


def shorten_resource(resource: str) -> str:
    """Return an S3 object ARN cut after the key's first segment (``bucket/_manifests/…``)."""
    prefix = "arn:aws:s3:::"
    if not resource.startswith(prefix) or "/" not in resource[len(prefix) :]:
        return resource
    bucket, key = resource[len(prefix) :].split("/", 1)
    head = key.split("/", 1)
    return f"{prefix}{bucket}/{head[0]}/…" if len(head) > 1 else f"{prefix}{bucket}/…"


def denials_size(path: Path) -> int:
    """Return the current size of the refusals log (the offset of the next run's lines)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def read_denials(
    path: Path, stage_roles: Mapping[str, str], *, offset: int = 0
) -> list[AccessDenial]:
    """Return the stage roles' refused requests logged from ``offset`` on, once each.

    Refusals of other principals (the worker's own, an unknown key) are not grants a
    stage lacks and are left out.
    """
    by_role: dict[str, list[str]] = {}
    for stage, arn in stage_roles.items():
        by_role.setdefault(arn.rsplit("/", 1)[-1], []).append(stage)
    try:
        with path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    found: list[AccessDenial] = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        principal = str(entry.get("principal", ""))
        if ":assumed-role/" not in principal:
            continue
        role = principal.split(":assumed-role/", 1)[1].split("/", 1)[0]
        if role not in by_role:
            continue
        denial = AccessDenial(
            stages=tuple(by_role[role]),
            role=role,
            action=str(entry.get("action", "")),
            resource=shorten_resource(str(entry.get("resource", ""))),
        )
        if denial not in found:
            found.append(denial)
    return found
