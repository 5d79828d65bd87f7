"""SageMaker's error shapes (awsJson1.1: HTTP 400 with ``__type`` and ``message``)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    code = "ValidationException"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ApiError):
    code = "ValidationException"


class ResourceNotFound(ApiError):
    code = "ResourceNotFound"


class ResourceInUse(ApiError):
    code = "ResourceInUse"


class ConflictError(ApiError):
    code = "ConflictException"


class UnknownOperation(ApiError):
    code = "UnknownOperationException"


class AccessDenied(ApiError):
    code = "AccessDeniedException"


class Unauthenticated(ApiError):
    """The signature, key or session token does not hold: the local AWS's own error code says which."""

    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InternalFailure(ApiError):
    code = "InternalFailure"
    status = 500


def required(body: dict[str, Any], name: str) -> str:
    """A mandatory string member of a request, with SageMaker's wording when it is missing."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        )
    return value
