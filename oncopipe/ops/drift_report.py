"""Rendering of a :class:`~oncopipe.ops.drift.DriftReport`: JSON, Markdown, HTML.

- JSON (:func:`to_dict` / :func:`to_json`): machine-readable, with stable keys
  (``schema_version`` 1); what the scheduled check writes to the artifacts bucket.
- Markdown (:func:`to_markdown`): tables for a terminal, a pull request or a CI summary.
- HTML (:func:`to_html`): one self-contained page (inline style, no script, no external
  resource).

Property values and reasons come from the account, so they are untrusted text: HTML
escapes them; Markdown escapes the characters that would break a table or inject markup,
and shortens long values (policy documents) to :data:`MD_VALUE_CHARS`.
"""

from __future__ import annotations

import html
import json
from typing import Any

from oncopipe.ops.drift import DriftReport, ResourceDrift, StackDrift

SCHEMA_VERSION = 1
MD_VALUE_CHARS = 160


def _coverage(stack: StackDrift) -> str:
    return "–" if stack.coverage is None else f"{stack.coverage:.0%}"


def _drift_dict(d: ResourceDrift) -> dict[str, Any]:
    return {
        "stack": d.stack,
        "logical_id": d.logical_id,
        "physical_id": d.physical_id,
        "resource_type": d.resource_type,
        "status": d.status,
        "property_path": d.property_path,
        "difference_type": d.difference_type,
        "expected": d.expected,
        "actual": d.actual,
        "severity": d.severity,
        "allowed": d.allowed,
        "allowed_reason": d.allowed_reason,
    }


def to_dict(report: DriftReport) -> dict[str, Any]:
    """Return the report as JSON-ready data (fixed keys, stacks and drifts in report order)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": report.environment,
        "generated_at": report.generated_at,
        "summary": {
            "stacks": len(report.stacks),
            "drifted_resources": report.drifted_resources,
            "critical_resources": report.critical_resources,
            "allowed_drifts": sum(1 for d in report.drifts if d.allowed),
            "unchecked_resources": sum(len(s.unchecked) for s in report.stacks),
            "detection_errors": len(report.errors),
        },
        "stacks": [
            {
                "name": s.name,
                "parent": s.parent,
                "parent_logical_id": s.parent_logical_id,
                "status": s.status,
                "detection_status": s.detection_status,
                "reason": s.reason,
                "detected_at": s.detected_at,
                "total_resources": s.total_resources,
                "checked_resources": s.checked_resources,
                "coverage": None if s.coverage is None else round(s.coverage, 4),
                "drifted_resources": s.drifted_resources,
                "nested": list(s.nested),
                "unchecked": [
                    {
                        "logical_id": u.logical_id,
                        "physical_id": u.physical_id,
                        "resource_type": u.resource_type,
                        "status": u.status,
                        "reason": u.reason,
                    }
                    for u in s.unchecked
                ],
                "drifts": [_drift_dict(d) for d in s.drifts],
            }
            for s in report.stacks
        ],
    }


def to_json(report: DriftReport) -> str:
    """Return the report as indented JSON (see :func:`to_dict`)."""
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


# -- Markdown ------------------------------------------------------------------------------
def _md(text: str | None, limit: int | None = None) -> str:
    """Return ``text`` safe inside a Markdown table cell (escaped, one line, shortened)."""
    if text is None:
        return "–"
    value = " ".join(str(text).split())
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + "…"
    value = html.escape(value, quote=False)
    for char in ("\\", "|", "`", "*", "[", "]"):
        value = value.replace(char, "\\" + char)
    return value or "–"


def _summary_line(report: DriftReport) -> str:
    allowed = sum(1 for d in report.drifts if d.allowed)
    unchecked = sum(len(s.unchecked) for s in report.stacks)
    return (
        f"{len(report.stacks)} stack{'' if len(report.stacks) == 1 else 's'} · "
        f"{report.drifted_resources} drifted resources "
        f"({report.critical_resources} critical) · {allowed} allowed drifts · "
        f"{unchecked} resources not checked · {len(report.errors)} detection errors"
    )


def _stack_label(s: StackDrift) -> str:
    return f"{s.name} (nested in {s.parent} as {s.parent_logical_id})" if s.parent else s.name


def to_markdown(report: DriftReport) -> str:
    """Return the report as Markdown: a summary, then stacks, drifts, allowed, unchecked."""
    title = f"# CloudFormation drift{' — ' + report.environment if report.environment else ''}"
    lines = [title, "", f"Generated {report.generated_at}. {_summary_line(report)}.", ""]
    lines += [
        "## Stacks",
        "",
        "| Stack | Status | Detection | Drifted resources | Resources | Not checked | Coverage |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for s in report.stacks:
        lines.append(
            f"| {_md(_stack_label(s))} | {s.status} | {_md(s.detection_status)} | "
            f"{s.drifted_resources} | {s.total_resources} | {len(s.unchecked)} | {_coverage(s)} |"
        )
    problems = [s for s in report.stacks if s.reason]
    if problems:
        lines += ["", "Detection notes:", ""]
        lines += [f"- {_md(s.name)}: {s.status}: {_md(s.reason)}" for s in problems]
    header = (
        "| Severity | Stack | Logical ID | Physical ID | Type | Drift | Property | Expected "
        "| Actual |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|"

    def row(d: ResourceDrift) -> str:
        return (
            f"| {d.severity} | {_md(d.stack)} | {_md(d.logical_id)} | {_md(d.physical_id)} | "
            f"{_md(d.resource_type)} | {f'{d.status} {d.difference_type}'.strip()} | "
            f"{_md(d.property_path or None)} | {_md(d.expected, MD_VALUE_CHARS)} | "
            f"{_md(d.actual, MD_VALUE_CHARS)} |"
        )

    unallowed = sorted(report.unallowed, key=lambda d: d.severity != "critical")
    lines += ["", "## Drifted resources", ""]
    lines += [header, rule, *map(row, unallowed)] if unallowed else ["No drift."]
    allowed = [d for d in report.drifts if d.allowed]
    if allowed:
        lines += ["", "## Allowed drift (drift_allow_list)", ""]
        lines += [
            "| Stack | Logical ID | Property | Severity | Reason |",
            "|---|---|---|---|---|",
            *(
                f"| {_md(d.stack)} | {_md(d.logical_id)} | {_md(d.property_path or None)} | "
                f"{d.severity} | {_md(d.allowed_reason)} |"
                for d in allowed
            ),
        ]
    unchecked = [(s, u) for s in report.stacks for u in s.unchecked]
    if unchecked:
        lines += ["", "## Resources not checked", ""]
        lines += [
            "| Stack | Logical ID | Type | Status | Reason |",
            "|---|---|---|---|---|",
            *(
                f"| {_md(s.name)} | {_md(u.logical_id)} | {_md(u.resource_type)} | {u.status} | "
                f"{_md(u.reason or None)} |"
                for s, u in unchecked
            ),
        ]
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------------
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.n{text-align:right}
code{white-space:pre-wrap;word-break:break-all;font-size:0.85em}
.critical{color:#b00020;font-weight:bold} .warning{color:#8a5a00}
"""


