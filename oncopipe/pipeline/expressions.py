"""The expressions of a SageMaker Pipeline definition, resolved as the service does.

``Parameters.*``, ``Execution.*``, ``Steps.<step>.<property path>`` (:func:`property_path`),
``Std:Join`` and ``Std:JsonGet`` (:func:`resolve`), and the conditions of a Condition step
(:func:`evaluate_condition`), over the steps' outcomes so far (:class:`StepRun`). Used by
:mod:`oncopipe.pipeline.local_runner`; a bad reference raises :class:`LocalRunError`
naming the step and the expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUCCEEDED = "Succeeded"
CACHED = "Cached"
NOT_EXECUTED = "NotExecuted"
FAILED = "Failed"


class LocalRunError(ValueError):
    """The definition cannot run here (an unsupported feature, a missing property...)."""


@dataclass
class StepRun:
    """What happened to one step: status and the properties later steps may read."""

    name: str
    type: str
    status: str
    properties: dict[str, Any] = field(default_factory=dict)


_PATH_TOKEN = re.compile(r"\.?([A-Za-z0-9_]+)|\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")
_LIST_KEYS = ("OutputName", "InputName", "ChannelName", "MetricName", "Name")


def property_path(obj: Any, path: str, *, where: str) -> Any:
    """Return the value at ``path`` (``A.B['name'].C[0]``) of ``obj``.

    A string index into a list picks the item whose ``OutputName`` (``InputName``,
    ``ChannelName``...) is that string, as SageMaker's property paths do.

    Raises:
        LocalRunError: the path does not exist (the message names ``where`` and the path).
    """
    pos = 0
    value = obj
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m or m.end() == pos:
            raise LocalRunError(f"{where}: cannot parse property path {path!r} at {pos}")
        pos = m.end()
        name, quoted, dquoted, index = m.groups()
        key = name if name is not None else (quoted if quoted is not None else dquoted)
        try:
            if index is not None:
                value = value[int(index)]
            elif isinstance(value, list):
                value = next(v for v in value if any(v.get(k) == key for k in _LIST_KEYS))
            else:
                value = value[key]
        except (KeyError, IndexError, TypeError, StopIteration, AttributeError):
            raise LocalRunError(f"{where}: no {path!r} (missing at {path[: m.end()]!r})") from None
    return value


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Context:
    parameters: dict[str, Any]
    execution: dict[str, str]
    steps: dict[str, StepRun]
    property_files: dict[tuple[str, str], Any]


def resolve(value: Any, ctx: Context, *, where: str, symbolic_execution: bool = False) -> Any:
    """Return ``value`` with every expression replaced by its value.

    With ``symbolic_execution`` the execution variables stay as ``{"Get": ...}`` (the
    cache key leaves them out).

    Raises:
        LocalRunError: a step property read before that step ran, or a missing property.
    """

    def walk(v: Any) -> Any:
        if isinstance(v, dict) and len(v) == 1:
            ((key, inner),) = v.items()
            if key == "Get":
                return get(str(inner))
            if key == "Std:Join":
                return str(inner.get("On", "")).join(as_text(walk(x)) for x in inner["Values"])
            if key == "Std:JsonGet":
                return json_value(inner)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    def get(path: str) -> Any:
        head, _, rest = path.partition(".")
        if head == "Parameters":
            if rest not in ctx.parameters:
                raise LocalRunError(f"{where}: unknown parameter {path}")
            return ctx.parameters[rest]
        if head == "Execution":
            if symbolic_execution:
                return {"Get": path}
            if rest not in ctx.execution:
                raise LocalRunError(f"{where}: unknown execution variable {path}")
            return ctx.execution[rest]
        if head == "Steps":
            step, _, prop = rest.partition(".")
            run = ctx.steps.get(step)
            if run is None or run.status not in (SUCCEEDED, CACHED):
                raise LocalRunError(f"{where} reads {path}, but step {step} has not run")
            return property_path(run.properties, prop, where=f"{where} ({path})")
        raise LocalRunError(f"{where}: {path!r} is not a Parameters/Steps/Execution reference")

    def json_value(spec: Mapping[str, Any]) -> Any:
        ref = str(spec["PropertyFile"]["Get"])
        m = re.match(r"^Steps\.([^.]+)\.PropertyFiles\.(.+)$", ref)
        if not m:
            raise LocalRunError(f"{where}: Std:JsonGet needs Steps.<step>.PropertyFiles.<file>")
        step, name = m.groups()
        if (step, name) not in ctx.property_files:
            raise LocalRunError(f"{where} reads property file {name} of {step}, not available")
        document = ctx.property_files[(step, name)]
        return property_path(document, str(spec["Path"]), where=f"{where} ({name})")

    return walk(value)


def evaluate_condition(cond: Mapping[str, Any], resolved: Callable[[Any], Any]) -> bool:
    """Return the truth of one condition (``resolved`` turns an operand into its value).

    Raises:
        LocalRunError: an unknown condition type, or operands that cannot be compared.
    """
    kind = cond.get("Type")
    if kind == "Not":
        return not evaluate_condition(cond["Expression"], resolved)
    if kind == "Or":
        return any(evaluate_condition(c, resolved) for c in cond["Conditions"])
    if kind == "In":
        query = resolved(cond["QueryValue"])
        return any(query == resolved(v) for v in cond["Values"])
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "Equals": lambda a, b: bool(a == b),
        "GreaterThan": lambda a, b: bool(a > b),
        "GreaterThanOrEqualTo": lambda a, b: bool(a >= b),
        "LessThan": lambda a, b: bool(a < b),
        "LessThanOrEqualTo": lambda a, b: bool(a <= b),
    }
    if kind not in ops:
        raise LocalRunError(f"unknown condition type {kind!r}")
    left, right = resolved(cond["LeftValue"]), resolved(cond["RightValue"])

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    if kind != "Equals" and not (number(left) and number(right)):
        if type(left) is not type(right) or left is None:
            raise LocalRunError(f"condition {kind}: cannot compare {left!r} with {right!r}")
    return ops[str(kind)](left, right)
