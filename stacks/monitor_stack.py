"""MonitorStack: model drift monitoring and the retrain gate of one environment."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, aws_ec2 as ec2
from constructs import Construct

from oncopipe.deployment import EnvConfig
from stacks.components.model_monitor import DriftMonitor, RetrainGate
from stacks.data_lake_stack import DataLakeStack
from stacks.model_stack import ModelStack

#: The model family the gate leases and budgets (one: the therapy-response model).
MODEL_FAMILY = "response"


class MonitorStack(Stack):
    """The daily drift job, its alarm and the retrain gate (drift alarm + weekly schedule).

    The retrain target is the SageMaker Pipeline ``pipeline_name`` when given, otherwise the
    model stack's pipeline state machine (``model.pipeline``). Attributes: ``drift``
    (:class:`DriftMonitor`), ``gate`` (:class:`RetrainGate`).
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
        self.drift = DriftMonitor(
            self,
            "Drift",
            model_package_group_name=str(model.model_package_group.model_package_group_name),
            **common,
        )
        target: dict[str, Any] = (
            {"sagemaker_pipeline_name": pipeline_name}
            if pipeline_name
            else {"state_machine": model.pipeline}
        )
        self.gate = RetrainGate(
            self, "RetrainGate", alarm=self.drift.alarm, model_family=MODEL_FAMILY,
            **target, **common,
        )  # fmt: skip
