"""Package and deploy the batch workflow stack (``infrastructure/workflow.yaml``), the same on AWS and on the
local stack: only the endpoint URLs and credentials differ.

    fhe-workflow deploy --endpoint NAME [--bucket B] [--dry-run]   package, upload, create or update, wait
    fhe-workflow outputs                                           the stack's outputs (topics, state machine…)
    fhe-workflow delete                                            tear the stack down (the bundle bucket stays)

Packaging: the functions' zip holds ``lambdas/`` and ``common/``; Powertools (with its tracer extra) is a layer
built from the installed distributions; the state machine definition is uploaded as it is and the template
fills in its ARNs through DefinitionSubstitutions. Object keys carry a content hash, so an update that changes
nothing redeploys nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from common import aws
from common.s3uri import ensure_bucket

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infrastructure" / "workflow.yaml"
STATE_MACHINE = ROOT / "statemachines" / "batch_inference.asl.json"
FUNCTION_PACKAGES = ("lambdas", "common")
LAYER_DISTRIBUTIONS = ("aws-lambda-powertools", "aws-xray-sdk", "wrapt", "jmespath", "typing-extensions")
DEFAULT_STACK = "fhe-batch-workflow"
_TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entries carry a fixed time, so one source gives one hash


@dataclass(frozen=True)
class WorkflowSettings:
    endpoint_name: str
    bundle_bucket: str = "fhe-batches"
    code_bucket: str = "fhe-artifacts"
    stack_name: str = DEFAULT_STACK
    function_concurrency: int = 4
    log_level: str = "INFO"


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(zipfile.ZipInfo(name, _FIXED_TIME), files[name])
    return buffer.getvalue()


def functions_zip() -> bytes:
    files = {}
    for package in FUNCTION_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    return _zip(files)


def powertools_layer_zip() -> bytes:
    """The layer: each distribution's installed files under ``python/`` (no compiled caches, no scripts)."""
    files = {}
    for name in LAYER_DISTRIBUTIONS:
        distribution = metadata.distribution(name)
        for entry in distribution.files or []:
            parts = entry.parts
            if ".." in parts or entry.suffix == ".pyc" or "__pycache__" in parts or parts[0] == "bin":
                continue
            files[f"python/{entry.as_posix()}"] = Path(str(distribution.locate_file(entry))).read_bytes()
    return _zip(files)


def _keyed(name: str, data: bytes, suffix: str) -> str:
    return f"workflow/{name}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"


class _CfnLoader(yaml.SafeLoader):
    """Reads a template's short-form intrinsics (!Ref, !GetAtt, !Sub) as plain mappings."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node under !{suffix}", node.start_mark)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - a SafeLoader
    return loaded


def plan(settings: WorkflowSettings) -> dict[str, Any]:
    """What a deploy would do: the artifacts it uploads, the parameters, and every resource of the stack."""
    artifacts = {
        "FunctionsKey": ("functions", functions_zip(), ".zip"),
        "PowertoolsLayerKey": ("powertools-layer", powertools_layer_zip(), ".zip"),
        "StateMachineKey": ("batch_inference", STATE_MACHINE.read_bytes(), ".asl.json"),
    }
    uploads = {parameter: (_keyed(*spec), spec[1]) for parameter, spec in artifacts.items()}
    parameters = {
        "BundleBucketName": settings.bundle_bucket,
        "EndpointName": settings.endpoint_name,
        "CodeBucket": settings.code_bucket,
        "FunctionConcurrency": str(settings.function_concurrency),
        "LogLevel": settings.log_level,
        **{parameter: key for parameter, (key, _) in uploads.items()},
    }
    resources = {name: spec["Type"] for name, spec in template()["Resources"].items()}
    return {"stack": settings.stack_name, "parameters": parameters, "uploads": uploads, "resources": resources}


def _stack(cloudformation: Any, name: str) -> dict[str, Any] | None:
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None


def _wait(cloudformation: Any, name: str, timeout: float, report: Callable[[str], None]) -> dict[str, Any]:
    deadline, seen = time.monotonic() + timeout, set()
    while True:
        stack = _stack(cloudformation, name)
        if stack is None:
            raise RuntimeError(f"stack {name} disappeared")
        for event in reversed(cloudformation.describe_stack_events(StackName=name).get("StackEvents", [])):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                reason = f" ({event['ResourceStatusReason']})" if event.get("ResourceStatusReason") else ""
                report(f"{event['LogicalResourceId']:28} {event['ResourceStatus']}{reason}")
        status = stack["StackStatus"]
        if status in _TERMINAL_OK:
            return stack
        if status.endswith(("FAILED", "ROLLBACK_COMPLETE")) or status == "DELETE_COMPLETE":
            raise RuntimeError(f"stack {name} ended {status}: {stack.get('StackStatusReason', '')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {name} is still {status} after {timeout:.0f} s")
        time.sleep(1.0)


def check_reserved_concurrency(
    stack_name: str, parameters: dict[str, str], report: Callable[[str], None] = print
) -> dict[str, int]:
    """Every function's reserved concurrency as the template declares it, applied where the backend left it out
    (the local stack's CloudFormation ignores the property); on AWS this only confirms. Returns name → limit."""
    resources = template()["Resources"]
    lambda_ = aws.client("lambda")
    applied = {}
    pages = aws.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=stack_name)
    for summary in (r for page in pages for r in page["StackResourceSummaries"]):
        declared = resources.get(summary["LogicalResourceId"], {}).get("Properties", {})
        value = (
            declared.get("ReservedConcurrentExecutions") if summary["ResourceType"] == "AWS::Lambda::Function" else None
        )
        if value is None:
            continue
        limit = int(parameters[value["Ref"]] if isinstance(value, dict) else value)
        name = summary["PhysicalResourceId"]
        if lambda_.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions") != limit:
            report(f"{summary['LogicalResourceId']:28} reserved concurrency set to {limit}")
            lambda_.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=limit)
        applied[name] = limit
    return applied


