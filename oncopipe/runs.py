"""Run IDs, code versions and parameter hashes."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from oncopipe import __version__

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def new_run_id(prefix: str = "run", now: datetime | None = None) -> str:
    """Return a new run ID such as ``run-20261129T034000Z-3fa9c1`` (sortable by time)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{prefix}-{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def daily_run_id(moment: datetime) -> str:
    """Return the ingest run of a UTC day (``ingest-YYYYMMDD``): one run per day of uploads."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment  # naive: taken as UTC
    return f"ingest-{utc:%Y%m%d}"


def previous_daily_run_id(now: datetime | None = None) -> str:
    """Return the previous UTC day's ingest run: what the daily jobs process by default."""
    return daily_run_id((now or datetime.now(UTC)) - timedelta(days=1))


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` unchanged.

    Raises:
        ValueError: it cannot be used in an S3 key and tag value.
    """
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use 1-128 characters of letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return run_id


def item_slug(item: str) -> str:
    """Return a key-safe, unique name for an item (an object key, a sample, a series).

    Readable characters are kept; an 8-hex hash of the full name keeps two items that
    differ only in unsafe characters apart.
    """
    readable = _UNSAFE.sub("_", item).strip("_")[-80:] or "item"
    return f"{readable}-{hashlib.sha256(item.encode('utf-8')).hexdigest()[:8]}"


def params_hash(params: Mapping[str, Any]) -> str:
    """Return the SHA-256 of the parameters in canonical JSON (sorted keys)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def code_version() -> str:
    """Return ``<package version>+<hash of the package's Python sources>``.

    Computed from the files that run, so it is right inside a Lambda bundle or a
    container, where there is no git checkout.
    """
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode("utf-8"))
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"
