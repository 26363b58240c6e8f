"""The synthesized stacks: security baseline, nag packs, cfn-lint and snapshots."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Match, Template

from stacks.app_factory import OncopipeApp, build_app
from tests.conftest import cdk_context, synthesized_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["dev", "prod"])
def synthesized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = synthesized_app(request.param, tmp_path_factory)  # once per session, nag packs on
    return app.built, app.assembly, app.outdir


def _templates(built: OncopipeApp) -> dict[str, Template]:
    return {
        "lake": Template.from_stack(built.lake),
        "network": Template.from_stack(built.network),
        "genomics": Template.from_stack(built.genomics),
        "ingest": Template.from_stack(built.ingest),
        "features": Template.from_stack(built.features),
        "model": Template.from_stack(built.model),
    }


def test_nag_packs_report_no_unacknowledged_finding(synthesized: Any) -> None:
    _, _, outdir = synthesized
    report = Path(outdir) / "validation-report.json"
    if report.exists():  # written when a plugin reports; every plugin must pass
        document = json.loads(report.read_text())
        violations = [v for p in document["pluginReports"] for v in p.get("violations", [])]
        assert violations == []


def test_every_data_bucket_is_kms_versioned_tls_only_and_private(synthesized: Any) -> None:
    built, _, _ = synthesized
    lake = Template.from_stack(built.lake)
    buckets = lake.find_resources("AWS::S3::Bucket")
    assert len(buckets) == 5
    for logical_id, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert props["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
        assert bucket["DeletionPolicy"] == "Retain"
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        algorithm = sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
        if logical_id.startswith("AccessLogs"):
            assert algorithm == "AES256"  # the only encryption S3 log delivery supports
        else:
            assert algorithm == "aws:kms"
            assert "KMSMasterKeyID" in sse["ServerSideEncryptionByDefault"]
            assert "LoggingConfiguration" in props
    policies = lake.find_resources("AWS::S3::BucketPolicy")
    tls_denied = {
        json.dumps(p["Properties"]["Bucket"])
        for p in policies.values()
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition", {}).get("Bool") == {"aws:SecureTransport": "false"}
    }
    assert len(tls_denied) == 5


def test_keys_rotate_and_are_retained(synthesized: Any) -> None:
    built, _, _ = synthesized
    keys = Template.from_stack(built.lake).find_resources("AWS::KMS::Key")
    assert len(keys) == 3
    for key in keys.values():
        assert key["Properties"]["EnableKeyRotation"] is True
        assert key["DeletionPolicy"] == "Retain"


def test_ingest_bucket_sends_events_and_raw_data_moves_to_cold_storage(synthesized: Any) -> None:
    built, _, _ = synthesized
    config = built.config
    lake = Template.from_stack(built.lake)
    lake.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "NotificationConfiguration": {"EventBridgeConfiguration": {"EventBridgeEnabled": True}},
            "LifecycleConfiguration": {
                "Rules": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Prefix": "fastq/",
                                "Transitions": [
                                    {
                                        "StorageClass": "STANDARD_IA",
                                        "TransitionInDays": config.raw_data_infrequent_access_days,
                                    },
                                    {
                                        "StorageClass": "GLACIER_IR",
                                        "TransitionInDays": config.raw_data_glacier_days,
                                    },
                                ],
                            }
                        )
                    ]
                )
            },
        },
    )


def test_no_wildcard_action_on_a_data_bucket(synthesized: Any) -> None:
    built, _, _ = synthesized
    for template in _templates(built).values():
        for policy in template.find_resources("AWS::IAM::Policy").values():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"]
                actions = actions if isinstance(actions, list) else [actions]
                assert "s3:*" not in actions and "*" not in actions, statement


def test_only_ingest_roles_may_read_the_ingest_bucket(synthesized: Any) -> None:
    built, _, _ = synthesized
    ingest_export = f"{built.lake.stack_name}-{built.lake.get_logical_id(built.lake.ingest.node.default_child)}Arn"  # type: ignore[arg-type]  # noqa: E501
    readers = set()
    for name, template in _templates(built).items():
        for logical_id, policy in template.find_resources("AWS::IAM::Policy").items():
            if ingest_export in json.dumps(policy["Properties"]["PolicyDocument"]):
                readers.add(f"{name}:{logical_id}")
    # the router and catch-all (de-identification/routing) and alignment (FASTQ only)
    allowed = ("ingest:Router", "ingest:QuarantineOnError", "ingest:Reconcile", "ingest:DicomDeid",
               "genomics:JobRole", "features:NotesRole")  # fmt: skip
    assert readers and all(r.startswith(allowed) for r in readers), readers
    lake_policies = json.dumps(Template.from_stack(built.lake).find_resources("AWS::IAM::Policy"))
    ingest_id = built.lake.get_logical_id(built.lake.ingest.node.default_child)  # type: ignore[arg-type]
    assert ingest_id not in lake_policies  # the analyst and Lake Formation roles never see it


def test_lambdas_are_private_traced_limited_and_have_dead_letters(synthesized: Any) -> None:
    built, _, _ = synthesized
    ingest = Template.from_stack(built.ingest)
    functions = ingest.find_resources("AWS::Lambda::Function")
    assert len(functions) == 4  # router, catch-all quarantine, daily reconcile, DICOM deid
    for fn in functions.values():
        props = fn["Properties"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["ReservedConcurrentExecutions"] == built.config.lambda_reserved_concurrency
        assert "VpcConfig" in props and "DeadLetterConfig" in props and "KmsKeyArn" in props
        assert props["Handler"].startswith("lambdas.") and props["Runtime"].startswith("python3.")


def test_state_machine_logs_all_encrypted_and_rule_has_dead_letters(synthesized: Any) -> None:
    built, _, _ = synthesized
    ingest = Template.from_stack(built.ingest)
    ingest.has_resource_properties(
        "AWS::StepFunctions::StateMachine",
        {
            "LoggingConfiguration": Match.object_like({"Level": "ALL"}),
            "TracingConfiguration": {"Enabled": True},
        },
    )
    ingest.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": Match.object_like(
                {"source": ["aws.s3"], "detail-type": ["Object Created"]}
            ),
            "Targets": [
                Match.object_like(
                    {"DeadLetterConfig": Match.any_value(), "RetryPolicy": Match.any_value()}
                )
            ],
        },
    )
    for group in ingest.find_resources("AWS::Logs::LogGroup").values():
        assert "KmsKeyId" in group["Properties"]
    for queue in ingest.find_resources("AWS::SQS::Queue").values():
        assert "KmsMasterKeyId" in queue["Properties"]


def test_network_is_isolated_with_endpoints_and_flow_logs(synthesized: Any) -> None:
    built, _, _ = synthesized
    network = Template.from_stack(built.network)
    network.resource_count_is("AWS::EC2::NatGateway", 0)
    network.resource_count_is("AWS::EC2::InternetGateway", 0)
    network.resource_count_is("AWS::EC2::FlowLog", 1)
    endpoints = network.find_resources("AWS::EC2::VPCEndpoint")
    names = json.dumps([e["Properties"]["ServiceName"] for e in endpoints.values()])
    for service in ("s3", "ecr.api", "ecr.dkr", "logs", "sts", "secretsmanager",
                    "sagemaker.api", "sagemaker.runtime"):  # fmt: skip
        assert f".{service}" in names, service


def test_lake_formation_grants_analysts_the_curated_database_only(synthesized: Any) -> None:
    built, _, _ = synthesized
    lake = Template.from_stack(built.lake)
    grants = lake.find_resources("AWS::LakeFormation::PrincipalPermissions")
    assert len(grants) == 2
    for grant in grants.values():
        resource = json.dumps(grant["Properties"]["Resource"])
        assert built.lake.database_name in resource
        assert set(grant["Properties"]["Permissions"]) <= {"SELECT", "DESCRIBE"}
    lake.has_resource_properties("AWS::LakeFormation::Resource", {"UseServiceLinkedRole": False})
    lake.has_resource_properties(
        "AWS::Athena::WorkGroup",
        {
            "WorkGroupConfiguration": Match.object_like(
                {
                    "EnforceWorkGroupConfiguration": True,
                    "ResultConfiguration": Match.object_like(
                        {
                            "EncryptionConfiguration": Match.object_like(
                                {"EncryptionOption": "SSE_KMS"}
                            )
                        }
                    ),
                }
            )
        },
    )


def test_stateful_stack_termination_protection_follows_config(synthesized: Any) -> None:
    built, _, _ = synthesized
    assert built.lake.termination_protection is built.config.termination_protection


def test_cfn_lint_finds_no_errors(synthesized: Any) -> None:
    from cfnlint.api import lint_all

    _, _, outdir = synthesized
    errors, regional = [], set()
    for template in sorted(Path(outdir).glob("*.template.json")):
        for match in lint_all(template.read_text()):
            if match.rule.id == "E3006" and "does not exist in" in match.message:
                regional.add(match.message.split("'")[1])  # not offered in every region
            elif match.rule.id.startswith("E"):
                errors.append(f"{template.name}: {match}")
    assert errors == []
    # SageMaker's managed MLflow and model registry are missing from some regions
    assert regional <= {"AWS::SageMaker::MlflowTrackingServer", "AWS::SageMaker::ModelPackageGroup"}


_HASH = re.compile(r"[0-9a-f]{64}")


def _mask(value: Any) -> Any:
    """Replace asset hashes (64 hex) so snapshots are stable across machines.

    Construct paths (``aws:cdk:path`` metadata, on in the shared app) are left out: they
    repeat the logical ids.
    """
    if isinstance(value, dict):
        masked = {k: _mask(v) for k, v in value.items() if k != "aws:cdk:path"}
        return {k: v for k, v in masked.items() if not (k == "Metadata" and v == {})}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return _HASH.sub("<asset-hash>", value)
    return value


def test_snapshot(synthesized: Any, snapshot: Any) -> None:
    built, _, _ = synthesized
    for name, template in _templates(built).items():
        assert _mask(template.to_json()) == snapshot(name=f"{built.config.name}-{name}")


def test_batch_spot_first_with_on_demand_fallback(synthesized: Any) -> None:
    built, _, _ = synthesized
    genomics = Template.from_stack(built.genomics)
    environments = genomics.find_resources("AWS::Batch::ComputeEnvironment")
    resources = {
        e["Properties"]["ComputeResources"]["Type"]: e["Properties"]["ComputeResources"]
        for e in environments.values()
    }
    assert resources["SPOT"]["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert resources["EC2"]["AllocationStrategy"] == "BEST_FIT_PROGRESSIVE"
    for compute in resources.values():
        assert compute["MaxvCpus"] == built.config.batch_max_vcpus
        assert compute["InstanceTypes"] == list(built.config.batch_instance_types)
        assert "LaunchTemplate" in compute
    queue = next(iter(genomics.find_resources("AWS::Batch::JobQueue").values()))
    order = sorted(queue["Properties"]["ComputeEnvironmentOrder"], key=lambda o: o["Order"])
    spot_id = next(k for k, e in environments.items()
                   if e["Properties"]["ComputeResources"]["Type"] == "SPOT")  # fmt: skip
    assert order[0]["ComputeEnvironment"] == {"Fn::GetAtt": [spot_id, "ComputeEnvironmentArn"]}


def test_batch_launch_template_encrypted_gp3_imdsv2(synthesized: Any) -> None:
    built, _, _ = synthesized
    genomics = Template.from_stack(built.genomics)
    genomics.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {
            "LaunchTemplateData": Match.object_like(
                {
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": Match.object_like(
                                {
                                    "Encrypted": True,
                                    "VolumeType": "gp3",
                                    "VolumeSize": built.config.batch_scratch_gb,
                                }
                            ),
                        }
                    ],
                    "MetadataOptions": Match.object_like({"HttpTokens": "required"}),
                }
            )
        },
    )


def test_batch_jobs_retry_spot_reclaims_only(synthesized: Any) -> None:
    built, _, _ = synthesized
    definitions = Template.from_stack(built.genomics).find_resources("AWS::Batch::JobDefinition")
    # panel align/call, the whole-genome phases, imaging volumes
    assert len(definitions) == 8
    steps = set()
    for definition in definitions.values():
        props = definition["Properties"]
        strategy = props["RetryStrategy"]
        assert strategy["Attempts"] == built.config.batch_spot_retries
        assert strategy["EvaluateOnExit"][0] == {"Action": "RETRY", "OnStatusReason": "Host EC2*"}
        assert strategy["EvaluateOnExit"][1] == {"Action": "EXIT", "OnReason": "*"}
        assert (
            props["Timeout"]["AttemptDurationSeconds"]
            == 60 * built.config.batch_job_timeout_minutes
        )
        container = props["ContainerProperties"]
        command = container["Command"]
        # the image's entrypoint is `python -m`: each job names its module (batch_jobs.*)
        assert command == ["batch_jobs.imaging", "volumes"] or (
            command[:1] == ["batch_jobs.genomics"]
            and command[1] in ("plan", "align", "align-shard", "gather", "call", "call-region",
                               "call-gather")
            and "Ref::sample" in command
        )  # fmt: skip
        steps.add(command[1])
        # the job's cost estimate knows what it reserved: the job definition's own values
        environment = {e["Name"]: e["Value"] for e in container["Environment"]}
        reserved = {r["Type"]: r["Value"] for r in container["ResourceRequirements"]}
        assert environment["ONCOPIPE_JOB_VCPUS"] == reserved["VCPU"]
        assert environment["ONCOPIPE_JOB_MEMORY_MIB"] == reserved["MEMORY"]
    assert len(steps) == 8


def test_batch_job_role_reads_fastq_only_from_ingest(synthesized: Any) -> None:
    built, _, _ = synthesized
    genomics = Template.from_stack(built.genomics)
    policies = genomics.find_resources("AWS::IAM::Policy")
    job_policy = next(p for k, p in policies.items() if k.startswith("JobRole"))
    document = json.dumps(job_policy["Properties"]["PolicyDocument"])
    ingest_export = f"{built.lake.stack_name}-{built.lake.get_logical_id(built.lake.ingest.node.default_child)}Arn"  # type: ignore[arg-type]  # noqa: E501
    resources = re.findall(r'"Fn::ImportValue": "([^"]+)"\}, "([^"]*)"', document)
    ingest_paths = {path for export, path in resources if export == ingest_export}
    assert ingest_paths == {"/fastq/*"}, ingest_paths
    assert "s3:PutObject" in document


def test_state_machine_runs_genomics_jobs_for_an_accepted_sheet(synthesized: Any) -> None:
    built, _, _ = synthesized
    machine = Template.from_stack(built.ingest).find_resources("AWS::StepFunctions::StateMachine")
    definition = json.dumps(next(iter(machine.values()))["Properties"]["DefinitionString"])
    # (its states, state by state: tests/infrastructure/test_ingest_flow.py)
    # the ingest execution starts the genomics one and ends (request-response, no .sync)
    assert 'states:startExecution\\"' in definition
    assert "states:startExecution.sync" not in definition
    genomics = Template.from_stack(built.genomics).find_resources(
        "AWS::StepFunctions::StateMachine"
    )
    (genomics_machine,) = genomics.values()
    genomics_definition = json.dumps(genomics_machine["Properties"]["DefinitionString"])
    for state in ("AlignSamples", "CallTumours", "GenomicsFailed", "Plan", "ReadPlan",
                  "AlignShards", "Gather", "CallRegions", "CallGather"):  # fmt: skip
        assert state in genomics_definition
    assert "batch:submitJob.sync" in genomics_definition
    # every job it submits carries the run id and the step as cost-allocation tags
    assert genomics_definition.count("oncopipe:run-id.$") >= 8
    assert "oncopipe:stage" in genomics_definition
    # and the sample's pseudonymous key (the router's obj-... key), never the sheet's id
    assert genomics_definition.count("oncopipe:sample.$") >= 8
    assert '\\"sample_key.$\\":\\"$$.Map.Item.Value.tag\\"' in genomics_definition


def test_orphan_fastq_reconciled_daily(synthesized: Any) -> None:
    built, _, _ = synthesized
    Template.from_stack(built.ingest).has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "cron(30 2 * * ? *)",
            "Targets": [Match.object_like({"DeadLetterConfig": Match.any_value()})],
        },
    )


def test_deid_on_read_is_opt_in(tmp_path: Path) -> None:
    context = cdk_context(env="dev")
    context["oncopipe:environments"]["dev"]["deid_on_read"] = True
    built = build_app(App(context=context, outdir=str(tmp_path)))
    built.app.synth()  # both nag packs pass with the access points
    ingest = Template.from_stack(built.ingest)
    ingest.resource_count_is("AWS::S3ObjectLambda::AccessPoint", 1)
    ingest.has_resource_properties(
        "AWS::S3ObjectLambda::AccessPoint",
        {
            "ObjectLambdaConfiguration": Match.object_like(
                {"TransformationConfigurations": [Match.object_like({"Actions": ["GetObject"]})]}
            )
        },
    )


def test_deid_on_read_is_off_by_default(synthesized: Any) -> None:
    built, _, _ = synthesized
    Template.from_stack(built.ingest).resource_count_is("AWS::S3ObjectLambda::AccessPoint", 0)


def _features_definition(built: OncopipeApp) -> str:
    """Return the daily imaging state machine's definition (the series one runs per series)."""
    machines = Template.from_stack(built.features).find_resources(
        "AWS::StepFunctions::StateMachine"
    )
    daily = built.features.resolve(built.features.state_machine.node.default_child.logical_id)
    return json.dumps(machines[daily]["Properties"]["DefinitionString"])


