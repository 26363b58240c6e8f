"""Least privilege of the synthesized app: who may read PHI, list keys, delete versions, use keys.

The templates of the whole app are synthesized once per environment, every intrinsic
resolved (:class:`tests.infrastructure.test_permissions.Resolver`), and the rules of issue 11
checked on every role, whatever construct made its statements.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oncopipe.deployment import load_config, read_cdk_json
from tests.conftest import stack_templates, synthesized_app
from tests.infrastructure.test_permissions import ACCOUNT, REGION, Resolver, synthesized_templates

pytestmark = pytest.mark.slow

Templates = dict[str, dict[str, Any]]


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE) is not None


class App:
    """The resolved templates, with helpers to find roles and their statements."""

    def __init__(self, templates: Templates, env: str) -> None:
        self.templates = templates
        self.config = load_config(read_cdk_json(), env)
        self.resolver = Resolver(templates)

    def stack(self, suffix: str) -> str:
        return next(s for s in self.templates if s.endswith(f"-{suffix}"))

    def resources(self, kind: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for stack, template in self.templates.items():
            for logical_id, resource in template["Resources"].items():
                if resource["Type"] == kind:
                    yield stack, logical_id, resource

    def bucket_arn(self, construct: str) -> str:
        """The resolved ARN of a data bucket of the stateful stack (``Ingest``...)."""
        lake = self.stack("DataLake")
        for stack, logical_id, resource in self.resources("AWS::S3::Bucket"):
            path = resource.get("Metadata", {}).get("aws:cdk:path", "")
            if stack == lake and path == f"{lake}/{construct}/Bucket/Resource":
                return str(self.resolver.resolve(stack, {"Fn::GetAtt": [logical_id, "Arn"]}))
        raise AssertionError(f"no bucket {construct}")

    def key_arn(self, construct: str) -> str:
        lake = self.stack("DataLake")
        for stack, logical_id, resource in self.resources("AWS::KMS::Key"):
            if resource["Metadata"]["aws:cdk:path"] == f"{lake}/{construct}/Resource":
                return str(self.resolver.resolve(stack, {"Fn::GetAtt": [logical_id, "Arn"]}))
        raise AssertionError(f"no key {construct}")

    def roles(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """Every role: (stack, logical ID, construct path, role resource)."""
        for stack, logical_id, resource in self.resources("AWS::IAM::Role"):
            yield stack, logical_id, resource["Metadata"]["aws:cdk:path"], resource

    def role_id(self, path_prefix: str) -> tuple[str, str]:
        for stack, logical_id, resource in self.resources("AWS::IAM::Role"):
            if resource["Metadata"]["aws:cdk:path"].startswith(path_prefix):
                return stack, logical_id
        raise AssertionError(f"no role at {path_prefix}")

    def statements(self, stack: str, role_id: str) -> list[dict[str, Any]]:
        found = []
        for resource in self.templates[stack]["Resources"].values():
            if (
                resource["Type"] == "AWS::IAM::Policy"
                and {"Ref": role_id} in resource["Properties"]["Roles"]
            ):
                document = self.resolver.resolve(stack, resource["Properties"]["PolicyDocument"])
                found += document["Statement"]
        return found

    def all_statements(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for stack, logical_id, resource in self.resources("AWS::IAM::Policy"):
            document = self.resolver.resolve(stack, resource["Properties"]["PolicyDocument"])
            for statement in document["Statement"]:
                yield f"{stack}/{logical_id}", statement

    def role_name(self, stack: str, role: dict[str, Any]) -> str | None:
        name = role["Properties"].get("RoleName")
        return None if name is None else str(self.resolver.resolve(stack, name))


@pytest.fixture(scope="module", params=["dev", "prod"])
def app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> App:
    env = request.param
    return App(stack_templates(synthesized_app(env, tmp_path_factory)), env)


def _synth(tmp: Path, env: str, **overrides: Any) -> Templates:
    # construct paths in the templates' metadata: roles are found by path, not logical ID
    return synthesized_templates(tmp, env, **overrides, path_metadata=True)


def _touches(statement: dict[str, Any], arn: str) -> bool:
    return any(
        str(r) == arn or str(r).startswith(f"{arn}/") for r in _listed(statement.get("Resource"))
    )


def _allows(statement: dict[str, Any], action: str) -> bool:
    return statement["Effect"] == "Allow" and any(
        _glob(str(a), action) for a in _listed(statement.get("Action", []))
    )


def _ingest_deny(app: App) -> dict[str, Any]:
    lake = app.stack("DataLake")
    ingest = app.bucket_arn("Ingest")
    for stack, _, policy in app.resources("AWS::S3::BucketPolicy"):
        document = app.resolver.resolve(stack, policy["Properties"]["PolicyDocument"])
        if stack == lake and any(_touches(s, ingest) for s in document["Statement"]):
            for statement in document["Statement"]:
                if statement.get("Sid") == "OnlyIngestReadersReadOrList":
                    return dict(statement)
    raise AssertionError("the ingest bucket policy has no reader-only denial")


def test_ingest_bucket_policy_denies_everyone_but_the_roles_that_read_it(app: App) -> None:
    deny = _ingest_deny(app)
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
    assert {"s3:GetObject*", "s3:ListBucket*"} <= set(_listed(deny["Action"]))
    allowed = set(_listed(deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"]))
    ingest = app.bucket_arn("Ingest")
    readers: set[str] = set()
    for stack, logical_id, path, role in app.roles():
        if any(_touches(s, ingest) for s in app.statements(stack, logical_id)):
            name = app.role_name(stack, role)
            assert name is not None, f"{path} reads ingest but has no name the policy can list"
            readers.add(f"arn:aws:iam::{ACCOUNT}:role/{name}")
    assert readers, "no stage reads ingest"
    # Exactly the readers and the configured data administrators: no stale or extra ARN.
    admins = {f"arn:aws:iam::{ACCOUNT}:role/{n}" for n in app.config.data_admin_role_names}
    assert allowed == readers | admins, allowed ^ (readers | admins)


def test_listing_ingest_and_quarantine_is_always_prefix_conditioned(app: App) -> None:
    for bucket in ("Ingest", "Quarantine"):
        arn = app.bucket_arn(bucket)
        for where, statement in app.all_statements():
            if _allows(statement, "s3:ListBucket") and _touches(statement, arn):
                prefixes = statement.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
                assert prefixes, f"{where}: lists {bucket} without an s3:prefix condition"
                assert "*" not in _listed(prefixes), f"{where}: lists all of {bucket}"


def test_no_role_can_permanently_delete_an_object_version(app: App) -> None:
    for where, statement in app.all_statements():
        assert not _allows(statement, "s3:DeleteObjectVersion"), (where, statement)


def test_phi_keys_are_used_only_through_s3_for_their_buckets(app: App) -> None:
    ingest_key = app.key_arn("IngestKey")
    zones = {app.bucket_arn("Ingest"), app.bucket_arn("Quarantine")}
    curated_key = app.key_arn("CuratedKey")
    checked = 0
    for where, statement in app.all_statements():
        resources = set(map(str, _listed(statement.get("Resource", []))))
        if statement["Effect"] != "Allow" or not resources & {ingest_key, curated_key, "*"}:
            continue
        if not any(str(a).startswith("kms:") for a in _listed(statement["Action"])):
            continue
        if "*" in resources:  # a wildcard resource must not reach the keys' crypto actions
            crypto = [
                a
                for a in _listed(statement["Action"])
                if _glob(str(a), "kms:Decrypt") or _glob(str(a), "kms:GenerateDataKey")
            ]
            assert not crypto, f"{where}: {crypto} on every key"
            continue
        checked += 1
        condition = statement.get("Condition", {}).get("StringEquals", {})
        assert "kms:ViaService" in condition, f"{where}: a PHI-zone key used directly"
        via = _listed(condition["kms:ViaService"])
        if ingest_key in resources:
            assert via == [f"s3.{REGION}.amazonaws.com"], where
            assert condition.get("kms:EncryptionContext:aws:s3:arn") in zones, where
        else:
            assert set(via) <= {f"{s}.{REGION}.amazonaws.com" for s in ("s3", "glue", "athena")}
    assert checked >= 6


def test_key_policies_refuse_use_outside_their_services(app: App) -> None:
    lake = app.stack("DataLake")
    expected = {"IngestKey": {"s3"}, "CuratedKey": {"s3", "glue", "athena"}}
    for _, _, key in app.resources("AWS::KMS::Key"):
        name = key["Metadata"]["aws:cdk:path"].split("/")[1]
        policy = app.resolver.resolve(lake, key["Properties"]["KeyPolicy"])
        deny = next(s for s in policy["Statement"] if s.get("Sid") == "OnlyThroughItsServices")
        assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"}
        via = {
            v.split(".")[0] for v in _listed(deny["Condition"]["StringNotEquals"]["kms:ViaService"])
        }
        assert "kms:Decrypt" in deny["Action"]
        if name in expected:
            assert via == expected[name], name


def test_call_and_imaging_jobs_never_read_ingest(app: App) -> None:
    genomics = app.stack("Genomics")
    ingest, ingest_key = app.bucket_arn("Ingest"), app.key_arn("IngestKey")
    quarantine = app.bucket_arn("Quarantine")
    for role in ("CallJobRole", "ImagingJobRole"):
        stack, role_id = app.role_id(f"{genomics}/{role}/")
        statements = app.statements(stack, role_id)
        assert not [s for s in statements if _touches(s, ingest)], role
        for statement in statements:
            if ingest_key in _listed(statement.get("Resource")):
                # the key only for the quarantine zone (manifests, stage inputs), via S3
                context = statement["Condition"]["StringEquals"]
                assert context["kms:EncryptionContext:aws:s3:arn"] == quarantine, role
    # the imaging job reads its work list (de-id manifests, opaque refs) from curated: no
    # grant on the PHI zone's buckets and none on the ingest key, in any spelling
    stack, role_id = app.role_id(f"{genomics}/ImagingJobRole/")
    imaging = app.statements(stack, role_id)
    assert not [s for s in imaging if _touches(s, quarantine)]
    assert not [s for s in imaging if ingest_key in json.dumps(s.get("Resource"))]
    # the align job is the genomics reader of FASTQ, and only of FASTQ
    stack, role_id = app.role_id(f"{genomics}/JobRole/")
    reads = {str(r) for s in app.statements(stack, role_id) if _allows(s, "s3:GetObject")
             for r in _listed(s["Resource"]) if str(r).startswith(ingest)}  # fmt: skip
    assert reads == {f"{ingest}/fastq/*"}


def test_routing_roles_write_only_the_quarantine_zone_and_sample_tables(app: App) -> None:
    ingest_stack = app.stack("Ingest")
    quarantine, curated = app.bucket_arn("Quarantine"), app.bucket_arn("Curated")
    allowed = {
        "Router": {f"{quarantine}/*", f"{curated}/cohort/samples/*"},
        "QuarantineOnError": {f"{quarantine}/*"},
        "Reconcile": {f"{quarantine}/*"},
    }
    for construct, writable in allowed.items():
        stack, role_id = app.role_id(f"{ingest_stack}/{construct}/Role/")
        written = {str(r) for s in app.statements(stack, role_id) if _allows(s, "s3:PutObject")
                   for r in _listed(s["Resource"])}  # fmt: skip
        assert written == writable, construct


def test_every_role_that_quarantines_can_read_back_what_it_copies(app: App) -> None:
    quarantine = app.bucket_arn("Quarantine")
    copy = f"{quarantine}/ingest-20260101/fastq/run/sample_R1.fastq.gz"
    for stack, role_id, path, _ in app.roles():
        statements = app.statements(stack, role_id)
        writes = any(_allows(s, "s3:PutObject") and any(_glob(str(r), copy)
                     for r in _listed(s["Resource"])) for s in statements)  # fmt: skip
        if writes:
            reads = any(_allows(s, "s3:GetObject") and any(_glob(str(r), copy)
                        for r in _listed(s["Resource"])) for s in statements)  # fmt: skip
            assert reads, f"{path} copies to quarantine but cannot read the copy back"


def test_object_lambda_supporting_access_point_refuses_direct_reads(tmp_path: Path) -> None:
    app = App(_synth(tmp_path, "dev", deid_on_read=True), "dev")
    ingest_stack = app.stack("Ingest")
    ((_, _, point),) = [r for r in app.resources("AWS::S3::AccessPoint")]
    policy = app.resolver.resolve(ingest_stack, point["Properties"]["Policy"])
    deny = next(s for s in policy["Statement"] if s["Effect"] == "Deny")
    assert deny["Condition"] == {
        "ForAllValues:StringNotEquals": {"aws:CalledVia": ["s3-object-lambda.amazonaws.com"]}
    }
    assert all(r.endswith(f"accesspoint/{point['Properties']['Name']}/object/*")
               for r in _listed(deny["Resource"]))  # fmt: skip
    # requests S3 Object Lambda makes are left to the access points by the bucket policy
    assert "aws:CalledVia" in json.dumps(_ingest_deny(app)["Condition"])
