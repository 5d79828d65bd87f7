"""The expression language of pipeline definitions, the step graph and typed parameters."""

from __future__ import annotations

from typing import Any

import pytest

from aws_emulators.sagemaker.errors import ValidationError
from aws_emulators.sagemaker.expressions import (
    Context,
    ExpressionError,
    evaluate_condition,
    path_tokens,
    resolve,
    step_references,
)
from aws_emulators.sagemaker.step_runner import StepGraph, typed_parameters


def context() -> Context:
    return Context(
        parameters={"Threshold": 0.8, "Name": "x", "Count": 5},
        execution={"PipelineExecutionId": "abc123"},
        step_properties={
            "Prep": {
                "ProcessingOutputConfig": {
                    "Outputs": [
                        {"OutputName": "train", "S3Output": {"S3Uri": "s3://b/train"}},
                        {"OutputName": "test", "S3Output": {"S3Uri": "s3://b/test"}},
                    ]
                }
            }
        },
        property_files={"Eval.Report": {"metrics": {"accuracy": {"value": 0.9}}, "list": [1, 2, 3]}},
    )


def test_path_tokens_read_names_keys_and_indexes() -> None:
    assert path_tokens("Steps.Prep.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri") == [
        "Steps",
        "Prep",
        "ProcessingOutputConfig",
        "Outputs",
        "train",
        "S3Output",
        "S3Uri",
    ]
    assert path_tokens("a.b[2].c") == ["a", "b", 2, "c"]
    with pytest.raises(ExpressionError):
        path_tokens("a..b")


def test_resolve_get_join_and_json_get() -> None:
    node = {
        "Std:Join": {
            "On": "/",
            "Values": [
                {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"},
                {"Get": "Execution.PipelineExecutionId"},
                {"Get": "Parameters.Count"},
            ],
        }
    }
    assert resolve(node, context()) == "s3://b/test/abc123/5"
    json_get = {
        "Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.Report"}, "Path": "metrics.accuracy.value"}
    }
    assert resolve(json_get, context()) == 0.9
    assert (
        resolve(
            {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.Report"}, "Path": "list[2]"}}, context()
        )
        == 3
    )
    assert resolve({"A": [{"Get": "Parameters.Name"}, 1]}, context()) == {"A": ["x", 1]}


@pytest.mark.parametrize(
    "reference",
    [
        "Parameters.Missing",
        "Steps.Nope.X",
        "Execution.Nope",
        "Other.Thing",
        "Steps.Prep.ProcessingOutputConfig.Outputs['nope'].S3Output.S3Uri",
    ],
)
def test_unknown_references_are_named(reference: str) -> None:
    with pytest.raises(ExpressionError):
        resolve({"Get": reference}, context())


def test_conditions() -> None:
    accuracy = {
        "Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.Report"}, "Path": "metrics.accuracy.value"}
    }
    threshold = {"Get": "Parameters.Threshold"}
    ctx = context()
    assert evaluate_condition({"Type": "GreaterThanOrEqualTo", "LeftValue": accuracy, "RightValue": threshold}, ctx)
    assert not evaluate_condition({"Type": "LessThan", "LeftValue": accuracy, "RightValue": threshold}, ctx)
    assert evaluate_condition({"Type": "Not", "Condition": {"Type": "Equals", "LeftValue": 1, "RightValue": 2}}, ctx)
    assert evaluate_condition(
        {
            "Type": "Or",
            "Conditions": [
                {"Type": "Equals", "LeftValue": 1, "RightValue": 2},
                {"Type": "In", "QueryValue": "x", "Values": ["y", "x"]},
            ],
        },
        ctx,
    )
    with pytest.raises(ExpressionError):
        evaluate_condition({"Type": "Sometimes"}, ctx)


def test_step_graph_orders_by_references_and_branches() -> None:
    steps = [
        {"Name": "B", "Type": "Training", "Arguments": {"X": {"Get": "Steps.A.Out"}}},
        {"Name": "A", "Type": "Processing", "Arguments": {}},
        {
            "Name": "C",
            "Type": "Condition",
            "Arguments": {
                "Conditions": [{"Type": "Equals", "LeftValue": {"Get": "Steps.B.Y"}, "RightValue": 1}],
                "IfSteps": [{"Name": "Yes", "Type": "RegisterModel", "Arguments": {"Z": {"Get": "Steps.A.Out"}}}],
                "ElseSteps": [{"Name": "No", "Type": "Fail", "Arguments": {}}],
            },
        },
    ]
    graph = StepGraph(steps)
    assert step_references(steps[0]) == {"A"}
    assert graph.ready({}) == ["A"]
    done = {"StepStatus": "Succeeded"}
    assert graph.ready({"A": done}) == ["B"]
    assert graph.ready({"A": done, "B": done}) == ["C"]
    condition_false = {"StepStatus": "Succeeded", "Metadata": {"Condition": {"Outcome": "False"}}}
    assert graph.ready({"A": done, "B": done, "C": condition_false}) == ["No"]


def test_step_graph_rejects_unknown_and_duplicate_steps() -> None:
    with pytest.raises(ExpressionError, match="unknown step"):
        StepGraph([{"Name": "A", "Type": "Processing", "Arguments": {"X": {"Get": "Steps.Ghost.Out"}}}])
    with pytest.raises(ExpressionError, match="used twice"):
        StepGraph([{"Name": "A", "Type": "Fail"}, {"Name": "A", "Type": "Fail"}])


def test_typed_parameters() -> None:
    declared: list[dict[str, Any]] = [
        {"Name": "N", "Type": "Integer", "DefaultValue": 1},
        {"Name": "F", "Type": "Float", "DefaultValue": 0.5},
        {"Name": "S", "Type": "String", "DefaultValue": "a", "EnumValues": ["a", "b"]},
    ]
    assert typed_parameters(declared, [{"Name": "N", "Value": "7"}]) == {"N": 7, "F": 0.5, "S": "a"}
    with pytest.raises(ValidationError, match="not a valid Integer"):
        typed_parameters(declared, [{"Name": "N", "Value": "seven"}])
    with pytest.raises(ValidationError, match="not defined"):
        typed_parameters(declared, [{"Name": "Nope", "Value": "1"}])
    with pytest.raises(ValidationError, match="not one of"):
        typed_parameters(declared, [{"Name": "S", "Value": "c"}])
