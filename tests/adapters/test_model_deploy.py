"""Deployment of approved model versions (:mod:`oncopipe.deploy`) on moto, and its adapter.

moto's SageMaker holds model packages, models, endpoint configurations and endpoints, but
implements no UpdateEndpoint, and records every change of a package as made by its creator
(so every moto approval is a self-approval): the approver is set on moto's record, and
UpdateEndpoint / in-flight endpoint states are answered by ``botocore.stub.Stubber``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from oncopipe import deploy
from oncopipe.deploy import BlueGreen, DeployError, DeploySettings, Plan
from oncopipe.errors import ConfigError
from oncopipe.monitor.histogram import VAF_EDGES, Histogram, Stratum
from oncopipe.monitor.job import baseline_document, baseline_key

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's
GROUP = "oncopipe-dev-response"
BUCKET = "oncopipe-dev-artifacts"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/platform"
ALARMS = ("oncopipe-dev-endpoint-5xx", "oncopipe-dev-endpoint-latency")
SETTINGS = DeploySettings(
    group=GROUP, endpoint_name="oncopipe-dev-response", artifacts_bucket=BUCKET,
    artifacts_key_arn=KEY_ARN, kms_key_arn=KEY_ARN,
    serving_role_arn=f"arn:aws:iam::{ACCOUNT}:role/serving", instance_type="ml.m5.large",
    instance_count=1, security_group_ids=("sg-1",), subnet_ids=("subnet-a", "subnet-b"),
    rollback_alarm_names=ALARMS, blue_green=BlueGreen(termination_wait_seconds=120),
)  # fmt: skip
ENDPOINT_ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/oncopipe-dev-response"
APPROVER = {"IamIdentity": {"Arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/ModelApprover/bob"}}


@pytest.fixture
def aws(aws_env: None) -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        yield sagemaker, s3


def _moto() -> Any:
    """moto's SageMaker records, where the test plays what moto does not."""
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT][REGION]


def _baseline() -> dict[str, Any]:
    counts = tuple([1] * (len(VAF_EDGES) - 1))
    stratum = Stratum(assay="panel", mode="paired")
    return baseline_document({stratum: Histogram(VAF_EDGES, counts, 5)}, model_package_arn="")


def _register(sagemaker: Any, s3: Any, job: str, *, baseline: bool = True,
              approver: dict[str, Any] | None = APPROVER) -> str:  # fmt: skip
    """Register (and approve) a version: artefact, digest and, optionally, its baseline."""
    body = f"weights of {job}".encode() * 100
    s3.put_object(Bucket=BUCKET, Key=f"models/{job}/output/model.tar.gz", Body=body)
    metadata = {"artifact_sha256": hashlib.sha256(body).hexdigest()}
    request: dict[str, Any] = {
        "ModelPackageGroupName": GROUP, "ModelApprovalStatus": "PendingManualApproval",
        "CustomerMetadataProperties": metadata,
        "InferenceSpecification": {"Containers": [{
            "Image": f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-inference:2",
            "ModelDataUrl": f"s3://{BUCKET}/models/{job}/output/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"]},
    }  # fmt: skip
    if baseline:
        key = f"evaluation/{job}/baseline.json"  # where the pipeline's evaluation writes it
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(_baseline()).encode())
        request["ModelMetrics"] = {"ModelDataQuality": {"Statistics": {
            "ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/{key}"}}}  # fmt: skip
    arn = str(sagemaker.create_model_package(**request)["ModelPackageArn"])
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved",
                                   CustomerMetadataProperties=metadata)  # fmt: skip
    if approver is not None:  # moto records its creator as the approver: the real one
        _moto().model_packages[arn].last_modified_by = approver
    return arn


def _deploy(sagemaker: Any, s3: Any, arn: str) -> tuple[Plan, str]:
    """One state machine execution on moto, up to the action; returns the plan, action."""
    plan = deploy.verify(sagemaker, s3, arn, settings=SETTINGS)
    action = deploy.prepare(sagemaker, plan, SETTINGS)["action"]
    return plan, action