def test_imaging_volumes_then_radiomics_run_daily(synthesized: Any) -> None:
    built, _, _ = synthesized
    Template.from_stack(built.features).has_resource_properties(
        "AWS::Events::Rule",
        {"ScheduleExpression": "cron(0 3 * * ? *)",
         "Targets": [Match.object_like({"DeadLetterConfig": Match.any_value()})]},
    )  # fmt: skip
    # the Batch volumes job first, then the radiomics processing job, failures visible
    definition = _features_definition(built)
    volumes = definition.index("imaging-volumes")
    radiomics = definition.index("createProcessingJob.sync")
    assert volumes < radiomics
    assert "FeaturesFailed" in definition
    Template.from_stack(built.genomics).resource_count_is("AWS::Events::Rule", 0)


def test_processing_jobs_private_encrypted_and_sized_by_config(synthesized: Any) -> None:
    built, _, _ = synthesized
    definition = _features_definition(built)
    config = built.config
    assert f'\\"InstanceType\\":\\"{config.processing_instance_type}\\"' in definition
    assert f'\\"VolumeSizeInGB\\":{config.processing_volume_gb}' in definition
    assert f'\\"MaxRuntimeInSeconds\\":{config.processing_max_runtime_minutes * 60}' in definition
    assert '\\"VolumeKmsKeyId\\"' in definition  # the platform key's ARN (a token)
    assert '\\"VpcConfig\\"' in definition and '\\"Subnets\\"' in definition
    assert '\\"EnableInterContainerTrafficEncryption\\":true' in definition
    assert '\\"ContainerArguments\\":[\\"processing.radiomics\\",\\"stage\\"]' in definition


