"""A deployment as its stacks record it: the three stack names of a prefix (and its owners'), and their outputs,
read back from CloudFormation. Whoever works with a deployment (ML ops, the auditor, ``fhe-deploy`` itself) reads
it here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common import aws
from common.settings import DEFAULT_PREFIX

IMAGE_ROLES = ("training", "inference")


class DeploymentNotFound(RuntimeError):
    """A stack of the deployment does not exist."""


@dataclass(frozen=True)
class StackNames:
    """The stacks of one deployment: bootstrap (key, artifact bucket, image repositories), data (buckets, audit
    log) and product (everything else)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def bootstrap(self) -> str:
        return f"{self.prefix}-bootstrap"

    @property
    def data(self) -> str:
        return f"{self.prefix}-data"

    @property
    def product(self) -> str:
        return self.prefix

    @property
    def enclave(self) -> str:
        """The enclave path (infrastructure/enclave.yaml), where the deployment has one."""
        return f"{self.prefix}-enclave"

    def owner(self, owner: str) -> str:
        """A batch owner's stack (its role): infrastructure/owner.yaml."""
        return f"{self.owner_prefix}{owner}"

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}-owner-"

    @property
    def all(self) -> tuple[str, str, str]:
        return self.bootstrap, self.data, self.product


def describe_stack(name: str) -> dict[str, Any] | None:
    """The stack's description, or None when there is no such stack."""
    cloudformation = aws.client("cloudformation")
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except cloudformation.exceptions.ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    return stacks[0] if stacks else None


def stack_outputs(name: str) -> dict[str, str]:
    stack = describe_stack(name)
    if stack is None:
        raise DeploymentNotFound(f"stack {name} does not exist; run `fhe-deploy up` first")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def image_uri(repository_uri: str, tag: str) -> str:
    return f"{repository_uri}:{tag}"


def image_output(role: str, what: str) -> str:
    """The stack output (or parameter) that records ``what`` of an image: ``RepositoryUri`` in the bootstrap
    stack, ``ImageTag`` in the product stack, ``ImageUri`` in a deployment's outputs; ``TrainingImageTag``…"""
    return f"{role.capitalize()}{what}"


def read_outputs(prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """The outputs of a deployment's three stacks (and its enclave path's, where it has one), and the URIs of the
    images it was deployed with (the tags the product stack recorded, not this source tree's, which may have
    changed since)."""
    names = StackNames(prefix)
    bootstrap, data, product = (stack_outputs(name) for name in names.all)
    enclave = stack_outputs(names.enclave) if describe_stack(names.enclave) is not None else {}
    images = {
        image_output(role, "ImageUri"): image_uri(bootstrap[repository], product[tag])
        for role in IMAGE_ROLES
        if (repository := image_output(role, "RepositoryUri")) in bootstrap
        and (tag := image_output(role, "ImageTag")) in product
    }
    return {**bootstrap, **data, **enclave, **product, **images}
