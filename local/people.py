"""The people of a deployment on the local stack, as an organisation's identity provider gives them on AWS: one
identity that may do nothing but assume the deployment's actor roles, and an AWS configuration with a profile per
actor (``role_arn`` + ``source_profile``), so botocore assumes the role itself and the product's code stays the
same as on AWS. After ``fhe-deploy up`` (the only step with administrator credentials), every actor works
through its profile:

    <prefix>-trainer    ML ops training: stage data, start and follow the pipeline, read what it made
    <prefix>-ml-ops     the endpoint creator's role: approve, deploy, retire, revoke
    <prefix>-auditor    the auditor's role
    <prefix>-owner-<name>   each batch owner's role (``fhe-deploy owner add NAME``)

    python -m local.lifecycle people --deployment fhe    make them (idempotent), print the exports that use them

On AWS the source identity is a person's own (IAM Identity Center, a federated login); nothing here runs there."""

from __future__ import annotations

import configparser
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from common import aws
from common.environment import scoped_environment
from common.stack_outputs import read_outputs
from infrastructure.owners import owners
from local.stack_folder import stack_dir

# Actor → the output naming its role; each batch owner is an actor too (owner_actor).
ACTORS = {
    "trainer": "TrainerRoleArn",
    "ml-ops": "EndpointCreatorRoleArn",
    "auditor": "AuditorRoleArn",
}


def owner_actor(owner: str) -> str:
    return f"owner-{owner}"


_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@dataclass(frozen=True)
class People:
    """Where a deployment's people are configured, and their profile names."""

    prefix: str
    folder: Path
    owners: tuple[str, ...] = ()

    @property
    def actors(self) -> list[str]:
        return [*ACTORS, *(owner_actor(owner) for owner in self.owners)]

    @property
    def config_file(self) -> Path:
        return self.folder / "config"

    @property
    def credentials_file(self) -> Path:
        return self.folder / "credentials"

    @property
    def source_profile(self) -> str:
        return f"{self.prefix}-people"

    def profile(self, actor: str) -> str:
        if actor not in self.actors:
            raise KeyError(f"no actor {actor!r} (known: {', '.join(self.actors)})")
        return f"{self.prefix}-{actor}"

    def environment(self, actor: str) -> dict[str, str]:
        """The variables that make botocore act as ``actor`` (and nobody else)."""
        return {
            "AWS_CONFIG_FILE": str(self.config_file),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_PROFILE": self.profile(actor),
        }


def people_folder(prefix: str) -> Path:
    return stack_dir() / "people" / prefix


def ensure_people(prefix: str, outputs: Mapping[str, str] | None = None) -> People:
    """The deployment's people: an IAM user allowed only ``sts:AssumeRole`` on the actor roles (the batch owners'
    included), its access key, and the profiles. Needs administrator credentials (the local AWS's); run after
    ``fhe-deploy up`` and again after each ``fhe-deploy owner add``."""
    outputs = outputs if outputs is not None else read_outputs(prefix)
    owner_roles = owners(prefix)
    people = People(prefix, people_folder(prefix), tuple(owner_roles))
    iam, user = aws.client("iam"), f"{prefix}-people"
    role_of = {actor: outputs[name] for actor, name in ACTORS.items()}
    role_of.update({owner_actor(owner): arn for owner, arn in owner_roles.items()})
    roles = list(role_of.values())
    with suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": roles}],
    }
    iam.put_user_policy(UserName=user, PolicyName="assume-actor-roles", PolicyDocument=json.dumps(policy))
    credentials = configparser.ConfigParser()
    if people.credentials_file.exists():
        credentials.read(people.credentials_file)
    if not credentials.has_section(people.source_profile):
        key = iam.create_access_key(UserName=user)["AccessKey"]
        credentials[people.source_profile] = {
            "aws_access_key_id": key["AccessKeyId"],
            "aws_secret_access_key": key["SecretAccessKey"],
        }
    config = configparser.ConfigParser()
    config[f"profile {people.source_profile}"] = {"region": aws.region()}
    for actor, role in role_of.items():
        config[f"profile {people.profile(actor)}"] = {
            "role_arn": role,
            "source_profile": people.source_profile,
            "role_session_name": actor,
            "region": aws.region(),
        }
    people.folder.mkdir(parents=True, exist_ok=True)
    with people.config_file.open("w") as handle:
        config.write(handle)
    people.credentials_file.touch(mode=0o600)
    with people.credentials_file.open("w") as handle:
        credentials.write(handle)
    return people


@contextmanager
def acting_as(people: People, actor: str) -> Iterator[None]:
    """Within: every AWS client of this process is ``actor``'s (its profile; no administrator credential is
    left in the environment, since botocore would prefer it to any profile)."""
    with scoped_environment(people.environment(actor), unset=_CREDENTIAL_VARIABLES):
        yield
