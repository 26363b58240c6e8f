"""SageMaker Pipeline definitions (JSON, Version ``2020-12-01``) from plain functions.

The expressions of the documented format (:func:`get`, :func:`param`, :func:`execution`,
:func:`join`, :func:`json_get` and the step properties), the definition's parts
(:class:`Parameter`, :class:`PropertyFile`, :class:`Step`, :func:`condition_step`), the
reference check (:func:`check_references`: unique step names, and no expression naming an
unknown step, parameter or property file) and :func:`build_definition`. No SageMaker SDK
and no AWS call: the model pipeline (:mod:`oncopipe.pipeline.definition`) is built from
these, and :mod:`oncopipe.pipeline.local_runner` runs the same JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

VERSION = "2020-12-01"
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
#: Execution variables a definition may read (``{"Get": "Execution.<name>"}``).
EXECUTION_VARIABLES = (
    "PipelineExecutionId",
    "PipelineExecutionArn",
    "PipelineName",
    "PipelineArn",
    "StartDateTime",
    "CurrentDateTime",
)


class DefinitionError(ValueError):
    """The definition is inconsistent (unknown step or parameter, duplicate name...)."""


# -- expressions ----------------------------------------------------------------------------
def get(path: str) -> dict[str, Any]:
    """Return a ``Get`` expression (``Parameters.X``, ``Steps.S.Path``, ``Execution.X``)."""
    return {"Get": path}


def param(name: str) -> dict[str, Any]:
    """Return the value of pipeline parameter ``name``."""
    return get(f"Parameters.{name}")


def execution(variable: str) -> dict[str, Any]:
    """Return an execution variable (``PipelineExecutionId``...).

    Raises:
        DefinitionError: not an execution variable.
    """
    if variable not in EXECUTION_VARIABLES:
        raise DefinitionError(
            f"unknown execution variable {variable!r} (known: {', '.join(EXECUTION_VARIABLES)})"
        )
    return get(f"Execution.{variable}")


def join(values: Sequence[Any], on: str = "") -> dict[str, Any]:
    """Return ``Std:Join`` of literals and expressions, separated by ``on``."""
    return {"Std:Join": {"On": on, "Values": list(values)}}


def json_get(step: str, property_file: str, path: str) -> dict[str, Any]:
    """Return ``Std:JsonGet``: the value at ``path`` of a step's property file."""
    return {
        "Std:JsonGet": {
            "PropertyFile": get(f"Steps.{step}.PropertyFiles.{property_file}"),
            "Path": path,
        }
    }


def processing_output_uri(step: str, output: str) -> dict[str, Any]:
    """Return the S3 URI a processing step's named output is uploaded to."""
    return get(f"Steps.{step}.ProcessingOutputConfig.Outputs['{output}'].S3Output.S3Uri")


def best_model_artifacts(step: str, output_path: str) -> dict[str, Any]:
    """The ``model.tar.gz`` of a Tuning step's best training job (``output_path``: its
    ``OutputDataConfig.S3OutputPath``, where SageMaker writes ``<job>/output/model.tar.gz``)."""
    return join(
        [
            output_path.rstrip("/"),
            get(f"Steps.{step}.BestTrainingJob.TrainingJobName"),
            "output",
            "model.tar.gz",
        ],
        on="/",
    )


def model_artifacts(step: str) -> dict[str, Any]:
    """Return the ``model.tar.gz`` URI a training step produced."""
    return get(f"Steps.{step}.ModelArtifacts.S3ModelArtifacts")


