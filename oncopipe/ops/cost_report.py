"""A run's cost: the estimates its manifests carry beside the actual from Cost Explorer.

What ``oncopipe ops cost --run`` and the run report print. The estimates are written by the
jobs themselves (:mod:`oncopipe.ops.cost`, into each item's manifest summary); this module
reads them back per stage and pseudonymous sample and puts Cost Explorer's
``GetCostAndUsage`` beside them, or says why the actual is missing (tags not active yet, which
takes up to 24 hours after a tag is first used; Cost Explorer not enabled or access denied).
See :mod:`oncopipe.ops.cost` for what the actual can and cannot attribute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from oncopipe.manifest import iter_manifests
from oncopipe.ops.cost import COST_ALLOCATION_TAGS, COST_METRIC, TAG_RUN_ID, TAG_SAMPLE, TAG_STAGE
from oncopipe.pseudonym import is_object_ref, is_patient_key

logger = logging.getLogger(__name__)


# -- estimate vs actual per sample and stage -----------------------------------------------
@dataclass
class CostRow:
    """Estimate (from manifests) and actual (Cost Explorer) of one stage and sample."""

    stage: str
    sample: str  # the pseudonymous sample key, or "-" for jobs without one
    items: int = 0
    estimate_usd: float | None = None
    actual_usd: float | None = None
    unpriced: int = 0  # items whose manifest has no estimate


@dataclass
class CostReport:
    """What ``oncopipe ops cost --run`` prints."""

    run_id: str
    rows: list[CostRow]
    actual_available: bool
    note: str = ""
    price_as_of: list[str] = field(default_factory=list)

    @property
    def estimate_total(self) -> float:
        return sum(r.estimate_usd or 0.0 for r in self.rows)

    @property
    def actual_total(self) -> float | None:
        return sum(r.actual_usd or 0.0 for r in self.rows) if self.actual_available else None


def manifest_cost(document: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the cost fields a manifest records, or None when it has none.

    The manifest's own ``cost`` field (written by :func:`oncopipe.manifest.process_item`
    in a metered job, :func:`metering`) wins; older manifests carry the fields in their
    summary (:func:`job_cost_fields`).
    """
    recorded = document.get("cost")
    if isinstance(recorded, Mapping):
        return recorded
    summary = document.get("summary") or {}
    if "cost_usd_estimate" in summary or "vcpu_seconds" in summary:
        return summary
    return None


def _row_sample(document: Mapping[str, Any], fields: Mapping[str, Any]) -> str:
    # the cost-allocation sample key when the job had one, else the item's pseudonymous
    # patient key (both are pseudonymous by construction), else "-"
    summary = document.get("summary") or {}
    for value in (fields.get("cost_sample"), summary.get("cost_sample"),
                  summary.get("patient_key")):  # fmt: skip
        if value and (is_object_ref(str(value)) or is_patient_key(str(value))):
            return str(value)
    return "-"


def estimates_from_manifests(manifests: Iterable[Mapping[str, Any]]) -> list[CostRow]:
    """Return the estimate per (stage, sample) of the manifests' cost fields.

    A manifest counts when it records cost fields (:func:`manifest_cost`); the stage is its
    ``step``, the sample its ``cost_sample`` (the tag value), else its summary's patient
    key, else ``-``. An item without a price (unknown instance) counts as ``unpriced``.
    """
    rows: dict[tuple[str, str], CostRow] = {}
    for document in manifests:
        fields = manifest_cost(document)
        if fields is None:
            continue
        stage = str(document.get("step", "-"))
        sample = _row_sample(document, fields)
        row = rows.setdefault((stage, sample), CostRow(stage=stage, sample=sample))
        row.items += 1
        value = fields.get("cost_usd_estimate")
        if value is None:
            row.unpriced += 1
        else:
            row.estimate_usd = (row.estimate_usd or 0.0) + float(value)
    return [rows[k] for k in sorted(rows)]


class CostExplorerUnavailable(Exception):
    """Cost Explorer cannot answer: not enabled, access denied, or tags not active."""


