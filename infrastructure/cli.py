"""fhe-deploy: the whole product in one AWS account, or on the local stack; only the endpoint URLs and the
credentials differ.

    fhe-deploy up [--prefix fhe] [--endpoint fhe-inference] [--schedule "rate(7 days)"] [--build-images] [--dry-run]
                  [--enclave-image EIF [--enclave-image-sha384 PCR0] | --enclave-docker-uri URI]
                  [--enclave-ami AMI --enclave-subnets S1,S2]
                                             with the enclave path: its key, shard queue and fleet of instances
    fhe-deploy images [--prefix fhe] [--engine docker|podman] [--base-image REF] [--no-push]
                                             build (and push) the training and inference images
    fhe-deploy outputs [--prefix fhe]        buckets, roles, topics, state machine, tables of a deployment
    fhe-deploy status [--prefix fhe] [--hours 3] [--json]
                                             the dashboard's figures (bundles, shard latency, backlog, instances
                                             per version, FHE seconds, errors, dead letters) and the alarms
    fhe-deploy owner add NAME [--prefix fhe] [--trust ARN]
                                             a batch owner's role: inbox/NAME/, outbox/NAME/, its quarantine records
    fhe-deploy owner remove NAME [--prefix fhe] [--export DIR] [--erase]
                                             its role; with --export its results and quarantine records copied to
                                             DIR first, with --erase every object version under its folders
                                             deleted (keys included); each recorded in the audit log
    fhe-deploy owner list [--prefix fhe]     the owners and their roles
    fhe-deploy down [--prefix fhe] [--delete-data]
                                             every served model version's stack, the pipeline, the owners' roles
                                             and the product stack; with --delete-data the key and buckets too

What each command does: infrastructure/deployment.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from common import stacks
from common.settings import SettingsError
from common.stack_outputs import DeploymentNotFound, read_outputs, stack_outputs
from infrastructure import images, owners, status
from infrastructure.deployment import Deployment, Report, build_images, describe_plan, down, plan, up
from infrastructure.enclave_fleet import EnclaveFleet, EnclaveFleetError, build_eif
from pipelines.endpoint import EndpointError

# The enclave fleet's defaults (an EnclaveFleet itself needs its image, AMI and subnets).
FLEET_DEFAULTS = {field.name: field.default for field in dataclasses.fields(EnclaveFleet)}

PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,20}$")  # the templates' AllowedPattern for Prefix


def prefix(text: str) -> str:
    if not PREFIX_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a prefix is 2 to 21 lowercase letters, digits or hyphens, starting with a letter "
            "(it names buckets, which allow nothing else)"
        )
    return text


def at_least(low: int, kind: type[int] | type[float] = int) -> Callable[[str], int | float]:
    """An argparse type: a ``kind`` number no smaller than ``low``."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {low}")
        return value

    return parse


positive = at_least(1)