def _created(sagemaker: Any) -> tuple[list[str], list[str]]:
    models = [m["ModelName"] for m in sagemaker.list_models()["Models"]]
    configs = [
        c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]
    ]
    return models, configs


def _endpoint_time(sagemaker: Any) -> Any:
    return sagemaker.describe_endpoint(EndpointName=SETTINGS.endpoint_name)["LastModifiedTime"]


def test_a_tampered_artefact_is_refused_and_nothing_is_created(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1")
    tampered = b"not the weights that were evaluated"
    s3.put_object(Bucket=BUCKET, Key="models/job-1/output/model.tar.gz", Body=tampered)
    with pytest.raises(DeployError, match="version 1: the artefact's SHA-256") as refused:
        deploy.verify(sagemaker, s3, arn, settings=SETTINGS)
    assert hashlib.sha256(tampered).hexdigest() not in str(refused.value)
    assert _created(sagemaker) == ([], [])


def test_a_missing_digest_is_refused(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1")
    _moto().model_packages[arn].customer_metadata_properties = {}  # registered without
    with pytest.raises(DeployError, match="version 1: no artifact_sha256 recorded"):
        deploy.verify(sagemaker, s3, arn, settings=SETTINGS)


def test_a_self_approved_version_is_rejected_by_review_and_not_deployed(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1", approver=None)  # approved by its creator
    with pytest.raises(DeployError, match="version 1: the four-eyes check rejected it"):
        deploy.verify(sagemaker, s3, arn, settings=SETTINGS)
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "Rejected"
    assert _created(sagemaker) == ([], [])


def test_the_first_deploy_creates_and_a_second_identical_event_creates_nothing(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1")
    plan, action = _deploy(sagemaker, s3, arn)
    assert (plan.model_name, plan.config_name) == ("oncopipe-dev-response-v1",) * 2
    assert action == "create"
    deploy.apply(sagemaker, plan, SETTINGS, action)
    assert deploy.status(sagemaker, plan.endpoint_name, config_name=plan.config_name).status == (
        "InService")  # fmt: skip
    model = sagemaker.describe_model(ModelName=plan.model_name)
    assert model["PrimaryContainer"]["ModelPackageName"] == arn
    assert model["PrimaryContainer"]["Environment"] == {"ONCOPIPE_MODEL_VARIANT": "pruned"}
    assert model["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-a", "subnet-b"]}
    config = sagemaker.describe_endpoint_config(EndpointConfigName=plan.config_name)
    assert config["KmsKeyId"] == KEY_ARN
    capture = config["DataCaptureConfig"]
    assert capture["DestinationS3Uri"] == f"s3://{BUCKET}/data-capture/"
    assert capture["KmsKeyId"] == KEY_ARN
    assert [o["CaptureMode"] for o in capture["CaptureOptions"]] == ["Input", "Output"]
    before = (model["CreationTime"], config["CreationTime"], _endpoint_time(sagemaker))

    again, action = _deploy(sagemaker, s3, arn)  # the same event, delivered twice
    assert again == plan and action == "current"
    deploy.apply(sagemaker, again, SETTINGS, action)
    assert _created(sagemaker) == ([plan.model_name], [plan.config_name])
    after = (sagemaker.describe_model(ModelName=plan.model_name)["CreationTime"],
             sagemaker.describe_endpoint_config(EndpointConfigName=plan.config_name)[
                 "CreationTime"], _endpoint_time(sagemaker))  # fmt: skip
    assert after == before


def test_a_later_version_updates_blue_green_with_the_rollback_alarms(aws: Any) -> None:
    sagemaker, s3 = aws
    first, action = _deploy(sagemaker, s3, _register(sagemaker, s3, "job-1"))
    deploy.apply(sagemaker, first, SETTINGS, action)
    plan, action = _deploy(sagemaker, s3, _register(sagemaker, s3, "job-2"))
    assert (plan.version, action) == (2, "update")
    expected = {
        "EndpointName": "oncopipe-dev-response",
        "EndpointConfigName": "oncopipe-dev-response-v2",
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "ALL_AT_ONCE",
                    "WaitIntervalInSeconds": 300,
                },
                "TerminationWaitInSeconds": 120,
                "MaximumExecutionTimeoutInSeconds": 3600,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in ALARMS]},
        },
    }
    with Stubber(sagemaker) as stubber:  # moto has no UpdateEndpoint
        stubber.add_response("update_endpoint", {"EndpointArn": ENDPOINT_ARN}, expected)
        deploy.apply(sagemaker, plan, SETTINGS, action)
        stubber.assert_no_pending_responses()
    assert _created(sagemaker)[1] == ["oncopipe-dev-response-v1", "oncopipe-dev-response-v2"]


