"""Model registry governance: the four-eyes check, and the registry operations of the CLI.

The four-eyes rule: a model package version may not be approved by the principal that
registered it. SageMaker records both on the package (``CreatedBy`` and
``LastModifiedBy``, each a user profile and/or an IAM identity); :func:`review` compares
them and sets a self-approved version back to ``Rejected`` with the reason in its
``ApprovalDescription``.

The registry operations (:func:`list_versions`, :func:`set_status`, :func:`rollback`) are
what ``oncopipe model ...`` runs. Everything takes a boto3 SageMaker client: no global
clients, no ``aws_cdk``. Nothing here logs principal ARNs (a session name can be a
person's e-mail address); logs carry package versions and decisions only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError

from oncopipe.errors import OncopipeError

logger = logging.getLogger(__name__)

APPROVED = "Approved"
REJECTED = "Rejected"
PENDING = "PendingManualApproval"
STATUSES = (APPROVED, REJECTED, PENDING)

#: The ApprovalDescription of a version the four-eyes check rejected (a prefix: the
#: reason follows).
FOUR_EYES_REJECTION = "four-eyes check: "


class GovernanceError(OncopipeError):
    """A registry operation cannot be done as asked (the message says why)."""


# -- who is who ---------------------------------------------------------------------------

_ASSUMED = re.compile(r"^arn:[\w-]+:sts::(\d{12}):assumed-role/([^/]+)/(.+)$")
_ROLE = re.compile(r"^arn:[\w-]+:iam::(\d{12}):role/(?:.*/)?([^/]+)$")
_USER = re.compile(r"^arn:[\w-]+:iam::(\d{12}):user/(?:.*/)?([^/]+)$")
_FEDERATED = re.compile(r"^arn:[\w-]+:sts::(\d{12}):federated-user/(.+)$")
_ROOT = re.compile(r"^arn:[\w-]+:iam::(\d{12}):root$")


@dataclass(frozen=True)
class Principal:
    """An IAM identity reduced to what identifies it: account, kind, name and session.

    ``session`` is ``None`` for a role given by its role ARN (no session known) and for
    users. Role paths are dropped: an assumed-role ARN carries none.
    """

    account: str
    kind: Literal["role", "user", "federated", "root", "other"]
    name: str
    session: str | None = None

    @classmethod
    def parse(cls, arn: str) -> Principal:
        """Return the principal of an IAM or STS ARN (``other`` with the ARN if unknown)."""
        if match := _ASSUMED.match(arn):
            return cls(match[1], "role", match[2], match[3])
        if match := _ROLE.match(arn):
            return cls(match[1], "role", match[2])
        if match := _USER.match(arn):
            return cls(match[1], "user", match[2])
        if match := _FEDERATED.match(arn):
            return cls(match[1], "federated", match[2])
        if match := _ROOT.match(arn):
            return cls(match[1], "root", "root")
        return cls("", "other", arn)

    def same_as(self, other: Principal) -> bool:
        """Whether two principals may be the same person.

        A session of role R and role R itself (no session recorded) may be: the role
        could have been the one acting in either. Two sessions of one role with different
        session names are different (SSO names its sessions after the user).
        """
        if (self.account, self.kind, self.name.lower()) != (
            other.account,
            other.kind,
            other.name.lower(),
        ):
            return False
        if self.session is None or other.session is None:
            return True
        return self.session == other.session


@dataclass(frozen=True)
class Actor:
    """Who did something to a package: SageMaker's ``UserContext`` (CreatedBy...)."""

    user_profile_arn: str | None
    iam_arn: str | None
    principal_id: str | None
    source_identity: str | None

    @classmethod
    def from_context(cls, context: dict[str, Any] | None) -> Actor | None:
        """Return the actor of a ``UserContext``; ``None`` when it names nobody."""
        if not context:
            return None
        identity = context.get("IamIdentity") or {}
        actor = cls(
            user_profile_arn=context.get("UserProfileArn") or None,
            iam_arn=identity.get("Arn") or None,
            principal_id=identity.get("PrincipalId") or None,
            source_identity=identity.get("SourceIdentity") or None,
        )
        if not (actor.user_profile_arn or actor.iam_arn or actor.principal_id):
            return None
        return actor

    def same_as(self, other: Actor) -> bool:
        """Whether the two actors may be the same person (see :meth:`Principal.same_as`).

        Any identifier both record and that agrees makes them the same: the Studio user
        profile, the source identity (set once per session chain, so it survives role
        chaining), the principal ID (role ID + session name), or the IAM principal.
        """
        pairs = (
            (self.user_profile_arn, other.user_profile_arn),
            (self.source_identity, other.source_identity),
            (self.principal_id, other.principal_id),
        )
        if any(a is not None and a == b for a, b in pairs):
            return True
        if self.iam_arn and other.iam_arn:
            return Principal.parse(self.iam_arn).same_as(Principal.parse(other.iam_arn))
        return False


