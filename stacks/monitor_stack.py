"""MonitorStack: model drift monitoring and the retrain gate of one environment."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, aws_ec2 as ec2, aws_sagemaker as sagemaker
from constructs import Construct

from oncopipe.deployment import EnvConfig
from stacks.components.model_monitor import DriftMonitor, RetrainGate
from stacks.components.patient_ready import PatientReady
from stacks.data_lake_stack import DataLakeStack
from stacks.features_stack import FeaturesStack
from stacks.model_stack import ModelStack

#: The model family the gate leases and budgets (one: the therapy-response model).
MODEL_FAMILY = "response"


class MonitorStack(Stack):
    """The daily drift job, its alarm, the retrain gate and the patient-ready path.

    The retrain target is the model stack's SageMaker Pipeline (``model.pipeline_name``), or
    the pipeline ``pipeline_name`` when given. Attributes: ``drift``
    (:class:`DriftMonitor`), ``gate`` (:class:`RetrainGate`), ``patient_ready``
    (:class:`PatientReady`: predictions of complete patients through the model stack's
    real-time endpoint, when one is deployed, triggered by ``features``' flows and the
    genomics jobs).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        model: ModelStack,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        features: FeaturesStack,
        pipeline_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)
        common: dict[str, Any] = {
            "config": config,
            "key": lake.platform_key,
            "vpc": vpc,
            "subnets": subnets,
            "curated": curated,
            "artifacts": artifacts,
        }
        # a pinned endpoint (serving_model_package_arn), else the one approval deploys to
        pinned = getattr(model, "endpoint", None)
        if not isinstance(pinned, sagemaker.CfnEndpoint):
            pinned = None
        self.drift = DriftMonitor(
            self,
            "Drift",
            model_package_group_name=str(model.model_package_group.model_package_group_name),
            # prediction drift reads the serving endpoint's captured data
            endpoint_name=pinned.attr_endpoint_name if pinned else model.endpoint_name,
            **common,
        )
        self.gate = RetrainGate(
            self, "RetrainGate", alarm=self.drift.alarm, model_family=MODEL_FAMILY,
            sagemaker_pipeline_name=pipeline_name or model.pipeline_name,
            model_package_group_name=model.group_name, **common,
        )  # fmt: skip
        self.patient_ready = PatientReady(
            self,
            "PatientReady",
            config=config,
            key=lake.platform_key,
            vpc=vpc,
            subnets=subnets,
            buckets={
                "ingest": lake.export_bucket(self, lake.ingest, lake.ingest_key),
                "quarantine": lake.export_bucket(self, lake.quarantine, lake.ingest_key),
                "curated": curated,
                "artifacts": artifacts,
            },
            run_state_machines=[
                features.notes_arrival.state_machine,
                features.series_imaging.state_machine,
            ],
            sweep_state_machines=[features.state_machine],
            genomics_job_queue=features.genomics_job_queue,
            endpoint=pinned,
            endpoint_name=model.endpoint_name,
        )
