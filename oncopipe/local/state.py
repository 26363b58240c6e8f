"""Where the local mode keeps its state: ``./.oncopipe/local/state.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from oncopipe.errors import ConfigError
from oncopipe.layout import Buckets
from oncopipe.settings import StageSettings

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
    #: The local worker's own access key on the embedded endpoint (None: the emulator's
    #: default credentials, or the AWS configuration's outside the embedded mode).
    credentials: dict[str, str] | None = None
    #: stage -> ARN of the role it runs as (empty: IAM enforcement off).
    stage_roles: dict[str, str] = field(default_factory=dict)

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
        """Return boto3 client arguments for this endpoint, as the local worker."""
        kwargs = client_kwargs(self.region, self.endpoint_url)
        if self.endpoint_url and self.credentials:
            kwargs.update(self.credentials)
        return kwargs

    @property
    def iam_enforced(self) -> bool:
        """True when each stage runs as its synthesized role (``local up`` with IAM on)."""
        return bool(self.stage_roles)

    def _config(self) -> Any:
        from oncopipe.deployment import load_config, read_cdk_json

        return load_config(read_cdk_json(), self.env)

    def handler_env(self) -> dict[str, str]:
        """Return the environment a stage handler gets in the local mode (its Lambda env)."""
        env = {
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **StageSettings(self.buckets).as_env(),
            "PSEUDONYM_SECRET_ARN": self.secret_arn,
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "DEID_OPTIONS": json.dumps(dict(self._config().deid_options)),
        }
        if self.endpoint_url:
            credentials = self.credentials or EMULATOR_CREDENTIALS
            env["AWS_ENDPOINT_URL"] = self.endpoint_url
            env["AWS_ACCESS_KEY_ID"] = credentials["aws_access_key_id"]
            env["AWS_SECRET_ACCESS_KEY"] = credentials["aws_secret_access_key"]
        return env

    def stage_env(self, stage: str) -> dict[str, str]:
        """Return a stage process's environment: :meth:`handler_env` with its role's session.

        With IAM enforcement on, the credentials are those of an ``sts:AssumeRole`` of the
        role synthesized for ``stage`` (:data:`oncopipe.local.iam.STAGE_ROLES`), so the
        stage can do exactly what its deployed role allows.

        Raises:
            ConfigError: enforcement is on but ``stage`` has no role (a stage the worker
                runs must be listed in ``STAGE_ROLES``).
        """
        env = self.handler_env()
        if not self.stage_roles:
            return env
        if stage not in self.stage_roles:
            raise ConfigError(
                f"stage {stage!r} has no role in the local state; known: "
                f"{', '.join(sorted(self.stage_roles))}"
            )
        import boto3

        from oncopipe.local.iam import assume

        sts = boto3.client("sts", **self.client_kwargs())  # type: ignore[call-overload]
        env.update(assume(sts, self.stage_roles[stage], stage))
        return env

    def stage_client_kwargs(self, stage: str) -> dict[str, Any]:
        """Return boto3 client arguments with the credentials of ``stage``'s role session."""
        kwargs = self.client_kwargs()
        if self.stage_roles:
            env = self.stage_env(stage)
            kwargs.update(
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=env["AWS_SESSION_TOKEN"],
            )
        return kwargs


#: moto accepts any credentials until IAM enforcement is on (then only the worker's own
#: access key and the stages' role sessions); fixed ones keep real keys out of it.
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
