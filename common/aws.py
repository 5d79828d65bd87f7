"""AWS clients for every role.

The endpoint of each service comes from botocore's own settings (``AWS_ENDPOINT_URL``,
``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME``): the code is the same against AWS and
against the local stack, only those variables and the credentials differ.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

DEFAULT_REGION = "us-east-1"

_RETRIES = Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=10, read_timeout=120)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def session() -> boto3.Session:
    return boto3.Session(region_name=region())


def client(service: str) -> Any:
    """A boto3 client with adaptive retries; the endpoint is whatever botocore's configuration says."""
    return session().client(service, config=_RETRIES)


# How the services say "no such thing": S3 by code (HEAD answers a bare 404), the others by code or, for
# SageMaker's model registry, a ValidationException that says it.
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException"})


def is_missing(error: ClientError) -> bool:
    """Whether an AWS error says the object or resource asked for does not exist."""
    details = error.response.get("Error", {})
    code, message = str(details.get("Code", "")), str(details.get("Message", ""))
    return code in _MISSING_CODES or (code == "ValidationException" and "does not exist" in message)