# -- the four-eyes check ------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What :func:`review` did to a package version, and why (no principal in it)."""

    package_arn: str
    outcome: Literal["rejected", "kept", "skipped"]
    reason: str

    def log_fields(self) -> dict[str, str]:
        """The decision as structured log fields: group, version, outcome, reason."""
        group, version = package_version(self.package_arn)
        return {"group": group, "version": str(version), "outcome": self.outcome,
                "reason": self.reason}  # fmt: skip


def package_version(arn: str) -> tuple[str, int]:
    """Return (group name, version) of a versioned model package ARN.

    Raises:
        GovernanceError: the ARN is not ``...:model-package/<group>/<version>``.
    """
    match = re.match(r"^arn:[\w-]+:sagemaker:[\w-]+:\d{12}:model-package/([^/]+)/(\d+)$", arn)
    if not match:
        raise GovernanceError(f"{arn}: not a versioned model package ARN (<group>/<version>)")
    return match[1], int(match[2])


def review(sagemaker: Any, package_arn: str) -> Decision:
    """Apply the four-eyes rule to an approved package version; return what was done.

    Reads the package (DescribeModelPackage). A version that is not ``Approved`` now (a
    repeated delivery after this check rejected it, or a later change) is left alone. An
    approved version whose approver may be its creator, or whose creator or approver is
    not recorded (nothing to compare: the check fails closed), is set to ``Rejected``
    with the reason in ``ApprovalDescription``. Idempotent: a second call finds it
    rejected and skips.
    """
    package = sagemaker.describe_model_package(ModelPackageName=package_arn)
    status = package.get("ModelApprovalStatus")
    if status != APPROVED:
        return Decision(package_arn, "skipped", f"status is {status}, not Approved")
    creator = Actor.from_context(package.get("CreatedBy"))
    approver = Actor.from_context(package.get("LastModifiedBy"))
    if creator is None or approver is None:
        who = "creator" if creator is None else "approver"
        reason = f"the {who} of this version is not recorded, so four eyes cannot be shown"
    elif creator.same_as(approver):
        reason = "approved by the principal that registered it; another approver must approve"
    else:
        return Decision(package_arn, "kept", "approver differs from the creator")
    sagemaker.update_model_package(
        ModelPackageArn=package_arn,
        ModelApprovalStatus=REJECTED,
        ApprovalDescription=f"{FOUR_EYES_REJECTION}{reason}",
    )
    return Decision(package_arn, "rejected", reason)


# -- the artefact's digest ----------------------------------------------------------------

#: Bytes read per chunk while hashing an artefact (the Lambda's memory stays small).
CHUNK_BYTES = 8 * 1024 * 1024


def artifact_digest(s3: Any, uri: str) -> dict[str, str]:
    """Return the SHA-256, size and S3 version ID of the artefact at ``s3://bucket/key``.

    Streams the object (it can be large) and hashes what was read from the version the
    response names, so the digest and version ID describe the same bytes. The pipeline
    records both on the model package (``CustomerMetadataProperties``): a later change of
    ``models/<job>/`` shows as a different version and digest.

    Raises:
        GovernanceError: ``uri`` is not an ``s3://`` object URI.
    """
    match = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not match:
        raise GovernanceError(f"{uri}: not an s3://bucket/key artefact URI")
    response = s3.get_object(Bucket=match[1], Key=match[2])
    digest = hashlib.sha256()
    size = 0
    body = response["Body"]
    for chunk in iter(lambda: body.read(CHUNK_BYTES), b""):
        digest.update(chunk)
        size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": str(size),
            "version_id": str(response.get("VersionId") or "unversioned")}  # fmt: skip