def inactive_tags(ce: Any, keys: Sequence[str] = COST_ALLOCATION_TAGS) -> list[str]:
    """Return which of the cost-allocation tag keys are not active (ListCostAllocationTags).

    Raises:
        CostExplorerUnavailable: the call is denied or Cost Explorer is not enabled.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        found = ce.list_cost_allocation_tags(TagKeys=list(keys), Type="UserDefined")
    except (ClientError, BotoCoreError) as e:
        raise CostExplorerUnavailable(_ce_reason(e)) from e
    active = {
        t["TagKey"] for t in found.get("CostAllocationTags", []) if t.get("Status") == "Active"
    }
    return [k for k in keys if k not in active]


def _ce_reason(error: Exception) -> str:
    response = getattr(error, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    code = code or type(error).__name__
    return f"Cost Explorer unavailable ({code})"


def _tag_value(group_key: str, tag: str) -> str:
    # Cost Explorer names a tag group "<key>$<value>"; "<key>$" is untagged usage
    prefix = tag + "$"
    value = group_key[len(prefix) :] if group_key.startswith(prefix) else group_key
    return value or "-"


def actual_costs(ce: Any, run_id: str, start: date, end: date) -> dict[tuple[str, str], float]:
    """Return the unblended cost per (stage, sample) of a run between two dates.

    ``end`` is exclusive (Cost Explorer's convention). Pages through ``NextPageToken``.

    Raises:
        CostExplorerUnavailable: denied, not enabled, or the data is not there yet.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    request: dict[str, Any] = {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "DAILY",
        "Metrics": [COST_METRIC],
        "Filter": {"Tags": {"Key": TAG_RUN_ID, "Values": [run_id], "MatchOptions": ["EQUALS"]}},
        "GroupBy": [{"Type": "TAG", "Key": TAG_STAGE}, {"Type": "TAG", "Key": TAG_SAMPLE}],
    }
    totals: dict[tuple[str, str], float] = {}
    while True:
        try:
            page = ce.get_cost_and_usage(**request)
        except (ClientError, BotoCoreError) as e:
            raise CostExplorerUnavailable(_ce_reason(e)) from e
        for period in page.get("ResultsByTime", []):
            for group in period.get("Groups", []):
                keys = group.get("Keys", [])
                stage = _tag_value(keys[0], TAG_STAGE) if keys else "-"
                sample = _tag_value(keys[1], TAG_SAMPLE) if len(keys) > 1 else "-"
                amount = float(group.get("Metrics", {}).get(COST_METRIC, {}).get("Amount", 0))
                totals[(stage, sample)] = totals.get((stage, sample), 0.0) + amount
        token = page.get("NextPageToken")
        if not token:
            return totals
        request["NextPageToken"] = token


def _period(manifests: Sequence[Mapping[str, Any]]) -> tuple[date, date]:
    stamps = [datetime.fromisoformat(str(d[k])) for d in manifests
              for k in ("started_at", "finished_at") if d.get(k)]  # fmt: skip
    if not stamps:
        today = date.today()
        return today, today + timedelta(days=1)
    return min(stamps).date(), max(stamps).date() + timedelta(days=1)


def cost_report(
    run_id: str,
    manifests: Sequence[Mapping[str, Any]],
    ce: Any | None,
) -> CostReport:
    """Return estimate vs actual per stage and sample for a run.

    ``manifests``: the run's committed manifests (both zones). ``ce``: a Cost Explorer
    client, or None for estimates only. The actual is left out, with a note saying why,
    when the tags are not active yet or Cost Explorer cannot answer.
    """
    rows = estimates_from_manifests(manifests)
    as_of = sorted({str(fields["price_as_of"]) for fields in map(manifest_cost, manifests)
                    if fields is not None and fields.get("price_as_of")})  # fmt: skip
    if ce is None:
        return CostReport(run_id, rows, False, "estimates only (Cost Explorer not queried)", as_of)
    try:
        inactive = inactive_tags(ce)
        if inactive:
            return CostReport(run_id, rows, False,
                              f"estimates only: cost-allocation tags not active yet "
                              f"({', '.join(inactive)}); activate them in Billing > Cost "
                              "allocation tags, Cost Explorer shows them up to 24 h later",
                              as_of)  # fmt: skip
        start, end = _period(manifests)
        actual = actual_costs(ce, run_id, start, end)
    except CostExplorerUnavailable as e:
        return CostReport(run_id, rows, False, f"estimates only: {e}", as_of)
    by_key = {(r.stage, r.sample): r for r in rows}
    for (stage, sample), usd in actual.items():
        row = by_key.get((stage, sample))
        if row is None:
            row = by_key[(stage, sample)] = CostRow(stage=stage, sample=sample)
        row.actual_usd = (row.actual_usd or 0.0) + usd
    merged = [by_key[k] for k in sorted(by_key)]
    note = "" if actual else ("no cost tagged with this run yet (Cost Explorer data lags "
                              "by up to 24 h)")  # fmt: skip
    return CostReport(run_id, merged, True, note, as_of)


def iter_run_manifests(store: Any, buckets: Iterable[str], run_id: str) -> Iterator[dict[str, Any]]:
    """Yield the committed manifests of a run from several buckets (curated, quarantine)."""
    for bucket in buckets:
        yield from iter_manifests(store, bucket, run_id)
