"""Lifecycle of the local stack: the local AWS (ministack with the emulators' extension, in its own virtual
environment: ``aws_emulators.local_aws``) and the local SageMaker, both bound to 127.0.0.1, with their state under
``.local-stack/`` so a restart loses nothing.

As strict as AWS where it can be: both serve only TLS, with a certificate authority of the stack's own that
clients trust through ``AWS_CA_BUNDLE`` (``local/tls.py``), and the local AWS enforces IAM (ministack's
``AUTH=true``: identity, resource and bucket policies; each Lambda runs under its execution role's session).

    python -m local.lifecycle up        start both (installs ministack on first use), print the environment to
                                        use them; --runtime podman|docker: the local SageMaker runs jobs and
                                        endpoints from the built images (``fhe-deploy images --no-push``) instead
                                        of the source tree
    python -m local.lifecycle status    is each one running and healthy
    python -m local.lifecycle env       print the environment variables that point clients at the local stack
                                        (with the local AWS's administrator credentials, for fhe-deploy)
    python -m local.lifecycle people --deployment PREFIX
                                        after fhe-deploy up (and each fhe-deploy owner add): a profile per actor
                                        of the deployment (trainer, ml-ops, auditor, owner-<name> for each batch
                                        owner), each assuming its role; prints the exports that leave the
                                        administrator behind
    python -m local.lifecycle enclave-image [OUT]
                                        build the enclave image from this source tree (default
                                        .local-stack/enclave.eif) and print (on stdout, alone) the fhe-deploy
                                        options that deploy the enclave path with it: its measurement as the
                                        local Nitro runner reads it, an AMI id and a subnet of the local AWS
                                        (which launches nothing itself: the stack's fleet runs the group's
                                        instances, local/fleet.py)
    python -m local.lifecycle down      stop everything
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aws_emulators.local_aws import launch
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.measurement import image_sha384
from aws_emulators.sagemaker.container_runtime import RUNTIMES

from common.attestation import ROOT_VARIABLE as ATTESTATION_ROOT_VARIABLE
from common.estimate import TABLE_VARIABLE
from local.stack_folder import stack_dir as stack_dir  # where the stack keeps its state, for its users too
from local.tls import TlsMaterial, ensure_tls

HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0


def sagemaker_state_dir() -> Path:
    return stack_dir() / "sagemaker"


def tls() -> TlsMaterial:
    """The stack's TLS material, made on first use."""
    return ensure_tls(stack_dir() / "tls")


def attestation_authority() -> AttestationAuthority:
    """The stack's attestation root (where AWS's Nitro root stands), made on first use: its NSMs sign enclaves'
    attestation documents under it, and its KMS trusts those documents and no others."""
    return AttestationAuthority.ensure(stack_dir() / "attestation")


# The local AWS validates no AMI: any well-formed id serves, as the instances are the local fleet's processes.
LOCAL_AMI = "ami-0000000000000000f"
LOCAL_NETWORK_TAG = "fhe-local-enclave-fleet"


@dataclass(frozen=True)
class LocalEnclaveImage:
    """The enclave image built here, measured as the local runner measures it, and where its fleet launches."""

    image: Path
    image_sha384: str
    ami: str
    subnet: str

    def deploy_options(self) -> list[str]:
        return [
            "--enclave-image", str(self.image),
            "--enclave-image-sha384", self.image_sha384,
            "--enclave-ami", self.ami,
            "--enclave-subnets", self.subnet,
        ]  # fmt: skip


