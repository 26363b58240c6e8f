"""Lambda adapter of the S3 Object Lambda access point: de-identify DICOM on read (opt-in)."""

from __future__ import annotations

import urllib.request
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.imaging.on_read import handle_get_object
from oncopipe.imaging.options import options_from_env
from oncopipe.pseudonym import load_secret

logger = Logger(service="dicom-deid-on-read")
OPTIONS = options_from_env()
S3 = boto3.client("s3")


def _fetch(url: str) -> bytes:
    if not url.startswith("https://"):
        raise ValueError("inputS3Url must be https")
    with urllib.request.urlopen(url, timeout=45) as response:  # noqa: S310 - checked https
        return bytes(response.read())


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = handle_get_object(
        event, fetch=_fetch, respond=S3.write_get_object_response,
        secret=load_secret(), options=OPTIONS,
    )  # fmt: skip
    logger.info("get", extra=result)
    return {"status_code": result["status"]}
