"""fhe-pipeline's settings: a flag given on the command line wins over the deployment's value and says so; without
the flag the deployment's value holds; the deployment's outputs give every setting the commands need."""

from __future__ import annotations

from typing import Any

import pytest

from common.settings import EndpointSettings
from pipelines import cli

OUTPUTS = {
    "ModelCreatorRoleArn": "arn:aws:iam::000000000000:role/acme-model-creator",
    "ModelBucketName": "acme-models",
    "DataBucketName": "acme-data",
    "TrainingImageUri": "000000000000.dkr.ecr.us-east-1.amazonaws.com/acme-training:src-1",
    "InferenceImageUri": "000000000000.dkr.ecr.us-east-1.amazonaws.com/acme-inference:src-2",
    "PipelineName": "acme-training",
    "ModelPackageGroup": "acme-models",
    "BundleBucketName": "acme-bundles",
    "EndpointRoleArn": "arn:aws:iam::000000000000:role/acme-endpoint",
    "EndpointName": "acme-inference",
    "EndpointSuccessTopicArn": "arn:aws:sns:us-east-1:000000000000:acme-success",
    "EndpointErrorTopicArn": "arn:aws:sns:us-east-1:000000000000:acme-errors",
    "ServedVersionStackRoleArn": "arn:aws:iam::000000000000:role/acme-served-version-stacks",
}


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch) -> list[EndpointSettings]:
    """The deployment ``acme`` as its stacks record it; the endpoint deploys it would make, recorded."""
    for name in [o.variable for o in cli.OPTIONS]:
        monkeypatch.delenv(name, raising=False)

    def read_outputs(prefix: str) -> dict[str, str]:
        assert prefix == "acme"
        return dict(OUTPUTS)

    made: list[EndpointSettings] = []

    def deploy_endpoint(
        settings: EndpointSettings, wait_seconds: float, package_arn: str | None, **_: Any
    ) -> dict[str, Any]:
        made.append(settings)
        return {"endpoint": settings.endpoint_name, "status": "InService"}

    monkeypatch.setattr(cli, "read_outputs", read_outputs)
    monkeypatch.setattr(cli, "deploy_endpoint", deploy_endpoint)
    return made