def test_a_canary_shifts_a_share_of_the_capacity_first() -> None:
    config = BlueGreen(traffic="CANARY", canary_percent=25, wait_seconds=600)
    routing = config.deployment_config(ALARMS)["BlueGreenUpdatePolicy"]
    assert routing["TrafficRoutingConfiguration"] == {
        "Type": "CANARY", "WaitIntervalInSeconds": 600,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 25}}  # fmt: skip


def _endpoint(state: str, config: str, **extra: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {"EndpointName": "oncopipe-dev-response", "EndpointArn": ENDPOINT_ARN,
            "EndpointConfigName": config, "EndpointStatus": state,
            "CreationTime": datetime(2026, 1, 1, tzinfo=UTC),
            "LastModifiedTime": datetime(2026, 1, 1, tzinfo=UTC), **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        (_endpoint("Updating", "oncopipe-dev-response-v1"), ("InProgress", "")),
        (_endpoint("InService", "oncopipe-dev-response-v2"), ("InService", "")),
        (_endpoint("InService", "oncopipe-dev-response-v1", FailureReason="alarm 5xx fired"),
         ("Failed", "rolled back: endpoint oncopipe-dev-response serves "
                    "oncopipe-dev-response-v1, not oncopipe-dev-response-v2 (alarm 5xx fired)")),
        (_endpoint("Failed", "oncopipe-dev-response-v2", FailureReason="image not found"),
         ("Failed", "image not found")),
    ],
)  # fmt: skip
def test_status_tells_a_rollback_from_success(described: dict[str, Any],
                                              expected: tuple[str, str]) -> None:  # fmt: skip
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x",
                          aws_secret_access_key="x")  # fmt: skip
    with Stubber(client) as stubber:
        stubber.add_response("describe_endpoint", described)
        rollout = deploy.status(client, "oncopipe-dev-response",
                                config_name="oncopipe-dev-response-v2")  # fmt: skip
    assert (rollout.status, rollout.reason) == expected


def test_a_late_repeated_event_of_an_older_version_does_not_roll_back(aws: Any) -> None:
    sagemaker, s3 = aws
    old = _register(sagemaker, s3, "job-1")
    plan, action = _deploy(sagemaker, s3, old)
    deploy.apply(sagemaker, plan, SETTINGS, action)
    _deploy(sagemaker, s3, _register(sagemaker, s3, "job-2"))
    # version 2 now serves (moto has no UpdateEndpoint)
    _moto().endpoints[SETTINGS.endpoint_name].endpoint_config_name = "oncopipe-dev-response-v2"
    with pytest.raises(DeployError, match="version 1: newer version 2 is approved and serving"):
        _deploy(sagemaker, s3, old)


