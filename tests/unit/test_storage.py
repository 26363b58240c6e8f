"""ObjectStore against the answers real S3 gives and moto does not (botocore Stubber)."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from oncopipe.storage import ObjectStore


def _stubbed() -> tuple[ObjectStore, Stubber]:
    client = boto3.client(
        "s3", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    return ObjectStore(client), Stubber(client)


def test_head_of_a_missing_key_under_a_prefix_scoped_list_grant_is_none() -> None:
    # Real S3: HEAD of a missing key is 403 when ListBucket is allowed only with an
    # s3:prefix condition; the prefix listing that the condition allows says it is absent.
    store, stub = _stubbed()
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    stub.add_response(
        "list_objects_v2",
        {"KeyCount": 1, "Contents": [{"Key": "genomics/bam/pk-a/s.bam.bai"}]},
        {"Bucket": "curated", "Prefix": "genomics/bam/pk-a/s.bam", "MaxKeys": 1},
    )
    with stub:
        assert store.head("curated", "genomics/bam/pk-a/s.bam") is None
        assert not stub._queue  # the listing was consulted


def test_head_denied_on_an_existing_key_is_still_an_error() -> None:
    store, stub = _stubbed()
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    stub.add_response(
        "list_objects_v2",
        {"KeyCount": 1, "Contents": [{"Key": "imaging/dicom/x.dcm"}]},
        {"Bucket": "curated", "Prefix": "imaging/dicom/x.dcm", "MaxKeys": 1},
    )
    with stub, pytest.raises(ClientError):
        store.head("curated", "imaging/dicom/x.dcm")


def test_head_denied_and_listing_denied_is_an_error() -> None:
    store, stub = _stubbed()
    stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
    stub.add_client_error(
        "list_objects_v2", service_error_code="AccessDenied", http_status_code=403
    )
    with stub, pytest.raises(ClientError):
        store.head("ingest", "fastq/a_R1.fastq.gz")
