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


def client(service: str, under: boto3.Session | None = None) -> Any:
    """A boto3 client with adaptive retries, of ``under`` (default: a session of the environment's credentials); the
    endpoint is whatever botocore's configuration says."""
    return (under or session()).client(service, config=_RETRIES)


def role_credentials(role_arn: str, session_name: str, seconds: int = 3600) -> dict[str, str]:
    """Temporary credentials for ``role_arn`` from STS AssumeRole, as the AWS_* variables name them."""
    credentials = client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=seconds)[
        "Credentials"
    ]
    return {
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }


def role_session(role_arn: str, session_name: str) -> boto3.Session:
    """A session under ``role_arn`` (see :func:`role_credentials`)."""
    credentials = role_credentials(role_arn, session_name)
    return boto3.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
        region_name=region(),
    )


# How the services say "no such thing": S3 by code (HEAD answers a bare 404), the others by code or, for
# SageMaker's model registry, a ValidationException that says it.
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException"})


def is_missing(error: ClientError) -> bool:
    """Whether an AWS error says the object or resource asked for does not exist."""
    details = error.response.get("Error", {})
    code, message = str(details.get("Code", "")), str(details.get("Message", ""))
    # SageMaker says an endpoint is missing with a ValidationException "Could not find endpoint …".
    return code in _MISSING_CODES or (
        code == "ValidationException" and ("does not exist" in message or "Could not find endpoint" in message)
    )