def test_an_explicit_package_group_is_the_one_deployed_and_the_override_is_named(
    deployed: list[EndpointSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["deploy", "--deployment", "acme", "--package-group", "other"])
    [endpoint] = deployed
    assert endpoint.package_group == "other"
    # Everything not given comes from the deployment.
    assert (endpoint.endpoint_name, endpoint.output_bucket) == ("acme-inference", "acme-bundles")
    assert endpoint.role_arn == OUTPUTS["EndpointRoleArn"]
    assert endpoint.success_topic_arn == OUTPUTS["EndpointSuccessTopicArn"]
    assert endpoint.stack_role_arn == OUTPUTS["ServedVersionStackRoleArn"], "the version's stack is made under it"
    captured = capsys.readouterr()
    assert "--package-group other overrides the deployment acme's acme-models" in captured.err
    assert "newest Approved package of other on its version's endpoint (acme-inference-v<version>)" in captured.out


def test_without_the_flag_the_deployments_group_is_deployed_silently(
    deployed: list[EndpointSettings], capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["deploy", "--deployment", "acme", "--endpoint-instance-type", "ml.c7i.8xlarge"])
    [endpoint] = deployed
    assert (endpoint.package_group, endpoint.instance_type) == ("acme-models", "ml.c7i.8xlarge")
    assert "overrides" not in capsys.readouterr().err


def test_the_pipeline_takes_the_deployments_role_buckets_images_and_group(deployed: list[EndpointSettings]) -> None:
    args = cli.parser().parse_args(["run", "--deployment", "acme", "--job-instance-type", "ml.m5.large"])
    settings = cli.resolve(args, dict(OUTPUTS), note=lambda line: None).pipeline
    assert (settings.role_arn, settings.artifact_bucket, settings.data_bucket) == (
        OUTPUTS["ModelCreatorRoleArn"],
        "acme-models",
        "acme-data",
    )
    assert (settings.training_image, settings.pipeline_name, settings.package_group) == (
        OUTPUTS["TrainingImageUri"],
        "acme-training",
        "acme-models",
    )
    assert settings.job_instance_type == "ml.m5.large"


def test_without_a_deployment_the_variables_then_the_defaults_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [o.variable for o in cli.OPTIONS]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FHE_BUNDLE_BUCKET", "my-bundles")
    monkeypatch.setenv("FHE_INVOCATIONS_PER_INSTANCE", "3")
    monkeypatch.setenv("FHE_ENDPOINT_ROLE_ARN", "arn:aws:iam::000000000000:role/mine")
    args = cli.parser().parse_args(["deploy", "--endpoint-name", "mine"])
    settings = cli.resolve(args, None, note=pytest.fail)
    assert (settings.endpoint.role_arn, settings.endpoint.stack_role_arn) == (
        "arn:aws:iam::000000000000:role/mine",
        None,
    )
    assert (settings.endpoint.output_bucket, settings.endpoint.max_concurrent_invocations) == ("my-bundles", 3)
    assert (settings.endpoint.endpoint_name, settings.endpoint.package_group) == ("mine", "fhe-models")
    assert settings.pipeline.pipeline_name == "fhe-training"


@pytest.mark.parametrize(
    ("argv", "flag", "variable"),
    [
        (["deploy"], "--endpoint-role-arn", "FHE_ENDPOINT_ROLE_ARN"),
        (["definition"], "--pipeline-role-arn", "FHE_PIPELINE_ROLE_ARN"),
        (["upsert"], "--pipeline-role-arn", "FHE_PIPELINE_ROLE_ARN"),
    ],
)
def test_without_a_deployment_or_a_flag_a_command_that_needs_a_role_names_both(
    deployed: list[EndpointSettings], argv: list[str], flag: str, variable: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    message = str(refused.value.code)
    assert "--deployment PREFIX" in message and flag in message and variable in message, message
    assert deployed == [], "nothing was deployed"


def test_deploy_applies_the_deployments_retention_rule_once_the_new_version_serves(
    deployed: list[EndpointSettings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = {**OUTPUTS, "KeepVersions": "2", "RetireAfterDays": "0", "StateMachineArn": "arn:states:acme"}
    monkeypatch.setattr(cli, "read_outputs", lambda prefix: dict(recorded))
    applied: list[tuple[EndpointSettings, str]] = []

    def retire_by_rule(settings: EndpointSettings, machine: str, **kwargs: Any) -> dict[str, Any]:
        assert deployed, "the rule runs after the new version is deployed"
        applied.append((settings, machine))
        return {"retired": ["acme-inference-v1"], "kept": {}}

    monkeypatch.setattr(cli, "retire_by_rule", retire_by_rule)
    cli.main(["deploy", "--deployment", "acme"])
    [(settings, machine)] = applied
    assert (settings.keep_versions, settings.retire_after_days, machine) == (2, 0.0, "arn:states:acme")
    assert '"retired": [\n      "acme-inference-v1"' in capsys.readouterr().out

    # A flag overrides the deployment's rule, and says so: --keep 0 keeps every version this time.
    applied.clear()
    cli.main(["deploy", "--deployment", "acme", "--keep", "0"])
    assert applied == [] and "--keep 0 overrides the deployment acme's 2" in capsys.readouterr().err


def test_a_retention_rule_keeps_a_version_with_running_bundles_for_the_next_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime

    from common import aws
    from pipelines import retirement

    served = {1: "e-v1", 2: "e-v2", 3: "e-v3"}

    class SageMaker:
        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
            return {"CreationTime": datetime(2026, 11, int(EndpointName[-1]), tzinfo=UTC)}

    def retire(settings: EndpointSettings, version: int, machine: str, **kwargs: Any) -> dict[str, Any]:
        if version == 1:
            raise retirement.RetirementError("version 1 still serves running bundles: b-7")
        return {"retired": served.pop(version)}

    monkeypatch.setattr(aws, "client", lambda name: SageMaker())
    monkeypatch.setattr(retirement, "served_versions", lambda sagemaker, family: dict(served))
    monkeypatch.setattr(retirement, "retire", retire)
    settings = EndpointSettings("g", "b", "r", endpoint_name="e", keep_versions=1)
    answer = retirement.retire_by_rule(settings, "arn:states:m", report=lambda line: None)
    assert answer["retired"] == ["e-v2"] and answer["kept"] == {1: "version 1 still serves running bundles: b-7"}
    assert answer["served_versions"] == {1: "e-v1", 3: "e-v3"}
    with pytest.raises(retirement.RetirementError, match="no retention rule"):
        retirement.retire_by_rule(EndpointSettings("g", "b", "r"), "arn:states:m")


def test_a_rejection_revokes_its_version_even_when_its_client_artifacts_were_not_withdrawn(
    deployed: list[EndpointSettings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rejection is set and announced before its client artifacts are withdrawn; a withdrawal that fails must
    not keep the rejected version served: the revocation runs, and the command fails naming what is left to do."""
    import json

    from pipelines.approval import PublicationError

    arn = "arn:aws:sagemaker:us-east-1:000000000000:model-package/acme-models/2"
    monkeypatch.setattr(cli, "read_outputs", lambda prefix: {**OUTPUTS, "WorkflowTableName": "acme-workflow"})

    def approve(package_arn: str | None, group: str, decision: str, note: str) -> dict[str, Any]:
        decided = {"arn": package_arn, "status": decision, "note": note, "client_artifacts": None}
        raise PublicationError(f"{package_arn} is {decision} but its client artifacts are still published", decided)

    revoked: list[tuple[str, str]] = []

    def revoke(endpoint: EndpointSettings, package_arn: str, note: str, table: str) -> dict[str, Any]:
        revoked.append((package_arn, table))
        return {"endpoint": "acme-inference-v2", "deleted": True}

    monkeypatch.setattr(cli, "approve", approve)
    monkeypatch.setattr(cli, "revoke", revoke)
    with pytest.raises(SystemExit, match="still published"):
        cli.main(["approve", "--deployment", "acme", "--reject", "--package-arn", arn, "--note", "a defect"])
    assert revoked == [(arn, "acme-workflow")]
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "Rejected" and printed["revocation"]["deleted"] is True
