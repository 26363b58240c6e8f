"""Runs the drift Lambda from its bundle alone; started by ``test_bundling.py`` beside it.

Run as ``python -S -s -P tests/infrastructure/drift_bundle_smoke.py OBJECTS OUT`` with
``PYTHONPATH=<bundle>`` and the function's environment: no site-packages, no user site, no
script folder on ``sys.path``, so every import comes from the bundle or the standard
library. Needs nothing outside them: the AWS clients are the fakes below (the Lambda runtime
supplies boto3, the bundle does not), serving ``OBJECTS/<bucket>/<key>`` files.

Calls ``lambda_handler`` for today and writes to ``OUT`` (JSON): the handler's result, the
report the job wrote, the published metrics, where the modules came from, ``sys.path``, and
which modules of this checkout's virtual environment are importable (none should be).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class NoSuchKeyError(Exception):
    """S3's NoSuchKey."""


class FakeS3:
    """The S3 calls the drift job makes, over a folder of ``<bucket>/<key>`` files."""

    class exceptions:  # boto3's spelling
        NoSuchKey = NoSuchKeyError

    def __init__(self, root: Path) -> None:
        now = datetime.now(UTC)
        self.objects: dict[tuple[str, str], tuple[bytes, datetime]] = {
            (p.relative_to(root).parts[0], "/".join(p.relative_to(root).parts[1:])):
            (p.read_bytes(), now)
            for p in sorted(root.rglob("*")) if p.is_file()
        }  # fmt: skip

    def get_paginator(self, name: str) -> FakeS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, *, Bucket: str, Prefix: str = "", Delimiter: str = "") -> Iterator[Any]:
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix))
        if Delimiter:
            common = sorted({Prefix + k[len(Prefix):].split(Delimiter, 1)[0] + Delimiter
                             for k in keys if Delimiter in k[len(Prefix):]})  # fmt: skip
            yield {"CommonPrefixes": [{"Prefix": c} for c in common]}
            return
        yield {"Contents": [{"Key": k, "LastModified": self.objects[(Bucket, k)][1]}
                            for k in keys]}  # fmt: skip

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if (Bucket, Key) not in self.objects:
            raise NoSuchKeyError(Key)
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)][0])}

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> None:
        self.objects[(Bucket, Key)] = (Body, datetime.now(UTC))


class FakeCloudWatch:
    def __init__(self) -> None:
        self.data: list[dict[str, Any]] = []

    def put_metric_data(self, *, Namespace: str, MetricData: list[dict[str, Any]]) -> None:
        self.data += MetricData


class FakeSageMaker:
    def list_model_packages(self, **_: Any) -> dict[str, Any]:
        return {"ModelPackageSummaryList": [{"ModelPackageVersion": 1}]}


class Context:
    function_name = "model-drift"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-west-1:111122223333:function:model-drift"
    aws_request_id = "00000000-0000-4000-8000-000000000000"


def main(objects: Path, out: Path) -> None:
    handler = importlib.import_module("lambdas.model_drift.handler")
    s3, cloudwatch = FakeS3(objects), FakeCloudWatch()
    handler._clients = lambda: (s3, cloudwatch, FakeSageMaker())  # type: ignore[attr-defined]
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    result = handler.lambda_handler({"day": day}, Context())
    bucket = handler.SETTINGS.artifacts_bucket
    report, _ = s3.objects[(bucket, f"monitor/drift/{day}/report.json")]
    png, _ = s3.objects[(bucket, f"monitor/drift/{day}/report.png")]
    modules = ("pyarrow", "pyarrow.parquet", "numpy", "matplotlib", "oncopipe",
               "lambdas.model_drift.handler")  # fmt: skip
    out.write_text(json.dumps({
        "result": result,
        "report": json.loads(report),
        "png": png[:8].hex(),
        "metrics": cloudwatch.data,
        "files": {m: str(importlib.import_module(m).__file__) for m in modules},
        "sys_path": sys.path,
        "flags": {"no_site": sys.flags.no_site, "no_user_site": sys.flags.no_user_site,
                  "safe_path": sys.flags.safe_path},
        # in the virtual environment, not in the bundle (the runtime supplies boto3)
        "importable": {m: importlib.util.find_spec(m) is not None
                       for m in ("scipy", "boto3", "moto", "pytest")},
    }, default=str))  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
