"""The local stack's enclave instances: what EC2 and Auto Scaling do on AWS for an enclave fleet's group
(``infrastructure/enclave.yaml``), which the local AWS stores but launches nothing for.

- **Scaling, as the group's policies would.** Target tracking on the shards waiting per instance in service
  (``ceil(waiting / target)``, scale-in only after the backlog has stayed below for ``scale_in_after`` seconds, as
  AWS waits on its low alarm), and, from zero instances (which target tracking cannot leave), one instance once a
  shard has waited the alarm's threshold (the step policy its alarm triggers). The desired capacity is set on the
  local AWS, which keeps the group's instance records.
- **Instances, from the group's capacity.** Each instance record of the group becomes an instance here: its role's
  credentials (the launch template's instance profile) served to it as IMDS would, renewed before they expire;
  the enclave image fetched from where the group's tag says, under that role, as its user data does; an enclave
  started from it by the local Nitro runner (measured, its own NSM); and the parent's entry point
  (``containers.enclave.fleet``) with the enclave's address. An instance gone from the group is stopped: its
  parent gets SIGTERM (it finishes the shard in hand), then its enclave stops.

What differs from AWS: an enclave is a process and its "vsock" a Unix socket (``aws_emulators.nitro.runner``);
instances boot in a second, not minutes; the waiting time is measured here, not by CloudWatch.

    python -m local.fleet --state-dir DIR    (``python -m local.lifecycle up`` starts it)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.runner import EnclaveRunner
from botocore.exceptions import ClientError

from common import aws
from common.s3uri import S3Uri

LOG = logging.getLogger("local.fleet")
IMAGE_TAG = "fhe:enclave-image"
MEASUREMENT_TAG = "fhe:enclave-image-sha384"
QUEUE_TAG = "fhe:enclave-shard-queue-url"
POLL_SECONDS = 1.0
RENEW_BEFORE_S = 1200.0  # botocore refreshes process credentials 15 minutes before they expire
PARENT_STOP_TIMEOUT_S = 120.0
PARENT_WAIT_SECONDS = 2  # the parent's long poll: short, so a stopped instance stops soon


@dataclass(frozen=True)
class EnclaveGroup:
    """An Auto Scaling group whose launch template enables enclaves, as its template and tags describe it."""

    name: str
    image_uri: str
    image_sha384: str
    queue_url: str
    role_arn: str
    max_size: int
    desired: int
    instance_ids: tuple[str, ...]
    target_per_instance: float | None  # the target tracking policy's target, None without one
    wake_after_s: float | None  # the threshold of the alarm that adds an instance, None without one


def _tags(group: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in group.get("Tags", [])}


def _launch_data(ec2: Any, template: dict[str, Any]) -> dict[str, Any]:
    versions = ec2.describe_launch_template_versions(
        LaunchTemplateId=template["LaunchTemplateId"], Versions=[str(template.get("Version") or "$Default")]
    )["LaunchTemplateVersions"]
    return dict(versions[0]["LaunchTemplateData"]) if versions else {}


def _policies(autoscaling: Any, cloudwatch: Any, group: str) -> tuple[float | None, float | None]:
    target = wake = None
    for policy in autoscaling.describe_policies(AutoScalingGroupName=group)["ScalingPolicies"]:
        if policy["PolicyType"] == "TargetTrackingScaling":
            target = float(policy["TargetTrackingConfiguration"]["TargetValue"])
        elif policy["PolicyType"] == "StepScaling":
            for alarm in cloudwatch.describe_alarms()["MetricAlarms"]:
                if policy["PolicyARN"] in alarm.get("AlarmActions", []) or policy["PolicyName"] in str(
                    alarm.get("AlarmActions", [])
                ):
                    wake = float(alarm["Threshold"])
    return target, wake


@functools.cache
def _client(service: str) -> Any:
    """The fleet's clients, made once: it acts as EC2 and Auto Scaling do, with the local AWS's administrator."""
    return aws.client(service)


@dataclass(frozen=True)
class _LaunchSettings:
    """What a group's instances run as and how it scales: changed only by a stack update."""

    role_arn: str
    target_per_instance: float | None
    wake_after_s: float | None