def outputs(stack_name: str = DEFAULT_STACK) -> dict[str, str]:
    stack = _stack(aws.client("cloudformation"), stack_name)
    if stack is None:
        raise RuntimeError(f"stack {stack_name} does not exist; run `fhe-workflow deploy` first")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deploy(settings: WorkflowSettings, timeout: float = 600.0, report: Callable[[str], None] = print) -> dict[str, str]:
    """Upload the artifacts, create or update the stack, wait for it; returns the stack's outputs."""
    planned = plan(settings)
    s3, cloudformation = aws.client("s3"), aws.client("cloudformation")
    ensure_bucket(s3, settings.code_bucket)
    for key, data in planned["uploads"].values():
        s3.put_object(Bucket=settings.code_bucket, Key=key, Body=data)
    arguments = {
        "StackName": settings.stack_name,
        "TemplateBody": TEMPLATE.read_text(),
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in planned["parameters"].items()],
        "Capabilities": ["CAPABILITY_IAM"],
    }
    existing = _stack(cloudformation, settings.stack_name)
    if existing is None:
        cloudformation.create_stack(**arguments)
    else:
        try:
            cloudformation.update_stack(**arguments)
        except cloudformation.exceptions.ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
            report(f"stack {settings.stack_name} is up to date")
    _wait(cloudformation, settings.stack_name, timeout, report)
    check_reserved_concurrency(settings.stack_name, planned["parameters"], report)
    return outputs(settings.stack_name)


def delete(stack_name: str = DEFAULT_STACK, timeout: float = 600.0) -> None:
    cloudformation = aws.client("cloudformation")
    if _stack(cloudformation, stack_name) is None:
        return
    cloudformation.delete_stack(StackName=stack_name)
    deadline = time.monotonic() + timeout
    while (stack := _stack(cloudformation, stack_name)) is not None and stack["StackStatus"] != "DELETE_COMPLETE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {stack_name} is still {stack['StackStatus']}")
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fhe-workflow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("deploy", "outputs", "delete"))
    parser.add_argument("--stack", default=DEFAULT_STACK, help="stack name (default: %(default)s)")
    parser.add_argument("--endpoint", help="the asynchronous endpoint that evaluates shards (deploy)")
    parser.add_argument("--bucket", default=WorkflowSettings.bundle_bucket, help="bundle bucket (%(default)s)")
    parser.add_argument("--code-bucket", default=WorkflowSettings.code_bucket, help="artifact bucket (%(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="reserved concurrency per function (4)")
    parser.add_argument("--dry-run", action="store_true", help="print what deploy would create, change nothing")
    args = parser.parse_args(argv)
    if args.command == "outputs":
        print(json.dumps(outputs(args.stack), indent=2))
        return
    if args.command == "delete":
        delete(args.stack)
        print(f"stack {args.stack} deleted (the bundle bucket and its objects stay)")
        return
    if not args.endpoint:
        parser.error("deploy needs --endpoint")
    settings = WorkflowSettings(args.endpoint, args.bucket, args.code_bucket, args.stack, args.concurrency)
    if args.dry_run:
        planned = plan(settings)
        planned["uploads"] = {
            p: f"s3://{settings.code_bucket}/{k} ({len(d)} bytes)" for p, (k, d) in planned["uploads"].items()
        }
        print(json.dumps(planned, indent=2))
        return
    print(json.dumps(deploy(settings, report=lambda line: print(line, file=sys.stderr)), indent=2))


if __name__ == "__main__":
    main()
