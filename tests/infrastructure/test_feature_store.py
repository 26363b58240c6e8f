"""The patient vector in SageMaker Feature Store: features, records, publisher, template."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aws_cdk import App, Stack, aws_iam as iam, aws_kms as kms, aws_s3 as s3
from aws_cdk.assertions import Match, Template

from oncopipe import catalog, layout
from oncopipe.cohort import feature_store as fs
from oncopipe.cohort.columns import radiomic_feature_names
from oncopipe.cohort.dataset import build_dataset
from oncopipe.cohort.synthetic import generate_tables
from oncopipe.deployment import load_config
from oncopipe.manifest import StepContext, process_item, read_manifest
from oncopipe.pipeline import definition as d
from oncopipe.storage import ObjectStore
from tests.conftest import REGION, cdk_context, make_bucket

WHEN = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)
LABELS = ("response", "eligible")


# -- feature definitions ------------------------------------------------------------------------
def test_features_are_the_model_inputs_with_valid_names_from_the_radiomic_list() -> None:
    features = fs.feature_definitions()
    names = [f.name for f in features]
    assert names[:4] == ["patient_key", "event_time", "build_id", "split"]
    # every radiomic feature of radiomic_features.json, in its order, as Fractional
    radiomic = [f for f in features if f.column == "radiomic_values"]
    assert tuple(f.name for f in radiomic) == radiomic_feature_names()
    assert {f.type for f in radiomic} == {fs.FRACTIONAL}
    types = {f.name: f.type for f in features}
    assert types["has_radiomics"] == fs.INTEGRAL and types["note_tokens"] == fs.STRING
    assert len(names) == len(set(n.lower() for n in names)) <= fs.MAX_FEATURES
    assert all(fs.NAME_RE.fullmatch(n) and len(n) <= 64 for n in names)
    # outcomes and provenance are not inputs
    for left_out in (*LABELS, "radiomic_roi", "radiomic_series", "note_ids", "note_starts"):
        assert left_out not in names
    assert fs.feature_definitions() == features  # deterministic (synth and run time agree)


def test_invalid_names_and_group_names_are_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        fs.check_names(["patient_key", "write_time"])
    with pytest.raises(ValueError, match="collide"):
        fs.check_names(["original_Mean", "original_mean"])
    with pytest.raises(ValueError, match="at most 64"):
        fs.check_names(["x" * 65])
    with pytest.raises(ValueError, match="at most 2500"):
        fs.check_names([f"f{i}" for i in range(2501)])
    assert fs.feature_group_name("oncopipe-dev") == "oncopipe-dev-patient-inputs"
    with pytest.raises(ValueError, match="shorten"):
        fs.feature_group_name("p" * 50)


def test_event_time_is_iso_8601_utc_with_z_and_milliseconds() -> None:
    assert fs.event_time(WHEN) == "2026-03-04T05:06:07.891Z"
    assert fs.event_time(WHEN.isoformat()) == "2026-03-04T05:06:07.891Z"
    paris = WHEN.astimezone(timezone(timedelta(hours=1)))
    assert fs.event_time(paris) == "2026-03-04T05:06:07.891Z"
    assert fs.event_time(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000Z"


# -- the record builder ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset() -> Any:
    """A small cohort with all 1,316 radiomic features, built as the cohort step does."""
    tables = generate_tables(30, seed=11)
    return build_dataset(tables.variants, tables.radiomics, tables.notes, tables.labels, seed=2)


def test_each_patient_becomes_one_record_of_its_model_inputs(dataset: Any) -> None:
    records = list(fs.dataset_records(dataset, when=WHEN, build_id="build-7", batch_rows=7))
    rows = dataset.table.to_pylist()
    assert [r.patient_key for r in records] == [row["patient_key"] for row in rows]
    names = [f.name for f in fs.feature_definitions()]
    complete = [r for r, row in zip(records, rows, strict=True)
                if row["has_radiomics"] and row["split"]]  # fmt: skip
    assert complete
    # a patient with every input has exactly the group's features, in its order
    assert [f["FeatureName"] for f in complete[0].record] == names
    features = dataset.preprocessing.radiomic_features
    types = {f.name: f.type for f in fs.feature_definitions()}
    for record, row in zip(records, rows, strict=True):
        values = record.values()
        assert set(values) <= set(names) and not set(values) & set(LABELS)
        assert values["patient_key"] == row["patient_key"]
        assert values["event_time"] == "2026-03-04T05:06:07.891Z"
        assert values["build_id"] == "build-7" and values["split"] == row["split"]
        assert values["has_genomics"] == str(int(row["has_genomics"]))
        for column in fs.LIST_COLUMNS:
            assert json.loads(values[column]) == pytest.approx(row[column])
        if row["has_radiomics"]:
            for i in (0, len(features) // 2, len(features) - 1):
                assert float(values[features[i]]) == row["radiomic_values"][i]
        else:  # no radiomics: no radiomic feature at all, not zeros
            assert not [n for n in values if types[n] == fs.FRACTIONAL]
        assert all(f.keys() == {"FeatureName", "ValueAsString"} for f in record.record)
        assert all(isinstance(f["ValueAsString"], str) for f in record.record)


def test_none_and_nan_are_left_out_of_a_record(dataset: Any) -> None:
    features = dataset.preprocessing.radiomic_features
    row = dict(next(r for r in dataset.table.to_pylist() if r["has_radiomics"]))
    values = list(row["radiomic_values"])
    values[0], values[1] = math.nan, math.inf
    row.update(radiomic_values=values, split=None, has_notes=None,
               note_numeric=[0.5, math.nan])  # fmt: skip
    (record,) = list(fs.iter_patient_records([row], features, when=WHEN, build_id="b"))
    got = record.values()
    assert features[0] not in got and features[1] not in got and features[2] in got
    assert "split" not in got and "has_notes" not in got
    assert json.loads(got["note_numeric"]) == [0.5, None]  # JSON has no NaN
    assert "nan" not in json.dumps(record.record).lower()


def test_a_bad_row_names_the_patient_key_and_the_feature_never_the_value(dataset: Any) -> None:
    features = dataset.preprocessing.radiomic_features
    row = dict(dataset.table.to_pylist()[0])
    key = row["patient_key"]
    with pytest.raises(fs.FeatureStoreError) as err:
        list(fs.iter_patient_records([{**row, "has_genomics": "secret-value"}], features,
                                     when=WHEN, build_id="b"))  # fmt: skip
    assert key in str(err.value) and "has_genomics" in str(err.value)
    assert "secret-value" not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(fs.FeatureStoreError, match="radiomic values"):
        list(fs.iter_patient_records([{**row, "radiomic_values": [0.0, 1.0]}], features,
                                     when=WHEN, build_id="b"))  # fmt: skip


def test_dataset_features_outside_the_group_are_not_published(dataset: Any) -> None:
    row = dict(next(r for r in dataset.table.to_pylist() if r["has_radiomics"]))
    features = [*dataset.preprocessing.radiomic_features, "original_firstorder_Unheard"]
    row["radiomic_values"] = [*row["radiomic_values"], 1.0]
    (record,) = list(fs.iter_patient_records([row], features, when=WHEN, build_id="b"))
    assert "original_firstorder_Unheard" not in record.values()


# -- the publisher -----------------------------------------------------------------------------
GROUP = "oncopipe-test-patient-inputs"


@pytest.fixture
def runtime(aws_env: None) -> Any:
    import boto3
    from botocore.config import Config
    from botocore.stub import Stubber

    client = boto3.client("sagemaker-featurestore-runtime", region_name=REGION,
                          config=Config(retries={"total_max_attempts": 1}))  # fmt: skip
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _records(dataset: Any, n: int) -> list[fs.PatientRecord]:
    return list(fs.dataset_records(dataset, when=WHEN, build_id="b"))[:n]


def test_publisher_puts_every_record_and_retries_throttling(runtime: Any, dataset: Any) -> None:
    client, stubber = runtime
    records = _records(dataset, 2)
    expected = [{"FeatureGroupName": GROUP, "Record": list(r.record)} for r in records]
    stubber.add_client_error("put_record", "ThrottlingException", http_status_code=400)
    stubber.add_client_error("put_record", "ServiceUnavailable", http_status_code=503)
    stubber.add_response("put_record", {}, expected[0])
    stubber.add_response("put_record", {}, expected[1])
    slept: list[float] = []
    assert fs.publish(client, GROUP, records, sleep=slept.append) == 2
    assert len(slept) == 2 and all(0 <= s <= 10 for s in slept)


def test_publisher_gives_up_after_bounded_throttling(runtime: Any, dataset: Any) -> None:
    client, stubber = runtime
    (record,) = _records(dataset, 1)
    for _ in range(3):
        stubber.add_client_error("put_record", "ThrottlingException", http_status_code=400)
    with pytest.raises(fs.FeatureStoreError, match="after 3 attempts") as err:
        fs.publish(client, GROUP, [record], max_attempts=3, sleep=lambda s: None)
    assert err.value.code == "ThrottlingException"


def test_publisher_failure_names_the_key_and_feature_not_the_value(
    runtime: Any, dataset: Any
) -> None:
    from oncopipe.boundary import failure_fields

    client, stubber = runtime
    first, second = _records(dataset, 2)
    stubber.add_response("put_record", {})
    stubber.add_client_error(
        "put_record", "ValidationError", http_status_code=400,
        service_message="Feature note_tokens has an invalid value 'ecog=secret-value'",
    )  # fmt: skip
    with pytest.raises(fs.FeatureStoreError) as err:
        fs.publish(client, GROUP, [first, second], sleep=lambda s: None)
    error = err.value
    assert error.patient_key == second.patient_key and error.features == ("note_tokens",)
    assert second.patient_key in str(error) and "note_tokens" in str(error)
    assert "secret-value" not in str(error) and "secret-value" not in str(error.__cause__)
    # the boundary still sees the AWS code and operation (what an operator needs)
    fields = failure_fields(error)
    assert fields["aws_errors"] == [
        "An error occurred (ValidationError) when calling the PutRecord operation"
    ]
    assert error.fields() == {"patient_key": second.patient_key, "features": ["note_tokens"],
                              "aws_code": "ValidationError"}  # fmt: skip


# -- the cohort step ---------------------------------------------------------------------------
CURATED = "fs-curated"
SMALL = [*radiomic_feature_names()[:8], "original_shape_VoxelVolume"]


class Recorder:
    """A featurestore-runtime client that keeps what it was sent (or refuses its n-th put)."""

    def __init__(self, refuse: int = 0) -> None:
        self.puts: list[dict[str, Any]] = []
        self.refuse = refuse
        self.refused = ""

    def put_record(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        if len(self.puts) + 1 == self.refuse:
            self.refused = next(f["ValueAsString"] for f in kwargs["Record"]
                                if f["FeatureName"] == "patient_key")  # fmt: skip
            raise ClientError({"Error": {"Code": "AccessForbidden", "Message": "no"}}, "PutRecord")
        self.puts.append(kwargs)
        return {}


@pytest.fixture
def curated(s3: Any, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """Committed feature tables and labels in a curated bucket, as the stages leave them."""
    make_bucket(s3, CURATED)
    store = ObjectStore(s3)
    tables = generate_tables(24, seed=3, features=SMALL)
    for name, table in {"variants": "variants", "radiomics": "radiomics",
                        "notes": "note_concepts"}.items():  # fmt: skip
        key = f"{catalog.TABLES[table].prefix}pk-all/{name}.parquet"
        buffer = io.BytesIO()
        pq.write_table(getattr(tables, name), buffer)
        ctx = StepContext(store=store, manifest_bucket=CURATED, run_id="run-1", step=name)
        data = buffer.getvalue()
        process_item(ctx, name, [], lambda w, key=key, data=data: w.put(CURATED, key, data) and {})
    buffer = io.BytesIO()
    pq.write_table(tables.labels, buffer)
    store.put_bytes(CURATED, f"{layout.CURATED_LABELS}labels.parquet", buffer.getvalue(), tags={})
    monkeypatch.setenv("CURATED_BUCKET", CURATED)
    return store


def test_the_committed_build_is_published_and_a_rerun_puts_the_same_records(
    curated: ObjectStore,
) -> None:
    from oncopipe.cohort.stage import build, publish_features

    stats: dict[str, Any] = {}
    summary = build(CURATED, "build-1", curated, stats=stats)
    client = Recorder()
    key = str(stats["manifest_key"])
    put = publish_features(CURATED, "build-1", curated, client, GROUP, manifest_key=key)
    assert put == summary["patients"] == len(client.puts) > 1
    document = read_manifest(curated, CURATED, key)
    assert document is not None
    stamp = fs.event_time(document["finished_at"])  # the time the dataset committed
    assert {p["FeatureGroupName"] for p in client.puts} == {GROUP}
    assert all({"FeatureName": "event_time", "ValueAsString": stamp} in p["Record"]
               for p in client.puts)  # fmt: skip
    # a rerun skips the finished build and puts the same records again: an upsert
    again = Recorder()
    stats = {}
    build(CURATED, "build-1", curated, stats=stats)
    assert stats["status"] == "skipped"
    publish_features(CURATED, "build-1", curated, again, GROUP, manifest_key=key)
    assert again.puts == client.puts


def test_a_publishing_failure_fails_the_step_after_the_dataset_is_committed(
    curated: ObjectStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import processing.cohort as step

    refusing = Recorder(refuse=2)
    monkeypatch.setenv("FEATURE_GROUP_NAME", GROUP)
    monkeypatch.setattr(step, "featurestore_client", lambda: refusing)
    assert step.main(["stage", "--build-id", "build-2"]) == 1
    victim = refusing.refused
    assert victim.startswith("pk-")
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()
               if x.startswith("{") and '"_aws"' not in x]  # fmt: skip
    assert line == {"build_id": "build-2", "status": "failed", "error": "FeatureStoreError",
                    "aws_errors": ["An error occurred (AccessForbidden) when calling the "
                                   "PutRecord operation"],
                    "patient_key": victim, "features": [], "aws_code": "AccessForbidden",
                    "dataset": "committed"}  # fmt: skip
    dataset_key = f"{layout.CURATED_COHORT_DATASET}build-2/dataset.parquet"
    assert catalog.committed_files(curated, CURATED, "cohort_dataset") == [dataset_key]
    # the rerun completes the publication (the build itself is skipped)
    monkeypatch.setattr(step, "featurestore_client", lambda: Recorder())
    assert step.main(["stage", "--build-id", "build-2"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()
               if x.startswith("{") and '"_aws"' not in x]  # fmt: skip
    assert line["feature_records"] == line["patients"] > 1


# -- the template ------------------------------------------------------------------------------
def _config(*, online: bool) -> Any:
    context = cdk_context(env="dev")
    lifecycle = context["oncopipe:environments"]["dev"]["lifecycle"]
    lifecycle.update(feature_store=True, feature_store_online=online)
    return load_config(context, "dev")


def _bare(online: bool) -> tuple[Template, Any, iam.Role]:
    """The construct on a bare stack (its own bucket and keys) and a role it grants to."""
    from stacks.components.feature_store import PatientFeatureStore

    stack = Stack(App(), "Bare")
    curated_key, platform_key = kms.Key(stack, "CuratedKey"), kms.Key(stack, "PlatformKey")
    bucket = s3.Bucket(stack, "Curated", encryption_key=curated_key)
    store = PatientFeatureStore(stack, "Store", config=_config(online=online), curated=bucket,
                                curated_key=curated_key, database_name="oncopipe_dev_curated",
                                online_key=platform_key)  # fmt: skip
    publisher = iam.Role(
        stack, "Publisher", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com")
    )
    store.grant_publish(publisher)
    return Template.from_stack(stack), stack, publisher


def test_the_group_keeps_its_offline_store_in_the_curated_zone_with_its_glue_table() -> None:
    template, stack, _ = _bare(online=False)
    template.resource_count_is("AWS::SageMaker::FeatureGroup", 1)
    (group,) = template.find_resources("AWS::SageMaker::FeatureGroup").values()
    props = group["Properties"]
    assert props["FeatureGroupName"] == "oncopipe-dev-patient-inputs"
    assert props["RecordIdentifierFeatureName"] == "patient_key"
    assert props["EventTimeFeatureName"] == "event_time"
    assert props["FeatureDefinitions"] == [f.cfn() for f in fs.feature_definitions()]
    assert "OnlineStoreConfig" not in props  # off unless feature_store_online
    offline = props["OfflineStoreConfig"]
    assert offline["S3StorageConfig"]["S3Uri"]["Fn::Join"][1][-1] == "/cohort/feature-store"
    assert offline["S3StorageConfig"]["KmsKeyId"] == {
        "Fn::GetAtt": [stack.get_logical_id(stack.node.find_child("CuratedKey").node.default_child),
                       "Arn"]}  # fmt: skip
    assert offline["DisableGlueTableCreation"] is False
    assert offline["DataCatalogConfig"] == {"Catalog": "AwsDataCatalog",
                                            "Database": "oncopipe_dev_curated",
                                            "TableName": "patient_inputs"}  # fmt: skip
    # the offline store's role writes that prefix only, and reads and alters only its table
    (role_id,) = template.find_resources("AWS::IAM::Role", {"Properties": {
        "Description": Match.string_like_regexp("Feature Store")}})  # fmt: skip
    assert props["RoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}
    statements = _statements(template, role_id)
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert len(writes) == 1 and json.dumps(writes[0]["Resource"]).endswith(
        '"/cohort/feature-store/*"]]}'
    )
    glue = next(s for s in statements if "glue:UpdateTable" in s["Action"])
    assert json.dumps(glue["Resource"]).count(":table/oncopipe_dev_curated/patient_inputs") == 1
    template.has_resource_properties("AWS::LakeFormation::PrincipalPermissions", {
        "Permissions": ["DESCRIBE", "ALTER"],
        "Resource": {"Table": Match.object_like({"Name": "patient_inputs"})}})  # fmt: skip


def _statements(template: Template, role_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in template.find_resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            for s in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                out.append({**s, "Action": actions})
    return out


def test_the_online_store_only_with_its_flag_and_with_the_platform_key() -> None:
    template, stack, publisher = _bare(online=True)
    (group,) = template.find_resources("AWS::SageMaker::FeatureGroup").values()
    key = stack.get_logical_id(stack.node.find_child("PlatformKey").node.default_child)
    assert group["Properties"]["OnlineStoreConfig"] == {
        "EnableOnlineStore": True, "StorageType": "Standard",
        "SecurityConfig": {"KmsKeyId": {"Fn::GetAtt": [key, "Arn"]}}}  # fmt: skip
    # the publisher may PutRecord to this group only and decrypt with the online key
    statements = _statements(template, stack.get_logical_id(publisher.node.default_child))
    puts = [s for s in statements if "sagemaker:PutRecord" in s["Action"]]
    assert len(puts) == 1 and puts[0]["Action"] == ["sagemaker:PutRecord"]
    assert json.dumps(puts[0]["Resource"]).endswith(
        ':feature-group/oncopipe-dev-patient-inputs"]]}'
    )
    assert any("kms:Decrypt" in s["Action"] and s["Resource"] == {"Fn::GetAtt": [key, "Arn"]}
               for s in statements)  # fmt: skip
    offline, stack, publisher = _bare(online=False)
    role_id = stack.get_logical_id(publisher.node.default_child)
    assert not [s for s in _statements(offline, role_id) if "kms:Decrypt" in s["Action"]]


def test_the_feature_store_template_passes_cfn_lint() -> None:
    from cfnlint.api import lint_all

    template, _, _ = _bare(online=True)
    errors = [str(m) for m in lint_all(json.dumps(template.to_json()))
              if m.rule.id.startswith("E") and "does not exist in" not in m.message]  # fmt: skip
    assert errors == []


def test_without_the_option_there_is_no_feature_store(app_dev: Any) -> None:
    assert not app_dev.built.config.lifecycle.feature_store
    assert app_dev.built.model.feature_store is None
    Template.from_stack(app_dev.built.model).resource_count_is("AWS::SageMaker::FeatureGroup", 0)
    network = json.dumps(Template.from_stack(app_dev.built.network).to_json())
    assert "featurestore" not in network
    env = _cohort_step(Template.from_stack(app_dev.built.model))["Arguments"]["Environment"]
    assert "FEATURE_GROUP_NAME" not in env


def _cohort_step(model: Template) -> dict[str, Any]:
    from tests.infrastructure.test_model_pipeline_stack import _render

    (pipeline,) = model.find_resources("AWS::SageMaker::Pipeline").values()
    body = json.loads(
        _render(pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"])
    )
    return next(s for s in d.all_steps(body["Steps"]) if s["Name"] == d.COHORT)


@pytest.fixture(scope="module")
def app_on(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dev app with the feature store (online too), both nag packs on: synth fails on
    an unacknowledged finding."""
    from stacks.app_factory import build_app

    context = cdk_context(env="dev")
    context["oncopipe:environments"]["dev"]["lifecycle"].update(
        feature_store=True, feature_store_online=True
    )
    outdir = tmp_path_factory.mktemp("cdk-feature-store")
    built = build_app(App(context=context, outdir=str(outdir)))
    built.app.synth()
    return built, outdir