def iter_expressions(value: Any) -> Iterator[dict[str, Any]]:
    """Yield every ``Get`` / ``Std:Join`` / ``Std:JsonGet`` expression inside ``value``."""
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in ("Get", "Std:Join", "Std:JsonGet"):
            yield value
            inner = next(iter(value.values()))
            if isinstance(inner, dict):
                yield from iter_expressions(inner.get("Values", []))
                yield from iter_expressions(inner.get("PropertyFile"))
            return
        for v in value.values():
            yield from iter_expressions(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_expressions(v)


_STEP_REF = re.compile(r"^Steps\.([A-Za-z0-9\-_]+)(?:\.|$)")


def referenced_steps(value: Any) -> set[str]:
    """Return the names of the steps whose properties ``value`` reads."""
    names = set()
    for expr in iter_expressions(value):
        path = expr.get("Get")
        if isinstance(path, str):
            m = _STEP_REF.match(path)
            if m:
                names.add(m.group(1))
    return names


# -- the definition's parts -----------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter: name, type (String/Integer/Float/Boolean), default value."""

    name: str
    type: str
    default: str | int | float | bool

    def __post_init__(self) -> None:
        if self.type not in PARAMETER_TYPES:
            raise DefinitionError(f"parameter {self.name}: type must be one of {PARAMETER_TYPES}")
        expected: dict[str, type | tuple[type, ...]] = {
            "String": str,
            "Integer": int,
            "Float": (int, float),
            "Boolean": bool,
        }
        ok = isinstance(self.default, expected[self.type]) and not (
            self.type in ("Integer", "Float") and isinstance(self.default, bool)
        )
        if not ok:
            raise DefinitionError(
                f"parameter {self.name}: default {self.default!r} is not a {self.type}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"Name": self.name, "Type": self.type, "DefaultValue": self.default}


@dataclass(frozen=True)
class PropertyFile:
    """A JSON file a processing step writes into one of its outputs, read by ``Std:JsonGet``."""

    name: str
    output_name: str
    file_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "PropertyFileName": self.name,
            "OutputName": self.output_name,
            "FilePath": self.file_path,
        }


@dataclass(frozen=True)
class Step:
    """One step: name, type (Processing, Training, Condition, RegisterModel, Fail), arguments.

    ``arguments`` is the request of the step's API call (``CreateProcessingJob`` without the
    job name, which the pipeline chooses), the condition, or the failure message.
    ``cache_expire_after`` (an ISO 8601 duration, ``P30D``) turns step caching on.
    """

    name: str
    type: str
    arguments: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    cache_expire_after: str | None = None
    property_files: tuple[PropertyFile, ...] = ()
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Name": self.name, "Type": self.type}
        if self.description:
            out["Description"] = self.description
        if self.depends_on:
            out["DependsOn"] = list(self.depends_on)
        out["Arguments"] = self.arguments
        if self.cache_expire_after:
            out["CacheConfig"] = {"Enabled": True, "ExpireAfter": self.cache_expire_after}
        if self.property_files:
            out["PropertyFiles"] = [p.to_json() for p in self.property_files]
        return out


def condition_step(
    name: str,
    conditions: Sequence[dict[str, Any]],
    if_steps: Sequence[Step],
    else_steps: Sequence[Step],
) -> Step:
    """Return a Condition step; its branches' steps are nested in it, as the format has it.

    ``conditions`` must all hold (the list is a conjunction) for ``if_steps`` to run.
    """
    return Step(
        name,
        "Condition",
        {
            "Conditions": list(conditions),
            "IfSteps": [s.to_json() for s in if_steps],
            "ElseSteps": [s.to_json() for s in else_steps],
        },
    )


def compare(kind: str, left: Any, right: Any) -> dict[str, Any]:
    """Return a comparison condition (``GreaterThanOrEqualTo``, ``Equals``...)."""
    kinds = ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo")
    if kind not in kinds:
        raise DefinitionError(f"unknown comparison {kind!r} (known: {', '.join(kinds)})")
    return {"Type": kind, "LeftValue": left, "RightValue": right}


def all_steps(steps: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return every step of a definition's ``Steps``, the nested branch steps included."""
    out: list[Mapping[str, Any]] = []
    for step in steps:
        out.append(step)
        if step.get("Type") == "Condition":
            args = step.get("Arguments", {})
            out += all_steps([*args.get("IfSteps", []), *args.get("ElseSteps", [])])
    return out


def check_references(definition: Mapping[str, Any]) -> None:
    """Refuse a definition whose expressions name unknown steps, parameters or property files.

    Raises:
        DefinitionError: the message names the step, the reference and what exists.
    """
    steps = all_steps(definition.get("Steps", []))
    names = [str(s.get("Name")) for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DefinitionError(f"step names must be unique: {', '.join(dupes)}")
    params = {str(p["Name"]) for p in definition.get("Parameters", [])}
    files = {
        (str(s["Name"]), str(f["PropertyFileName"]))
        for s in steps
        for f in s.get("PropertyFiles", [])
    }
    for step in steps:
        where = f"step {step.get('Name')}"
        for dep in step.get("DependsOn", []):
            if dep not in names:
                raise DefinitionError(
                    f"{where} depends on {dep!r}, which is not a step of this pipeline "
                    f"(steps: {', '.join(names)})"
                )
        body = {k: v for k, v in step.items() if k == "Arguments"}
        if step.get("Type") == "Condition":  # its branch steps are checked as themselves
            body = {"Arguments": {"Conditions": step.get("Arguments", {}).get("Conditions")}}
        for expr in iter_expressions(body):
            path = expr.get("Get")
            if not isinstance(path, str):
                continue
            head, _, rest = path.partition(".")
            if head == "Parameters":
                if rest not in params:
                    raise DefinitionError(
                        f"{where} reads {path}, which is not a parameter of this pipeline "
                        f"(parameters: {', '.join(sorted(params)) or 'none'})"
                    )
            elif head == "Execution":
                if rest not in EXECUTION_VARIABLES:
                    raise DefinitionError(f"{where} reads {path}: no such execution variable")
            elif head == "Steps":
                target, _, prop = rest.partition(".")
                if target not in names:
                    raise DefinitionError(
                        f"{where} reads {path}, but {target!r} is not a step of this pipeline "
                        f"(steps: {', '.join(names)})"
                    )
                if target == step.get("Name"):
                    raise DefinitionError(f"{where} reads its own property {path}")
                if prop.startswith("PropertyFiles."):
                    pf = prop.removeprefix("PropertyFiles.")
                    if (target, pf) not in files:
                        raise DefinitionError(
                            f"{where} reads {path}, but step {target} declares no property "
                            f"file {pf!r}"
                        )
            else:
                raise DefinitionError(
                    f"{where}: {path!r} is not a Parameters., Steps. or Execution. reference"
                )


def build_definition(parameters: Sequence[Parameter], steps: Sequence[Step]) -> dict[str, Any]:
    """Return the definition JSON object of parameters and top-level steps, checked.

    Raises:
        DefinitionError: duplicate names or a reference to an unknown step, parameter or
            property file (:func:`check_references`).
    """
    seen = [p.name for p in parameters]
    if len(set(seen)) != len(seen):
        raise DefinitionError(f"parameter names must be unique: {', '.join(seen)}")
    definition = {
        "Version": VERSION,
        "Metadata": {},
        "Parameters": [p.to_json() for p in parameters],
        "PipelineExperimentConfig": {
            "ExperimentName": execution("PipelineName"),
            "TrialName": execution("PipelineExecutionId"),
        },
        "Steps": [s.to_json() for s in steps],
    }
    check_references(definition)
    return definition