def test_processing_role_reads_volumes_and_writes_features_only(synthesized: Any) -> None:
    built, _, _ = synthesized
    template = Template.from_stack(built.features)
    roles = template.find_resources(
        "AWS::IAM::Role",
        {"Properties": {"AssumeRolePolicyDocument": Match.object_like({"Statement": [
            Match.object_like({"Principal": {"Service": "sagemaker.amazonaws.com"}})]})}},
    )  # fmt: skip
    assert sorted(r.rstrip("0123456789ABCDEF") for r in roles) == ["NotesRole", "ProcessingRole"]

    def policy_of(name: str) -> str:
        role_id = next(r for r in roles if r.startswith(name))
        return json.dumps([p for p in template.find_resources("AWS::IAM::Policy").values()
                           if {"Ref": role_id} in p["Properties"]["Roles"]])  # fmt: skip

    document = policy_of("ProcessingRole")
    for prefix in ("imaging/volumes/*", "imaging/masks/*", "imaging/radiomics/*", "_manifests/*"):
        assert prefix in document
    assert "imaging/dicom" not in document and "genomics/" not in document
    assert "s3:*" not in document and "Ingest" not in document
    # the notes job reads notes and sample sheets of ingest (PHI), never FASTQ or DICOM
    notes = policy_of("NotesRole")
    assert "/notes/*" in notes and "/samplesheets/*" in notes and "PseudonymSecret" in notes
    assert "/fastq/" not in notes and "/dicom/" not in notes