class GroupReader:
    """The groups of enclave-enabled instances the local AWS holds, with their tags' image and queue. Capacity and
    instances are read at each look; the launch template's role and the scaling policies, which only a stack update
    changes, every ``reread_s`` seconds."""

    def __init__(self, reread_s: float = 30.0) -> None:
        self.reread_s = reread_s
        self._settings: dict[tuple[str, str], tuple[float, _LaunchSettings | None]] = {}

    def _launch_settings(self, group: dict[str, Any], now: float) -> _LaunchSettings | None:
        template = group["LaunchTemplate"]
        key = (group["AutoScalingGroupARN"], f"{template['LaunchTemplateId']}:{template.get('Version')}")
        read_at, settings = self._settings.get(key, (-self.reread_s, None))
        if now - read_at < self.reread_s:
            return settings
        data = _launch_data(_client("ec2"), template)
        settings = None
        if data.get("EnclaveOptions", {}).get("Enabled"):
            named = data.get("IamInstanceProfile", {})
            profile_name = named.get("Name") or str(named.get("Arn", "")).rsplit("/", 1)[-1]
            profile = _client("iam").get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
            target, wake = _policies(_client("autoscaling"), _client("cloudwatch"), group["AutoScalingGroupName"])
            settings = _LaunchSettings(profile["Roles"][0]["Arn"], target, wake)
        self._settings[key] = (now, settings)
        return settings

    def groups(self, now: float, names: list[str] | None = None) -> list[EnclaveGroup]:
        asked = {"AutoScalingGroupNames": names} if names else {}
        found = []
        for group in _client("autoscaling").describe_auto_scaling_groups(**asked)["AutoScalingGroups"]:
            tags = _tags(group)
            if not group.get("LaunchTemplate") or not {IMAGE_TAG, MEASUREMENT_TAG, QUEUE_TAG} <= tags.keys():
                continue
            settings = self._launch_settings(group, now)
            if settings is None:
                continue
            found.append(
                EnclaveGroup(
                    name=group["AutoScalingGroupName"],
                    image_uri=tags[IMAGE_TAG],
                    image_sha384=tags[MEASUREMENT_TAG],
                    queue_url=tags[QUEUE_TAG],
                    role_arn=settings.role_arn,
                    max_size=int(group["MaxSize"]),
                    desired=int(group["DesiredCapacity"]),
                    instance_ids=tuple(instance["InstanceId"] for instance in group.get("Instances", [])),
                    target_per_instance=settings.target_per_instance,
                    wake_after_s=settings.wake_after_s,
                )
            )
        return found


@dataclass
class Scaler:
    """The group's policies applied to its queue: the desired capacity they would set."""

    scale_in_after: float = 60.0
    _waiting_since: dict[str, float] = field(default_factory=dict)
    _below_since: dict[str, float] = field(default_factory=dict)

    def desired(self, group: EnclaveGroup, waiting: int, now: float) -> int:
        """``waiting``: the shards visible in the group's queue (``ApproximateNumberOfMessagesVisible``)."""
        current = group.desired
        if not waiting:
            self._waiting_since.pop(group.name, None)
        waited = now - self._waiting_since.setdefault(group.name, now) if waiting else 0.0
        wanted = current
        if current and group.target_per_instance:
            tracked = math.ceil(waiting / group.target_per_instance)
            if tracked < current:
                below = self._below_since.setdefault(group.name, now)
                wanted = tracked if now - below >= self.scale_in_after else current
            else:
                self._below_since.pop(group.name, None)
                wanted = tracked
        if group.wake_after_s is not None and waiting and waited >= group.wake_after_s and wanted <= current:
            wanted = current + 1  # the step policy: one more instance; the wait is measured again from here
            self._waiting_since[group.name] = now
        return max(0, min(group.max_size, wanted))