def test_with_the_option_the_cohort_step_publishes_and_nag_passes(app_on: Any) -> None:
    built, outdir = app_on
    report = Path(outdir) / "validation-report.json"
    if report.exists():
        document = json.loads(report.read_text())
        assert [v for p in document["pluginReports"] for v in p.get("violations", [])] == []
    model = Template.from_stack(built.model)
    model.resource_count_is("AWS::SageMaker::FeatureGroup", 1)
    group = built.model.feature_store.feature_group_name
    # the pipeline's cohort step gets the group's name
    env = _cohort_step(model)["Arguments"]["Environment"]
    assert env["FEATURE_GROUP_NAME"] == group == "oncopipe-dev-patient-inputs"
    assert "CURATED_BUCKET" in env
    # the cohort role, and no other role of the app, may put records: to that group only
    puts = []
    for stack in (built.lake, built.network, built.genomics, built.ingest, built.features,
                  built.model, built.monitor, built.ops):  # fmt: skip
        template = Template.from_stack(stack)
        for policy in template.find_resources("AWS::IAM::Policy").values():
            for s in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                if any(a in ("sagemaker:PutRecord", "sagemaker:*", "*") for a in actions):
                    puts.append((policy["Properties"]["Roles"], s))
    cohort = built.model.get_logical_id(built.model.cohort_role.node.default_child)
    assert [roles for roles, _ in puts] == [[{"Ref": cohort}]]
    assert json.dumps(puts[0][1]["Resource"]).endswith(f':feature-group/{group}"]]}}')
    # the job reaches Feature Store from the VPC
    endpoints = Template.from_stack(built.network).find_resources("AWS::EC2::VPCEndpoint")
    featurestore = [
        e
        for e in endpoints.values()
        if "sagemaker.featurestore-runtime" in json.dumps(e["Properties"]["ServiceName"])
    ]
    assert len(featurestore) == 1 and featurestore[0]["Properties"]["PrivateDnsEnabled"] is True


def test_pipeline_settings_refuse_a_second_curated_bucket() -> None:
    from tests.unit.test_pipeline_definition import settings

    with pytest.raises(d.DefinitionError, match="CURATED_BUCKET"):
        d.model_pipeline(settings(cohort_environment={"CURATED_BUCKET": "other"}))
    definition = d.model_pipeline(settings(cohort_environment={"FEATURE_GROUP_NAME": GROUP}))
    cohort = next(s for s in d.all_steps(definition["Steps"]) if s["Name"] == d.COHORT)
    assert cohort["Arguments"]["Environment"]["FEATURE_GROUP_NAME"] == GROUP