def _rescore_machine(built: Any) -> dict[str, Any]:
    """The Step Functions ``NightlyRescore`` (the model stack also has ``DeployOnApproval``)."""
    machines = Template.from_stack(built.model).find_resources("AWS::StepFunctions::StateMachine")
    found = [m for k, m in machines.items() if k.startswith("NightlyRescore")]
    assert len(found) == 1
    return found[0]


def _rescore_document(built: Any) -> dict[str, Any]:
    raw = _rescore_machine(built)["Properties"]["DefinitionString"]
    if isinstance(raw, dict):  # Fn::Join of strings and tokens (ARNs)
        raw = "".join(p if isinstance(p, str) else "TOKEN" for p in raw["Fn::Join"][1])
    document: dict[str, Any] = json.loads(raw)
    return document


def test_nightly_rescore_scores_todays_cohort_with_the_serving_version(synthesized: Any) -> None:
    built, _, _ = synthesized
    document = _rescore_document(built)
    states = document["States"]
    # the order of execution (Next pointers, the success path through both choices)
    chain, name = [], document["StartAt"]
    while name:
        chain.append(name)
        state = states[name]
        if state["Type"] == "Choice":
            name = state["Choices"][0]["Next"]
        else:
            name = state.get("Next")
    assert chain == ["Cohort", "ServingVersion", "AnyApproved", "DescribeServingVersion",
                     "HashArtifact", "DigestMatches", "TransformModel", "BatchTransform",
                     "Rescored"]  # fmt: skip
    assert states["Cohort"]["Resource"].endswith("createProcessingJob.sync")
    # the serving version: the newest Approved one of the group (a rejected one is not)
    listing = states["ServingVersion"]["Parameters"]
    assert listing["ModelApprovalStatus"] == "Approved"
    assert (listing["SortBy"], listing["SortOrder"], listing["MaxResults"]) == (
        "CreationTime", "Descending", 1)  # fmt: skip
    assert states["AnyApproved"]["Default"] == "NoApprovedVersion"
    # the full model, isolated in the VPC; the transform writes KMS-encrypted predictions
    model = states["TransformModel"]["Parameters"]
    assert model["PrimaryContainer"]["Environment"] == {"ONCOPIPE_MODEL_VARIANT": "full"}
    assert model["EnableNetworkIsolation"] is True and "VpcConfig" in model
    transform = states["BatchTransform"]
    assert transform["Resource"].endswith("createTransformJob.sync")
    assert transform["Parameters"]["TransformOutput"]["KmsKeyId"]
    assert transform["Parameters"]["TransformResources"]["VolumeKmsKeyId"]
    assert "transform/{}/" in transform["Parameters"]["TransformOutput"]["S3OutputPath.$"]
    # every task that can fail ends in the failure state, nothing half-scored is reported
    for name in ("Cohort", "ServingVersion", "DescribeServingVersion", "HashArtifact",
                 "TransformModel", "BatchTransform"):  # fmt: skip
        assert states[name]["Catch"][0]["Next"] == "RescoreFailed", name
    # nothing of training is left in Step Functions: the SageMaker Pipeline trains and tunes
    text = json.dumps(document)
    assert "createTrainingJob" not in text and "createHyperParameterTuningJob" not in text
    assert "createModelPackage" not in text
    # started nightly by EventBridge Scheduler, on the configured expression
    template = Template.from_stack(built.model)
    schedules = template.find_resources("AWS::Scheduler::Schedule")
    assert len(schedules) == 1
    props = next(iter(schedules.values()))["Properties"]
    assert props["ScheduleExpression"] == built.config.lifecycle.rescore_schedule
    assert props["ScheduleExpressionTimezone"] == "UTC"
    assert props["Target"]["DeadLetterConfig"]["Arn"]
    assert "NightlyRescore" in json.dumps(props["Target"]["Arn"])


