"""Builds the oncopipe CDK app: used by ``app.py`` and by the tests, so both check the same."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_cdk import App, Tags, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from oncopipe.deployment import EnvConfig, load_config
from stacks.data_lake_stack import DataLakeStack
from stacks.features_stack import FeaturesStack
from stacks.genomics_stack import GenomicsStack
from stacks.ingest_stack import IngestStack
from stacks.model_stack import ModelStack
from stacks.monitor_stack import MonitorStack
from stacks.nag import acknowledge_inline_policies
from stacks.network_stack import NetworkStack
from stacks.ops_stack import OpsStack, add_metrics_environment


@dataclass(frozen=True)
class OncopipeApp:
    app: App
    config: EnvConfig
    lake: DataLakeStack
    network: NetworkStack
    genomics: GenomicsStack
    ingest: IngestStack
    features: FeaturesStack
    model: ModelStack
    monitor: MonitorStack
    ops: OpsStack


def build_app(
    app: App | None = None, *, context: Mapping[str, Any] | None = None, nag: bool = True
) -> OncopipeApp:
    """Return the app with every stack of the selected environment and both nag packs.

    ``context`` (tests) is merged into the app context; the environment comes from the
    ``env`` context key (``-c env=prod``) or ``oncopipe:default-env``. ``nag=False`` exists
    for the synth benchmark's baseline only; ``app.py`` always runs both packs.

    Raises:
        ConfigurationError: the cdk.json configuration is invalid.
    """
    app = app or App(context=dict(context or {}))
    raw_context = {
        key: app.node.try_get_context(key)
        for key in ("oncopipe:environments", "oncopipe:default-env")
    }
    config = load_config(raw_context, app.node.try_get_context("env"))
    prefix = f"Oncopipe-{config.name}"
    # Stacks are environment-agnostic: synth makes no AWS call (no AZ lookup).
    lake = DataLakeStack(app, f"{prefix}-DataLake", config=config)
    network = NetworkStack(app, f"{prefix}-Network", config=config, log_key=lake.platform_key)
    genomics = GenomicsStack(
        app,
        f"{prefix}-Genomics",
        config=config,
        lake=lake,
        vpc=network.vpc,
        subnets=network.private_subnets,
    )
    features = FeaturesStack(
        app,
        f"{prefix}-Features",
        config=config,
        lake=lake,
        genomics=genomics,
        vpc=network.vpc,
        subnets=network.private_subnets,
    )
    ingest = IngestStack(
        app,
        f"{prefix}-Ingest",
        config=config,
        lake=lake,
        vpc=network.vpc,
        subnets=network.private_subnets,
        genomics=genomics,
        # each routed note queues its run's notes job (processed on arrival)
        notes_arrival=features.notes_arrival,
    )
    # The de-id function records each instance and starts its series' settle timer.
    features.series_imaging.grant_timer_start(ingest.deid)
    model = ModelStack(
        app,
        f"{prefix}-Model",
        config=config,
        lake=lake,
        features=features,
        vpc=network.vpc,
        subnets=network.private_subnets,
    )
    # Only the approver role approves, only training writes models/ (every stack's roles).
    model.govern(app)
    # Model drift and the retrain gate (which starts the model pipeline).
    monitor = MonitorStack(
        app,
        f"{prefix}-Monitor",
        config=config,
        lake=lake,
        model=model,
        features=features,
        vpc=network.vpc,
        subnets=network.private_subnets,
    )
    # Last: it watches every other stack (alarms, dashboard, scheduled drift detection).
    ops = OpsStack(
        app,
        f"{prefix}-Ops",
        config=config,
        lake=lake,
        watch=(lake, network, genomics, ingest, features, model, monitor),
    )
    add_metrics_environment((genomics, ingest, features, model, monitor, ops), config.name)
    for stack in (lake, network, genomics, ingest, features, model, monitor, ops):
        acknowledge_inline_policies(stack)
        Tags.of(stack).add("project", config.project)
        Tags.of(stack).add("environment", config.name)
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app), HIPAASecurityChecks(app))
    return OncopipeApp(
        app=app,
        config=config,
        lake=lake,
        network=network,
        genomics=genomics,
        ingest=ingest,
        features=features,
        model=model,
        monitor=monitor,
        ops=ops,
    )
