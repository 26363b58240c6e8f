"""cdk-nag runs in the app: an unacknowledged finding makes synth fail."""

from __future__ import annotations

import pytest
from aws_cdk import App, Stack, aws_s3 as s3

from stacks.app_factory import build_app
from tests.conftest import cdk_context


@pytest.mark.slow
def test_an_insecure_bucket_fails_synth(tmp_path: object) -> None:
    app = App(context=cdk_context(env="dev"), outdir=str(tmp_path))
    built = build_app(app)
    s3.Bucket(Stack.of(built.lake), "Careless")  # no KMS, no logs, no TLS policy
    with pytest.raises(Exception, match="ValidationFailed") as err:
        app.synth()
    message = str(err.value)
    assert "Oncopipe-dev-DataLake/Careless/Resource" in message
    assert "AwsSolutions-S1" in message and "HIPAA.Security-S3DefaultEncryptionKMS" in message
    # Only the careless bucket is reported: the platform's own resources stay clean.
    assert message.count("/Resource aws-cdk-lib") == message.count("Careless/Resource")