def _h(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(text: object, css: str = "") -> str:
    return f'<td class="{css}">{_h(text)}</td>' if css else f"<td>{_h(text)}</td>"


def _td_code(text: str | None) -> str:
    return "<td>–</td>" if text is None else f"<td><code>{_h(text)}</code></td>"


def to_html(report: DriftReport) -> str:
    """Return the report as one self-contained, escaped HTML page."""
    title = "CloudFormation drift" + (f" — {report.environment}" if report.environment else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_h(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f"<p>Generated {_h(report.generated_at)}. {_h(_summary_line(report))}.</p>",
        "<h2>Stacks</h2>",
        _table(
            [
                "Stack",
                "Status",
                "Detection",
                "Reason",
                "Drifted resources",
                "Resources",
                "Not checked",
                "Coverage",
            ],
            [
                [
                    _td(_stack_label(s)),
                    _td(s.status),
                    _td(s.detection_status),
                    _td(s.reason),
                    _td(s.drifted_resources, "n"),
                    _td(s.total_resources, "n"),
                    _td(len(s.unchecked), "n"),
                    _td(_coverage(s), "n"),
                ]
                for s in report.stacks
            ],
        ),
        "<h2>Drifted resources</h2>",
    ]
    unallowed = sorted(report.unallowed, key=lambda d: d.severity != "critical")
    drift_headers = [
        "Severity",
        "Stack",
        "Logical ID",
        "Physical ID",
        "Type",
        "Drift",
        "Property",
        "Expected",
        "Actual",
    ]

    def row(d: ResourceDrift) -> list[str]:
        return [
            _td(d.severity, d.severity),
            _td(d.stack),
            _td(d.logical_id),
            _td(d.physical_id),
            _td(d.resource_type),
            _td(f"{d.status} {d.difference_type}".strip()),
            _td_code(d.property_path or None),
            _td_code(d.expected),
            _td_code(d.actual),
        ]

    parts.append(
        _table(drift_headers, [row(d) for d in unallowed]) if unallowed else "<p>No drift.</p>"
    )
    allowed = [d for d in report.drifts if d.allowed]
    if allowed:
        parts.append("<h2>Allowed drift (drift_allow_list)</h2>")
        parts.append(
            _table(
                ["Stack", "Logical ID", "Property", "Severity", "Reason"],
                [
                    [
                        _td(d.stack),
                        _td(d.logical_id),
                        _td_code(d.property_path or None),
                        _td(d.severity, d.severity),
                        _td(d.allowed_reason),
                    ]
                    for d in allowed
                ],
            )
        )
    unchecked = [(s, u) for s in report.stacks for u in s.unchecked]
    if unchecked:
        parts.append("<h2>Resources not checked</h2>")
        parts.append(
            _table(
                ["Stack", "Logical ID", "Physical ID", "Type", "Status", "Reason"],
                [
                    [
                        _td(s.name),
                        _td(u.logical_id),
                        _td(u.physical_id),
                        _td(u.resource_type),
                        _td(u.status),
                        _td(u.reason),
                    ]
                    for s, u in unchecked
                ],
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


RENDERERS = {"md": to_markdown, "json": to_json, "html": to_html}
