"""The de-identification profile options of a deployment (PS3.15 E.3), without pydicom.

One definition for the configuration (``cdk.json`` ``deid_options``, validated by
:mod:`oncopipe.deployment`), the environment of the de-identifying functions and jobs
(``DEID_OPTIONS``, JSON: :func:`options_from_env`), the CLI flags and the de-identifier
(:mod:`oncopipe.imaging.deid`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oncopipe.errors import ConfigError


@dataclass(frozen=True)
class DeidOptions:
    """Profile options, configurable per deployment (PS3.15 E.3)."""

    retain_long_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = False
    retain_device_identity: bool = False
    #: (private creator, element low byte) pairs known to carry no identity.
    safe_private: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> frozenset[str]:
        names = {name for name in PROFILE_OPTIONS if getattr(self, name)}
        if self.safe_private:
            names.add("retain_safe_private")
        return frozenset(names)


#: The options a deployment may switch (every field but the safelist of private elements).
PROFILE_OPTIONS: tuple[str, ...] = (
    "retain_long_modified_dates",
    "retain_patient_characteristics",
    "clean_descriptors",
    "retain_device_identity",
)


OPTIONS_ENV = "DEID_OPTIONS"


def options_from_env(environ: Mapping[str, str] | None = None) -> DeidOptions:
    """Return the profile options of a deployment (``DEID_OPTIONS``, JSON), else defaults.

    Raises:
        ConfigError: not JSON, or an unknown option.
    """
    env = os.environ if environ is None else environ
    raw = env.get(OPTIONS_ENV)
    if not raw:
        return DeidOptions()
    try:
        values = json.loads(raw)
        flags: dict[str, Any] = {str(k): bool(v) for k, v in values.items()}
        return DeidOptions(**flags)
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        allowed = ", ".join(PROFILE_OPTIONS)
        raise ConfigError(f"{OPTIONS_ENV} must be a JSON object of: {allowed}") from e
