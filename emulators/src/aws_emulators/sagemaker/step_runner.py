"""The runner of pipeline executions: it walks an execution's step graph in definition order as dependencies allow
(``Steps.X`` references, ``DependsOn``, condition branches), runs each step (a job in its container, a condition,
a registration, a failure), records every step transition in the store, and resumes unfinished executions after a
restart: finished steps keep their results, the step that was running starts again."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from typing import Any

from aws_emulators.sagemaker.backend import Backend, timestamp
from aws_emulators.sagemaker.errors import ApiError, ResourceNotFound, ValidationError
from aws_emulators.sagemaker.expressions import Context, ExpressionError, evaluate_condition, resolve, step_references
from aws_emulators.sagemaker.jobs import JobFailed, describe, run_processing_job, run_training_job
from aws_emulators.sagemaker.s3_objects import S3Uri

log = logging.getLogger("aws_emulators.sagemaker")


class ExecutionRunner:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._threads: dict[str, threading.Thread] = {}
        self._stop_requested: set[str] = set()

    def request_stop(self, arn: str) -> None:
        self._stop_requested.add(arn)
        self.update_execution(arn, PipelineExecutionStatus="Stopping")

    def execution(self, arn: str) -> dict[str, Any]:
        execution = self.backend.store.get("execution", arn)
        if execution is None:
            raise ResourceNotFound(f"Pipeline execution '{arn}' does not exist.")
        return execution

    def update_execution(self, arn: str, **changes: Any) -> dict[str, Any]:
        with self.backend.store.transaction():
            execution = self.execution(arn)
            execution.update(changes, LastModifiedTime=timestamp())
            self.backend.store.put("execution", arn, execution, parent=execution["PipelineName"])
        return execution

    def resume_unfinished(self) -> list[str]:
        resumed = []
        for execution in self.backend.store.list("execution"):
            if execution["PipelineExecutionStatus"] in ("Executing", "Stopping"):
                self.run_in_background(execution["PipelineExecutionArn"])
                resumed.append(execution["PipelineExecutionArn"])
        return resumed

    def run_in_background(self, arn: str) -> None:
        thread = threading.Thread(target=self._run_safely, args=(arn,), name=f"execution-{arn[-12:]}", daemon=True)
        self._threads[arn] = thread
        thread.start()

    def wait_idle(self, timeout: float) -> None:
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def _run_safely(self, arn: str) -> None:
        try:
            self._run(arn)
        except Exception as error:  # an execution must never stay Executing because of a runner bug
            log.exception("execution %s crashed", arn)
            self.update_execution(
                arn,
                PipelineExecutionStatus="Failed",
                FailureReason=f"local SageMaker error: {type(error).__name__}: {error}",
            )

    def _run(self, arn: str) -> None:
        execution = self.execution(arn)
        definition = json.loads(execution["PipelineDefinition"])
        graph = StepGraph(definition["Steps"])
        # A step that was running when the server stopped runs again; finished steps keep their results.
        records = {
            s["StepName"]: s
            for s in self.backend.store.list("step", parent=arn)
            if s["StepStatus"] not in ("Executing",)
        }

        while True:
            if arn in self._stop_requested:
                self.update_execution(arn, PipelineExecutionStatus="Stopped")
                return
            failed = [r for r in records.values() if r["StepStatus"] == "Failed"]
            if failed:
                first = failed[0]
                reason = first.get("FailureReason", "")
                if graph.steps[first["StepName"]]["Type"] != "Fail":
                    reason = f"Step failure: step {first['StepName']} failed: {reason}"
                self.update_execution(arn, PipelineExecutionStatus="Failed", FailureReason=reason)
                return
            ready = graph.ready(records)
            if not ready:
                self.update_execution(arn, PipelineExecutionStatus="Succeeded")
                return
            name = ready[0]
            records[name] = self._run_step(execution, graph.steps[name], records)

    def _context(self, execution: dict[str, Any], records: dict[str, dict[str, Any]]) -> Context:
        properties = {n: r.get("Properties", {}) for n, r in records.items() if r["StepStatus"] == "Succeeded"}
        files: dict[str, dict[str, Any]] = {}
        for name, record in records.items():
            for file_name, content in record.get("PropertyFiles", {}).items():
                files[f"{name}.{file_name}"] = content
        return Context(
            parameters=execution["Parameters"],
            execution={
                "PipelineExecutionId": execution["PipelineExecutionId"],
                "PipelineExecutionArn": execution["PipelineExecutionArn"],
                "PipelineName": execution["PipelineName"],
                "PipelineArn": execution["PipelineArn"],
                "StartDateTime": execution["StartTime"],
                "CurrentDateTime": timestamp(),
            },
            step_properties=properties,
            property_files=files,
            read_s3_json=self._read_s3_json,
        )

    def _read_s3_json(self, uri: str) -> Any:
        location = S3Uri.parse(uri)
        return json.loads(self.backend.s3().get_object(Bucket=location.bucket, Key=location.key)["Body"].read())

    def _run_step(
        self, execution: dict[str, Any], step: dict[str, Any], records: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        arn = execution["PipelineExecutionArn"]
        name = step["Name"]
        previous = self.backend.store.get("step", f"{arn}#{name}")
        record: dict[str, Any] = {
            "StepName": name,
            "StepDisplayName": step.get("DisplayName", name),
            "StepDescription": step.get("Description"),
            "StepType": step["Type"],
            "StartTime": timestamp(),
            "StepStatus": "Executing",
            "AttemptCount": (previous or {}).get("AttemptCount", 0) + 1,
            "Metadata": {},
        }
        self.backend.store.put("step", f"{arn}#{name}", record, parent=arn)
        log.info("execution %s: step %s (%s) started", execution["PipelineExecutionId"], name, step["Type"])
        context = self._context(execution, records)
        try:
            outcome = self._perform(execution, step, context, record)
            record.update(outcome)
            record["StepStatus"] = outcome.get("StepStatus", "Succeeded")
        except (JobFailed, ExpressionError, ApiError, StepFailed) as error:
            record.update(StepStatus="Failed", FailureReason=str(error)[:1024])
        except Exception as error:
            log.exception("step %s crashed", name)
            record.update(StepStatus="Failed", FailureReason=f"{type(error).__name__}: {error}"[:1024])
        record["EndTime"] = timestamp()
        self.backend.store.put("step", f"{arn}#{name}", record, parent=arn)
        log.info(
            "execution %s: step %s %s %s",
            execution["PipelineExecutionId"],
            name,
            record["StepStatus"],
            record.get("FailureReason", ""),
        )
        return record

    def _perform(
        self, execution: dict[str, Any], step: dict[str, Any], context: Context, record: dict[str, Any]
    ) -> dict[str, Any]:
        kind = step["Type"]
        if kind == "Condition":
            conditions = step["Arguments"].get("Conditions", [])
            outcome = all(evaluate_condition(c, context) for c in conditions)
            return {"Metadata": {"Condition": {"Outcome": "True" if outcome else "False"}}}
        if kind == "Fail":
            message = parameter_text(resolve(step.get("Arguments", {}).get("ErrorMessage", ""), context))
            return {"StepStatus": "Failed", "FailureReason": message, "Metadata": {"Fail": {"ErrorMessage": message}}}
        if kind == "RegisterModel":
            request = resolve(step["Arguments"], context)
            request = {k: v for k, v in request.items() if v not in ({}, None)}
            if "ModelMetrics" in request:
                request["ModelMetrics"] = {k: v for k, v in request["ModelMetrics"].items() if v}
            group = str(request.get("ModelPackageGroupName", ""))
            if group and self.backend.store.get("model-package-group", group) is None:
                # SageMaker's RegisterModel step creates a missing group, unlike the bare API call.
                self.backend.registry.create_model_package_group({"ModelPackageGroupName": group})
            created = self.backend.registry.create_model_package(request, created_by=execution.get("CreatedBy"))
            return {
                "Metadata": {"RegisterModel": {"Arn": created["ModelPackageArn"]}},
                "Properties": {"ModelPackageArn": created["ModelPackageArn"]},
            }
        if kind in ("Processing", "Training"):
            return self._run_job(execution, step, context, record)
        raise StepFailed(f"step type {kind!r} is not supported by the local SageMaker")

    def _run_job(
        self, execution: dict[str, Any], step: dict[str, Any], context: Context, record: dict[str, Any]
    ) -> dict[str, Any]:
        kind = step["Type"]
        request = resolve(step["Arguments"], context)
        job_name = f"pipelines-{execution['PipelineExecutionId']}-{step['Name']}".lower()[:63]
        resource = "processing-job" if kind == "Processing" else "training-job"
        job_arn = f"{self.backend.arn_prefix}:{resource}/{job_name}"
        metadata_key = "ProcessingJob" if kind == "Processing" else "TrainingJob"
        record["Metadata"] = {metadata_key: {"Arn": job_arn}}
        self.backend.store.put(
            "step",
            f"{execution['PipelineExecutionArn']}#{step['Name']}",
            record,
            parent=execution["PipelineExecutionArn"],
        )
        root = self.backend.state_dir / "jobs" / job_name
        if root.exists():
            shutil.rmtree(root)  # a rerun after a restart starts from a clean container
        root.mkdir(parents=True)
        started = timestamp()
        start, end = (
            ("ProcessingStartTime", "ProcessingEndTime")
            if kind == "Processing"
            else ("TrainingStartTime", "TrainingEndTime")
        )
        times = {"CreationTime": started, start: started}
        self.backend.store.put(resource, job_name, describe(kind, job_name, job_arn, request, "InProgress", **times))
        try:
            runner = run_processing_job if kind == "Processing" else run_training_job
            result = runner(self.backend, job_name, request, root, job_arn)
        except JobFailed as error:
            ended = timestamp()
            failed = describe(
                kind, job_name, job_arn, request, "Failed", **times, FailureReason=str(error), **{end: ended},
                LastModifiedTime=ended,
            )  # fmt: skip
            self.backend.store.put(resource, job_name, failed)
            raise
        ended = timestamp()
        self.backend.store.put(
            resource, job_name, {**result.properties, **times, end: ended, "LastModifiedTime": ended}
        )
        outcome: dict[str, Any] = {"Properties": result.properties}
        files = {}
        for spec in step.get("PropertyFiles", []):
            folder = result.local_outputs.get(spec["OutputName"])
            if folder is None:
                raise StepFailed(f"property file {spec['PropertyFileName']}: no output named {spec['OutputName']!r}")
            path = (folder / spec["FilePath"]).resolve()
            if not path.is_relative_to(folder.resolve()) or not path.is_file():
                raise StepFailed(f"property file {spec['PropertyFileName']}: {spec['FilePath']} was not written")
            try:
                files[spec["PropertyFileName"]] = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise StepFailed(f"property file {spec['PropertyFileName']} is not valid JSON: {error}") from None
        outcome["PropertyFiles"] = files
        return outcome


class StepFailed(Exception):
    """A step that cannot complete for a reason the local SageMaker itself found."""


class StepGraph:
    """Steps by name, their dependencies, and which condition branch (if any) each belongs to."""

    def __init__(self, top_level: list[dict[str, Any]]) -> None:
        self.steps: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.branch: dict[str, tuple[str, str]] = {}
        self._add(top_level, None)
        self.dependencies: dict[str, set[str]] = {}
        for name, step in self.steps.items():
            arguments = step.get("Arguments", {})
            if step["Type"] == "Condition":
                arguments = {"Conditions": arguments.get("Conditions", [])}
            deps = step_references(arguments) | set(step.get("DependsOn", []))
            if name in self.branch:
                deps.add(self.branch[name][0])
            unknown = deps - set(self.steps)
            if unknown:
                raise ExpressionError(f"step {name} refers to unknown step(s): {', '.join(sorted(unknown))}")
            self.dependencies[name] = deps - {name}

    def _add(self, steps: list[dict[str, Any]], parent: tuple[str, str] | None) -> None:
        for step in steps:
            name = step["Name"]
            if name in self.steps:
                raise ExpressionError(f"step name {name!r} is used twice")
            self.steps[name] = step
            self.order.append(name)
            if parent:
                self.branch[name] = parent
            if step["Type"] == "Condition":
                self._add(step["Arguments"].get("IfSteps", []), (name, "True"))
                self._add(step["Arguments"].get("ElseSteps", []), (name, "False"))

    def ready(self, records: dict[str, dict[str, Any]]) -> list[str]:
        ready = []
        for name in self.order:
            if name in records:
                continue
            if any(records.get(d, {}).get("StepStatus") != "Succeeded" for d in self.dependencies[name]):
                continue
            if name in self.branch:
                condition, outcome = self.branch[name]
                if records[condition]["Metadata"]["Condition"]["Outcome"] != outcome:
                    continue
            ready.append(name)
        return ready


def typed_parameters(declared: list[dict[str, Any]], overrides: list[dict[str, Any]]) -> dict[str, Any]:
    types = {p["Name"]: p for p in declared}
    values: dict[str, Any] = {p["Name"]: p.get("DefaultValue") for p in declared}
    for item in overrides:
        name = str(item.get("Name"))
        if name not in types:
            raise ValidationError(f"Parameter '{name}' is not defined in the pipeline definition")
        values[name] = item.get("Value")
    typed: dict[str, Any] = {}
    for name, value in values.items():
        spec = types[name]
        if value is None:
            raise ValidationError(f"Parameter '{name}' has no default value and was not provided")
        kind = spec.get("Type", "String")
        try:
            if kind == "Integer":
                typed[name] = int(value)
            elif kind == "Float":
                typed[name] = float(value)
            elif kind == "Boolean":
                typed[name] = value if isinstance(value, bool) else str(value).lower() == "true"
            else:
                typed[name] = str(value)
        except ValueError:
            raise ValidationError(f"Parameter '{name}' value {value!r} is not a valid {kind}") from None
        if spec.get("EnumValues") and typed[name] not in spec["EnumValues"]:
            raise ValidationError(
                f"Parameter '{name}' value {typed[name]!r} is not one of: {', '.join(spec['EnumValues'])}"
            )
    return typed


def parameter_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)
