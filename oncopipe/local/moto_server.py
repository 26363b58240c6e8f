"""The embedded endpoint: ``python -m oncopipe.local.moto_server [moto.server arguments]``.

moto's own server, plus one observation: with ``ONCOPIPE_DENIALS_LOG`` set, every request
its IAM enforcement refuses is appended to that file as a JSON line ``{"principal",
"action", "resource"}`` — the local CloudTrail of a missing grant. The stage that made
the request may swallow or redact the error (handlers withhold messages that could name
PHI); the endpoint still knows exactly which role was refused which action on which
resource. The file stays on the developer's machine beside moto's own request log.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

_LOCK = threading.Lock()


def record_refusals(path: str) -> None:
    """Wrap moto's authorisation check so that each refusal is appended to ``path``."""
    from moto.iam import access_control

    check = access_control.IAMRequestBase.check_action_permitted

    def checked(self: Any, resource: str) -> None:
        try:
            check(self, resource)
        except Exception:
            entry = {
                "principal": str(self._access_key.arn),
                "action": str(self._action),
                "resource": str(resource),
            }
            with _LOCK, open(path, "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
            raise

    access_control.IAMRequestBase.check_action_permitted = checked  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    path = os.environ.get("ONCOPIPE_DENIALS_LOG")
    if path:
        record_refusals(path)
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
