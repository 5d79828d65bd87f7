"""Conditions of AWS's policy language that the local AWS applies where ministack did not: KMS's
``kms:EncryptionContext:<key>`` condition keys, and policy variables (``${aws:PrincipalTag/owner}``) in a condition's
values. On the running local AWS (IAM enforced): a key that lets each role make data keys only for its own tag."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from local_aws_fixtures import ACCOUNT, LocalAws

pytestmark = pytest.mark.integration


def _tagged_role(local_aws: LocalAws, name: str, tags: dict[str, str]) -> dict[str, str]:
    iam, sts = local_aws.client("iam"), local_aws.client("sts")
    trust = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}
    arn = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
        Tags=[{"Key": key, "Value": value} for key, value in tags.items()],
    )["Role"]["Arn"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
    iam.put_role_policy(RoleName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
    credentials = sts.assume_role(RoleArn=arn, RoleSessionName=name)["Credentials"]
    return {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }


@pytest.fixture(scope="module")
def own_context_key(local_aws: LocalAws) -> dict[str, Any]:
    """A key whose policy lets a role make data keys only under an encryption context naming its own owner tag."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Administration",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": ["kms:Describe*", "kms:Get*", "kms:Put*", "kms:Create*", "kms:List*"],
                "Resource": "*",
            },
            {
                "Sid": "OwnContextOnly",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "kms:GenerateDataKey",
                "Resource": "*",
                "Condition": {
                    "ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/context-*"},
                    "StringEquals": {"kms:EncryptionContext:owner": "${aws:PrincipalTag/owner}"},
                },
            },
        ],
    }
    key_id = local_aws.client("kms").create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    return {
        "key_id": key_id,
        "alice": _tagged_role(local_aws, "context-alice", {"owner": "alice"}),
        "untagged": _tagged_role(local_aws, "context-untagged", {}),
    }


def _make(local_aws: LocalAws, key: dict[str, Any], who: str, context: dict[str, str] | None) -> str:
    kms = local_aws.client("kms", **key[who])
    given = {"EncryptionContext": context} if context else {}
    try:
        kms.generate_data_key(KeyId=key["key_id"], KeySpec="AES_256", **given)
    except ClientError as refused:
        return str(refused.response["Error"]["Code"])
    return "made"


def test_a_role_makes_data_keys_under_its_own_owner_tag_only(local_aws: LocalAws, own_context_key: Any) -> None:
    assert _make(local_aws, own_context_key, "alice", {"owner": "alice", "bundle": "b1"}) == "made"
    assert _make(local_aws, own_context_key, "alice", {"OWNER": "alice"}) == "made"  # the key's name: any case
    assert _make(local_aws, own_context_key, "alice", {"owner": "bob", "bundle": "b1"}) == "AccessDeniedException"
    assert _make(local_aws, own_context_key, "alice", {"owner": "Alice"}) == "AccessDeniedException"  # values: exact
    assert _make(local_aws, own_context_key, "alice", {"bundle": "b1"}) == "AccessDeniedException"


def test_a_variable_the_request_lacks_fails_the_condition_and_is_never_compared_as_text(
    local_aws: LocalAws, own_context_key: Any
) -> None:
    literal = {"owner": "${aws:PrincipalTag/owner}"}
    assert _make(local_aws, own_context_key, "untagged", literal) == "AccessDeniedException"
    assert _make(local_aws, own_context_key, "untagged", {"owner": ""}) == "AccessDeniedException"
    assert _make(local_aws, own_context_key, "alice", literal) == "AccessDeniedException"
