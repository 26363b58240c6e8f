"""Runtime settings of the adapters, read from the environment and validated at start-up.

A function deployed with a missing variable fails at cold start with the variable's name,
not halfway through an item.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from oncopipe.errors import ConfigError
from oncopipe.layout import Buckets

#: The environment variable of each zone bucket: the one spelling the stacks (function and job
#: environments), the local mode and the adapters use.
BUCKET_ENV = {
    "ingest": "INGEST_BUCKET",
    "quarantine": "QUARANTINE_BUCKET",
    "curated": "CURATED_BUCKET",
    "artifacts": "ARTIFACTS_BUCKET",
}


def bucket_env(**names: str) -> dict[str, str]:
    """Return the environment variables of some zone buckets (``curated=name``...).

    Raises:
        KeyError: a zone that does not exist.
    """
    return {BUCKET_ENV[zone]: name for zone, name in names.items()}


@dataclass(frozen=True)
class StageSettings:
    """What every stage adapter needs: the zone buckets."""

    buckets: Buckets

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StageSettings:
        """Return the settings.

        Raises:
            ConfigError: a variable is missing or empty; the message lists all of them.
        """
        env = os.environ if environ is None else environ
        missing = [n for n in BUCKET_ENV.values() if not env.get(n)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        return cls(buckets=Buckets(**{zone: env[name] for zone, name in BUCKET_ENV.items()}))

    def as_env(self) -> dict[str, str]:
        """Return the environment variables that :meth:`from_env` reads."""
        return bucket_env(**asdict(self.buckets))
