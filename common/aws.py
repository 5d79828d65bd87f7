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

DEFAULT_REGION = "us-east-1"

_RETRIES = Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=10, read_timeout=120)


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def session() -> boto3.Session:
    return boto3.Session(region_name=region())


def client(service: str) -> Any:
    """A boto3 client with adaptive retries; the endpoint is whatever botocore's configuration says."""
    return session().client(service, config=_RETRIES)
