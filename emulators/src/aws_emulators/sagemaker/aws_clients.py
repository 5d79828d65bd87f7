"""The AWS clients the local SageMaker calls (S3, SNS, CloudWatch, STS), in the region it serves.

Where each service is comes from botocore's own settings (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``),
and whom to trust from ``AWS_CA_BUNDLE``: the same code reaches AWS or a local AWS."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


def _retries() -> Config:
    """Adaptive retries: 8 attempts, unless ``AWS_MAX_ATTEMPTS`` says otherwise."""
    attempts = {} if os.environ.get("AWS_MAX_ATTEMPTS") else {"max_attempts": 8}
    return Config(retries={"mode": "adaptive", **attempts}, connect_timeout=10, read_timeout=120)


def region_from_environment() -> str:
    """The region botocore would use: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


@dataclass(frozen=True)
class AwsClients:
    region: str

    def client(self, service: str) -> Any:
        """A client under this process's credentials, with adaptive retries."""
        return boto3.Session(region_name=self.region).client(service, config=_retries())

    def role_credentials(self, role_arn: str, session_name: str, seconds: int = 3600) -> dict[str, str]:
        """Temporary credentials for ``role_arn`` from STS AssumeRole, as the AWS_* variables name them."""
        answer = self.client("sts").assume_role(RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=seconds)
        credentials = answer["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
            "AWS_SESSION_TOKEN": credentials["SessionToken"],
        }

    def role_session(self, role_arn: str, session_name: str) -> boto3.Session:
        """A session under ``role_arn`` (see :meth:`role_credentials`)."""
        credentials = self.role_credentials(role_arn, session_name)
        return boto3.Session(
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=credentials["AWS_SESSION_TOKEN"],
            region_name=self.region,
        )
