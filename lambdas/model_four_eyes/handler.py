"""Lambda adapter of the model registry's governance (:mod:`oncopipe.governance`).

Two functions of the model stack run this code, each with its own role:

- ``FourEyes`` gets EventBridge ``SageMaker Model Package State Change`` events of the
  response model's group with status ``Approved`` (the rule filters both) and runs
  :func:`oncopipe.governance.review` on the package (``detail.ModelPackageArn`` or
  ``resources[0]``);
- ``ArtifactDigest`` is a pipeline step: ``{"model_data": "s3://..."}`` in, the
  artefact's ``sha256``, ``size`` and ``version_id`` out.

The log holds the group, version, outcome and reason only: no principal, no PHI.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.governance import artifact_digest, package_version, review

logger = Logger(service="model-governance")

STATE_CHANGE = "SageMaker Model Package State Change"

try:
    MODEL_PACKAGE_GROUP = os.environ["MODEL_PACKAGE_GROUP"]
except KeyError as e:
    raise RuntimeError(
        "model governance: environment variable MODEL_PACKAGE_GROUP is not set"
    ) from e


@cache
def _client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def package_arn_of(event: dict[str, Any]) -> str:
    """Return the model package ARN of a state-change event of the governed group.

    Raises:
        ValueError: not a model package state change, or of another group.
    """
    if event.get("detail-type") != STATE_CHANGE:
        raise ValueError(f"not a {STATE_CHANGE} event")
    detail = event.get("detail") or {}
    arn = str(detail.get("ModelPackageArn") or (event.get("resources") or [""])[0])
    group, _ = package_version(arn)
    if group != MODEL_PACKAGE_GROUP:
        raise ValueError(f"model package group {group!r} is not governed by this function")
    return arn


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, str]:
    """Review an approval (state-change event) or hash an artefact (pipeline step).

    Raises:
        ValueError: the event is neither.
    """
    if "model_data" in event:
        result = artifact_digest(_client("s3"), str(event["model_data"]))
        logger.info("artefact hashed", extra={"size": result["size"]})
        return result
    package_arn = package_arn_of(event)
    decision = review(_client("sagemaker"), package_arn)
    logger.info("four-eyes decision", extra=decision.log_fields())
    return decision.log_fields()
