"""What one training-pipeline execution did, read back from SageMaker alone: who started it, with which
parameters, each step's outcome and duration, the evaluation metrics, the circuit's FHE levers and the model package
it registered.

Used by ``fhe-pipeline run`` to report an execution's outcome and by the audit report.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from common.audit_log import user_identity
from common.s3uri import S3Uri
from pipelines.pipeline import EVALUATION_FILE

EVALUATION_OUTPUT = "evaluation"  # the Evaluate step's output that holds EVALUATION_FILE


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 1) if start and end else None


def _read_json(s3: Any, uri: S3Uri) -> Any:
    return json.loads(s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())


def evaluation_report(sagemaker: Any, s3: Any, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The report the Evaluate step wrote (also for an execution that failed its quality check afterwards)."""
    for step in steps:
        job_arn = step.get("Metadata", {}).get("ProcessingJob", {}).get("Arn")
        if not job_arn or step.get("StepStatus") != "Succeeded":
            continue
        job = sagemaker.describe_processing_job(ProcessingJobName=job_arn.rsplit("/", 1)[-1])
        for output in job.get("ProcessingOutputConfig", {}).get("Outputs", []):
            if output.get("OutputName") == EVALUATION_OUTPUT:
                report: dict[str, Any] = _read_json(s3, S3Uri.parse(output["S3Output"]["S3Uri"]).join(EVALUATION_FILE))
                return report
    return {}


def model_package_summary(sagemaker: Any, package_arn: str) -> dict[str, Any]:
    package = sagemaker.describe_model_package(ModelPackageName=package_arn)
    return {
        "arn": package_arn,
        "group": package.get("ModelPackageGroupName"),
        "version": package.get("ModelPackageVersion"),
        "status": package.get("ModelApprovalStatus"),
        "approval_note": package.get("ApprovalDescription", ""),
        "created": iso(package.get("CreationTime")),
        "last_modified": iso(package.get("LastModifiedTime")),
        "last_modified_by": user_identity(package.get("LastModifiedBy")),
    }


def describe_run(sagemaker: Any, s3: Any, execution_arn: str) -> dict[str, Any]:
    """One execution as plain data (times in ISO 8601, durations in seconds)."""
    execution = sagemaker.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
    steps = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=execution_arn, SortOrder="Ascending")[
        "PipelineExecutionSteps"
    ]
    parameters = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution_arn)
    run: dict[str, Any] = {
        "execution": execution_arn,
        "display_name": execution.get("PipelineExecutionDisplayName"),
        "status": execution["PipelineExecutionStatus"],
        "failure_reason": execution.get("FailureReason"),
        "started": iso(execution.get("CreationTime")),
        "ended": iso(execution.get("LastModifiedTime")),
        "seconds": seconds_between(execution.get("CreationTime"), execution.get("LastModifiedTime")),
        "started_by": user_identity(execution.get("CreatedBy")),
        "parameters": {p["Name"]: p["Value"] for p in parameters.get("PipelineParameters", [])},
        "steps": [
            {
                "name": s["StepName"],
                "status": s["StepStatus"],
                "started": iso(s.get("StartTime")),
                "ended": iso(s.get("EndTime")),
                "seconds": seconds_between(s.get("StartTime"), s.get("EndTime")),
                **({"failure_reason": s["FailureReason"]} if s.get("FailureReason") else {}),
                **(
                    {"condition": s["Metadata"]["Condition"].get("Outcome")}
                    if "Condition" in s.get("Metadata", {})
                    else {}
                ),
            }
            for s in steps
        ],
    }
    report = evaluation_report(sagemaker, s3, steps)
    run["metrics"] = {k: v["value"] for k, v in report.get("multiclass_classification_metrics", {}).items()}
    # The FHE levers of the circuit evaluated, how the Train step's search chose them and what it certified, and
    # the budget's promise checked on the test split.
    run["levers"] = report.get("levers") or {}
    run["levers_chosen_by"] = levers_chosen_by(report.get("search") or {})
    run["budget"] = report.get("budget")
    for step in steps:
        package_arn = step.get("Metadata", {}).get("RegisterModel", {}).get("Arn")
        if package_arn:
            run["model_package"] = model_package_summary(sagemaker, package_arn)
    return run


def levers_chosen_by(search: dict[str, Any]) -> str:
    """How the evaluated circuit's levers were chosen, and the loss certified for it, in words."""
    if not search:
        return "given (no search)"
    guaranteed = search.get("certified_loss") or {}
    bound = guaranteed.get("bound")
    budget = search.get("accuracy_budget")
    certified = (
        f"certified by construction (the float model's exact circuit, wrong at most {bound:.1e} of the samples)"
        if guaranteed.get("by_construction") and bound is not None
        else f"at most {bound * 100:.2f} points lost at {search.get('confidence', 0):.0%} confidence on "
        f"{search.get('certification_rows')} certification rows"
        if bound is not None
        else "no certification recorded"
    )
    if search.get("chosen"):
        return f"chosen by the search (budget {budget}, {search.get('explored')} explored): {certified}"
    return f"given (the search certified no candidate within the budget {budget}): {certified}"


def runs_between(sagemaker: Any, pipeline_name: str, since: datetime, until: datetime) -> list[str]:
    """The ARNs of the executions of ``pipeline_name`` created in [since, until), oldest first."""
    pages = sagemaker.get_paginator("list_pipeline_executions").paginate(
        PipelineName=pipeline_name, CreatedAfter=since, CreatedBefore=until, SortOrder="Ascending"
    )
    return [s["PipelineExecutionArn"] for page in pages for s in page["PipelineExecutionSummaries"]]
