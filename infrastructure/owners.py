"""A deployment's batch owners: one stack each (infrastructure/owner.yaml, named ``<prefix>-owner-<name>``) holding
the owner's role, which reaches ``inbox/<name>/``, ``outbox/<name>/``, its quarantine records and the client
artifacts, and nothing of any other owner. ``fhe-deploy owner add|remove|list`` is the command line.

Adding or removing an owner needs the rights of whoever runs ``fhe-deploy up``; the owner's people then assume
the role (see the README, "Batch owners")."""

from __future__ import annotations

from collections.abc import Callable

from common import aws, stacks
from common.bundle.schema import BundleError, check_owner
from common.stack_outputs import DeploymentNotFound, StackNames, describe_stack, read_outputs, stack_outputs
from infrastructure.templates import OWNER, body

STACK_TIMEOUT_S = 600.0
_GONE = "DELETE_COMPLETE"


class OwnerError(ValueError):
    """An owner that cannot be added or removed as asked."""


def _checked(name: str) -> str:
    try:
        return check_owner(name)
    except BundleError as error:
        raise OwnerError(error.problem) from None


def owner_parameters(outputs: dict[str, str], prefix: str, name: str, trusted_principal: str = "") -> dict[str, str]:
    return {
        "Prefix": prefix,
        "Owner": name,
        "TrustedPrincipal": trusted_principal,
        "KeyArn": outputs["KeyArn"],
        "ModelBucketName": outputs["ModelBucketName"],
        "BundleBucketName": outputs["BundleBucketName"],
        "ModelPackageGroup": outputs["ModelPackageGroup"],
        "EndpointName": outputs["EndpointName"],
        # Data keys for its enclave bundles, where the deployment has the enclave path.
        "EnclaveKeyArn": outputs.get("EnclaveKeyArn", ""),
    }


def add(
    prefix: str, name: str, *, trusted_principal: str = "", report: Callable[[str], None] = print
) -> dict[str, str]:
    """Create (or update) owner ``name``'s role; returns its stack's outputs (``Owner``, ``OwnerRoleArn``)."""
    stack = StackNames(prefix).owner(_checked(name))
    parameters = owner_parameters(read_outputs(prefix), prefix, name, trusted_principal)
    return stacks.apply(stack, body(OWNER), parameters, timeout=STACK_TIMEOUT_S, report=report)


def remove(prefix: str, name: str, *, report: Callable[[str], None] = print) -> bool:
    """Delete owner ``name``'s role; False when there was none. Its objects stay in the bundle bucket (its
    bundles' lifecycle rules expire them) and nobody but the auditor can read them any more."""
    return stacks.delete(StackNames(prefix).owner(_checked(name)), timeout=STACK_TIMEOUT_S, report=report)


def owners(prefix: str) -> dict[str, str]:
    """Owner name → role ARN, for every owner of the deployment."""
    names = StackNames(prefix)
    pages = aws.client("cloudformation").get_paginator("list_stacks").paginate()
    found: dict[str, str] = {}
    for summary in (s for page in pages for s in page.get("StackSummaries", [])):
        if summary["StackStatus"] == _GONE or not summary["StackName"].startswith(names.owner_prefix):
            continue
        outputs = stack_outputs(summary["StackName"])
        if "OwnerRoleArn" in outputs:
            found[outputs["Owner"]] = outputs["OwnerRoleArn"]
    return dict(sorted(found.items()))


def owner_role_arn(prefix: str, name: str) -> str:
    stack = describe_stack(StackNames(prefix).owner(_checked(name)))
    outputs = {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}
    if "OwnerRoleArn" not in outputs:
        raise DeploymentNotFound(f"deployment {prefix} has no owner {name}; run `fhe-deploy owner add {name}`")
    return str(outputs["OwnerRoleArn"])


def remove_all(prefix: str, report: Callable[[str], None]) -> list[str]:
    """Delete every owner's role (``fhe-deploy down``); returns the stacks deleted."""
    names = StackNames(prefix)
    return [names.owner(name) for name in owners(prefix) if remove(prefix, name, report=report)]
