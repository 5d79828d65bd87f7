"""CloudFormation in the local AWS as AWS runs it, where ministack's falls short.

- **A stack's service role.** CreateStack, UpdateStack and DeleteStack naming ``RoleARN`` run the operation under
  that role, as AWS does: the caller must be allowed ``iam:PassRole`` on it (``iam:PassedToService``
  ``cloudformation.amazonaws.com``), its trust policy must let ``cloudformation.amazonaws.com`` assume it, and the
  stack keeps it for its later operations (DescribeStacks shows it). Without one, the operation runs with the
  caller's own credentials. ministack ignored ``RoleARN``.
- **The resources of a served version**: ``AWS::SageMaker::Model``, ``AWS::SageMaker::EndpointConfig``,
  ``AWS::SageMaker::Endpoint``, ``AWS::ApplicationAutoScaling::ScalableTarget`` and
  ``AWS::ApplicationAutoScaling::ScalingPolicy`` (ministack refused them as unrecognized types). They are made
  through the SageMaker and Application Auto Scaling APIs at ``AWS_ENDPOINT_URL_SAGEMAKER`` and
  ``AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING`` (the local SageMaker), over TLS trusted as ``AWS_CA_BUNDLE`` says,
  signed with the operation's credentials (the service role's session), so IAM decides there as usual. ``Ref`` and
  ``Fn::GetAtt`` give what the resource reference documents; a change to a create-only property replaces the
  resource (a model, a configuration), any other change updates it in place (an endpoint moves to its new
  configuration); an endpoint's create and update wait until it is InService and fail with SageMaker's
  ``FailureReason``. Provisioning them blocks, so it runs off ministack's event loop: the local SageMaker asks this
  same server to authorize each call.
- **Properties ministack ignored**: ``AWS::Lambda::Function`` ``ReservedConcurrentExecutions`` and
  ``AWS::S3::Bucket`` ``BucketEncryption`` and ``LifecycleConfiguration`` are applied on create and update (and
  removed when an update drops them), through the services' own operations.
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring
from xml.sax.saxutils import escape

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import ClientError
from ministack.core import iam_evaluator as iam
from ministack.core.responses import get_account_id, get_region
from ministack.core.router import extract_access_key_id
from ministack.services import cloudformation as cfn
from ministack.services import iam as iam_service
from ministack.services import lambda_svc, s3, sts
from ministack.services.cloudformation import handlers, provisioners, stacks
from ministack.services.cloudformation.helpers import _error, _p

SERVICE_PRINCIPAL = "cloudformation.amazonaws.com"
SESSION_NAME = "AWSCloudFormation"
SESSION_SECONDS = 3600
ROLE_KEY = "RoleARN"  # on ministack's stack record, which it persists: later operations use the same role
ENDPOINT_WAIT_S = 3600.0  # CloudFormation waits as long for an endpoint
POLL_S = 1.0
# The operations that run a stack's resources, and so take its service role.
STACK_OPERATIONS = ("CreateStack", "UpdateStack", "DeleteStack", "ExecuteChangeSet", "RollbackStack",
                    "ContinueUpdateRollback")  # fmt: skip
# The endpoint variable that points each API at the service serving it (botocore reads the same).
ENDPOINT_VARIABLES = {
    "sagemaker": "AWS_ENDPOINT_URL_SAGEMAKER",
    "application-autoscaling": "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING",
}


@dataclass(frozen=True)
class Identity:
    """The credentials a stack operation calls services with, and whose they are (for messages)."""

    principal: str
    access_key_id: str
    secret_access_key: str
    session_token: str | None


class Refused(Exception):
    """A stack operation refused before it starts: its error code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("local_aws_cfn_identity", default=None)
_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "local_aws_cfn_headers", default=None
)
_ministack_handle_request = cfn.handle_request
_ministack_runs_on_worker_thread = stacks._runs_on_worker_thread


# ------------------------------------------------------------------------------------------ the operation's identity


def _caller() -> Identity:
    """The credentials of the request being served (a root, user or session key, as ministack resolves it)."""
    headers = _HEADERS.get() or {}
    access_key = extract_access_key_id(dict(headers), {}) or ""
    credential = iam.resolve_credential(access_key, get_account_id())
    if isinstance(credential, iam.CredentialResolutionError):
        raise Refused("InvalidClientTokenId", "The security token included in the request is invalid.", 403)
    return Identity(
        credential.principal_arn,
        credential.access_key_id,
        credential.secret_access_key,
        credential.session_token,
    )


