"""The network: private isolated subnets, VPC endpoints, flow logs. No internet egress."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack, aws_ec2 as ec2, aws_kms as kms
from constructs import Construct

from oncopipe.deployment import EnvConfig
from stacks.components.log_group import encrypted_log_group

#: Interface endpoints the stages need without a NAT: images (ECR), logs, credentials,
#: the pseudonym secret, SageMaker, X-Ray traces, the ECS agent of Batch instances, and the
#: event-driven imaging (the settle timer queue, the per-series state machine).
INTERFACE_ENDPOINTS = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "SageMakerApi": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_API,
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    # the managed MLflow tracking server, which training jobs log to from the VPC
    "SageMakerMlflow": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_EXPERIMENTS,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
    # The ECS agent of Batch instances registers and reports through these.
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,
    "EcsAgent": ec2.InterfaceVpcEndpointAwsService.ECS_AGENT,
    "EcsTelemetry": ec2.InterfaceVpcEndpointAwsService.ECS_TELEMETRY,
    # The series settle: its timer queue and the per-series conversion state machine.
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "StepFunctions": ec2.InterfaceVpcEndpointAwsService.STEP_FUNCTIONS,
    # Model drift and the retrain gate: metrics, budget notices.
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "Sns": ec2.InterfaceVpcEndpointAwsService.SNS,
}
#: With ``lifecycle.feature_store``: the cohort job puts its records through this one.
FEATURE_STORE_ENDPOINTS = {
    "SageMakerFeatureStore": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_FEATURESTORE_RUNTIME,
}


class NetworkStack(Stack):
    """The VPC every Lambda, Batch job and SageMaker job runs in.

    Creates: a VPC with only private isolated subnets (no NAT, no internet gateway), the
    default security group closed, an S3 gateway endpoint, the interface endpoints in
    :data:`INTERFACE_ENDPOINTS` (and :data:`FEATURE_STORE_ENDPOINTS` with
    ``lifecycle.feature_store``; private DNS on, HTTPS from the VPC only), and flow logs of
    all traffic to a KMS-encrypted log group.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        log_key: kms.IKey,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        flow_log_group = encrypted_log_group(
            self, "FlowLogs", key=log_key, retention_days=config.log_retention_days
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
            max_azs=config.max_azs,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="private",
                    subnet_type=ec2.SubnetType.PRIVATE_ISOLATED,
                    cidr_mask=20,
                )
            ],
            restrict_default_security_group=True,
            flow_logs={
                "All": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
        )
        self.private_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.vpc.add_gateway_endpoint(
            "S3",
            service=ec2.GatewayVpcEndpointAwsService.S3,
            subnets=[self.private_subnets],
        )
        # The series settle table (de-id and settle functions); a gateway costs nothing.
        self.vpc.add_gateway_endpoint(
            "DynamoDb",
            service=ec2.GatewayVpcEndpointAwsService.DYNAMODB,
            subnets=[self.private_subnets],
        )
        # One group for all endpoints, HTTPS from the VPC's CIDR written as a literal (not
        # the VPC's token) so that the nag rules on ingress can evaluate it.
        self.endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="HTTPS from inside the VPC to the interface endpoints",
            allow_all_outbound=False,
        )
        self.endpoint_security_group.add_ingress_rule(
            ec2.Peer.ipv4(config.vpc_cidr), ec2.Port.tcp(443), "HTTPS from the VPC"
        )
        endpoints = dict(INTERFACE_ENDPOINTS)
        if config.lifecycle.feature_store:
            endpoints.update(FEATURE_STORE_ENDPOINTS)
        for name, service in endpoints.items():
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=self.private_subnets,
                private_dns_enabled=True,
                security_groups=[self.endpoint_security_group],
                open=False,
            )