def _local_subnet() -> str:
    """The subnet enclave fleets launch in on the local AWS (made once, found by its tag afterwards)."""
    import boto3

    given = client_environment()  # the administrator's, as fhe-deploy uses
    ec2 = boto3.client(
        "ec2",
        endpoint_url=given["AWS_ENDPOINT_URL"],
        verify=given["AWS_CA_BUNDLE"],
        region_name=given["AWS_REGION"],
        aws_access_key_id=given["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=given["AWS_SECRET_ACCESS_KEY"],
    )
    tagged = [{"Name": "tag:Name", "Values": [LOCAL_NETWORK_TAG]}]
    found = ec2.describe_subnets(Filters=tagged)["Subnets"]
    if found:
        return str(found[0]["SubnetId"])
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    subnet = str(ec2.create_subnet(VpcId=vpc, CidrBlock="10.90.1.0/24")["Subnet"]["SubnetId"])
    ec2.create_tags(Resources=[vpc, subnet], Tags=[{"Key": "Name", "Value": LOCAL_NETWORK_TAG}])
    return subnet


def enclave_image(out: Path | None = None) -> LocalEnclaveImage:
    """Build the enclave image from this source tree (``containers/enclave/image.py``), as the local runner will
    run it; on AWS ``nitro-cli build-enclave`` makes the EIF and ``nitro-cli describe-eif`` reads its PCR0."""
    from containers.enclave.image import build_image

    image = build_image(out or stack_dir() / "enclave.eif")
    return LocalEnclaveImage(image, image_sha384(image), LOCAL_AMI, _local_subnet())


def _trusting() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls().authority))


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    health_path: str

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return stack_dir() / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return stack_dir() / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=2, context=_trusting()) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def local_aws() -> Service:
    return Service("local-aws", int(os.environ.get("FHE_LOCAL_AWS_PORT", "4566")), "/_ministack/health")


def local_sagemaker() -> Service:
    return Service("local-sagemaker", int(os.environ.get("FHE_LOCAL_SAGEMAKER_PORT", "4599")), "/health")


def local_fleet() -> Service:
    """The enclave fleets' instances (``local/fleet.py``): no port, alive while its process is."""
    return Service("local-fleet", 0, "")


def fleet_state_dir() -> Path:
    return stack_dir() / "fleet"


LOCAL_ESTIMATE_TABLE = Path(__file__).with_name("estimates.json")


def client_environment() -> dict[str, str]:
    """What a client needs to talk to the local stack instead of AWS: endpoints, the stack's certificate
    authority and the local AWS's administrator credentials."""
    return {
        "AWS_ENDPOINT_URL": local_aws().url,
        "AWS_ENDPOINT_URL_SAGEMAKER": local_sagemaker().url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": local_sagemaker().url,
        # The endpoints' scaling: the local SageMaker serves Application Auto Scaling for its endpoints.
        "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING": local_sagemaker().url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CA_BUNDLE": str(tls().authority),
        # The root enclaves' attestation documents chain to here (AWS's Nitro root on AWS): for the audit.
        ATTESTATION_ROOT_VARIABLE: str(attestation_authority().root_path),
        # The estimates' table with the local stack's own workflow times (prices stay AWS's).
        TABLE_VARIABLE: str(LOCAL_ESTIMATE_TABLE),
    }


def _ministack_python() -> Path:
    # The venv may be shared between stacks (tests use a fresh state folder but one installation).
    return launch.ensure_ministack(Path(os.environ.get("FHE_MINISTACK_VENV", stack_dir() / "ministack-venv")))