def hours(text: str) -> float:
    """status --hours: more than none, and no more than CloudWatch keeps minute data for (15 days)."""
    value = float(text)
    if not 0 < value <= status.MAX_HOURS:
        raise argparse.ArgumentTypeError(f"{text}: give more than 0 and at most {status.MAX_HOURS:g} hours")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhe-deploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "images", "outputs", "status", "down", "owner"))
    parser.add_argument("owner_action", nargs="?", choices=("add", "remove", "list"), help="owner: what to do")
    parser.add_argument("owner_name", nargs="?", help="owner add|remove: the batch owner's name")
    parser.add_argument(
        "--trust",
        default="",
        help="owner add: the IAM principal ARN that may assume the owner's role (default: the account, whose own "
        "IAM policies then say which people may)",
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="owner remove: first copy the owner's results and quarantine records into DIR (new or empty), with an "
        "index of their sha256",
    )
    parser.add_argument(
        "--erase",
        action="store_true",
        help="owner remove: delete every object version under the owner's inbox, outbox, quarantine and requests "
        "folders (its evaluation keys and data keys included); recorded in the audit log once the bucket shows them "
        "empty",
    )
    defaults = Deployment()
    parser.add_argument(
        "--prefix", type=prefix, default=defaults.prefix, help="names the stacks and resources (%(default)s)"
    )
    parser.add_argument("--endpoint", default=defaults.endpoint_name, help="endpoint name (%(default)s)")
    parser.add_argument("--pipeline-name", default=defaults.pipeline_name, help="(%(default)s)")
    parser.add_argument("--package-group", default=defaults.package_group, help="model package group (%(default)s)")
    parser.add_argument(
        "--schedule",
        default=defaults.retraining_schedule,
        help="retraining cadence, an EventBridge Scheduler expression (%(default)s); 'off' disables it",
    )
    parser.add_argument("--concurrency", type=int, default=defaults.function_concurrency, help="per function")
    parser.add_argument("--bundle-retention-days", type=int, default=defaults.bundle_retention_days)
    parser.add_argument("--quarantine-retention-days", type=int, default=defaults.quarantine_retention_days)
    parser.add_argument("--log-level", default=defaults.log_level, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--job-instance-type", default=defaults.job_instance_type, help="training and evaluation jobs")
    parser.add_argument(
        "--max-instances",
        type=positive,
        default=defaults.max_instances,
        help="the endpoint scales out to this many instances (%(default)s); it scales in to zero when idle",
    )
    parser.add_argument(
        "--invocations-per-instance",
        type=positive,
        default=defaults.invocations_per_instance,
        help="shards one endpoint instance takes at once (%(default)s); the workflow sends up to "
        "max-instances × this many at a time",
    )
    parser.add_argument(
        "--scale-in-cooldown",
        type=int,
        default=defaults.scale_in_cooldown,
        help="seconds without need before the endpoint loses an instance (%(default)s)",
    )
    parser.add_argument(
        "--scale-out-cooldown", type=int, default=defaults.scale_out_cooldown, help="seconds between scale-outs"
    )
    parser.add_argument(
        "--keep-versions",
        type=at_least(0),
        default=defaults.keep_versions,
        help="after each deploy, retire all but the newest K served model versions (default: keep every version)",
    )
    parser.add_argument(
        "--retire-after-days",
        type=at_least(0, float),
        default=defaults.retire_after_days,
        help="after each deploy, retire the versions deployed more than D days ago, never the newest (default: none)",
    )
    parser.add_argument(
        "--quarantine-alarm-per-hour",
        type=positive,
        default=defaults.quarantine_alarm_per_hour,
        help="quarantined bundles in an hour that raise the quarantine alarm (%(default)s)",
    )
    parser.add_argument(
        "--image-tag", default="", help="images already pushed (default: each image's content tag, from this source)"
    )
    parser.add_argument("--build-images", action="store_true", help="up: build and push the images first")
    parser.add_argument(
        "--engine", default="auto", choices=("auto", *images.ENGINES), help="what builds the images (%(default)s)"
    )
    parser.add_argument("--base-image", default="", help="the images' base (default: the official Python image)")
    parser.add_argument("--no-push", action="store_true", help="build the images into local storage only")
    parser.add_argument("--dry-run", action="store_true", help="up: print what it would create, change nothing")
    parser.add_argument("--json", action="store_true", help="up --dry-run, status: as JSON")
    parser.add_argument(
        "--hours", type=hours, default=3.0, help="status: the window the figures cover, up to 15 days (%(default)s)"
    )
    parser.add_argument(
        "--wait",
        type=at_least(0, float),
        default=900.0,
        help="owner remove --export/--erase: seconds to wait for the owner's bundles to end (%(default)s)",
    )
    parser.add_argument("--delete-data", action="store_true", help="down: also the buckets, audit table and key")
    enclave = parser.add_argument_group(
        "the enclave path (infrastructure/enclave_fleet.py)", "up: deployed with --enclave-image; FHE only without"
    )
    enclave.add_argument(
        "--enclave-image", type=Path, help="the enclave's EIF (nitro-cli build-enclave); with --enclave-docker-uri, "
        "where the EIF built is written (default enclave.eif)",
    )  # fmt: skip
    enclave.add_argument(
        "--enclave-docker-uri",
        default="",
        help="build the EIF from this Docker image of containers/enclave/Dockerfile with nitro-cli build-enclave "
        "(where nitro-cli exists), its measurement as the build reports it",
    )
    enclave.add_argument(
        "--enclave-image-sha384", default="", help="its measurement (PCR0), where nitro-cli cannot read it here"
    )
    enclave.add_argument("--enclave-ami", default="", help="the instances' AMI (with the Nitro Enclaves CLI)")
    enclave.add_argument("--enclave-subnets", default="", help="the instances' subnets, comma-separated")
    enclave.add_argument("--enclave-instance-type", default=FLEET_DEFAULTS["instance_type"], help="(%(default)s)")
    enclave.add_argument(
        "--enclave-max-instances", type=positive, default=FLEET_DEFAULTS["max_instances"], help="(%(default)s)"
    )
    enclave.add_argument(
        "--enclave-shards-per-instance",
        type=positive,
        default=FLEET_DEFAULTS["shards_per_instance"],
        help="the backlog per instance the fleet scales to keep (%(default)s)",
    )
    enclave.add_argument(
        "--enclave-memory-mib", type=at_least(512), default=FLEET_DEFAULTS["memory_mib"], help="(%(default)s)"
    )
    enclave.add_argument(
        "--enclave-wake-after",
        type=positive,
        default=FLEET_DEFAULTS["wake_after_seconds"],
        help="seconds a shard waits with no instance before one starts (%(default)s)",
    )
    enclave.add_argument(
        "--enclave-largest-model-mib",
        type=at_least(0),
        default=0,
        help="the largest model the enclave will load (a language model's packed size): the enclave's memory must "
        "be four times its image and this (%(default)s)",
    )
    return parser


def enclave_fleet(args: argparse.Namespace) -> EnclaveFleet | None:
    image, measurement = args.enclave_image, args.enclave_image_sha384
    if args.enclave_docker_uri:
        if measurement:
            raise EnclaveFleetError(
                "--enclave-docker-uri builds the EIF and reads its measurement: drop --enclave-image-sha384"
            )
        image, measurement = build_eif(args.enclave_docker_uri, image or Path("enclave.eif"))
    if image is None:
        return None
    return EnclaveFleet(
        image=image,
        image_sha384=measurement,
        ami=args.enclave_ami,
        subnets=tuple(s for s in args.enclave_subnets.split(",") if s),
        instance_type=args.enclave_instance_type,
        max_instances=args.enclave_max_instances,
        shards_per_instance=args.enclave_shards_per_instance,
        memory_mib=args.enclave_memory_mib,
        wake_after_seconds=args.enclave_wake_after,
        largest_model_bytes=args.enclave_largest_model_mib * 1024**2,
    )


def owner_command(args: argparse.Namespace, progress: Report) -> object:
    if args.owner_action is None:
        raise owners.OwnerError("say what to do: fhe-deploy owner add|remove NAME, or fhe-deploy owner list")
    if args.owner_action == "list":
        return owners.owners(args.prefix)
    if not args.owner_name:
        raise owners.OwnerError(f"fhe-deploy owner {args.owner_action} takes the owner's name")
    if args.owner_action != "remove" and (args.export or args.erase):
        raise owners.OwnerError("--export and --erase go with fhe-deploy owner remove")
    if args.owner_action == "add":
        return owners.add(args.prefix, args.owner_name, trusted_principal=args.trust, report=progress)
    if args.owner_action == "remove":
        return owners.offboard(
            args.prefix, args.owner_name, export_to=args.export, erase=args.erase, wait_seconds=args.wait,
            report=progress,
        )  # fmt: skip
    raise owners.OwnerError(f"fhe-deploy owner {args.owner_action} takes no --export or --erase")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    off = args.schedule.strip().lower() == "off"
    try:
        fleet = enclave_fleet(args)
    except EnclaveFleetError as error:
        raise SystemExit(f"fhe-deploy {args.command}: {error}") from None
    deployment = Deployment(
        prefix=args.prefix,
        endpoint_name=args.endpoint,
        pipeline_name=args.pipeline_name,
        package_group=args.package_group,
        retraining_schedule=Deployment.retraining_schedule if off else args.schedule,
        retraining_enabled=not off,
        function_concurrency=args.concurrency,
        bundle_retention_days=args.bundle_retention_days,
        quarantine_retention_days=args.quarantine_retention_days,
        log_level=args.log_level,
        image_tag=args.image_tag,
        build_images=args.build_images,
        image_engine=args.engine,
        base_image=args.base_image,
        push_images=not args.no_push,
        job_instance_type=args.job_instance_type,
        max_instances=args.max_instances,
        invocations_per_instance=args.invocations_per_instance,
        scale_in_cooldown=args.scale_in_cooldown,
        scale_out_cooldown=args.scale_out_cooldown,
        keep_versions=args.keep_versions,
        retire_after_days=args.retire_after_days,
        quarantine_alarm_per_hour=args.quarantine_alarm_per_hour,
        enclave=fleet,
    )
    progress: Report = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "up" and args.dry_run:
            planned = plan(deployment)
            print(json.dumps(planned, indent=2) if args.json else describe_plan(planned))
        elif args.command == "up":
            print(json.dumps(up(deployment, progress), indent=2))
        elif args.command == "images":
            wanted = deployment.images(stack_outputs(deployment.bootstrap_stack))
            build_images(deployment, wanted, progress)
            print(json.dumps({i.role: i.uri for i in wanted}, indent=2))
        elif args.command == "outputs":
            print(json.dumps(read_outputs(deployment.prefix), indent=2))
        elif args.command == "status":
            report = status.status(deployment.prefix, hours=args.hours)
            print(json.dumps(report, indent=2) if args.json else status.describe(report))
        elif args.command == "owner":
            print(json.dumps(owner_command(args, progress), indent=2))
        else:
            print(json.dumps(down(deployment, delete_data=args.delete_data, report=progress), indent=2))
    except (
        stacks.StackError,
        images.ImageError,
        DeploymentNotFound,
        SettingsError,
        owners.OwnerError,
        EndpointError,
        EnclaveFleetError,
        ClientError,  # AWS refused a call (a missing permission, a throttle): said, not a traceback
        BotoCoreError,
    ) as error:
        raise SystemExit(f"fhe-deploy {args.command}: {error}") from None


if __name__ == "__main__":
    main()
