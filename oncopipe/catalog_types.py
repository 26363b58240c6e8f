"""A Glue column as data (its own module: the dataset code names columns without the catalog)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    comment: str