def _spawn(service: Service, command: list[str], environment: dict[str, str]) -> None:
    """Start a service with this process's environment, less any AWS endpoint it points at: the local AWS
    passes that environment on to its Lambda functions, which must call this stack, not whatever stack (or AWS
    service) the caller was pointed at; the service gets only the endpoints ``environment`` names."""
    stack_dir().mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
    with service.log_file.open("ab") as log:
        process = subprocess.Popen(
            command,
            env={**inherited, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    service.pid_file.write_text(str(process.pid))


def _wait_healthy(service: Service) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.healthy():
            return
        if service.pid() is None:
            break
        time.sleep(0.3)
    tail = service.log_file.read_text(errors="replace").splitlines()[-15:] if service.log_file.exists() else []
    raise RuntimeError(f"{service.name} did not become healthy on {service.url}; its log ends:\n" + "\n".join(tail))


def running_runtime(service: Service) -> str | None:
    """The runtime a running local SageMaker uses (its health answer says), or None when it is not running."""
    try:
        with urllib.request.urlopen(service.url + service.health_path, timeout=2, context=_trusting()) as response:  # noqa: S310
            return str(json.loads(response.read()).get("runtime", "process"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


# The local stack's state format: raised when state an earlier stack left (its AWS resources, deployments, queues,
# people) would not work with this one, as state from before TLS and IAM enforcement did (a message stuck in a queue
# hung the demo). The state folder carries it in STATE_STAMP.
STATE_VERSION = 2
STATE_STAMP = "STATE_VERSION"
# What the state folder holds that no version change invalidates: made on first use, the same for every version.
VERSION_INDEPENDENT = frozenset({STATE_STAMP, "ministack-venv", "tls", "attestation"})


class StateFromAnotherVersion(RuntimeError):
    pass


def check_state_version(base: Path) -> None:
    """Stamp an empty (or version-independent) state folder with this version; refuse one another version left,
    telling the user how to reset it, rather than start on it and hang."""
    stamp = base / STATE_STAMP
    found = stamp.read_text().strip() if stamp.is_file() else None
    state = [p.name for p in base.iterdir() if p.name not in VERSION_INDEPENDENT] if base.is_dir() else []
    if found == str(STATE_VERSION):
        return
    if state:
        made_by = f"state version {found}" if found else "an earlier version (no state stamp)"
        raise StateFromAnotherVersion(
            f"the local stack's state folder {base} was left by {made_by}, not version {STATE_VERSION}: "
            "`python -m local.lifecycle reset` (make local-reset) deletes that state, everything deployed on the "
            "local stack included, then `up` starts afresh"
        )
    base.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f"{STATE_VERSION}\n")


def reset() -> list[str]:
    """Stop the stack and delete its state, keeping what no version change invalidates (the ministack
    installation, the TLS and attestation authorities); the names removed."""
    down()
    base = stack_dir()
    removed = []
    for path in sorted(base.iterdir()) if base.is_dir() else []:
        if path.name in VERSION_INDEPENDENT:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        removed.append(path.name)
    (base / STATE_STAMP).unlink(missing_ok=True)
    return removed


def up(runtime: str = "process") -> dict[str, str]:
    """Start whatever is not running yet; idempotent. Returns the client environment. ``runtime`` says how the
    local SageMaker runs containers (``process``, ``podman`` or ``docker``); a running one must already use it.
    State another version of the stack left is refused (``reset`` deletes it)."""
    base = stack_dir()
    check_state_version(base)
    aws, sagemaker = local_aws(), local_sagemaker()
    if not aws.healthy():
        python = _ministack_python()
        # ministack, with the emulators' routes, resource types and corrections (aws_emulators.local_aws).
        environment = launch.environment(
            host=HOST,
            port=aws.port,
            state_dir=base / "ministack",
            certificate=tls().certificate,
            key=tls().key,
            ca_bundle=tls().authority,
            sagemaker_url=sagemaker.url,
            attestation_root=attestation_authority().root_path,
        )
        _spawn(aws, launch.command(python), environment)
        _wait_healthy(aws)
    running = running_runtime(sagemaker)
    if running is not None and running != runtime:
        raise RuntimeError(
            f"the local SageMaker on {sagemaker.url} runs the {running} runtime, not {runtime}: "
            "`python -m local.lifecycle down` first"
        )
    if running is None:
        _spawn(
            sagemaker,
            [
                sys.executable,
                "-m",
                "aws_emulators.sagemaker.server",
                "--host",
                HOST,
                "--port",
                str(sagemaker.port),
                "--state-dir",
                str(sagemaker_state_dir()),
                "--runtime",
                runtime,
                # The product's images, as the process runtime runs them: their entry points from this
                # interpreter, where the containers' code is installed as in the images.
                "--process-command",
                f"training={shlex.join([sys.executable, '-m', 'containers.training'])}",
                "--process-command",
                f"inference={shlex.join([sys.executable, '-m', 'containers.inference'])}",
                # Instances share the host's network: the serving app binds to loopback only.
                "--serving-env",
                "FHE_BIND_HOST=127.0.0.1",
                "--tls-certificate",
                str(tls().certificate),
                "--tls-key",
                str(tls().key),
                "--authorize-with",
                aws.url,
            ],
            client_environment(),
        )
        _wait_healthy(sagemaker)
    fleet = local_fleet()
    if fleet.pid() is None:
        command = ["-m", "local.fleet", "--state-dir", str(fleet_state_dir())]
        attestation = ["--attestation-dir", str(attestation_authority().folder)]
        _spawn(fleet, [sys.executable, *command, *attestation], client_environment())
    return client_environment()


def _stop(service: Service, timeout: float = 15.0) -> bool:
    pid = service.pid()
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and service.pid() is not None:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                break
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if service.pid() is not None:
        os.killpg(pid, signal.SIGKILL)
    service.pid_file.unlink(missing_ok=True)
    return True


def down() -> None:
    for service in (local_fleet(), local_sagemaker(), local_aws()):
        stopped = _stop(service)
        print(f"{service.name}: {'stopped' if stopped else 'was not running'}")
    # A local SageMaker that was killed cannot stop the endpoints it hosted; their pids are on record.
    from aws_emulators.sagemaker.hosting import stop_orphaned_containers

    stop_orphaned_containers(sagemaker_state_dir())
    from local.fleet import stop_orphans

    stop_orphans(fleet_state_dir())


def status() -> bool:
    all_ok = True
    for service in (local_aws(), local_sagemaker(), local_fleet()):
        pid = service.pid()
        healthy = service.healthy() if service.port else pid is not None
        all_ok &= healthy
        state = "healthy" if healthy else ("running, not answering" if pid else "stopped")
        where = service.url if service.port else "(no port)"
        print(f"{service.name:16} {where:24} {state}" + (f" (pid {pid})" if pid else ""))
    return all_ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.lifecycle", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down", "reset", "status", "env", "people", "enclave-image"))
    parser.add_argument("out", nargs="?", type=Path, help="enclave-image: where the image goes")
    parser.add_argument("--deployment", default=os.environ.get("FHE_DEPLOYMENT", "fhe"), help="people: its prefix")
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="up: run the local SageMaker's jobs and endpoints from the source tree (process) or the built images",
    )
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            environment = up(args.runtime)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
        status()
        print("\n# to use it from a shell:")
        print("\n".join(f"export {k}={v}" for k, v in environment.items()))
    elif args.command == "down":
        down()
    elif args.command == "reset":
        removed = reset()
        print(f"state removed from {stack_dir()}: {', '.join(removed) or 'nothing'}; `up` starts afresh")
    elif args.command == "enclave-image":
        built = enclave_image(args.out)
        print(f"enclave image {built.image}, measurement (PCR0) {built.image_sha384}", file=sys.stderr)
        print(f"deploy it with: fhe-deploy up {shlex.join(built.deploy_options())}", file=sys.stderr)
        print(shlex.join(built.deploy_options()))  # the options alone, for scripts (make demo)
    elif args.command == "env":
        print("\n".join(f"export {k}={v}" for k, v in client_environment().items()))
    elif args.command == "people":
        from local.people import ensure_people

        people = ensure_people(args.deployment)
        print("unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN")
        print(f"export AWS_CONFIG_FILE={people.config_file}")
        print(f"export AWS_SHARED_CREDENTIALS_FILE={people.credentials_file}")
        profiles = ", ".join(people.profile(actor) for actor in people.actors)
        print(f"# then, as an actor: AWS_PROFILE=<profile> <command>; profiles: {profiles}")
    else:
        raise SystemExit(0 if status() else 1)


if __name__ == "__main__":
    main()
