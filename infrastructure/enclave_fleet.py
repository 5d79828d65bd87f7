"""The enclave path of a deployment (``infrastructure/enclave.yaml``): the key released to one enclave measurement,
the shard queue and the Auto Scaling group of enclave instances. ``fhe-deploy up --enclave-image FILE`` adds it:

- the enclave image is the EIF that ``nitro-cli build-enclave`` made; its measurement (PCR0) is read where AWS
  reads it, ``nitro-cli describe-eif``, or given with ``--enclave-image-sha384`` where nitro-cli does not exist
  (the local stack builds and measures its images itself: ``python -m local.lifecycle enclave-image``);
- the image goes to the artifact bucket as ``enclave/<measurement>.eif``, where the instances fetch it, and the
  parent's code as the product's wheel (``enclave/<wheel>``), which they install;
- the key policy pins the measurement; the product stack receives the key and the queue, and the workflow's
  enclave Map sends at most as many shards at once as the fleet keeps waiting at its largest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infrastructure.templates import ROOT

MEASUREMENT = re.compile(r"^[0-9a-f]{96}$")
IMAGE_PREFIX = "enclave/"
MIB = 1024**2
# Enclave-enabled instance types the fleet is sized for: vCPUs and memory (MiB), as EC2 lists them.
INSTANCE_TYPES = {
    "m5.xlarge": (4, 16384), "m5.2xlarge": (8, 32768), "m5.4xlarge": (16, 65536), "m5.8xlarge": (32, 131072),
    "c5.xlarge": (4, 8192), "c5.2xlarge": (8, 16384), "c5.4xlarge": (16, 32768),
    "c6i.xlarge": (4, 8192), "c6i.2xlarge": (8, 16384), "c6i.4xlarge": (16, 32768),
    "r5.xlarge": (4, 32768), "r5.2xlarge": (8, 65536), "r5.4xlarge": (16, 131072), "r5.8xlarge": (32, 262144),
}  # fmt: skip
# What the parent instance keeps for itself (its worker, the KMS proxy, the OS); the enclave gets the rest.
PARENT_VCPUS = 2
PARENT_MEMORY_MIB = 2048
# The reference design's rule: an enclave's memory at least four times what it loads (its image, and the largest
# model it is sent: a language model's weights are unpacked, then loaded).
MEMORY_PER_LOADED_BYTE = 4


class EnclaveFleetError(ValueError):
    """An enclave path that cannot be deployed as given."""


@dataclass(frozen=True)
class EnclaveFleet:
    """The operator's choices for the enclave path."""

    image: Path
    image_sha384: str = ""  # empty: nitro-cli describe-eif reads it
    ami: str = ""
    subnets: tuple[str, ...] = ()
    instance_type: str = "m5.xlarge"
    max_instances: int = 4
    shards_per_instance: int = 4
    memory_mib: int = 4096
    wake_after_seconds: int = 120
    largest_model_bytes: int = 0  # the largest model the enclave will load (a language model's packed size)

    def __post_init__(self) -> None:
        if self.image_sha384 and not MEASUREMENT.match(self.image_sha384):
            raise EnclaveFleetError(
                f"enclave measurement {self.image_sha384!r}: 96 lowercase hexadecimal digits (a SHA-384), as "
                "nitro-cli describe-eif prints PCR0"
            )
        if not self.ami or not self.subnets:
            raise EnclaveFleetError(
                "the enclave fleet needs its instances' AMI (--enclave-ami) and subnets (--enclave-subnets)"
            )
        if self.max_instances < 1 or self.shards_per_instance < 1:
            raise EnclaveFleetError("the enclave fleet needs at least one instance and one shard per instance")

    @property
    def required_memory_mib(self) -> int:
        """The enclave's memory by the reference's rule: four times its image and the largest model, in whole
        256 MiB steps (nitro-cli's allocator takes MiB; 256 keeps it aligned)."""
        image = self.image.stat().st_size if self.image.is_file() else 0
        needed = -(-MEMORY_PER_LOADED_BYTE * (image + self.largest_model_bytes) // MIB)
        return max(512, -(-needed // 256) * 256)

    @property
    def cpu_count(self) -> int:
        """The enclave's vCPUs: the instance's, less the parent's, in pairs (an enclave takes whole cores)."""
        vcpus, _ = INSTANCE_TYPES[self.instance_type]
        return max(2, (vcpus - PARENT_VCPUS) // 2 * 2)

    def check_sizing(self) -> None:
        """Refuse an instance type or an enclave memory that cannot hold what the enclave loads, naming what would."""
        if self.instance_type not in INSTANCE_TYPES:
            raise EnclaveFleetError(
                f"instance type {self.instance_type!r} is not one the fleet is sized for: {', '.join(INSTANCE_TYPES)}"
            )
        required = self.required_memory_mib
        if self.memory_mib < required:
            raise EnclaveFleetError(
                f"the enclave needs at least {required} MiB ({MEMORY_PER_LOADED_BYTE} times its image and its largest "
                f"model): give --enclave-memory-mib {required}"
            )
        _, memory = INSTANCE_TYPES[self.instance_type]
        if self.memory_mib + PARENT_MEMORY_MIB > memory:
            fits = [name for name, (_, m) in INSTANCE_TYPES.items() if self.memory_mib + PARENT_MEMORY_MIB <= m]
            raise EnclaveFleetError(
                f"{self.instance_type} has {memory} MiB: the enclave's {self.memory_mib} MiB and the parent's "
                f"{PARENT_MEMORY_MIB} do not fit; " + (f"choose one of {', '.join(fits)}" if fits else "none fits")
            )

    @property
    def map_concurrency(self) -> int:
        """Shards the workflow queues at once: the backlog the fleet keeps at its largest."""
        return self.max_instances * self.shards_per_instance

    def measurement(self) -> str:
        """The image's PCR0: as given, else as ``nitro-cli describe-eif`` reads it."""
        if self.image_sha384:
            return self.image_sha384
        if shutil.which("nitro-cli") is None:
            raise EnclaveFleetError(
                f"no nitro-cli here to read the measurement of {self.image}: give it with --enclave-image-sha384"
            )
        described = subprocess.run(
            ["nitro-cli", "describe-eif", "--eif-path", str(self.image)], capture_output=True, text=True, check=False
        )
        if described.returncode != 0:
            raise EnclaveFleetError(f"nitro-cli describe-eif {self.image}: {described.stderr.strip()[-500:]}")
        pcr0 = str(json.loads(described.stdout)["Measurements"]["PCR0"]).lower()
        if not MEASUREMENT.match(pcr0):
            raise EnclaveFleetError(f"nitro-cli describe-eif {self.image}: PCR0 {pcr0!r} is no SHA-384")
        return pcr0

    def image_key(self, measurement: str) -> str:
        return f"{IMAGE_PREFIX}{measurement}.eif"

    def parameters(
        self, prefix: str, measurement: str, wheel_key: str, *, bundle_bucket: str, artifact_bucket: str,
        model_bucket: str, package_group: str, key_arn: str,
    ) -> dict[str, str]:  # fmt: skip
        return {
            "Prefix": prefix,
            "EnclaveImageSha384": measurement,
            "ParentWheelKey": wheel_key,
            "BundleBucketName": bundle_bucket,
            "ArtifactBucketName": artifact_bucket,
            "ModelBucketName": model_bucket,
            "ModelPackageGroupName": package_group,
            "KeyArn": key_arn,
            "ImageId": self.ami,
            "InstanceType": self.instance_type,
            "SubnetIds": ",".join(self.subnets),
            "MaxInstances": str(self.max_instances),
            "ShardsPerInstance": str(self.shards_per_instance),
            "EnclaveMemoryMiB": str(self.memory_mib),
            "EnclaveCpuCount": str(self.cpu_count),
            "WakeAfterSeconds": str(self.wake_after_seconds),
        }


def build_eif(docker_uri: str, out: Path) -> tuple[Path, str]:
    """The EIF of the enclave's Docker image (``containers/enclave/Dockerfile``), built with ``nitro-cli
    build-enclave`` where nitro-cli exists, and its measurement (PCR0) as the build reports it."""
    if shutil.which("nitro-cli") is None:
        raise EnclaveFleetError(
            f"no nitro-cli here to build the EIF of {docker_uri}: build it where nitro-cli is (nitro-cli build-enclave "
            "--docker-uri URI --output-file enclave.eif), then give --enclave-image and --enclave-image-sha384"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        ["nitro-cli", "build-enclave", "--docker-uri", docker_uri, "--output-file", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        raise EnclaveFleetError(f"nitro-cli build-enclave {docker_uri}: {built.stderr.strip()[-500:]}")
    try:
        pcr0 = str(json.loads(built.stdout)["Measurements"]["PCR0"]).lower()
    except (ValueError, KeyError, TypeError):
        raise EnclaveFleetError(f"nitro-cli build-enclave {docker_uri} reported no measurements") from None
    if not MEASUREMENT.match(pcr0) or not out.is_file():
        raise EnclaveFleetError(f"nitro-cli build-enclave {docker_uri}: no EIF with a SHA-384 PCR0 at {out}")
    return out, pcr0


def parent_wheel(folder: Path) -> Path:
    """The product's wheel, which the instances install to run the parent (``containers.enclave.fleet``)."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(folder),
         str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        raise EnclaveFleetError(f"building the parent's wheel failed: {built.stderr.strip()[-800:]}")
    (wheel,) = folder.glob("fhe_batch_inference-*.whl")
    return wheel


def staged_wheel() -> tuple[str, bytes]:
    """The wheel's name and bytes, built in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        wheel = parent_wheel(Path(folder))
        return wheel.name, wheel.read_bytes()
