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

    def deploy_endpoint(settings: EndpointSettings, wait_seconds: float, package_arn: str | None) -> dict[str, Any]:
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
    args = cli.parser().parse_args(["deploy", "--endpoint-name", "mine"])
    settings = cli.resolve(args, None, note=pytest.fail)
    assert (settings.endpoint.output_bucket, settings.endpoint.max_concurrent_invocations) == ("my-bundles", 3)
    assert (settings.endpoint.endpoint_name, settings.endpoint.package_group) == ("mine", "fhe-models")
    assert settings.pipeline.pipeline_name == "fhe-training"