def _trusts_cloudformation(document: Any, role_arn: str) -> bool:
    """Whether a role's trust policy lets CloudFormation assume it (an explicit Deny wins)."""
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return False
    statements = (document or {}).get("Statement", []) if isinstance(document, dict) else []
    statements = [statements] if isinstance(statements, dict) else statements
    context = iam.EvalContext(
        principal_arn=SERVICE_PRINCIPAL,
        principal_type="Service",
        principal_account="",
        action="sts:AssumeRole",
        resource_arn=role_arn,
        region=get_region(),
    )
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            continue
        actions, not_actions = statement.get("Action", []), statement.get("NotAction", [])
        actions = [actions] if isinstance(actions, str) else actions
        not_actions = [not_actions] if isinstance(not_actions, str) else not_actions
        if not iam._action_matches("sts:AssumeRole", actions, not_actions):
            continue
        principal = statement.get("Principal", {})
        if principal != "*" and not iam._service_principal_matches(principal, SERVICE_PRINCIPAL):
            continue
        if not iam._conditions_met(statement.get("Condition", {}), context):
            continue
        if statement["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def _role_session(role_arn: str, caller: Identity) -> Identity:
    """CloudFormation's session of the stack's service role, after the checks AWS makes: the caller may pass the
    role to CloudFormation, and the role trusts CloudFormation."""
    denied = iam.enforce(
        caller.access_key_id, "iam:PassRole", "iam", get_region(), role_arn,
        {"iam:PassedToService": SERVICE_PRINCIPAL},
    )  # fmt: skip
    if denied is not None:
        raise Refused(
            "AccessDenied",
            f"User: {caller.principal} is not authorized to perform: iam:PassRole on resource: {role_arn}",
            403,
        )
    parts = role_arn.split(":")
    role = iam_service._roles.get(role_arn.rsplit("/", 1)[-1]) if len(parts) == 6 else None
    if role is None or role.get("Arn", role_arn) != role_arn:
        raise Refused("ValidationError", f"Role {role_arn} is invalid or cannot be assumed")
    if not _trusts_cloudformation(role.get("AssumeRolePolicyDocument"), role_arn):
        raise Refused("ValidationError", f"Role {role_arn} is invalid or cannot be assumed")
    access_key = iam_service._gen_session_access_key()
    session = {
        "Arn": f"arn:{parts[1]}:sts::{parts[4]}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{SESSION_NAME}",
        "UserId": f"{sts._role_id(role_arn)}:{SESSION_NAME}",
        "SecretAccessKey": iam_service._gen_secret(),
        "SessionToken": iam_service._gen_session_token(),
        "Expiration": time.time() + SESSION_SECONDS,
        "AccountId": parts[4],
        "PrincipalType": "AssumedRole",
        "SourcePrincipalArn": SERVICE_PRINCIPAL,
    }
    sts.register_session(access_key, session)
    return Identity(session["Arn"], access_key, session["SecretAccessKey"], session["SessionToken"])


def _stack_record(name: str) -> dict[str, Any] | None:
    if not name:
        return None
    record = handlers._resolve_stack(name)
    return record if isinstance(record, dict) else None


def _under_stack_identity(handler: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """``handler`` (a stack operation) run with the identity its resources are made with: the service role it
    names, else the one the stack keeps, else the caller's own credentials."""

    def run(params: dict[str, Any]) -> Any:
        stack_name = _p(params, "StackName") or ""
        record = _stack_record(stack_name)
        role_arn = _p(params, ROLE_KEY) or (record or {}).get(ROLE_KEY) or ""
        try:
            caller = _caller()
            identity = _role_session(role_arn, caller) if role_arn else caller
        except Refused as refused:
            return _error(refused.code, refused.message, refused.status)
        token = _IDENTITY.set(identity)  # the operation's task copies this context when it is scheduled
        try:
            response = handler(params)
        finally:
            _IDENTITY.reset(token)
        record = _stack_record(stack_name)
        if record is not None and _p(params, ROLE_KEY):
            record[ROLE_KEY] = role_arn
        return response

    return run


def _describe_with_roles(describe: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """DescribeStacks with each stack's ``RoleARN``, as AWS answers (ministack's answer leaves it out)."""

    def run(params: dict[str, Any]) -> Any:
        status, headers, body = describe(params)
        if status != 200:
            return status, headers, body
        text = body.decode()
        for record in list(cfn._stacks.values()):
            if record.get(ROLE_KEY):
                stack_id = f"<StackId>{escape(record['StackId'])}</StackId>"
                text = text.replace(stack_id, f"{stack_id}<RoleARN>{escape(record[ROLE_KEY])}</RoleARN>")
        return status, headers, text.encode()

    return run


async def handle_request(
    method: str, path: str, headers: dict[str, str], body: bytes, query_params: dict[str, Any]
) -> Any:
    """ministack's CloudFormation, with the request's headers at hand for the caller's credentials."""
    token = _HEADERS.set(headers)
    try:
        return await _ministack_handle_request(method, path, headers, body, query_params)
    finally:
        _HEADERS.reset(token)


# ------------------------------------------------------------------ calls to the services a stack's resources live in


def _client(service: str) -> Any:
    identity = _IDENTITY.get()
    if identity is None:
        raise ValueError(
            f"the local AWS makes {service} resources only within CreateStack, UpdateStack or DeleteStack, "
            "with the stack's service role or its caller's credentials"
        )
    variable = ENDPOINT_VARIABLES[service]
    if not os.environ.get(variable):
        raise ValueError(f"the local AWS was started without {variable}: no {service} service to make the resource in")
    return boto3.client(
        service,
        region_name=get_region(),
        aws_access_key_id=identity.access_key_id,
        aws_secret_access_key=identity.secret_access_key,
        aws_session_token=identity.session_token,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


def _conform(shape: Any, value: Any) -> Any:
    """A template value in the shape an operation's input takes: CloudFormation passes parameters as strings
    and converts them to each property's type, as this does from the operation's service model."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: _conform(shape.members[k], v) if k in shape.members else v for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_conform(shape.member, v) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: _conform(shape.value, v) for k, v in value.items()}
    if kind in ("integer", "long") and isinstance(value, str):
        return int(value)
    if kind in ("double", "float") and isinstance(value, str):
        return float(value)
    if kind == "boolean" and isinstance(value, str):
        return value.lower() == "true"
    return value


def _call(client: Any, operation: str, properties: Mapping[str, Any], **fixed: Any) -> Any:
    """``operation`` with the template's properties it takes (and ``fixed`` ones), typed as it takes them."""
    shape = client.meta.service_model.operation_model(operation).input_shape
    request = {k: v for k, v in properties.items() if k in shape.members}
    request.update(fixed)
    return getattr(client, xform_name(operation))(**_conform(shape, request))


def _missing(error: ClientError) -> bool:
    """Whether a service answered that the resource is not there (its delete is then done)."""
    code = error.response.get("Error", {}).get("Code", "")
    message = str(error.response.get("Error", {}).get("Message", ""))
    return code in ("ObjectNotFoundException", "ResourceNotFound") or message.startswith("Could not find")


def _generated_name(stack_name: str, logical_id: str, max_len: int = 63) -> str:
    """The name CloudFormation gives a resource the template leaves unnamed (stable until it is replaced). In
    lowercase, as SageMaker's ARNs hold names, so the ARN (the physical id) names the resource exactly."""
    return str(provisioners._physical_name(stack_name, logical_id, lowercase=True, max_len=max_len))


def _name_of(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


# ------------------------------------------------------------------------------------------------ SageMaker resources


def _model_create(logical_id: str, props: dict[str, Any], stack_name: str) -> tuple[str, dict[str, str]]:
    name = props.get("ModelName") or _generated_name(stack_name, logical_id)
    arn = _call(_client("sagemaker"), "CreateModel", props, ModelName=name)["ModelArn"]
    return arn, {"ModelName": name, "ModelArn": arn}


def _model_delete(physical_id: str, props: dict[str, Any]) -> None:
    try:
        _client("sagemaker").delete_model(ModelName=props.get("ModelName") or _name_of(physical_id))
    except ClientError as error:
        if not _missing(error):
            raise


def _config_create(logical_id: str, props: dict[str, Any], stack_name: str) -> tuple[str, dict[str, str]]:
    name = props.get("EndpointConfigName") or _generated_name(stack_name, logical_id)
    arn = _call(_client("sagemaker"), "CreateEndpointConfig", props, EndpointConfigName=name)["EndpointConfigArn"]
    return arn, {"EndpointConfigName": name, "EndpointConfigArn": arn}


def _config_delete(physical_id: str, props: dict[str, Any]) -> None:
    try:
        _client("sagemaker").delete_endpoint_config(
            EndpointConfigName=props.get("EndpointConfigName") or _name_of(physical_id)
        )
    except ClientError as error:
        if not _missing(error):
            raise


def _wait_in_service(client: Any, name: str) -> None:
    """Until the endpoint is InService, as CloudFormation waits; a Failed endpoint fails the resource with
    SageMaker's reason."""
    deadline = time.monotonic() + ENDPOINT_WAIT_S
    while True:
        endpoint = client.describe_endpoint(EndpointName=name)
        status = endpoint["EndpointStatus"]
        if status == "InService":
            return
        if status == "Failed":
            reason = endpoint.get("FailureReason", "no reason given")
            raise ValueError(f"Endpoint {endpoint['EndpointArn']} failed to reach InService status: {reason}")
        if time.monotonic() > deadline:
            raise ValueError(f"Endpoint {endpoint['EndpointArn']} is still {status} after {ENDPOINT_WAIT_S:.0f} s")
        time.sleep(POLL_S)


def _endpoint_create(logical_id: str, props: dict[str, Any], stack_name: str) -> tuple[str, dict[str, str]]:
    client = _client("sagemaker")
    name = props.get("EndpointName") or _generated_name(stack_name, logical_id)
    arn = _call(client, "CreateEndpoint", props, EndpointName=name)["EndpointArn"]
    _wait_in_service(client, name)
    return arn, {"EndpointName": name, "EndpointArn": arn}


def _endpoint_update(
    physical_id: str, old_props: dict[str, Any], new_props: dict[str, Any], stack_name: str, logical_id: str
) -> tuple[str, dict[str, str]]:
    """In place: the endpoint moves to its new configuration (its name is create-only, so it stays)."""
    client = _client("sagemaker")
    name = new_props.get("EndpointName") or _name_of(physical_id)
    moved = {k: v for k, v in new_props.items() if k != "Tags"} != {k: v for k, v in old_props.items() if k != "Tags"}
    if moved:
        _call(client, "UpdateEndpoint", new_props, EndpointName=name)
        _wait_in_service(client, name)
    return physical_id, {"EndpointName": name, "EndpointArn": physical_id}


def _endpoint_delete(physical_id: str, props: dict[str, Any]) -> None:
    client = _client("sagemaker")
    name = props.get("EndpointName") or _name_of(physical_id)
    try:
        client.delete_endpoint(EndpointName=name)
    except ClientError as error:
        if _missing(error):
            return
        raise
    deadline = time.monotonic() + ENDPOINT_WAIT_S
    while time.monotonic() < deadline:
        try:
            client.describe_endpoint(EndpointName=name)
        except ClientError as error:
            if _missing(error):
                return
            raise
        time.sleep(POLL_S)


# --------------------------------------------------------------------------------- Application Auto Scaling resources


def _target_of(props: Mapping[str, Any]) -> dict[str, str]:
    """The scalable target a policy names: its ``ScalingTargetId`` (the target's Ref) or its own three keys."""
    if props.get("ScalingTargetId"):
        resource, dimension, namespace = str(props["ScalingTargetId"]).split("|")
        return {"ResourceId": resource, "ScalableDimension": dimension, "ServiceNamespace": namespace}
    return {k: str(props[k]) for k in ("ResourceId", "ScalableDimension", "ServiceNamespace")}


def _scalable_target_put(props: dict[str, Any]) -> tuple[str, dict[str, str]]:
    if props.get("ScheduledActions"):
        raise ValueError("ScheduledActions: the local Application Auto Scaling has no scheduled scaling")
    _call(_client("application-autoscaling"), "RegisterScalableTarget", props)
    target = _target_of(props)
    identifier = f"{target['ResourceId']}|{target['ScalableDimension']}|{target['ServiceNamespace']}"
    return identifier, {"Id": identifier}


def _scalable_target_create(logical_id: str, props: dict[str, Any], stack_name: str) -> tuple[str, dict[str, str]]:
    return _scalable_target_put(props)


def _scalable_target_update(
    physical_id: str, old_props: dict[str, Any], new_props: dict[str, Any], stack_name: str
) -> tuple[str, dict[str, str]]:
    return _scalable_target_put(new_props)


def _scalable_target_delete(physical_id: str, props: dict[str, Any]) -> None:
    try:
        _client("application-autoscaling").deregister_scalable_target(**_target_of(props))
    except ClientError as error:
        if not _missing(error):
            raise


def _policy_name(props: Mapping[str, Any], physical_id: str) -> str:
    return str(props.get("PolicyName") or physical_id.rsplit(":policyName/", 1)[-1])


def _scaling_policy_put(props: dict[str, Any], name: str) -> tuple[str, dict[str, str]]:
    client = _client("application-autoscaling")
    answer = _call(client, "PutScalingPolicy", props, PolicyName=name, **_target_of(props))
    return answer["PolicyARN"], {"Arn": answer["PolicyARN"]}


def _scaling_policy_create(logical_id: str, props: dict[str, Any], stack_name: str) -> tuple[str, dict[str, str]]:
    return _scaling_policy_put(props, props.get("PolicyName") or _generated_name(stack_name, logical_id, 256))


def _scaling_policy_update(
    physical_id: str, old_props: dict[str, Any], new_props: dict[str, Any], stack_name: str
) -> tuple[str, dict[str, str]]:
    return _scaling_policy_put(new_props, _policy_name(old_props, physical_id))


def _scaling_policy_delete(physical_id: str, props: dict[str, Any]) -> None:
    try:
        _client("application-autoscaling").delete_scaling_policy(
            PolicyName=_policy_name(props, physical_id), **_target_of(props)
        )
    except ClientError as error:
        if not _missing(error):
            raise


def _create_only(*names: str) -> tuple[str, ...]:
    return names


HANDLERS: dict[str, dict[str, Any]] = {
    "AWS::SageMaker::Model": {"create": _model_create, "delete": _model_delete},
    "AWS::SageMaker::EndpointConfig": {"create": _config_create, "delete": _config_delete},
    "AWS::SageMaker::Endpoint": {
        "create": _endpoint_create,
        "update": _endpoint_update,
        "update_with_logical_id": True,
        "delete": _endpoint_delete,
    },
    "AWS::ApplicationAutoScaling::ScalableTarget": {
        "create": _scalable_target_create,
        "update": _scalable_target_update,
        "delete": _scalable_target_delete,
    },
    "AWS::ApplicationAutoScaling::ScalingPolicy": {
        "create": _scaling_policy_create,
        "update": _scaling_policy_update,
        "delete": _scaling_policy_delete,
    },
}
# Each type's create-only properties (its CloudFormation schema's createOnlyProperties): a change replaces it.
CREATE_ONLY: dict[str, tuple[str, ...]] = {
    "AWS::SageMaker::Model": _create_only(
        "Containers",
        "EnableNetworkIsolation",
        "ExecutionRoleArn",
        "InferenceExecutionConfig",
        "ModelName",
        "PrimaryContainer",
        "VpcConfig",
    ),
    "AWS::SageMaker::EndpointConfig": _create_only(
        "AsyncInferenceConfig",
        "DataCaptureConfig",
        "EnableNetworkIsolation",
        "EndpointConfigName",
        "ExecutionRoleArn",
        "ExplainerConfig",
        "KmsKeyId",
        "MetricsConfig",
        "ProductionVariants",
        "ShadowProductionVariants",
        "VpcConfig",
    ),
    "AWS::SageMaker::Endpoint": _create_only("EndpointName"),
    "AWS::ApplicationAutoScaling::ScalableTarget": _create_only("ResourceId", "ScalableDimension", "ServiceNamespace"),
    "AWS::ApplicationAutoScaling::ScalingPolicy": _create_only(
        "PolicyName", "ResourceId", "ScalableDimension", "ScalingTargetId", "ServiceNamespace"
    ),
}


def runs_on_worker_thread(resource_type: str) -> bool:
    """ministack's blocking types, and these: their calls come back to this server for authorization."""
    return resource_type in HANDLERS or bool(_ministack_runs_on_worker_thread(resource_type))


# ------------------------------------------------------------------------------------ properties ministack ignored


def _status(answer: Any) -> int:
    return int(answer[0]) if isinstance(answer, tuple) else 200


def _applied(operation: str, answer: Any) -> None:
    if _status(answer) >= 300:
        body = answer[2] if isinstance(answer, tuple) and len(answer) > 2 else b""
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        raise ValueError(f"{operation} refused the template's value: {text}")


def _reserve_concurrency(name: str, props: Mapping[str, Any], old_props: Mapping[str, Any] | None) -> None:
    if props.get("ReservedConcurrentExecutions") is not None:
        value = int(props["ReservedConcurrentExecutions"])
        _applied(
            "PutFunctionConcurrency",
            lambda_svc._put_function_concurrency(name, {"ReservedConcurrentExecutions": value}),
        )
    elif old_props and old_props.get("ReservedConcurrentExecutions") is not None:
        _applied("DeleteFunctionConcurrency", lambda_svc._delete_function_concurrency(name))


def _with_reserved_concurrency(handler: dict[str, Any]) -> dict[str, Any]:
    create, update = handler["create"], handler["update"]

    def created(logical_id: str, props: dict[str, Any], stack_name: str) -> Any:
        physical_id, attributes = create(logical_id, props, stack_name)
        _reserve_concurrency(physical_id, props, None)
        return physical_id, attributes

    def updated(physical_id: str, old_props: dict[str, Any], new_props: dict[str, Any], *rest: Any) -> Any:
        new_id, attributes = update(physical_id, old_props, new_props, *rest)
        _reserve_concurrency(new_id, new_props, old_props if new_id == physical_id else None)
        return new_id, attributes

    return {**handler, "create": created, "update": updated}


def _text(parent: Element, tag: str, value: Any) -> None:
    SubElement(parent, tag).text = str(value).lower() if isinstance(value, bool) else str(value)


def encryption_xml(configuration: Mapping[str, Any]) -> bytes:
    """A ``BucketEncryption`` as the PutBucketEncryption body."""
    root = Element("ServerSideEncryptionConfiguration", xmlns=s3.S3_NS)
    for rule in configuration.get("ServerSideEncryptionConfiguration") or []:
        rule_element = SubElement(root, "Rule")
        default = rule.get("ServerSideEncryptionByDefault")
        if default:
            applied = SubElement(rule_element, "ApplyServerSideEncryptionByDefault")
            _text(applied, "SSEAlgorithm", default.get("SSEAlgorithm", ""))
            if default.get("KMSMasterKeyID"):
                _text(applied, "KMSMasterKeyID", default["KMSMasterKeyID"])
        if "BucketKeyEnabled" in rule:
            _text(rule_element, "BucketKeyEnabled", str(rule["BucketKeyEnabled"]).lower() == "true")
    return bytes(tostring(root))


def _lifecycle_filter(rule_element: Element, rule: Mapping[str, Any]) -> None:
    conditions: list[tuple[str, Any]] = []
    if rule.get("Prefix") is not None:
        conditions.append(("Prefix", rule["Prefix"]))
    conditions += [("Tag", tag) for tag in rule.get("TagFilters") or []]
    conditions += [(size, rule[size]) for size in ("ObjectSizeGreaterThan", "ObjectSizeLessThan") if size in rule]
    filter_element = SubElement(rule_element, "Filter")
    parent = SubElement(filter_element, "And") if len(conditions) > 1 else filter_element
    if not conditions:
        _text(filter_element, "Prefix", "")
    for name, value in conditions:
        if name == "Tag":
            tag = SubElement(parent, "Tag")
            _text(tag, "Key", value["Key"])
            _text(tag, "Value", value["Value"])
        else:
            _text(parent, name, value)


def lifecycle_xml(configuration: Mapping[str, Any]) -> bytes:
    """A ``LifecycleConfiguration`` as the PutBucketLifecycleConfiguration body (CloudFormation's property names,
    the deprecated single-transition ones included, mapped onto S3's elements)."""
    root = Element("LifecycleConfiguration", xmlns=s3.S3_NS)
    for rule in configuration.get("Rules") or []:
        element = SubElement(root, "Rule")
        if rule.get("Id"):
            _text(element, "ID", rule["Id"])
        _lifecycle_filter(element, rule)
        _text(element, "Status", rule.get("Status", "Enabled"))
        transitions = [*(rule.get("Transitions") or []), *([rule["Transition"]] if rule.get("Transition") else [])]
        for transition in transitions:
            moved = SubElement(element, "Transition")
            if "TransitionInDays" in transition:
                _text(moved, "Days", transition["TransitionInDays"])
            if "TransitionDate" in transition:
                _text(moved, "Date", transition["TransitionDate"])
            _text(moved, "StorageClass", transition["StorageClass"])
        expiration = {
            tag: rule[prop]
            for prop, tag in (("ExpirationInDays", "Days"), ("ExpirationDate", "Date"),
                              ("ExpiredObjectDeleteMarker", "ExpiredObjectDeleteMarker"))
            if prop in rule
        }  # fmt: skip
        if expiration:
            expires = SubElement(element, "Expiration")
            for tag, value in expiration.items():
                _text(expires, tag, value)
        noncurrent = [
            *(rule.get("NoncurrentVersionTransitions") or []),
            *([rule["NoncurrentVersionTransition"]] if rule.get("NoncurrentVersionTransition") else []),
        ]
        for transition in noncurrent:
            moved = SubElement(element, "NoncurrentVersionTransition")
            _text(moved, "NoncurrentDays", transition["TransitionInDays"])
            if "NewerNoncurrentVersions" in transition:
                _text(moved, "NewerNoncurrentVersions", transition["NewerNoncurrentVersions"])
            _text(moved, "StorageClass", transition["StorageClass"])
        noncurrent_expiration = dict(rule.get("NoncurrentVersionExpiration") or {})
        if "NoncurrentVersionExpirationInDays" in rule:
            noncurrent_expiration.setdefault("NoncurrentDays", rule["NoncurrentVersionExpirationInDays"])
        if noncurrent_expiration:
            expires = SubElement(element, "NoncurrentVersionExpiration")
            for tag in ("NoncurrentDays", "NewerNoncurrentVersions"):
                if tag in noncurrent_expiration:
                    _text(expires, tag, noncurrent_expiration[tag])
        if rule.get("AbortIncompleteMultipartUpload"):
            abort = SubElement(element, "AbortIncompleteMultipartUpload")
            _text(abort, "DaysAfterInitiation", rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
    return bytes(tostring(root))


def _checked(operation: str, put: Callable[[str, bytes], Any]) -> Callable[[str, bytes], None]:
    def apply(bucket: str, body: bytes) -> None:
        _applied(operation, put(bucket, body))

    return apply


BUCKET_CONFIGURATIONS = (
    ("BucketEncryption", encryption_xml, _checked("PutBucketEncryption", s3._put_bucket_encryption),
     s3._delete_bucket_encryption),
    ("LifecycleConfiguration", lifecycle_xml, _checked("PutBucketLifecycleConfiguration", s3._put_bucket_lifecycle),
     s3._delete_bucket_lifecycle),
)  # fmt: skip


def install() -> None:
    """Register the types and wrap ministack's CloudFormation as the module says (each looked up at every call)."""
    cfn.handle_request = handle_request  # the service module's entry, looked up by ministack's router
    for action in STACK_OPERATIONS:
        handlers._ACTION_HANDLERS[action] = _under_stack_identity(handlers._ACTION_HANDLERS[action])
    handlers._ACTION_HANDLERS["DescribeStacks"] = _describe_with_roles(handlers._ACTION_HANDLERS["DescribeStacks"])
    provisioners._RESOURCE_HANDLERS.update(HANDLERS)
    provisioners._REPLACING_PROPERTIES.update(CREATE_ONLY)
    stacks._runs_on_worker_thread = runs_on_worker_thread
    lambda_handler = provisioners._RESOURCE_HANDLERS["AWS::Lambda::Function"]
    provisioners._RESOURCE_HANDLERS["AWS::Lambda::Function"] = _with_reserved_concurrency(lambda_handler)
    provisioners._S3_BUCKET_CONFIGURATIONS = (*provisioners._S3_BUCKET_CONFIGURATIONS, *BUCKET_CONFIGURATIONS)