class Instance:
    """One enclave instance: its credentials, its enclave (from the group's image) and its parent process."""

    def __init__(self, instance_id: str, group: EnclaveGroup, folder: Path, authority: AttestationAuthority) -> None:
        self.id, self.group, self.folder = instance_id, group, folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.credentials = folder / "credentials.json"
        self.enclave = EnclaveRunner(self._fetch_image(), folder / "enclave", authority)
        self.parent: subprocess.Popen[bytes] | None = None

    def renew_credentials(self, force: bool = False) -> dict[str, Any]:
        """The role's credentials, as IMDS serves them (renewed before they expire): what the instance's processes
        read through their ``credential_process``."""
        if not force and self.credentials.exists():
            served: dict[str, Any] = json.loads(self.credentials.read_text())
            if (datetime.fromisoformat(served["Expiration"]) - datetime.now(UTC)).total_seconds() > RENEW_BEFORE_S:
                return served
        assumed = _client("sts").assume_role(RoleArn=self.group.role_arn, RoleSessionName=self.id)["Credentials"]
        served = {
            "Version": 1,
            "AccessKeyId": assumed["AccessKeyId"],
            "SecretAccessKey": assumed["SecretAccessKey"],
            "SessionToken": assumed["SessionToken"],
            "Expiration": assumed["Expiration"].isoformat(),
        }
        written = self.credentials.with_suffix(".tmp")
        written.write_text(json.dumps(served))
        written.chmod(0o600)
        written.replace(self.credentials)
        return served

    def _fetch_image(self) -> Path:
        """The image the group names, fetched under the instance's role (as its user data does)."""
        served = self.renew_credentials(force=True)
        session = boto3.Session(
            aws_access_key_id=served["AccessKeyId"],
            aws_secret_access_key=served["SecretAccessKey"],
            aws_session_token=served["SessionToken"],
            region_name=aws.region(),
        )
        image = self.folder / "enclave.eif"
        uri = S3Uri.parse(self.group.image_uri)
        aws.client("s3", session).download_file(uri.bucket, uri.key, str(image))
        return image

    def start(self) -> None:
        listening = self.enclave.folder / "enclave.sock"
        endpoints = {name: os.environ[name] for name in os.environ if name.startswith("AWS_ENDPOINT_URL")}
        common = {"AWS_CA_BUNDLE": os.environ["AWS_CA_BUNDLE"], "AWS_REGION": aws.region(), "PATH": os.environ["PATH"]}
        # The enclave has no credentials of its own: its parent lends the instance's for each KMS call.
        self.enclave.start(
            [sys.executable, str(self.enclave.image), "--listen", f"unix:{listening}"],
            {
                **common,
                "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],
                "FHE_NSM": f"unix:{self.enclave.nsm_socket}",
            },
            ready=listening,
        )
        config = self.folder / "aws-config"
        config.write_text(f"[default]\ncredential_process = cat {self.credentials}\n")
        parent_environment = {
            **common,
            **endpoints,
            "AWS_CONFIG_FILE": str(config),
            "AWS_DEFAULT_REGION": aws.region(),
            "HOME": str(self.folder),
        }
        command = [
            sys.executable, "-m", "containers.enclave.fleet",
            "--queue-url", self.group.queue_url,
            "--enclave", f"unix:{listening}",
            "--image-sha384", self.group.image_sha384,
            "--artifacts", self.group.image_uri,
            "--wait-seconds", str(PARENT_WAIT_SECONDS),
        ]  # fmt: skip
        with (self.folder / "parent.log").open("ab") as log:
            self.parent = subprocess.Popen(
                command,
                env=parent_environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        enclave = self.enclave.process.pid if self.enclave.process else ""
        (self.folder / "pids").write_text(f"{self.parent.pid}\n{enclave}\n")

    def running(self) -> bool:
        return self.parent is not None and self.parent.poll() is None

    def stop(self) -> None:
        """Scale-in: SIGTERM to the parent, which ends after the shard in hand; then the enclave."""
        if self.parent is not None and self.parent.poll() is None:
            self.parent.send_signal(signal.SIGTERM)
            try:
                self.parent.wait(timeout=PARENT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.parent.kill()
                self.parent.wait()
        self.enclave.stop()
        (self.folder / "pids").unlink(missing_ok=True)


class Fleet:
    """Every enclave group's instances on this machine, kept to the groups' capacity."""

    def __init__(self, folder: Path, authority: AttestationAuthority, scaler: Scaler | None = None) -> None:
        self.folder, self.authority = folder, authority
        self.scaler = scaler or Scaler()
        self.reader = GroupReader()
        self.instances: dict[str, Instance] = {}

    def step(self, now: float) -> None:
        autoscaling, sqs = _client("autoscaling"), _client("sqs")
        wanted: dict[str, EnclaveGroup] = {}
        for group in self.reader.groups(now):
            try:
                attributes = sqs.get_queue_attributes(
                    QueueUrl=group.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
                )["Attributes"]
            except ClientError:
                continue  # the queue is gone (its stack is being deleted)
            desired = self.scaler.desired(group, int(attributes["ApproximateNumberOfMessages"]), now)
            if desired != group.desired:
                LOG.info("group %s: desired capacity %d -> %d", group.name, group.desired, desired)
                autoscaling.set_desired_capacity(AutoScalingGroupName=group.name, DesiredCapacity=desired)
                (group,) = self.reader.groups(now, [group.name]) or [group]  # its instance records, reconciled
            wanted.update(dict.fromkeys(group.instance_ids, group))
        for instance_id in [i for i in self.instances if i not in wanted or not self.instances[i].running()]:
            LOG.info("instance %s: stopping", instance_id)
            self.instances.pop(instance_id).stop()
        for instance_id, group in wanted.items():
            if instance_id in self.instances:
                self.instances[instance_id].renew_credentials()
                continue
            LOG.info("instance %s of %s: booting enclave %s", instance_id, group.name, group.image_sha384)
            try:
                instance = Instance(instance_id, group, self.folder / instance_id, self.authority)
                instance.start()
            except (ClientError, RuntimeError, OSError) as error:
                LOG.error("instance %s did not boot: %s", instance_id, error)
                continue
            self.instances[instance_id] = instance

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.stop()
        self.instances.clear()


def stop_orphans(folder: Path) -> None:
    """Processes of instances whose fleet was killed (their pids are on record)."""
    for pids in folder.glob("*/pids"):
        for pid in filter(None, pids.read_text().split()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
        pids.unlink(missing_ok=True)


def run(folder: Path, authority: AttestationAuthority, stop: threading.Event, scaler: Scaler | None = None) -> None:
    fleet = Fleet(folder, authority, scaler)
    try:
        while not stop.is_set():
            try:
                fleet.step(time.monotonic())
            except ClientError as error:
                LOG.warning("the local AWS answered %s; trying again", error.response.get("Error", {}).get("Code"))
            stop.wait(POLL_SECONDS)
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--state-dir", type=Path, required=True, help="where the instances' folders go")
    parser.add_argument("--attestation-dir", type=Path, required=True, help="the stack's attestation root")
    parser.add_argument("--scale-in-after", type=float, default=60.0, help="seconds of low backlog before scale-in")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, frame: stop.set())
    stop_orphans(args.state_dir)
    run(args.state_dir, AttestationAuthority.ensure(args.attestation_dir), stop, Scaler(args.scale_in_after))


if __name__ == "__main__":
    main()
