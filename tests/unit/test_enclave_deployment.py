"""The enclave path of a deployment (infrastructure/enclave_fleet.py): fhe-deploy's options, the enclave stack in the
plan with the parameters its template declares, the product stack given its key and queue, the enclave Map's
concurrency from the fleet's size, and the local fleet's scaling as the group's policies would decide it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from infrastructure import cli as fhe_deploy
from infrastructure import package, templates
from infrastructure.deployment import Deployment, plan
from infrastructure.enclave_fleet import EnclaveFleet, EnclaveFleetError
from infrastructure.owners import owner_parameters
from local.fleet import EnclaveGroup, Scaler

MEASUREMENT = "ab" * 48


def _fleet(tmp_path: Path, **choices: object) -> EnclaveFleet:
    given: dict[str, object] = {"image": tmp_path / "enclave.eif", "ami": "ami-1", "subnets": ("subnet-1",)}
    return EnclaveFleet(**{**given, **choices})  # type: ignore[arg-type]


def test_the_plan_deploys_the_enclave_stack_and_gives_the_product_its_key_and_queue(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    given = ["--enclave-image", str(tmp_path / "enclave.eif"), "--enclave-image-sha384", MEASUREMENT]
    fleet = ["--enclave-ami", "ami-1", "--enclave-subnets", "subnet-1,subnet-2", "--enclave-max-instances", "3"]
    fhe_deploy.main(["up", "--prefix", "acme", "--dry-run", "--json", *given, *fleet])
    planned = json.loads(capsys.readouterr().out)
    names = [stack["name"] for stack in planned["stacks"]]
    assert names == ["acme-bootstrap", "acme-data", "acme-enclave", "acme"]  # the enclave's key before the product
    enclave, product = planned["stacks"][2], planned["stacks"][3]
    declared = templates.load(templates.ENCLAVE)["Parameters"]
    assert {n for n, spec in declared.items() if "Default" not in spec} <= set(enclave["parameters"]) <= set(declared)
    assert enclave["parameters"]["EnclaveImageSha384"] == MEASUREMENT
    assert enclave["parameters"]["SubnetIds"] == "subnet-1,subnet-2"
    assert (enclave["parameters"]["MaxInstances"], enclave["parameters"]["ShardsPerInstance"]) == ("3", "4")
    assert product["parameters"]["EnclaveKeyArn"] == "<enclave:EnclaveKeyArn>"
    assert product["parameters"]["EnclaveShardQueueUrl"] == "<enclave:EnclaveShardQueueUrl>"


def test_without_an_enclave_image_the_product_has_no_enclave_path(capsys: pytest.CaptureFixture[str]) -> None:
    fhe_deploy.main(["up", "--dry-run", "--json"])
    planned = json.loads(capsys.readouterr().out)
    assert len(planned["stacks"]) == 3
    assert planned["stacks"][-1]["parameters"]["EnclaveKeyArn"] == ""


def test_the_enclave_maps_concurrency_is_the_backlog_the_fleet_keeps_at_its_largest(tmp_path: Path) -> None:
    deployment = Deployment(max_instances=2, invocations_per_instance=3, enclave=_fleet(tmp_path, max_instances=5))
    [machine] = [u for u in deployment.uploads() if u.parameter == "StateMachineKey"]
    states = json.loads(machine.body)["States"]
    assert states[package.SHARD_MAP_STATE]["MaxConcurrency"] == 6
    assert states[package.ENCLAVE_SHARD_MAP_STATE]["MaxConcurrency"] == 5 * 4
    assert plan(deployment)["stacks"][2]["parameters"]["ShardsPerInstance"] == "4"


@pytest.mark.parametrize(
    ("choices", "problem"),
    [
        ({"image_sha384": "not-a-digest"}, "96 lowercase hexadecimal digits"),
        ({"ami": ""}, "--enclave-ami"),
        ({"subnets": ()}, "--enclave-subnets"),
        ({"max_instances": 0}, "at least one instance"),
    ],
)
def test_an_enclave_fleet_that_cannot_be_deployed_is_refused_naming_what_is_missing(
    tmp_path: Path, choices: dict[str, object], problem: str
) -> None:
    with pytest.raises(EnclaveFleetError, match=problem):
        _fleet(tmp_path, **choices)


def test_the_measurement_is_read_by_nitro_cli_or_must_be_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnclaveFleetError, match=r"no nitro-cli here .* --enclave-image-sha384"):
        _fleet(tmp_path).measurement()
    with pytest.raises(SystemExit, match="--enclave-ami"):
        fhe_deploy.main(["up", "--dry-run", "--enclave-image", str(tmp_path / "x.eif")])
    nitro_cli = tmp_path / "nitro-cli"  # what `nitro-cli describe-eif` prints, PCR0 in upper case
    described = {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": MEASUREMENT.upper()}}
    nitro_cli.write_text(f"#!/bin/sh\necho '{json.dumps(described)}'\n")
    nitro_cli.chmod(nitro_cli.stat().st_mode | stat.S_IXUSR)
    assert _fleet(tmp_path).measurement() == MEASUREMENT


def test_the_eif_is_built_by_nitro_cli_where_it_exists_with_its_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infrastructure.cli import enclave_fleet, parser
    from infrastructure.enclave_fleet import build_eif

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        EnclaveFleetError, match=r"no nitro-cli here to build the EIF of fhe-enclave:1: .* --enclave-image"
    ):
        build_eif("fhe-enclave:1", tmp_path / "enclave.eif")
    # What `nitro-cli build-enclave --docker-uri URI --output-file OUT` does: writes the EIF, prints its measurements.
    built = {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": MEASUREMENT.upper(), "PCR1": "00"}}
    nitro_cli = tmp_path / "nitro-cli"
    nitro_cli.write_text(
        '#!/bin/sh\n[ "$1 $2 $3 $4" = "build-enclave --docker-uri fhe-enclave:1 --output-file" ] || exit 3\n'
        f"echo eif > \"$5\"\necho '{json.dumps(built)}'\n"
    )
    nitro_cli.chmod(nitro_cli.stat().st_mode | stat.S_IXUSR)
    assert build_eif("fhe-enclave:1", tmp_path / "out" / "enclave.eif") == (
        tmp_path / "out" / "enclave.eif",
        MEASUREMENT,
    )
    with pytest.raises(EnclaveFleetError, match="nitro-cli build-enclave other:2"):
        build_eif("other:2", tmp_path / "enclave.eif")
    args = parser().parse_args(
        ["up", "--enclave-docker-uri", "fhe-enclave:1", "--enclave-image", str(tmp_path / "e.eif"),
         "--enclave-ami", "ami-1", "--enclave-subnets", "subnet-1"]
    )  # fmt: skip
    fleet = enclave_fleet(args)
    assert fleet is not None and (fleet.image, fleet.measurement()) == (tmp_path / "e.eif", MEASUREMENT)
    args.enclave_image_sha384 = MEASUREMENT
    with pytest.raises(EnclaveFleetError, match="drop --enclave-image-sha384"):
        enclave_fleet(args)


def test_owners_roles_are_given_the_enclave_key_where_the_deployment_has_one() -> None:
    outputs = {name: "x" for name in ("KeyArn", "ModelBucketName", "BundleBucketName", "ModelPackageGroup")}
    outputs["EndpointName"] = "e"
    assert owner_parameters(outputs, "acme", "alice")["EnclaveKeyArn"] == ""
    given = owner_parameters({**outputs, "EnclaveKeyArn": "arn:aws:kms:us-east-1:1:key/k"}, "acme", "alice")
    assert given["EnclaveKeyArn"] == "arn:aws:kms:us-east-1:1:key/k"


def _group(desired: int, **choices: object) -> EnclaveGroup:
    given: dict[str, object] = {
        "name": "acme-enclave-fleet",
        "image_uri": "s3://a/enclave/x.eif",
        "image_sha384": MEASUREMENT,
        "queue_url": "https://q",
        "role_arn": "arn:aws:iam::1:role/r",
        "max_size": 3,
        "desired": desired,
        "instance_ids": (),
        "target_per_instance": 2.0,
        "wake_after_s": 10.0,
    }
    return EnclaveGroup(**{**given, **choices})  # type: ignore[arg-type]


def test_the_local_fleet_leaves_zero_only_once_a_shard_has_waited_the_alarms_threshold() -> None:
    scaler = Scaler(scale_in_after=30)
    assert scaler.desired(_group(0), waiting=0, now=0) == 0
    assert scaler.desired(_group(0), waiting=5, now=1) == 0  # target tracking has no value at zero instances
    assert scaler.desired(_group(0), waiting=5, now=10.9) == 0
    assert scaler.desired(_group(0), waiting=5, now=11) == 1  # the step policy's alarm: one instance
    assert scaler.desired(_group(0, wake_after_s=None), waiting=5, now=100) == 0  # no alarm, no way up


def test_the_local_fleet_tracks_the_backlog_per_instance_up_at_once_and_down_after_a_while() -> None:
    scaler = Scaler(scale_in_after=30)
    assert scaler.desired(_group(1), waiting=5, now=0) == 3  # ceil(5 / 2)
    assert scaler.desired(_group(1), waiting=50, now=1) == 3  # never above the group's maximum
    assert scaler.desired(_group(3), waiting=0, now=2) == 3  # below the target: not yet
    assert scaler.desired(_group(3), waiting=0, now=31) == 3
    assert scaler.desired(_group(3), waiting=0, now=32) == 0  # below for scale_in_after seconds
    assert scaler.desired(_group(2), waiting=4, now=40) == 2  # at the target: stays
    assert scaler.desired(_group(2), waiting=4, now=50) == 3  # but shards waited the alarm's threshold: one more


def test_the_enclave_is_sized_from_its_image_and_largest_model_and_a_type_that_cannot_hold_it_is_refused(
    tmp_path: Path,
) -> None:
    image = tmp_path / "enclave.eif"
    image.write_bytes(b"e" * (300 * 1024**2))  # a 300 MiB image
    fleet = _fleet(tmp_path, image=image)
    assert fleet.required_memory_mib == 1280  # 4 x 300 MiB, in 256 MiB steps
    assert fleet.cpu_count == 2  # an m5.xlarge's 4 vCPUs, less the parent's 2
    fleet.check_sizing()  # the default 4096 MiB holds it
    # Bloom-560m class: about 2.2 GB of weights.
    bloom = 2200 * 1024**2
    with pytest.raises(EnclaveFleetError, match=r"at least 10240 MiB .* --enclave-memory-mib 10240"):
        _fleet(tmp_path, image=image, largest_model_bytes=bloom).check_sizing()
    with pytest.raises(EnclaveFleetError, match=r"m5\.xlarge has 16384 MiB: .* choose one of m5\.2xlarge, m5\.4xlarge"):
        _fleet(tmp_path, image=image, largest_model_bytes=bloom, memory_mib=16384).check_sizing()
    sized = _fleet(tmp_path, image=image, largest_model_bytes=bloom, memory_mib=65536, instance_type="r5.8xlarge")
    sized.check_sizing()
    assert sized.cpu_count == 30 and sized.parameters(
        "fhe", MEASUREMENT, "enclave/w.whl", bundle_bucket="b", artifact_bucket="a", model_bucket="m",
        package_group="g", key_arn="k",
    )["EnclaveCpuCount"] == "30"  # fmt: skip
    with pytest.raises(EnclaveFleetError, match="not one the fleet is sized for"):
        _fleet(tmp_path, image=image, instance_type="t3.micro").check_sizing()
