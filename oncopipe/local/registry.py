"""The SageMaker calls of the model lifecycle, answered locally (issue 12 §7).

Locally the model registry is the one :class:`oncopipe.pipeline.local_runner.
LocalPipelineRunner` writes (``model-registry/<group>/<version>.json`` in the artifacts
bucket: :func:`oncopipe.pipeline.local_runner.model_packages`), and a pipeline execution is
a run of that runner. :class:`LocalSageMaker` answers, from them, the SageMaker API calls
the lifecycle's cores make with a boto3 client: the governance (:mod:`oncopipe.governance`:
list, describe, update), deployment's checks (:func:`oncopipe.deploy.verify`,
:func:`oncopipe.deploy.publish_baseline`), the drift job's "latest approved version", and
the retrain gate's ``StartPipelineExecution`` (:func:`oncopipe.monitor.gate.
sagemaker_starter`). It keeps SageMaker's behaviour where those cores depend on it:

- a client acts as one principal (a ``UserContext``, :meth:`LocalSageMaker.acting_as`):
  an update records it as the package's ``LastModifiedBy``; a package's ``CreatedBy`` is
  the principal that started the execution that registered it (moto records every change
  as made by the creator, so the four-eyes check cannot run on moto's registry);
- an unknown package or group is a ``ValidationException`` ("Could not find ...");
- ``StartPipelineExecution`` queues the execution and answers its ARN, as SageMaker starts
  it asynchronously; the same ``ClientRequestToken`` answers the same execution. The
  parameters arrive as strings, as in the API, and are typed by the definition's declared
  types. :meth:`LocalSageMaker.run_pending` runs what was started.

Records hold versions, statuses, URIs and principals' ARNs; no patient data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from oncopipe.governance import STATUSES
from oncopipe.pipeline.local_runner import (
    LOCAL_ACCOUNT,
    MODEL_REGISTRY_PREFIX,
    SUCCEEDED,
    ExecutionResult,
    LocalPipelineRunner,
    LocalRunError,
    PipelineFailed,
    StepFailed,
)
from oncopipe.storage import TAG_RUN_ID, TAG_STEP


def user_context(arn: str, *, source_identity: str | None = None) -> dict[str, Any]:
    """Return the ``UserContext`` SageMaker records for an IAM principal (CreatedBy...)."""
    identity: dict[str, str] = {"Arn": arn}
    if source_identity:
        identity["SourceIdentity"] = source_identity
    return {"IamIdentity": identity}


def _invalid(operation: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": "ValidationException", "Message": message}}, operation)


@dataclass
class LocalExecution:
    """One pipeline execution: who started it, with what, and what it registered."""

    execution_id: str
    arn: str
    pipeline: str
    parameters: dict[str, Any]
    started_by: dict[str, Any]
    display_name: str = ""
    description: str = ""
    status: str = "Executing"
    failure: str | None = None
    registered: list[str] = field(default_factory=list)
    result: ExecutionResult | None = None


@dataclass
class _Shared:
    store: Any
    bucket: str
    region: str
    groups: frozenset[str]
    clock: Callable[[], dt.datetime]
    runners: dict[str, LocalPipelineRunner] = field(default_factory=dict)
    executions: dict[str, LocalExecution] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)


class LocalSageMaker:
    """The SageMaker client subset of the model lifecycle, on the local registry.

    ``store`` is an :class:`oncopipe.storage.ObjectStore` of the endpoint,
    ``artifacts_bucket`` holds the registry, ``groups`` are the model package groups that
    exist, ``clock`` gives the time updates are recorded at (default: the wall clock).
    """

    def __init__(
        self,
        store: Any,
        artifacts_bucket: str,
        *,
        groups: tuple[str, ...],
        region: str,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._shared = _Shared(store, artifacts_bucket, region, frozenset(groups),
                               clock or (lambda: dt.datetime.now(dt.UTC)))  # fmt: skip
        self._caller: dict[str, Any] | None = None

    def acting_as(self, caller: Mapping[str, Any]) -> LocalSageMaker:
        """Return a client of the same registry whose calls are made by ``caller``."""
        view = object.__new__(LocalSageMaker)
        view._shared, view._caller = self._shared, dict(caller)
        return view

    def add_pipeline(self, name: str, runner: LocalPipelineRunner) -> None:
        """Make ``runner`` the pipeline ``name`` (what ``CreatePipeline`` deployed)."""
        self._shared.runners[name] = runner

    # -- records --------------------------------------------------------------------------
    def _records(self, group: str) -> Iterator[tuple[str, dict[str, Any]]]:
        s = self._shared
        prefix = f"{MODEL_REGISTRY_PREFIX}{group}/"
        for key in sorted(k for k in s.store.list_keys(s.bucket, prefix) if k.endswith(".json")):
            yield key, json.loads(s.store.get_bytes(s.bucket, key))

    def _find(self, arn: str, operation: str) -> tuple[str, dict[str, Any]]:
        group = arn.rsplit("/", 2)[-2] if arn.count("/") >= 2 else ""
        if group in self._shared.groups:
            for key, record in self._records(group):
                if record.get("ModelPackageArn") == arn:
                    return key, record
        raise _invalid(operation, f"Could not find model package {arn}")

    def _write(self, key: str, record: Mapping[str, Any]) -> None:
        s = self._shared
        s.store.put_bytes(s.bucket, key, json.dumps(record, indent=1).encode("utf-8"),
                          tags={TAG_RUN_ID: str(record.get("PipelineExecutionId") or "registry"),
                                TAG_STEP: "registry"},
                          content_type="application/json")  # fmt: skip

    @staticmethod
    def _time(text: Any) -> dt.datetime | None:
        return dt.datetime.fromisoformat(str(text)) if text else None

    # -- the registry ---------------------------------------------------------------------
    def describe_model_package_group(self, *, ModelPackageGroupName: str) -> dict[str, Any]:
        if ModelPackageGroupName not in self._shared.groups:
            message = f"Could not find model package group {ModelPackageGroupName}"
            raise _invalid("DescribeModelPackageGroup", message)
        return {"ModelPackageGroupName": ModelPackageGroupName,
                "ModelPackageGroupStatus": "Completed"}  # fmt: skip

    def list_model_packages(
        self,
        *,
        ModelPackageGroupName: str,
        ModelApprovalStatus: str | None = None,
        SortBy: str = "CreationTime",
        SortOrder: str = "Ascending",
        MaxResults: int = 10,
        NextToken: str | None = None,
        ModelPackageType: str = "Versioned",
    ) -> dict[str, Any]:
        if SortBy not in ("CreationTime", "Name"):
            raise _invalid("ListModelPackages", f"SortBy {SortBy!r} is not CreationTime or Name")
        self.describe_model_package_group(ModelPackageGroupName=ModelPackageGroupName)
        records = [r for _, r in self._records(ModelPackageGroupName)
                   if ModelApprovalStatus in (None, r.get("ModelApprovalStatus"))]  # fmt: skip
        records.sort(key=lambda r: (str(r.get("CreationTime", "")), int(r["ModelPackageVersion"])),
                     reverse=SortOrder == "Descending")  # fmt: skip
        start = int(NextToken or 0)
        page = records[start : start + MaxResults]
        answer: dict[str, Any] = {"ModelPackageSummaryList": [{
            "ModelPackageGroupName": r["ModelPackageGroupName"],
            "ModelPackageVersion": r["ModelPackageVersion"],
            "ModelPackageArn": r["ModelPackageArn"],
            "ModelPackageDescription": r.get("ModelPackageDescription", ""),
            "CreationTime": self._time(r.get("CreationTime")),
            "ModelPackageStatus": "Completed",
            "ModelApprovalStatus": r.get("ModelApprovalStatus"),
        } for r in page]}  # fmt: skip
        if start + MaxResults < len(records):
            answer["NextToken"] = str(start + MaxResults)
        return answer

    def describe_model_package(self, *, ModelPackageName: str) -> dict[str, Any]:
        _, record = self._find(ModelPackageName, "DescribeModelPackage")
        answer = {k: v for k, v in record.items() if k != "PipelineExecutionId"}
        answer.update(ModelPackageName=record["ModelPackageGroupName"],
                      ModelPackageStatus="Completed",
                      CreationTime=self._time(record.get("CreationTime")))  # fmt: skip
        if record.get("LastModifiedTime"):
            answer["LastModifiedTime"] = self._time(record["LastModifiedTime"])
        return answer

    def update_model_package(
        self,
        *,
        ModelPackageArn: str,
        ModelApprovalStatus: str | None = None,
        ApprovalDescription: str | None = None,
        CustomerMetadataProperties: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if ModelApprovalStatus is not None and ModelApprovalStatus not in STATUSES:
            raise _invalid("UpdateModelPackage", f"ModelApprovalStatus {ModelApprovalStatus!r}")
        key, record = self._find(ModelPackageArn, "UpdateModelPackage")
        if ModelApprovalStatus is not None:
            record["ModelApprovalStatus"] = ModelApprovalStatus
        if ApprovalDescription is not None:
            record["ApprovalDescription"] = ApprovalDescription
        if CustomerMetadataProperties:
            record["CustomerMetadataProperties"] = {
                **record.get("CustomerMetadataProperties", {}),
                **CustomerMetadataProperties,
            }
        if self._caller is not None:
            record["LastModifiedBy"] = self._caller
        record["LastModifiedTime"] = self._shared.clock().isoformat()
        self._write(key, record)
        return {"ModelPackageArn": ModelPackageArn}

    # -- pipelines --------------------------------------------------------------------------
    def start_pipeline_execution(
        self,
        *,
        PipelineName: str,
        PipelineParameters: list[Mapping[str, str]] | None = None,
        PipelineExecutionDisplayName: str = "",
        PipelineExecutionDescription: str = "",
        ClientRequestToken: str | None = None,
    ) -> dict[str, Any]:
        s = self._shared
        runner = s.runners.get(PipelineName)
        if runner is None:
            raise _invalid("StartPipelineExecution", f"Could not find pipeline {PipelineName}")
        if ClientRequestToken and ClientRequestToken in s.tokens:
            return {"PipelineExecutionArn": s.executions[s.tokens[ClientRequestToken]].arn}
        declared = {str(p["Name"]): str(p["Type"]) for p in runner.definition["Parameters"]}
        values: dict[str, Any] = {}
        for item in PipelineParameters or []:
            name, text = str(item["Name"]), str(item["Value"])
            if name not in declared:
                raise _invalid("StartPipelineExecution", f"unknown pipeline parameter {name!r}")
            values[name] = _typed(declared[name], name, text)
        seed = ClientRequestToken or uuid.uuid4().hex
        execution_id = f"local-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"
        arn = (f"arn:aws:sagemaker:{s.region}:{LOCAL_ACCOUNT}:pipeline/{PipelineName}/"
               f"execution/{execution_id}")  # fmt: skip
        s.executions[execution_id] = LocalExecution(
            execution_id, arn, PipelineName, values, dict(self._caller or {}),
            PipelineExecutionDisplayName, PipelineExecutionDescription,
        )  # fmt: skip
        if ClientRequestToken:
            s.tokens[ClientRequestToken] = execution_id
        s.pending.append(execution_id)
        return {"PipelineExecutionArn": arn}

    def execution(self, arn: str) -> LocalExecution:
        """Return the execution of ``arn`` (KeyError: not started here)."""
        return self._shared.executions[arn.rsplit("/", 1)[-1]]

    def run_pending(self) -> list[LocalExecution]:
        """Run the started executions, oldest first; return them, finished.

        A failed execution (a Fail step, a failed job) is returned with ``status`` Failed
        and its reason, as a failed SageMaker execution is described. The packages it
        registered get its starter as ``CreatedBy``.
        """
        s = self._shared
        done = []
        while s.pending:
            execution = s.executions[s.pending.pop(0)]
            runner = s.runners[execution.pipeline]
            try:
                execution.result = runner.start(execution.parameters,
                                                execution_id=execution.execution_id)  # fmt: skip
                execution.status = SUCCEEDED
            except PipelineFailed as e:
                execution.result, execution.status = e.result, "Failed"
                execution.failure = e.message
            except (StepFailed, LocalRunError) as e:
                execution.status, execution.failure = "Failed", str(e)
            for group in sorted(s.groups):
                for key, record in self._records(group):
                    if record.get("PipelineExecutionId") != execution.execution_id:
                        continue
                    if "CreatedBy" not in record:
                        record["CreatedBy"] = execution.started_by
                        self._write(key, record)
                    execution.registered.append(str(record["ModelPackageArn"]))
            done.append(execution)
        return done


def _typed(kind: str, name: str, text: str) -> Any:
    """Return a pipeline parameter's API string as its declared type's value."""
    try:
        if kind == "Float":
            return float(text)
        if kind == "Integer":
            return int(text)
    except ValueError:
        raise _invalid("StartPipelineExecution", f"{name}: {text!r} is not a {kind}") from None
    if kind == "Boolean":
        if text.lower() not in ("true", "false"):
            raise _invalid("StartPipelineExecution", f"{name}: {text!r} is not a Boolean")
        return text.lower() == "true"
    return text
