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


def required(body: dict[str, Any], name: str) -> str:
    """A mandatory string member of a request, with SageMaker's wording when it is missing."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        )
    return value
