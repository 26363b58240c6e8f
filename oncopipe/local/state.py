"""Where the local mode keeps its state: ``./.oncopipe/local/state.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oncopipe.errors import ConfigError
from oncopipe.layout import Buckets

DEFAULT_REGION = "eu-west-1"


def home() -> Path:
    """Return the local-mode folder (``$ONCOPIPE_HOME`` or ``./.oncopipe``)."""
    return Path(os.environ.get("ONCOPIPE_HOME", ".oncopipe")).resolve() / "local"


@dataclass(frozen=True)
class LocalState:
    """What ``local up`` created, for ``run``, ``status`` and ``down``."""

    env: str
    project: str
    region: str
    endpoint_url: str | None  # None: the standard AWS configuration decides
    server_pid: int | None
    buckets: Buckets
    queue_url: str
    dead_letter_queue_url: str
    secret_arn: str
    database: str

    def save(self) -> Path:
        path = home() / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls) -> LocalState:
        """Return the saved state.

        Raises:
            ConfigError: ``local up`` has not run (or its state is unreadable).
        """
        path = home() / "state.json"
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(
                f"{path} not found: run `oncopipe local up` first (it starts the embedded "
                "endpoint, or provisions the one your AWS configuration names)"
            ) from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: unreadable local state ({e.msg}); run `local down`") from e
        raw["buckets"] = Buckets(**raw["buckets"])
        return cls(**raw)

    @staticmethod
    def clear() -> None:
        (home() / "state.json").unlink(missing_ok=True)

    def client_kwargs(self) -> dict[str, Any]:
        """Return boto3 client arguments for this endpoint."""
        return client_kwargs(self.region, self.endpoint_url)

    def _config(self) -> Any:
        from oncopipe.deployment import load_config, read_cdk_json

        return load_config(read_cdk_json(), self.env)

    def handler_env(self) -> dict[str, str]:
        """Return the environment a stage handler gets in the local mode (its Lambda env)."""
        env = {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "INGEST_BUCKET": self.buckets.ingest,
            "QUARANTINE_BUCKET": self.buckets.quarantine,
            "CURATED_BUCKET": self.buckets.curated,
            "ARTIFACTS_BUCKET": self.buckets.artifacts,
            "PSEUDONYM_SECRET_ARN": self.secret_arn,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "DEID_OPTIONS": json.dumps(dict(self._config().deid_options)),
        }
        if self.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
            env["AWS_ACCESS_KEY_ID"] = EMULATOR_CREDENTIALS["aws_access_key_id"]
            env["AWS_SECRET_ACCESS_KEY"] = EMULATOR_CREDENTIALS["aws_secret_access_key"]
        return env


#: moto accepts any credentials; fixed ones keep a developer's real keys out of it.
EMULATOR_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


def client_kwargs(region: str, endpoint_url: str | None) -> dict[str, Any]:
    """Return boto3 client arguments: the embedded endpoint, or the AWS configuration."""
    kwargs: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
        kwargs.update(EMULATOR_CREDENTIALS)
    return kwargs
