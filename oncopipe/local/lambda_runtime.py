"""A warm "Lambda container" for the local worker: ``python -m oncopipe.local.lambda_runtime``.

It imports one handler module (``lambdas.ingest_router.handler``), then reads one JSON
event per line on stdin and answers one JSON line on the original stdout:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"Error": <exception type>,
"Cause": <message>}}`` — the shape Step Functions gives a failed Lambda task. Whatever
the handler prints or logs goes to stderr.

A failed answer also carries ``"denied"``: the AWS requests behind the error that the
endpoint refused (``[{"code": "AccessDenied", "operation": "PutObject"}]``), found in the
exception's chain even when the handler re-raised it with a redacted message. It is the
local runtime's own observation (what CloudTrail would show), not part of the Lambda
contract; it holds error codes and operation names only, never a message.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass
class LocalContext:
    """The attributes of the Lambda context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = ""
    invoked_function_arn: str = ""
    log_group_name: str = "local"
    log_stream_name: str = "local"
    function_version: str = "$LATEST"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


#: Error codes of a request the endpoint refused (authentication or authorisation).
REFUSED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403", "Forbidden",
                           "InvalidAccessKeyId", "InvalidClientTokenId",
                           "SignatureDoesNotMatch"})  # fmt: skip


def refused_requests(error: BaseException) -> list[dict[str, str]]:
    """Return ``{"code", "operation"}`` of each refused botocore request in ``error``'s chain.

    Follows ``__cause__`` and ``__context__`` (a handler may re-raise ``from None``).
    """
    from oncopipe.boundary import aws_error_chain

    return [{"code": code, "operation": operation}
            for code, operation in aws_error_chain(error) if code in REFUSED_CODES]  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m oncopipe.local.lambda_runtime MODULE", file=sys.stderr)
        return 2
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # the handler's prints and logs go to stderr, never into the protocol
    sys.stdout = sys.stderr
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, repo_root)
    module = importlib.import_module(argv[1])
    handler = module.lambda_handler
    name = argv[1].split(".")[-2]
    for line in sys.stdin:
        if not line.strip():
            continue
        event = json.loads(line)
        request_id = str(uuid.uuid4())
        context = LocalContext(
            function_name=name,
            aws_request_id=request_id,
            invoked_function_arn=f"arn:aws:lambda:local:000000000000:function:{name}",
        )
        response: dict[str, Any]
        try:
            response = {"ok": True, "result": handler(event, context)}
        except Exception as e:  # noqa: BLE001 - reported to the caller like Lambda does
            response = {
                "ok": False,
                "error": {"Error": type(e).__name__, "Cause": str(e)},
                "denied": refused_requests(e),
            }
        out.write(json.dumps(response, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