def test_no_rescore_schedule_when_the_config_has_none(tmp_path: Path) -> None:
    context = cdk_context(env="dev")
    context["oncopipe:environments"]["dev"]["lifecycle"]["rescore_schedule"] = ""
    built = build_app(App(context=context, outdir=str(tmp_path)))
    Template.from_stack(built.model).resource_count_is("AWS::Scheduler::Schedule", 0)


def test_registry_and_tracking_server_exist_and_no_endpoint_until_a_model_is_approved(
    synthesized: Any,
) -> None:
    built, _, _ = synthesized
    template = Template.from_stack(built.model)
    template.has_resource_properties("AWS::SageMaker::ModelPackageGroup", {
        "ModelPackageGroupName": f"{built.config.prefix}-response"})  # fmt: skip
    template.has_resource_properties("AWS::SageMaker::MlflowTrackingServer", {
        "ArtifactStoreUri": Match.any_value(), "TrackingServerSize": "Small"})  # fmt: skip
    template.resource_count_is("AWS::SageMaker::Endpoint", 0)  # serving_model_package_arn ""


def test_endpoint_serves_the_approved_package_privately_with_capture(tmp_path: Path) -> None:
    context = cdk_context(env="dev")
    dev = context["oncopipe:environments"]["dev"]
    dev["serving_model_package_arn"] = (
        "arn:aws:sagemaker:eu-west-1:123456789012:model-package/oncopipe-dev-response/3"
    )
    dev["serving_serverless"] = True
    built = build_app(App(context=context, outdir=str(tmp_path)))
    built.app.synth()  # both nag packs pass
    template = Template.from_stack(built.model)
    template.resource_count_is("AWS::SageMaker::Endpoint", 2)
    template.has_resource_properties("AWS::SageMaker::Model", {
        "PrimaryContainer": {"ModelPackageName": dev["serving_model_package_arn"],
                             "Environment": {"ONCOPIPE_MODEL_VARIANT": "pruned"}},
        "VpcConfig": Match.any_value(), "EnableNetworkIsolation": True})  # fmt: skip
    template.has_resource_properties("AWS::SageMaker::EndpointConfig", {
        "KmsKeyId": Match.any_value(),
        "DataCaptureConfig": Match.object_like({"EnableCapture": True,
                                                "KmsKeyId": Match.any_value()}),
        "ProductionVariants": [Match.object_like({"InstanceType": dev["serving_instance_type"]})],
    })  # fmt: skip
    serverless = Match.object_like({"ServerlessConfig": Match.any_value()})
    template.has_resource_properties(
        "AWS::SageMaker::EndpointConfig", {"ProductionVariants": [serverless]}
    )
