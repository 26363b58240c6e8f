"""Validation of a pipeline definition without the published schema (it has no licence).

Two checks:

* :func:`validate_top_level`: a JSON schema written here from the AWS documentation of the
  definition format (Version, Parameters, Steps with Name/Type/Arguments, the Condition and
  Fail steps' shapes), with ``jsonschema``.
* :func:`validate_step_arguments`: each API step's ``Arguments`` against botocore's own
  SageMaker service model (Apache-2.0): Processing -> ``CreateProcessingJob``, Training ->
  ``CreateTrainingJob``, Tuning -> ``CreateHyperParameterTuningJob``, RegisterModel ->
  ``CreateModelPackage``, with
  ``botocore.validate.ParamValidator``. Expressions are resolved only at run time, so
  before validating, each is replaced by a placeholder of the type the service model
  expects at that place (:data:`RELAXATIONS` lists every such substitution).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oncopipe.pipeline.definition import (
    EXECUTION_VARIABLES,
    PARAMETER_TYPES,
    VERSION,
    all_steps,
)

#: Step type -> the SageMaker API operation whose request its Arguments are.
OPERATIONS = {
    "Processing": "CreateProcessingJob",
    "Training": "CreateTrainingJob",
    "Tuning": "CreateHyperParameterTuningJob",
    "RegisterModel": "CreateModelPackage",
}

#: Every way the arguments are changed before botocore sees them (documented relaxations).
RELAXATIONS = (
    "an expression ({'Get': ...}, {'Std:Join': ...}, {'Std:JsonGet': ...}) in a string "
    "member becomes the string 'placeholder-expression'",
    "an expression in an integer or long member becomes 1",
    "an expression in a float or double member becomes 1.0",
    "an expression in a boolean member becomes True",
    "Processing: ProcessingJobName (required by the API, chosen by the pipeline) is added "
    "as 'placeholder-job-name'",
    "Training: TrainingJobName (required by the API, chosen by the pipeline) is added as "
    "'placeholder-job-name'",
    "Tuning: HyperParameterTuningJobName (required by the API, chosen by the pipeline) is "
    "added as 'placeholder-tuning'",
)

_EXPRESSION_KEYS = ("Get", "Std:Join", "Std:JsonGet")
_COMPARISONS = ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo")


class ValidationError(ValueError):
    """The definition does not match the format or the service model."""


def _is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _EXPRESSION_KEYS


def _placeholder(shape: Any) -> Any:
    kind = shape.type_name
    if kind == "string":
        return "placeholder-expression"
    if kind in ("integer", "long"):
        return 1
    if kind in ("float", "double"):
        return 1.0
    if kind == "boolean":
        return True
    raise ValidationError(f"an expression stands for a whole {kind} ({shape.name})")


def substitute(value: Any, shape: Any) -> Any:
    """Return ``value`` with every expression replaced by a placeholder fitting ``shape``.

    Members the shape does not know are left as they are (the validator reports them).
    """
    if _is_expression(value):
        return _placeholder(shape)
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {
            k: (substitute(v, shape.members[k]) if k in shape.members else v)
            for k, v in value.items()
        }
    if kind == "list" and isinstance(value, list):
        return [substitute(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: substitute(v, shape.value) for k, v in value.items()}
    return value


def validate_step_arguments(step: Mapping[str, Any]) -> None:
    """Validate one API step's Arguments against botocore's SageMaker model.

    Raises:
        ValidationError: the message names the step and botocore's findings.
    """
    import botocore.session
    from botocore.validate import ParamValidator

    operation = OPERATIONS[str(step["Type"])]
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model(operation).input_shape
    params = substitute(dict(step["Arguments"]), shape)
    if operation == "CreateProcessingJob":
        params.setdefault("ProcessingJobName", "placeholder-job-name")
    if operation == "CreateTrainingJob":
        params.setdefault("TrainingJobName", "placeholder-job-name")
    if operation == "CreateHyperParameterTuningJob":
        params.setdefault("HyperParameterTuningJobName", "placeholder-tuning")
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        raise ValidationError(f"step {step['Name']} ({operation}): {report.generate_report()}")


# Written from the AWS documentation of the pipeline definition format: the keys and types
# it describes, not the published schema file.
_EXPRESSION = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "Get": {"type": "string", "pattern": r"^(Parameters|Steps|Execution)\.[^.]"},
        "Std:Join": {
            "type": "object",
            "required": ["On", "Values"],
            "properties": {"On": {"type": "string"}, "Values": {"type": "array"}},
            "additionalProperties": False,
        },
        "Std:JsonGet": {
            "type": "object",
            "required": ["PropertyFile", "Path"],
            "properties": {
                "PropertyFile": {"$ref": "#/$defs/get"},
                "Path": {"type": "string", "minLength": 1},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
}
_VALUE = {"anyOf": [{"type": ["string", "number", "boolean"]}, {"$ref": "#/$defs/expression"}]}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["Version", "Steps"],
    "properties": {
        "Version": {"const": VERSION},
        "Metadata": {"type": "object"},
        "Parameters": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["Name", "Type"],
                "properties": {
                    "Name": {"type": "string", "pattern": r"^[A-Za-z0-9\-_]{1,256}$"},
                    "Type": {"enum": list(PARAMETER_TYPES)},
                    "DefaultValue": {"type": ["string", "number", "boolean"]},
                    "EnumValues": {"type": "array"},
                },
                "additionalProperties": False,
                "allOf": [
                    {
                        "if": {"properties": {"Type": {"const": t}}},
                        "then": {"properties": {"DefaultValue": {"type": js}}},
                    }
                    for t, js in (
                        ("String", "string"),
                        ("Integer", "integer"),
                        ("Float", "number"),
                        ("Boolean", "boolean"),
                    )
                ],
            },
        },
        "PipelineExperimentConfig": {
            "type": "object",
            "properties": {"ExperimentName": _VALUE, "TrialName": _VALUE},
            "additionalProperties": False,
        },
        "Steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}},
    },
    "additionalProperties": False,
    "$defs": {
        "get": {
            "type": "object",
            "required": ["Get"],
            "properties": {"Get": {"type": "string"}},
            "additionalProperties": False,
        },
        "expression": _EXPRESSION,
        "value": _VALUE,
        "condition": {
            "type": "object",
            "required": ["Type"],
            "oneOf": [
                {
                    "properties": {
                        "Type": {"enum": list(_COMPARISONS)},
                        "LeftValue": {"$ref": "#/$defs/value"},
                        "RightValue": {"$ref": "#/$defs/value"},
                    },
                    "required": ["LeftValue", "RightValue"],
                    "additionalProperties": False,
                },
                {
                    "properties": {
                        "Type": {"const": "In"},
                        "QueryValue": {"$ref": "#/$defs/value"},
                        "Values": {"type": "array", "items": {"$ref": "#/$defs/value"}},
                    },
                    "required": ["QueryValue", "Values"],
                    "additionalProperties": False,
                },
                {
                    "properties": {
                        "Type": {"const": "Not"},
                        "Expression": {"$ref": "#/$defs/condition"},
                    },
                    "required": ["Expression"],
                    "additionalProperties": False,
                },
                {
                    "properties": {
                        "Type": {"const": "Or"},
                        "Conditions": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"$ref": "#/$defs/condition"},
                        },
                    },
                    "required": ["Conditions"],
                    "additionalProperties": False,
                },
            ],
        },
        "step": {
            "type": "object",
            "required": ["Name", "Type", "Arguments"],
            "properties": {
                "Name": {"type": "string", "pattern": r"^[A-Za-z0-9\-_]{1,64}$"},
                "Type": {
                    "enum": [
                        "Processing",
                        "Training",
                        "Tuning",
                        "Condition",
                        "RegisterModel",
                        "Fail",
                    ]
                },
                "Description": {"type": "string"},
                "DisplayName": {"type": "string"},
                "DependsOn": {"type": "array", "items": {"type": "string"}},
                "Arguments": {"type": "object"},
                "CacheConfig": {
                    "type": "object",
                    "required": ["Enabled"],
                    "properties": {
                        "Enabled": {"type": "boolean"},
                        "ExpireAfter": {"type": "string", "pattern": r"^P"},
                    },
                    "additionalProperties": False,
                },
                "PropertyFiles": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["PropertyFileName", "OutputName", "FilePath"],
                        "properties": {
                            "PropertyFileName": {"type": "string"},
                            "OutputName": {"type": "string"},
                            "FilePath": {"type": "string"},
                        },
                        "additionalProperties": False,
                    },
                },
                "RetryPolicies": {"type": "array"},
            },
            "additionalProperties": False,
            "allOf": [
                {
                    "if": {"properties": {"Type": {"const": "Condition"}}},
                    "then": {
                        "properties": {
                            "Arguments": {
                                "type": "object",
                                "required": ["Conditions"],
                                "properties": {
                                    "Conditions": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {"$ref": "#/$defs/condition"},
                                    },
                                    "IfSteps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
                                    "ElseSteps": {
                                        "type": "array",
                                        "items": {"$ref": "#/$defs/step"},
                                    },
                                },
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                {
                    "if": {"properties": {"Type": {"const": "Fail"}}},
                    "then": {
                        "properties": {
                            "Arguments": {
                                "type": "object",
                                "required": ["ErrorMessage"],
                                "properties": {"ErrorMessage": {"$ref": "#/$defs/value"}},
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                {
                    "if": {"properties": {"Type": {"enum": ["Condition", "Fail"]}}},
                    "then": {"not": {"required": ["CacheConfig"]}},
                },
            ],
        },
    },
}


def validate_top_level(definition: Mapping[str, Any]) -> None:
    """Validate the definition against :data:`SCHEMA`.

    Raises:
        ValidationError: the message gives the JSON path of the first problem.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(definition), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ValidationError(f"pipeline definition at {where}: {first.message}")
    for expr_holder in all_steps(definition["Steps"]):
        for value in _execution_gets(expr_holder):
            if value.split(".", 1)[1] not in EXECUTION_VARIABLES:
                raise ValidationError(f"step {expr_holder['Name']}: unknown {value}")


def _execution_gets(step: Mapping[str, Any]) -> list[str]:
    from oncopipe.pipeline.definition import iter_expressions

    return [
        str(e["Get"])
        for e in iter_expressions(step.get("Arguments", {}))
        if isinstance(e.get("Get"), str) and str(e["Get"]).startswith("Execution.")
    ]


def validate(definition: Mapping[str, Any]) -> None:
    """Run every check: top level, references, and each API step's arguments.

    Raises:
        ValidationError: format or service-model mismatch.
        DefinitionError: a reference to an unknown step, parameter or property file.
    """
    from oncopipe.pipeline.definition import check_references

    validate_top_level(definition)
    check_references(definition)
    for step in all_steps(definition["Steps"]):
        if step["Type"] in OPERATIONS:
            validate_step_arguments(step)
