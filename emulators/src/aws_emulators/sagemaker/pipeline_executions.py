"""Pipelines and their executions, the API operations over the store. An execution snapshots the definition and
its parameters when it starts; ``step_runner`` runs it."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from aws_emulators.sagemaker.backend import Backend, timestamp
from aws_emulators.sagemaker.errors import ResourceNotFound, ValidationError, required
from aws_emulators.sagemaker.step_runner import ExecutionRunner, parameter_text, typed_parameters

log = logging.getLogger("aws_emulators.sagemaker")

TERMINAL = ("Succeeded", "Failed", "Stopped")


class Pipelines:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.runner = ExecutionRunner(backend)

    # ---- pipelines -------------------------------------------------------------------------------

    def _definition_text(self, body: dict[str, Any]) -> str:
        if "PipelineDefinition" in body:
            text = body["PipelineDefinition"]
        elif "PipelineDefinitionS3Location" in body:
            location = body["PipelineDefinitionS3Location"]
            obj = self.backend.s3().get_object(Bucket=location["Bucket"], Key=location["ObjectKey"])
            text = obj["Body"].read().decode()
        else:
            raise ValidationError("Either PipelineDefinition or PipelineDefinitionS3Location must be provided")
        try:
            definition = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValidationError(f"PipelineDefinition is not valid JSON: {error}") from None
        if not isinstance(definition, dict) or not isinstance(definition.get("Steps"), list):
            raise ValidationError("PipelineDefinition must be an object with a Steps list")
        return str(text)

    def create_pipeline(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "PipelineName")
        required(body, "RoleArn")
        text = self._definition_text(body)
        with self.backend.store.transaction():
            if self.backend.store.get("pipeline", name):
                raise ValidationError(
                    f"Pipeline names must be unique within an AWS account and region. Pipeline with name ({name}) "
                    "already exists."
                )
            now = timestamp()
            pipeline = {
                "PipelineName": name,
                "PipelineArn": f"{self.backend.arn_prefix}:pipeline/{name.lower()}",
                "PipelineDisplayName": body.get("PipelineDisplayName", name),
                "PipelineDescription": body.get("PipelineDescription", ""),
                "PipelineDefinition": text,
                "RoleArn": body["RoleArn"],
                "PipelineStatus": "Active",
                "CreationTime": now,
                "LastModifiedTime": now,
                "CreatedBy": caller,
                "LastModifiedBy": caller,
                "PipelineVersionId": 1,
            }
            self.backend.store.put("pipeline", name, pipeline)
        return {"PipelineArn": pipeline["PipelineArn"]}

    def update_pipeline(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        with self.backend.store.transaction():
            pipeline = self._pipeline(required(body, "PipelineName"))
            if "PipelineDefinition" in body or "PipelineDefinitionS3Location" in body:
                pipeline["PipelineDefinition"] = self._definition_text(body)
            for key in ("PipelineDisplayName", "PipelineDescription", "RoleArn"):
                if key in body:
                    pipeline[key] = body[key]
            pipeline["LastModifiedTime"] = timestamp()
            pipeline["LastModifiedBy"] = caller
            pipeline["PipelineVersionId"] = int(pipeline.get("PipelineVersionId", 1)) + 1
            self.backend.store.put("pipeline", pipeline["PipelineName"], pipeline)
        return {"PipelineArn": pipeline["PipelineArn"], "PipelineVersionId": pipeline["PipelineVersionId"]}

    def describe_pipeline(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        # The version is UpdatePipeline's and the executions' to say, not DescribePipeline's.
        return {k: v for k, v in self._pipeline(required(body, "PipelineName")).items() if k != "PipelineVersionId"}

    def list_pipelines(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        keys = (
            "PipelineArn",
            "PipelineName",
            "PipelineDisplayName",
            "PipelineDescription",
            "RoleArn",
            "CreationTime",
            "LastModifiedTime",
        )
        pipelines = self.backend.store.list("pipeline")
        if body.get("PipelineNamePrefix"):
            pipelines = [p for p in pipelines if p["PipelineName"].startswith(body["PipelineNamePrefix"])]
        return {"PipelineSummaries": [{k: p[k] for k in keys if k in p} for p in pipelines]}

    def delete_pipeline(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        pipeline = self._pipeline(required(body, "PipelineName"))
        self.backend.store.delete("pipeline", pipeline["PipelineName"])
        return {"PipelineArn": pipeline["PipelineArn"]}

    def _pipeline(self, name_or_arn: str) -> dict[str, Any]:
        if name_or_arn.startswith("arn:"):
            for pipeline in self.backend.store.list("pipeline"):
                if pipeline["PipelineArn"] == name_or_arn:
                    return pipeline
        else:
            found = self.backend.store.get("pipeline", name_or_arn)
            if found:
                return found
        raise ResourceNotFound(f"Pipeline '{name_or_arn}' does not exist.")

    # ---- executions ------------------------------------------------------------------------------

    def start_pipeline_execution(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        pipeline = self._pipeline(required(body, "PipelineName"))
        token = body.get("ClientRequestToken")
        if token:
            for execution in self.backend.store.list("execution", parent=pipeline["PipelineName"]):
                if execution.get("ClientRequestToken") == token:
                    return {"PipelineExecutionArn": execution["PipelineExecutionArn"]}
        definition = json.loads(pipeline["PipelineDefinition"])
        parameters = typed_parameters(definition.get("Parameters", []), body.get("PipelineParameters", []))
        execution_id = secrets.token_hex(6)
        arn = f"{pipeline['PipelineArn']}/execution/{execution_id}"
        now = timestamp()
        execution = {
            "PipelineArn": pipeline["PipelineArn"],
            "PipelineName": pipeline["PipelineName"],
            "PipelineExecutionArn": arn,
            "PipelineExecutionId": execution_id,
            "PipelineExecutionDisplayName": body.get("PipelineExecutionDisplayName", f"execution-{execution_id}"),
            "PipelineExecutionDescription": body.get("PipelineExecutionDescription", ""),
            "PipelineExecutionStatus": "Executing",
            "PipelineDefinition": pipeline["PipelineDefinition"],
            "PipelineVersionId": pipeline.get("PipelineVersionId", 1),
            "Parameters": parameters,
            "ClientRequestToken": token,
            "CreationTime": now,
            "StartTime": now,
            "LastModifiedTime": now,
            "CreatedBy": caller,
            "LastModifiedBy": caller,
        }
        self.backend.store.put("execution", arn, execution, parent=pipeline["PipelineName"])
        self.runner.run_in_background(arn)
        return {"PipelineExecutionArn": arn}

    def describe_pipeline_execution(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        execution = self.runner.execution(required(body, "PipelineExecutionArn"))
        keys = (
            "PipelineArn",
            "PipelineExecutionArn",
            "PipelineExecutionDisplayName",
            "PipelineExecutionStatus",
            "PipelineExecutionDescription",
            "FailureReason",
            "CreationTime",
            "LastModifiedTime",
            "CreatedBy",
            "LastModifiedBy",
            "PipelineVersionId",
        )
        return {k: execution[k] for k in keys if execution.get(k) is not None}

    def list_pipeline_executions(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        pipeline = self._pipeline(required(body, "PipelineName"))
        executions = self.backend.store.list("execution", parent=pipeline["PipelineName"])
        if body.get("CreatedAfter") is not None:
            executions = [e for e in executions if e["CreationTime"] > float(body["CreatedAfter"])]
        if body.get("CreatedBefore") is not None:
            executions = [e for e in executions if e["CreationTime"] < float(body["CreatedBefore"])]
        if body.get("SortOrder", "Descending") == "Descending":
            executions.reverse()
        summaries = [
            {
                "PipelineExecutionArn": e["PipelineExecutionArn"],
                "StartTime": e["StartTime"],
                "PipelineExecutionStatus": e["PipelineExecutionStatus"],
                "PipelineExecutionDisplayName": e["PipelineExecutionDisplayName"],
                **({"PipelineExecutionFailureReason": e["FailureReason"]} if e.get("FailureReason") else {}),
            }
            for e in executions
        ]
        return {"PipelineExecutionSummaries": summaries[: int(body.get("MaxResults", 100))]}

    def list_pipeline_execution_steps(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        execution = self.runner.execution(required(body, "PipelineExecutionArn"))
        steps = self.backend.store.list("step", parent=execution["PipelineExecutionArn"])
        steps.sort(key=lambda s: s["StartTime"], reverse=body.get("SortOrder", "Descending") == "Descending")
        keys = (
            "StepName",
            "StepDisplayName",
            "StepDescription",
            "StartTime",
            "EndTime",
            "StepStatus",
            "FailureReason",
            "Metadata",
            "AttemptCount",
        )
        return {"PipelineExecutionSteps": [{k: s[k] for k in keys if s.get(k) is not None} for s in steps]}

    def list_pipeline_parameters_for_execution(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        execution = self.runner.execution(required(body, "PipelineExecutionArn"))
        return {
            "PipelineParameters": [{"Name": k, "Value": parameter_text(v)} for k, v in execution["Parameters"].items()]
        }

    def stop_pipeline_execution(self, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        execution = self.runner.execution(required(body, "PipelineExecutionArn"))
        if execution["PipelineExecutionStatus"] in TERMINAL:
            raise ValidationError(f"Pipeline execution is already {execution['PipelineExecutionStatus']}")
        self.runner.request_stop(execution["PipelineExecutionArn"])
        return {"PipelineExecutionArn": execution["PipelineExecutionArn"]}

    def describe_job(self, kind: str, name: str) -> dict[str, Any]:
        job = self.backend.store.get(kind, name)
        if job is None:
            raise ValidationError(f"Could not find job {name!r}")
        return job

    def resume_unfinished(self) -> list[str]:
        return self.runner.resume_unfinished()

    def wait_idle(self, timeout: float) -> None:
        self.runner.wait_idle(timeout)
