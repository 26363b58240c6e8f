"""Runtime settings of the adapters, read from the environment and validated at start-up.

A function deployed with a missing variable fails at cold start with the variable's name,
not halfway through an item.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from oncopipe.errors import ConfigError
from oncopipe.layout import Buckets


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
        names = (
            "INGEST_BUCKET",
            "QUARANTINE_BUCKET",
            "CURATED_BUCKET",
            "ARTIFACTS_BUCKET",
        )
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        return cls(
            buckets=Buckets(
                ingest=env["INGEST_BUCKET"],
                quarantine=env["QUARANTINE_BUCKET"],
                curated=env["CURATED_BUCKET"],
                artifacts=env["ARTIFACTS_BUCKET"],
            )
        )

    def as_env(self) -> dict[str, str]:
        """Return the environment variables that :meth:`from_env` reads."""
        return {
            "INGEST_BUCKET": self.buckets.ingest,
            "QUARANTINE_BUCKET": self.buckets.quarantine,
            "CURATED_BUCKET": self.buckets.curated,
            "ARTIFACTS_BUCKET": self.buckets.artifacts,
        }
