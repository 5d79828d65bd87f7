"""Every call to the local SageMaker is authorized as SageMaker authorizes it on AWS: the caller is the identity
that signed the request, and the decision is IAM's. The local SageMaker keeps no credentials and evaluates no
policy of its own: it hands the signed request, the IAM action and the resource ARN to the local AWS
(``POST /_fhe/authorize``, a route the local AWS adds for it), which checks the signature with the caller's secret and
evaluates the caller's policies, and answers with the decision and the caller's ARN.

What each operation is authorized for follows AWS's Service Authorization Reference: the action is
``sagemaker:<Operation>`` (``application-autoscaling:<Operation>`` for scaling), on the resource the request
names; list operations name none (``*``), so a policy must grant them on ``*``. Creating a model or a pipeline
also passes its role, which needs ``iam:PassRole`` on that role, as on AWS."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aws_emulators.sagemaker.errors import AccessDenied, InternalFailure, Unauthenticated

ROUTE = "/_fhe/authorize"
PASSED_TO = "sagemaker.amazonaws.com"  # the service a role passed to SageMaker is passed to

Body = Mapping[str, Any]


@dataclass(frozen=True)
class SignedRequest:
    """A request as it arrived: what its signature covers."""

    method: str
    path: str  # with its query string, as sent
    headers: list[tuple[str, str]]
    body: bytes

    def to_dict(self) -> dict[str, Any]:
        path, _, query = self.path.partition("?")
        return {
            "method": self.method,
            "path": path,
            "query": query,
            "headers": self.headers,
            "body": base64.b64encode(self.body).decode(),
            "secure": True,
        }


@dataclass(frozen=True)
class Permission:
    """What one call needs: ``action`` on ``resource``; ``passes_role`` names a role the call hands on."""

    action: str
    resource: str
    passes_role: str | None = None


def _name(body: Body, field: str) -> str:
    return str(body.get(field) or "").lower()


def _model_package(body: Body, arn_prefix: str) -> str:
    """A package is named by its ARN (a versioned one) or its group (a new version in it)."""
    name = str(body.get("ModelPackageName") or body.get("ModelPackageArn") or "")
    if name.startswith("arn:"):
        return name
    group = _name(body, "ModelPackageGroupName")
    return f"{arn_prefix}:model-package/{group}/*" if group else f"{arn_prefix}:model-package/{name.lower()}"


# The resource each implemented operation is authorized on, from its request; an operation not listed (the List
# operations) names none: "*".
_RESOURCES: dict[str, Callable[[Body, str], str]] = {
    **dict.fromkeys(
        ("CreatePipeline", "UpdatePipeline", "DescribePipeline", "DeletePipeline", "StartPipelineExecution",
         "ListPipelineExecutions"),
        lambda b, p: f"{p}:pipeline/{_name(b, 'PipelineName')}",
    ),
    **dict.fromkeys(
        ("DescribePipelineExecution", "ListPipelineExecutionSteps", "ListPipelineParametersForExecution",
         "StopPipelineExecution"),
        lambda b, p: str(b.get("PipelineExecutionArn") or "*"),
    ),
    "DescribeProcessingJob": lambda b, p: f"{p}:processing-job/{_name(b, 'ProcessingJobName')}",
    "DescribeTrainingJob": lambda b, p: f"{p}:training-job/{_name(b, 'TrainingJobName')}",
    **dict.fromkeys(
        ("CreateModelPackageGroup", "DescribeModelPackageGroup"),
        lambda b, p: f"{p}:model-package-group/{_name(b, 'ModelPackageGroupName')}",
    ),
    **dict.fromkeys(("CreateModelPackage", "DescribeModelPackage", "UpdateModelPackage"), _model_package),
    **dict.fromkeys(
        ("CreateModel", "DescribeModel", "DeleteModel"), lambda b, p: f"{p}:model/{_name(b, 'ModelName')}"
    ),
    **dict.fromkeys(
        ("CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig"),
        lambda b, p: f"{p}:endpoint-config/{_name(b, 'EndpointConfigName')}",
    ),
    **dict.fromkeys(
        ("CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint", "DeleteEndpoint"),
        lambda b, p: f"{p}:endpoint/{_name(b, 'EndpointName')}",
    ),
}  # fmt: skip
# The role a call hands to SageMaker, which the caller must be allowed to pass.
_PASSED_ROLES = {"CreateModel": "ExecutionRoleArn", "CreatePipeline": "RoleArn", "UpdatePipeline": "RoleArn"}


def sagemaker_permission(operation: str, body: Body, arn_prefix: str) -> Permission:
    """What ``SageMaker.<operation>`` with ``body`` is authorized for."""
    resource = _RESOURCES[operation](body, arn_prefix) if operation in _RESOURCES else "*"
    role = body.get(_PASSED_ROLES.get(operation, ""))
    return Permission(f"sagemaker:{operation}", resource, str(role) if role else None)


def runtime_permission(endpoint: str, arn_prefix: str) -> Permission:
    return Permission("sagemaker:InvokeEndpointAsync", f"{arn_prefix}:endpoint/{endpoint.lower()}")


def scaling_permission(operation: str) -> Permission:
    # Application Auto Scaling's scalable targets have ARNs of their own that no caller here names: "*".
    return Permission(f"application-autoscaling:{operation}", "*")


class Authorizer:
    """Asks the local AWS whether the signer of a request may do what it asks."""

    def __init__(self, aws_url: str, ca_bundle: str | None) -> None:
        self.url = aws_url.rstrip("/") + ROUTE
        self.context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None

    def _ask(
        self, request: SignedRequest, action: str, resource: str, context: dict[str, str] | None = None
    ) -> dict[str, Any]:
        question = {"request": request.to_dict(), "action": action, "resource": resource, "context": context or {}}
        call = urllib.request.Request(  # noqa: S310 - the local AWS, on loopback
            self.url, data=json.dumps(question).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(call, timeout=30, context=self.context) as answer:  # noqa: S310
                decided: dict[str, Any] = json.loads(answer.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise InternalFailure(f"the local AWS could not authorize the call: {error}") from None
        return decided

    def authorize(self, request: SignedRequest, permission: Permission) -> str:
        """The caller's ARN when it may; else AccessDenied (or the authentication failure) naming the action."""
        needed: list[tuple[str, str, dict[str, str]]] = [(permission.action, permission.resource, {})]
        if permission.passes_role:
            needed.append(("iam:PassRole", permission.passes_role, {"iam:PassedToService": PASSED_TO}))
        principal = ""
        for action, resource, context in needed:
            decided = self._ask(request, action, resource, context)
            if decided["decision"] == "Unauthenticated":
                raise Unauthenticated(decided.get("code", "UnrecognizedClientException"), decided.get("message", ""))
            principal = decided.get("principal", principal)
            if decided["decision"] != "Allow":
                kind = "an explicit deny" if decided["decision"] == "Deny" else "no identity-based policy allows"
                raise AccessDenied(
                    f"User: {principal} is not authorized to perform: {action} on resource: {resource} because "
                    f"{kind} the {action} action"
                )
        return principal
