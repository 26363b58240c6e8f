"""Lambda adapter of model deployment (:mod:`oncopipe.deploy`): one step per invocation.

The deploy state machine calls it with ``{"step": ..., ...}``:

- ``verify`` with ``package_arn`` (or the EventBridge ``SageMaker Model Package State
  Change`` event itself: ``detail.ModelPackageArn`` or ``resources[0]``) -> the plan;
- ``prepare``, ``apply`` (with the ``action`` prepare returned), ``status`` and
  ``baseline``, each with the ``plan`` verify returned.

A refusal raises :class:`oncopipe.deploy.DeployError` (the state machine's Catch matches
the name). Settings are checked at cold start. The log holds versions, actions and
outcomes only: no principal, no PHI.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe import deploy
from oncopipe.governance import GovernanceError, package_version

logger = Logger(service="model-deploy")

STATE_CHANGE = "SageMaker Model Package State Change"
STEPS = ("verify", "prepare", "apply", "status", "baseline")

SETTINGS = deploy.DeploySettings.from_env(os.environ)


@cache
def _client(service: str) -> Any:
    import boto3

    return boto3.client(service)


def package_arn_of(event: dict[str, Any]) -> str:
    """Return the model package ARN a verify request or a state-change event names.

    Raises:
        DeployError: no ARN, or a package of another group than this function deploys.
    """
    arn = event.get("package_arn")
    if not arn and event.get("detail-type") == STATE_CHANGE:
        detail = event.get("detail") or {}
        arn = detail.get("ModelPackageArn") or (event.get("resources") or [""])[0]
    if not arn:
        raise deploy.DeployError(f"no package_arn and not a {STATE_CHANGE} event")
    try:
        group, _ = package_version(str(arn))
    except GovernanceError as e:
        raise deploy.DeployError(str(e)) from e
    if group != SETTINGS.group:
        raise deploy.DeployError(f"model package group {group!r} is not deployed here")
    return str(arn)


def _plan(event: dict[str, Any]) -> deploy.Plan:
    return deploy.Plan.from_dict(event.get("plan") or {})


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run one deployment step; return its result (see the module docstring).

    Raises:
        DeployError: the version is refused, or the endpoint cannot take it.
        ValueError: an unknown step.
    """
    step = event.get("step") or ("verify" if event.get("detail-type") == STATE_CHANGE else "")
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; expected one of {', '.join(STEPS)}")
    sagemaker = _client("sagemaker")
    if step == "verify":
        try:
            plan = deploy.verify(sagemaker, _client("s3"), package_arn_of(event),
                                 settings=SETTINGS)  # fmt: skip
        except deploy.DeployError as e:
            logger.warning("deployment refused", extra={"reason": str(e)})
            raise
        logger.info("verified", extra={"version": plan.version})
        return plan.as_dict()
    plan = _plan(event)
    fields: dict[str, Any] = {"version": plan.version, "step": step}
    result: dict[str, Any]
    if step == "prepare":
        result = deploy.prepare(sagemaker, plan, SETTINGS)
    elif step == "apply":
        action = str(event.get("action", ""))
        deploy.apply(sagemaker, plan, SETTINGS, action)
        result = {"action": action}
    elif step == "status":
        rollout = deploy.status(sagemaker, plan.endpoint_name, config_name=plan.config_name)
        result = {"status": rollout.status, "reason": rollout.reason}
    else:
        key = deploy.publish_baseline(sagemaker, _client("s3"), plan, SETTINGS.artifacts_bucket,
                                      kms_key_arn=SETTINGS.artifacts_key_arn)  # fmt: skip
        result = {"baseline_key": key}
    logger.info("deploy step done", extra={**fields, **result})
    return result