# -- registry operations (the CLI) --------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One version of the group, as ``oncopipe model list`` shows it."""

    arn: str
    version: int
    status: str
    created: str
    description: str

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> Version:
        """Return the version a ListModelPackages summary describes."""
        arn = str(summary["ModelPackageArn"])
        version = summary.get("ModelPackageVersion") or package_version(arn)[1]
        created: Any = summary.get("CreationTime")
        when = created.strftime("%Y-%m-%d %H:%M") if hasattr(created, "strftime") else ""
        return cls(
            arn=arn,
            version=int(version),
            status=str(summary.get("ModelApprovalStatus", "")),
            created=when,
            description=str(summary.get("ModelPackageDescription", "")),
        )


def list_versions(sagemaker: Any, group: str) -> list[Version]:
    """Return every version of the model package group, oldest first.

    Raises:
        GovernanceError: the group does not exist.
    """
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as e:
        raise GovernanceError(f"model package group {group!r}: {e}") from e
    versions: list[Version] = []
    token: str | None = None
    while True:
        request: dict[str, Any] = {"ModelPackageGroupName": group, "MaxResults": 100,
                                   "ModelPackageType": "Versioned"}  # fmt: skip
        if token:
            request["NextToken"] = token
        page = sagemaker.list_model_packages(**request)
        versions += [Version.from_summary(s) for s in page.get("ModelPackageSummaryList", [])]
        token = page.get("NextToken")
        if not token:
            break
    return sorted(versions, key=lambda v: v.version)


def resolve_version(sagemaker: Any, group: str, version: str) -> Version:
    """Return the version named by number or ARN.

    Raises:
        GovernanceError: no such version in the group.
    """
    for candidate in list_versions(sagemaker, group):
        if version in (str(candidate.version), candidate.arn):
            return candidate
    raise GovernanceError(f"model package group {group!r} has no version {version!r}")


def set_status(sagemaker: Any, version: Version, status: str, description: str) -> None:
    """Set a version's approval status, with the reason as its ApprovalDescription.

    Raises:
        GovernanceError: an unknown status, or an empty reason.
    """
    if status not in STATUSES:
        raise GovernanceError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if not description.strip():
        raise GovernanceError("a reason is required: it is recorded as ApprovalDescription")
    sagemaker.update_model_package(ModelPackageArn=version.arn, ModelApprovalStatus=status,
                                   ApprovalDescription=description)  # fmt: skip
    logger.info("model package version %s set to %s", version.version, status)


@dataclass(frozen=True)
class Rollback:
    """What a rollback did: the version taken out of service and the one now serving."""

    rejected: Version
    restored: Version


def rollback(sagemaker: Any, group: str, reason: str, serving: str | None = None) -> Rollback:
    """Reject the serving version and re-approve the newest earlier approved one.

    The serving version is ``serving`` (a number or ARN) or else the newest approved one.
    The target is checked before anything changes, so a rollback that cannot be done
    changes nothing. Re-approving records the rollback in the target's
    ApprovalDescription and emits the approval event deployment automation listens to.

    Raises:
        GovernanceError: no approved serving version, or no earlier approved version.
    """
    versions = list_versions(sagemaker, group)
    approved = [v for v in versions if v.status == APPROVED]
    if serving is not None:
        current = resolve_version(sagemaker, group, serving)
    elif approved:
        current = approved[-1]
    else:
        raise GovernanceError(f"model package group {group!r} has no approved version to roll "
                              "back; nothing changed")  # fmt: skip
    earlier = [v for v in approved if v.version < current.version]
    if not earlier:
        raise GovernanceError(f"no approved version of {group!r} earlier than version "
                              f"{current.version}; nothing changed")  # fmt: skip
    target = earlier[-1]
    set_status(sagemaker, current, REJECTED, f"rolled back to version {target.version}: {reason}")
    set_status(sagemaker, target, APPROVED,
               f"restored by rollback from version {current.version}: {reason}")  # fmt: skip
    return Rollback(rejected=current, restored=target)
