"""A Glue column as data (its own module: the dataset code names columns without the catalog)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One column: its Glue type (``string``, ``int``, ``array<float>``...), what it holds, and
    whether the Parquet files may hold nulls there (``nullable``)."""

    name: str
    type: str
    comment: str
    nullable: bool = True
