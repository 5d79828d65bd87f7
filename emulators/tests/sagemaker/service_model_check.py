"""Whether a response is one the service could give: checked against botocore's model of the operation (the
members it requires, each member's type on the wire, the enum values it allows, its length and range limits, and
no member the model does not have), or, for an error, whether the model lists its code for the operation or it is
one every AWS service may answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

# Errors any AWS API may answer, whichever operation (AWS's "common errors"), and the JSON protocols' answer to an
# operation the service does not have.
COMMON_ERRORS = frozenset(
    {
        "AccessDeniedException",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InternalFailure",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "NotAuthorized",
        "RequestExpired",
        "ServiceUnavailable",
        "ThrottlingException",
        "UnknownOperationException",
        "UnrecognizedClientException",
        "ValidationError",
        "ValidationException",
    }
)

_SESSION = botocore.session.get_session()


def service_model(service: str) -> ServiceModel:
    return _SESSION.get_service_model(service)


def _length_errors(size: int, shape: Shape, path: str, what: str) -> list[str]:
    errors = []
    if "min" in shape.metadata and size < shape.metadata["min"]:
        errors.append(f"{path}: {what} {size} is under the model's minimum {shape.metadata['min']}")
    if "max" in shape.metadata and size > shape.metadata["max"]:
        errors.append(f"{path}: {what} {size} is over the model's maximum {shape.metadata['max']}")
    return errors


def shape_errors(value: Any, shape: Shape, path: str) -> list[str]:
    """What in ``value`` (as decoded from the wire's JSON) does not fit ``shape``."""
    kind = shape.type_name
    if value is None:
        return [f"{path}: null, where the model has a {kind} ({shape.name})"]
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            return []
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not the structure {shape.name}"]
        errors = [
            f"{path}.{name}: required by {shape.name}, missing" for name in shape.required_members if name not in value
        ]
        for name, member_value in value.items():
            member = shape.members.get(name)
            if member is None:
                errors.append(f"{path}.{name}: {shape.name} has no such member")
            else:
                errors += shape_errors(member_value, member, f"{path}.{name}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list ({shape.name})"]
        errors = _length_errors(len(value), shape, path, "length")
        for index, item in enumerate(value):
            errors += shape_errors(item, shape.member, f"{path}[{index}]")
        return errors
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a map ({shape.name})"]
        errors = _length_errors(len(value), shape, path, "size")
        for key, item in value.items():
            errors += shape_errors(key, shape.key, f"{path} key {key!r}")
            errors += shape_errors(item, shape.value, f"{path}[{key!r}]")
        return errors
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: {type(value).__name__} {value!r}, not a string ({shape.name})"]
        if shape.enum and value not in shape.enum:
            return [f"{path}: {value!r} is not one of {shape.name}'s values {shape.enum}"]
        return _length_errors(len(value), shape, path, "length")
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: {type(value).__name__} {value!r}, not an integer ({shape.name})"]
        return _length_errors(value, shape, path, "value")
    if kind in ("float", "double"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            return [f"{path}: {type(value).__name__} {value!r}, not a number ({shape.name})"]
        return []
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean ({shape.name})"]
    if kind == "timestamp":
        # The JSON protocols send epoch seconds unless the shape says otherwise.
        if shape.serialization.get("timestampFormat") == "iso8601":
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a timestamp as the protocol sends it ({shape.name})"]
    if kind == "blob":
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not base64 text ({shape.name})"]
    return [f"{path}: the model's type {kind} is not checked here"]


def _decoded(body: bytes, path: str) -> tuple[Any, list[str]]:
    try:
        return (json.loads(body) if body.strip() else {}), []
    except ValueError:
        return None, [f"{path}: the body is not JSON: {body[:200]!r}"]


def success_errors(operation: OperationModel, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    path = f"{operation.service_model.service_name} {operation.name}"
    expected = int(operation.http.get("responseCode", 200))
    errors = [] if status == expected else [f"{path}: HTTP {status}, where the service answers {expected}"]
    document, undecodable = _decoded(body, path)
    if undecodable:
        return errors + undecodable
    shape = operation.output_shape
    if shape is None:
        return errors + ([f"{path}: the operation has no output, yet the body is {document!r}"] if document else [])
    if operation.service_model.protocol == "json":
        return errors + shape_errors(document, shape, path)
    # REST-JSON: each member is where the model puts it, a header or the body.
    lowered = {k.lower(): v for k, v in headers.items()}
    in_body = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        if location == "header":
            value = lowered.get(member.serialization.get("name", name).lower())
            if value is not None:
                errors += shape_errors(value, member, f"{path} header {name}")
            elif name in shape.required_members:
                errors.append(f"{path}: the required header {name} is missing")
        elif location is None:
            in_body[name] = member
    if not isinstance(document, dict):
        return [*errors, f"{path}: the body is not an object"]
    for name, value in document.items():
        if name not in in_body:
            errors.append(f"{path}.{name}: the body of {shape.name} has no such member")
        else:
            errors += shape_errors(value, in_body[name], f"{path}.{name}")
    return errors


def error_code(headers: dict[str, str], document: Any) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    code = lowered.get("x-amzn-errortype") or (document.get("__type") if isinstance(document, dict) else "") or ""
    return str(code).split(":", 1)[0].rsplit("#", 1)[-1]


def failure_errors(operation: OperationModel, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    path = f"{operation.service_model.service_name} {operation.name}"
    document, undecodable = _decoded(body, path)
    if undecodable:
        return undecodable
    code = error_code(headers, document)
    modeled = {s.name for s in operation.error_shapes} | {
        s.metadata.get("error", {}).get("code", s.name) for s in operation.error_shapes
    }
    errors = []
    if code not in modeled | COMMON_ERRORS:
        errors.append(f"{path}: error {code!r} is neither one the model lists ({sorted(modeled)}) nor a common one")
    message = document.get("message", document.get("Message")) if isinstance(document, dict) else None
    if not isinstance(message, str) or not message:
        errors.append(f"{path}: error {code!r} has no message")
    if not 400 <= status < 600:
        errors.append(f"{path}: error {code!r} with HTTP {status}")
    return errors


@dataclass
class Answered:
    service: str
    operation: str
    status: int
    errors: list[str]


@dataclass
class ResponseLog:
    """Every response boto3 clients it watches received, each checked against the operation's model."""

    answers: list[Answered] = field(default_factory=list)

    def watch(self, client: Any) -> Any:
        client.meta.events.register("after-call", self._record)
        return client

    def _record(self, http_response: Any, model: OperationModel, **_: Any) -> None:
        headers = dict(http_response.headers.items())
        check = success_errors if http_response.status_code < 300 else failure_errors
        errors = check(model, http_response.status_code, headers, http_response.content)
        self.answers.append(Answered(model.service_model.service_name, model.name, http_response.status_code, errors))

    def errors(self) -> list[str]:
        return [error for answer in self.answers for error in answer.errors]

    def answered(self) -> set[tuple[str, str]]:
        """The operations that answered with a success."""
        return {(a.service, a.operation) for a in self.answers if a.status < 300}