def test_the_baseline_lands_at_its_version_key_with_the_package_arn(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1")
    plan, _ = _deploy(sagemaker, s3, arn)
    key = deploy.publish_baseline(sagemaker, s3, plan, BUCKET, kms_key_arn=KEY_ARN)
    assert key == baseline_key(1) == "monitor/baselines/v1/baseline.json"
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    document = json.loads(stored["Body"].read())
    assert document == {**_baseline(), "model_package_arn": arn}
    assert stored["ServerSideEncryption"] == "aws:kms"
    first = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    deploy.publish_baseline(sagemaker, s3, plan, BUCKET, kms_key_arn=KEY_ARN)  # idempotent
    assert s3.head_object(Bucket=BUCKET, Key=key)["ETag"] == first


def test_a_package_without_a_baseline_metric_is_refused(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1", baseline=False)
    with pytest.raises(DeployError, match=r"version 1: .*drift monitor would have no baseline"):
        deploy.verify(sagemaker, s3, arn, settings=SETTINGS)
    plan = Plan(arn, GROUP, 1, SETTINGS.endpoint_name, "m", "c", "0" * 64, "v")
    with pytest.raises(DeployError, match="drift monitor would have no baseline"):
        deploy.publish_baseline(sagemaker, s3, plan, BUCKET, kms_key_arn=KEY_ARN)
    assert _created(sagemaker) == ([], [])


def test_a_baseline_that_is_not_one_is_refused(aws: Any) -> None:
    sagemaker, s3 = aws
    arn = _register(sagemaker, s3, "job-1")
    s3.put_object(Bucket=BUCKET, Key="evaluation/job-1/baseline.json", Body=b'{"a": 1}')
    plan, _ = _deploy(sagemaker, s3, arn)
    with pytest.raises(DeployError, match="is not a drift baseline"):
        deploy.publish_baseline(sagemaker, s3, plan, BUCKET, kms_key_arn=KEY_ARN)
    elsewhere = {"ModelDataQuality": {"Statistics": {"S3Uri": f"s3://{BUCKET}/ops/x.json"}}}
    _moto().model_packages[arn].model_metrics = elsewhere  # the role cannot read there
    with pytest.raises(DeployError, match="is not under evaluation/ or models/"):
        deploy.publish_baseline(sagemaker, s3, plan, BUCKET, kms_key_arn=KEY_ARN)


def test_settings_round_trip_and_name_a_missing_variable() -> None:
    env = SETTINGS.as_env()
    assert DeploySettings.from_env(env) == SETTINGS
    with pytest.raises(ConfigError, match=r"missing environment variables: ENDPOINT_NAME$"):
        DeploySettings.from_env({k: v for k, v in env.items() if k != "ENDPOINT_NAME"})
    with pytest.raises(ConfigError, match="DEPLOY_WAIT_SECONDS: 'soon'"):
        DeploySettings.from_env({**env, "DEPLOY_WAIT_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="CANARY needs 2"):
        DeploySettings.from_env({**env, "DEPLOY_TRAFFIC": "CANARY"})


# -- the Lambda adapter -------------------------------------------------------------------


def test_the_handler_takes_the_package_from_the_raw_event_and_refuses_other_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SETTINGS.as_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "model-deploy")
    import lambdas.model_deploy.handler as module

    handler = importlib.reload(module)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/3"
    event = {"detail-type": "SageMaker Model Package State Change", "source": "aws.sagemaker",
             "resources": [arn], "detail": {"ModelPackageArn": arn}}  # fmt: skip
    assert handler.package_arn_of(event) == arn
    assert handler.package_arn_of({"step": "verify", "package_arn": arn}) == arn
    with pytest.raises(DeployError, match="'someone-else' is not deployed here"):
        handler.package_arn_of({"package_arn": arn.replace(GROUP, "someone-else")})
    monkeypatch.delenv("ENDPOINT_NAME")
    with pytest.raises(ConfigError, match="ENDPOINT_NAME"):  # checked at cold start
        importlib.reload(module)
    monkeypatch.setenv("ENDPOINT_NAME", SETTINGS.endpoint_name)
    importlib.reload(module)  # leave a whole module behind
