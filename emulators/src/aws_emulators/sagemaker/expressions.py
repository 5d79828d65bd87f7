"""The expression language of pipeline definitions: ``Get``, ``Std:Join``, ``Std:JsonGet`` and conditions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\['([^']*)'\]|\[(\d+)\]")


class ExpressionError(ValueError):
    """A definition expression that cannot be evaluated (unknown reference, bad path, wrong type)."""


@dataclass
class Context:
    parameters: dict[str, Any]
    execution: dict[str, Any]
    step_properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    property_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Step.File" -> parsed JSON
    read_s3_json: Callable[[str], Any] | None = None


def path_tokens(path: str) -> list[str | int]:
    tokens: list[str | int] = []
    position = 0
    while position < len(path):
        match = _TOKEN.match(path, position)
        if not match:
            raise ExpressionError(f"cannot parse property path {path!r} at {path[position:]!r}")
        name, key, index = match.groups()
        tokens.append(int(index) if index is not None else (key if key is not None else name))
        position = match.end()
    return tokens


def lookup(document: Any, tokens: list[str | int], what: str) -> Any:
    value = document
    for token in tokens:
        if isinstance(value, list) and isinstance(token, str):
            # SageMaker indexes lists of named things by name: Outputs['train'].
            named = [item for item in value if isinstance(item, dict) and token in _names(item)]
            if not named:
                raise ExpressionError(f"{what}: no element named {token!r}")
            value = named[0]
        elif isinstance(value, list) and isinstance(token, int):
            if not 0 <= token < len(value):
                raise ExpressionError(f"{what}: index {token} out of range")
            value = value[token]
        elif isinstance(value, dict) and token in value:
            value = value[token]
        else:
            raise ExpressionError(f"{what}: no property {token!r}")
    return value


def _names(item: dict[str, Any]) -> set[Any]:
    return {v for k, v in item.items() if k.endswith("Name")}


def json_path(document: Any, path: str) -> Any:
    """The JsonGet path subset SageMaker documents: dotted names and [index]."""
    return lookup(document, path_tokens(path), f"JsonGet path {path!r}")


def step_references(node: Any) -> set[str]:
    """Names of the steps an expression tree refers to (``Steps.<name>...``)."""
    found: set[str] = set()
    if isinstance(node, dict):
        get = node.get("Get")
        if isinstance(get, str) and get.startswith("Steps."):
            found.add(path_tokens(get)[1].__str__())
        for value in node.values():
            found |= step_references(value)
    elif isinstance(node, list):
        for value in node:
            found |= step_references(value)
    return found


def resolve(node: Any, context: Context) -> Any:
    """Evaluate every expression inside ``node``; plain values pass through."""
    if isinstance(node, list):
        return [resolve(v, context) for v in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Get"}:
        return _get(node["Get"], context)
    if set(node) == {"Std:Join"}:
        spec = node["Std:Join"]
        return str(spec.get("On", "")).join(_text(resolve(v, context)) for v in spec.get("Values", []))
    if set(node) == {"Std:JsonGet"}:
        return _json_get(node["Std:JsonGet"], context)
    return {k: resolve(v, context) for k, v in node.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _get(reference: str, context: Context) -> Any:
    tokens = path_tokens(reference)
    head = tokens[0]
    if head == "Parameters" and len(tokens) == 2:
        if tokens[1] not in context.parameters:
            raise ExpressionError(f"unknown parameter {tokens[1]!r}")
        return context.parameters[str(tokens[1])]
    if head == "Execution" and len(tokens) == 2:
        if tokens[1] not in context.execution:
            raise ExpressionError(f"unknown execution variable {tokens[1]!r}")
        return context.execution[str(tokens[1])]
    if head == "Steps" and len(tokens) >= 3:
        step = str(tokens[1])
        if tokens[2] == "PropertyFiles" and len(tokens) == 4:
            key = f"{step}.{tokens[3]}"
            if key not in context.property_files:
                raise ExpressionError(f"property file {tokens[3]!r} of step {step!r} is not available")
            return context.property_files[key]
        if step not in context.step_properties:
            raise ExpressionError(f"step {step!r} has no properties yet (has it run?)")
        return lookup(context.step_properties[step], tokens[2:], reference)
    raise ExpressionError(f"unsupported reference {reference!r}")


def _json_get(spec: dict[str, Any], context: Context) -> Any:
    path = spec.get("Path")
    if not isinstance(path, str):
        raise ExpressionError("Std:JsonGet needs a Path")
    if "PropertyFile" in spec:
        document = resolve(spec["PropertyFile"], context)
    elif "S3Uri" in spec:
        if context.read_s3_json is None:
            raise ExpressionError("Std:JsonGet from S3 is not available here")
        document = context.read_s3_json(_text(resolve(spec["S3Uri"], context)))
    else:
        raise ExpressionError("Std:JsonGet needs a PropertyFile or an S3Uri")
    return json_path(document, path)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": lambda a, b: a == b,
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanOrEqualTo": lambda a, b: a >= b,
    "LessThan": lambda a, b: a < b,
    "LessThanOrEqualTo": lambda a, b: a <= b,
}


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    if (isinstance(a, int | float) and isinstance(b, str)) or (isinstance(b, int | float) and isinstance(a, str)):
        try:
            return float(a), float(b)
        except ValueError:
            return str(a), str(b)
    return a, b


def evaluate_condition(condition: dict[str, Any], context: Context) -> bool:
    kind = condition.get("Type")
    if kind in _COMPARISONS:
        left, right = _comparable(resolve(condition["LeftValue"], context), resolve(condition["RightValue"], context))
        try:
            return _COMPARISONS[kind](left, right)
        except TypeError as error:
            raise ExpressionError(f"cannot compare {left!r} and {right!r}: {error}") from None
    if kind == "In":
        query = resolve(condition["QueryValue"], context)
        return any(query == resolve(v, context) for v in condition["Values"])
    if kind == "Not":
        return not evaluate_condition(condition["Condition"], context)
    if kind == "Or":
        return any(evaluate_condition(c, context) for c in condition["Conditions"])
    raise ExpressionError(f"unsupported condition type {kind!r}")


def parse_json_bytes(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise ExpressionError(f"{what} is not valid JSON: {error}") from None
