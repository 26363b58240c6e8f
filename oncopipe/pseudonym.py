"""The pseudonymous patient key: one function for every modality.

``patient_key = HMAC-SHA256(project secret, source patient id)``, truncated to 80 bits and
written in lower-case base32 behind a ``pk-`` prefix (19 characters). It fits a DICOM LO
element (PatientID, 64 characters), a BAM read-group SM tag and a file name. 80 bits keep
the chance of any collision below 1e-12 for a million patients.

The source id is normalised by stripping surrounding whitespace only: MRNs are
case-sensitive in several hospital systems, so folding case could merge two patients.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from oncopipe.errors import ConfigError

KEY_PREFIX = "pk-"
KEY_PATTERN = re.compile(r"^pk-[a-z2-7]{16}$")
MIN_SECRET_BYTES = 32

#: Environment variables read by :func:`load_secret` (the adapters' contract).
SECRET_ARN_ENV = "PSEUDONYM_SECRET_ARN"  # noqa: S105 - a variable name
SECRET_VALUE_ENV = "ONCOPIPE_PSEUDONYM_SECRET"  # noqa: S105 - a variable name


def patient_key(secret: bytes, source_patient_id: str) -> str:
    """Return the pseudonymous key of a patient.

    Raises:
        ValueError: the source id is empty or the secret shorter than 32 bytes. The message
            never contains the source id.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"pseudonymisation secret must be at least {MIN_SECRET_BYTES} bytes")
    normalised = source_patient_id.strip()
    if not normalised:
        raise ValueError("source patient id is empty")
    digest = hmac.new(secret, normalised.encode("utf-8"), hashlib.sha256).digest()
    return KEY_PREFIX + base64.b32encode(digest[:10]).decode("ascii").lower()


OBJECT_REF_PREFIX = "obj-"
OBJECT_REF_PATTERN = re.compile(r"^obj-[a-z2-7]{20}$")


def date_shift_days(secret: bytes, source_patient_id: str) -> int:
    """Return a patient's date shift: between 1 and 3650 days into the past.

    One shift per patient for every modality (DICOM dates, the sample sheet's note dates,
    dates in note text), so intervals between a patient's events survive de-identification.
    """
    digest = hmac.new(secret, b"dateshift:" + source_patient_id.strip().encode(), hashlib.sha256)
    return -(1 + int.from_bytes(digest.digest()[:4], "big") % 3650)


def object_ref(secret: bytes, key: str) -> str:
    """Return the opaque reference of an object key (what logs, state outputs and curated use).

    Ingest keys are PHI (exports name files after patients), so anything that leaves the PHI
    zone names an object by ``"obj-" + base32(HMAC-SHA256(secret, "object:" + key))[:20]``
    (100 bits): stable for one key and secret, meaningless without the secret. The
    ``object:`` domain separator keeps a reference from ever equalling a patient key's
    digest for the same string.

    Raises:
        ValueError: the key is empty or the secret shorter than 32 bytes (the message never
            contains the key).
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"pseudonymisation secret must be at least {MIN_SECRET_BYTES} bytes")
    if not key:
        raise ValueError("object key is empty")
    digest = hmac.new(secret, ("object:" + key).encode("utf-8"), hashlib.sha256).digest()
    return OBJECT_REF_PREFIX + base64.b32encode(digest).decode("ascii").lower()[:20]


def is_object_ref(value: str) -> bool:
    """Return True when ``value`` has the shape of a reference made by :func:`object_ref`."""
    return bool(OBJECT_REF_PATTERN.match(value))


def is_patient_key(value: str) -> bool:
    """Return True when ``value`` has the shape of a key made by :func:`patient_key`."""
    return bool(KEY_PATTERN.match(value))


def secret_from_string(value: str) -> bytes:
    """Decode a secret stored as hex (what ``oncopipe local up`` and the stack generate).

    Raises:
        ConfigError: not hex, or too short.
    """
    try:
        secret = bytes.fromhex(value.strip())
    except ValueError as e:
        raise ConfigError("pseudonymisation secret must be a hex string") from e
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"pseudonymisation secret must be at least {MIN_SECRET_BYTES} bytes "
            f"({2 * MIN_SECRET_BYTES} hex characters), got {len(secret)}"
        )
    return secret


@lru_cache(maxsize=4)
def _secret_from_secrets_manager(
    secret_id: str,
    endpoint_url: str | None,
    region: str | None,
    credentials: tuple[str, str] | None,
) -> bytes:
    import boto3

    kwargs: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region}
    if credentials:  # an explicit environment (the local mode) brings its own credentials
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = credentials
    client: Any = boto3.client("secretsmanager", **kwargs)
    value = client.get_secret_value(SecretId=secret_id)["SecretString"]
    return secret_from_string(value)


def load_secret(environ: dict[str, str] | None = None) -> bytes:
    """Load the project secret the way every adapter does.

    ``PSEUDONYM_SECRET_ARN`` (Secrets Manager, in the cloud and in the embedded local mode)
    wins over ``ONCOPIPE_PSEUDONYM_SECRET`` (a hex value, for running a core by hand).

    Raises:
        ConfigError: neither variable is set, or the value is invalid.
    """
    env = os.environ if environ is None else environ
    if env.get(SECRET_ARN_ENV):
        key_pair = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
        return _secret_from_secrets_manager(
            env[SECRET_ARN_ENV],
            env.get("AWS_ENDPOINT_URL"),
            env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            key_pair if environ is not None and all(key_pair) else None,  # type: ignore[arg-type]
        )
    if env.get(SECRET_VALUE_ENV):
        return secret_from_string(env[SECRET_VALUE_ENV])
    raise ConfigError(
        f"no pseudonymisation secret: set {SECRET_ARN_ENV} (Secrets Manager id) or "
        f"{SECRET_VALUE_ENV} (hex), or run `oncopipe local up` for the local mode"
    )


def keyer(secret: bytes) -> Callable[[str], str]:
    """Return ``patient_key`` bound to one secret, memoised per source id."""

    @lru_cache(maxsize=65536)
    def key(source_patient_id: str) -> str:
        return patient_key(secret, source_patient_id)

    return key
