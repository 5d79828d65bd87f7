"""Model versions served side by side on the local stack: each Approved version deployed on its own endpoint
(``<family>-v<version>``), bundles routed to the endpoint of their version, a bundle for a version no endpoint
serves quarantined naming the versions that are, deploying a new version touching no other, and retiring a
version once its running bundles end; the audit report shows each version's endpoint and its retirement; a
rejected version revoked at once, its running bundles quarantined naming the revocation, whether their shards
were with the endpoint or still queued for it."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from audit import report as audit_report
from audit.collect import Window
from client.batch_client import BatchClient, ClientSettings
from client.model import ClientModel
from common import aws
from common.bundle.store import object_exists
from common.model_package import served_versions, version_endpoint
from common.stack_outputs import describe_stack
from common.stacks import resources as stack_resources
from common.workflow import waiting_shards
from containers.training.data import sample_records
from infrastructure.deployment import down
from pipelines.approval import approve
from pipelines.endpoint import FAMILY_TAG, deploy_endpoint, version_stack
from pipelines.retirement import RetirementError, retire, revoke, routed_endpoint, running_bundles
from pipelines.runs import train_and_register
from tests.integration.helpers import OWNER, Served, deploy_and_serve, deployment_for, drop, injected_faults, settle

pytestmark = pytest.mark.integration

DEPLOYMENT = deployment_for("versions", function_concurrency=2, scale_in_cooldown=15, scale_out_cooldown=5)
STACKS = deployment_for("vstacks", function_concurrency=2, max_instances=3, scale_in_cooldown=45)


def _client(served: Served, home: Path, notes: list[str] | None = None) -> BatchClient:
    """The batch owner's client, with its own home; its notes collected in ``notes``."""
    settings = ClientSettings.for_deployment(served.outputs, OWNER, home=home)
    return BatchClient(settings, notes=None if notes is None else notes.append)


def _owner(served: Served, home: Path, package_arn: str) -> ClientModel:
    """A batch owner with keys for ``package_arn``'s version, its evaluation key uploaded (under its role)."""
    with served.as_owner():
        return _client(served, home).keys(package_arn).model


def _drop(served: Served, model: ClientModel, x: Any, folder: Path) -> None:
    """The owner drops a bundle of one-sample shards, under its role."""
    with served.as_owner():
        drop(served.layout, model, x, folder, shard_size=1)


def _instances(endpoint: str) -> int:
    described = aws.client("sagemaker").describe_endpoint(EndpointName=endpoint)
    assert described["EndpointStatus"] == "InService"
    return int(described["ProductionVariants"][0]["CurrentInstanceCount"])


def test_two_versions_are_served_side_by_side_and_bundles_go_to_their_own(
    local_stack: dict[str, str], tmp_path: Path
) -> None:
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    served = deploy_and_serve(DEPLOYMENT, "versions tests: version 1")
    first = served.package_arn
    assert served.endpoint == version_endpoint(DEPLOYMENT.endpoint_name, 1)
    x = sample_records(8)
    owner_1 = _owner(served, tmp_path / "home-1", first)

    # Version 2 trained and approved, not deployed yet: its bundles are refused, naming what is served.
    with served.acting("trainer"):
        second = train_and_register(served.settings.pipeline)
    with served.acting("ml-ops"):
        approve(second, DEPLOYMENT.package_group, "Approved", "versions tests: version 2")
    owner_2 = _owner(served, tmp_path / "home-2", second)
    _drop(served, owner_2, x[:2], tmp_path / "early-v2")
    execution = settle(served.state_machine_arn, "early-v2", 300.0)
    assert execution["status"] == "FAILED", execution
    uri = served.layout.quarantine_reason("early-v2")
    reason: dict[str, Any] = json.loads(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
    assert (reason["stage"], reason["code"], reason["field"]) == (
        "validate",
        "version_not_served",
        "model.package_version",
    )
    assert "served versions: 1" in reason["message"] and "fhe-client keys" in reason["message"], reason

    # Deploying version 2 creates its endpoint and leaves version 1's as it was.
    sagemaker = aws.client("sagemaker")
    before = sagemaker.describe_endpoint(EndpointName=served.endpoint)["EndpointConfigName"]
    with served.acting("ml-ops"):
        deployed = deploy_endpoint(served.settings.endpoint, package_arn=second)
    assert deployed["endpoint"] == version_endpoint(DEPLOYMENT.endpoint_name, 2) and deployed["version"] == 2
    assert sagemaker.describe_endpoint(EndpointName=served.endpoint)["EndpointConfigName"] == before
    assert served_versions(sagemaker, DEPLOYMENT.endpoint_name) == {1: served.endpoint, 2: deployed["endpoint"]}

    # A version-1 bundle and a version-2 bundle both complete, each on its own version's endpoint.
    _drop(served, owner_1, x[2:5], tmp_path / "bundle-v1")
    _drop(served, owner_2, x[5:8], tmp_path / "bundle-v2")
    for bundle_id, endpoint in (("bundle-v1", served.endpoint), ("bundle-v2", deployed["endpoint"])):
        execution = settle(served.state_machine_arn, bundle_id, 600.0)
        assert execution["status"] == "SUCCEEDED", execution
        assert routed_endpoint(aws.client("stepfunctions"), execution["executionArn"]) == endpoint
        assert object_exists(aws.client("s3"), served.layout.result_manifest(bundle_id))

    # Idle, both versions cost nothing: each endpoint is back at zero instances after its cooldown.
    deadline = time.monotonic() + 120
    while any(_instances(e) for e in (served.endpoint, deployed["endpoint"])):
        assert time.monotonic() < deadline, "an idle version's endpoint kept an instance"
        time.sleep(2)

    # The batch owner sees both versions served and which its keys are for, and is told a newer one is served.
    notes: list[str] = []
    client = _client(served, tmp_path / "home-1", notes)
    with served.as_owner():
        listed = client.versions()
        keys = client.keys(first)
    assert [(v.version, v.local_keys) for v in listed.served] == [(1, True), (2, False)], listed
    assert listed.local_keys == (1,) and listed.newest_served == 2
    assert keys.newer_version_served == 2 and any("model version 2 is served" in note for note in notes), notes

    # Retiring version 1 while one of its bundles runs: refused naming it, then waited for; the bundle completes.
    with injected_faults(served.endpoint, [{"input_contains": f"requests/{OWNER}/running-v1/", "delay_seconds": 8}]):
        _drop(served, owner_1, x[:2], tmp_path / "running-v1")
        sfn, deadline = aws.client("stepfunctions"), time.monotonic() + 120
        while "running-v1" not in running_bundles(sfn, served.state_machine_arn, served.endpoint):
            assert time.monotonic() < deadline, "the version-1 bundle never reached its endpoint"
            time.sleep(1)
        with served.acting("ml-ops"):
            with pytest.raises(RetirementError, match="running-v1"):
                retire(served.settings.endpoint, 1, served.state_machine_arn, report=lambda line: None)
            retired = retire(
                served.settings.endpoint, 1, served.state_machine_arn, wait_seconds=300, poll=2,
                report=lambda line: None,
            )  # fmt: skip
    assert retired["retired"] == served.endpoint and retired["waited_for"] == ["running-v1"], retired
    assert describe_stack(version_stack(DEPLOYMENT.endpoint_name, 1)) is None, "retiring deletes the version's stack"
    assert settle(served.state_machine_arn, "running-v1", 60.0)["status"] == "SUCCEEDED"
    assert served_versions(sagemaker, DEPLOYMENT.endpoint_name) == {2: deployed["endpoint"]}

    # A version-1 bundle dropped after the retirement is quarantined, naming what is still served.
    _drop(served, owner_1, x[2:4], tmp_path / "after-retirement")
    assert settle(served.state_machine_arn, "after-retirement", 300.0)["status"] == "FAILED"
    uri = served.layout.quarantine_reason("after-retirement")
    reason = json.loads(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
    assert reason["code"] == "version_not_served" and "served versions: 2" in reason["message"], reason

    # The audit report: both versions' endpoints, version 1's retirement, which endpoint served each bundle.
    deadline = time.monotonic() + 120
    while True:
        window = Window(since, datetime.now(tz=UTC) + timedelta(seconds=1))
        with served.acting("auditor"):
            report = audit_report.run(
                window, tmp_path / "audit", deployment=DEPLOYMENT.prefix, pipeline_name=DEPLOYMENT.pipeline_name
            )
        endpoints = {e["endpoint"]: e for e in report["endpoints"]}
        if endpoints.get(served.endpoint, {}).get("retired") or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert set(endpoints) == {served.endpoint, deployed["endpoint"]}, endpoints
    assert endpoints[served.endpoint]["retired"] and endpoints[served.endpoint]["served"], endpoints
    assert endpoints[deployed["endpoint"]]["retired"] is None
    assert endpoints[deployed["endpoint"]]["model_package_arn"] == second
    by_bundle = {b["bundle_id"]: b for b in report["bundles"]}
    assert by_bundle["bundle-v1"]["endpoint"] == served.endpoint
    assert by_bundle["bundle-v2"]["endpoint"] == deployed["endpoint"]
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]

    # Rejecting version 2 revokes it at once: its running bundle is quarantined naming the revocation, and so is
    # one routed to version 2 whose shard is still queued for the invoke function (paused here) at the revocation.
    dynamodb, table = aws.client("dynamodb"), served.outputs["WorkflowTableName"]
    lambdas, sqs = aws.client("lambda"), aws.client("sqs")
    invoker = next(f for f in served.outputs["FunctionNames"].split(",") if f.endswith("-invoke-shard"))
    mapping = lambdas.list_event_source_mappings(FunctionName=invoker)["EventSourceMappings"][0]
    shard_queue = sqs.get_queue_url(QueueName=mapping["EventSourceArn"].rsplit(":", 1)[1])["QueueUrl"]
    with injected_faults(
        deployed["endpoint"], [{"input_contains": f"requests/{OWNER}/revoked-v2/", "delay_seconds": 60}]
    ):
        _drop(served, owner_2, x[:1], tmp_path / "revoked-v2")
        deadline = time.monotonic() + 120
        while not waiting_shards(dynamodb, table, deployed["endpoint"]):
            assert time.monotonic() < deadline, "the version-2 bundle never reached its endpoint"
            time.sleep(1)
        lambdas.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)
        try:
            _drop(served, owner_2, x[1:2], tmp_path / "queued-v2")
            deadline = time.monotonic() + 120
            while not int(
                sqs.get_queue_attributes(QueueUrl=shard_queue, AttributeNames=["ApproximateNumberOfMessages"])[
                    "Attributes"
                ]["ApproximateNumberOfMessages"]
            ):
                assert time.monotonic() < deadline, "the queued version-2 bundle never reached the shard queue"
                time.sleep(1)
            with served.acting("ml-ops"):
                approve(second, DEPLOYMENT.package_group, "Rejected", "versions tests: a defect found")
                revoked = revoke(served.settings.endpoint, second, "a defect found", table, report=lambda line: None)
        finally:
            lambdas.update_event_source_mapping(UUID=mapping["UUID"], Enabled=True)
    assert revoked["revoked"] == deployed["endpoint"] and revoked["quarantined"] == ["revoked-v2"], revoked
    for bundle_id, note in (("revoked-v2", "a defect found"), ("queued-v2", "versions tests: a defect found")):
        assert settle(served.state_machine_arn, bundle_id, 120.0)["status"] == "FAILED"
        uri = served.layout.quarantine_reason(bundle_id)
        reason = json.loads(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
        assert (reason["code"], reason["shard"]) == ("model_revoked", 0), (bundle_id, reason)
        assert f"was rejected ({note})" in reason["message"], reason
    assert served_versions(sagemaker, DEPLOYMENT.endpoint_name) == {}
    # The audit report still passes every check: the revoked bundle was served only while its package was Approved.
    window = Window(since, datetime.now(tz=UTC) + timedelta(seconds=1))
    with served.acting("auditor"):
        after = audit_report.run(
            window, tmp_path / "audit-after", deployment=DEPLOYMENT.prefix, pipeline_name=DEPLOYMENT.pipeline_name
        )
    assert after["ok"], [c for c in after["checks"] if not c["ok"]]


def _scaling_of(endpoint: str) -> tuple[list[Any], list[Any], list[Any]]:
    """The scalable targets, scaling policies and alarms that exist for ``endpoint``, read from their services."""
    scaling, resource = aws.client("application-autoscaling"), f"endpoint/{endpoint}/variant/AllTraffic"
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)
    alarms = aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"{endpoint}-")
    return targets["ScalableTargets"], policies["ScalingPolicies"], alarms["MetricAlarms"]


def test_a_served_version_is_a_stack_and_teardown_deletes_it(local_stack: dict[str, str]) -> None:
    """The version's endpoint, configuration, model, scaling target, both policies and the alarm read from its
    stack's resources, made under the deployment's service role; a redeploy updates the stack in place; ``fhe-deploy
    down`` deletes the stack, and with it every one of those resources."""
    served = deploy_and_serve(STACKS, "versions tests: a version's stack")
    stack = version_stack(STACKS.endpoint_name, 1)
    described = describe_stack(stack)
    assert described is not None and described["StackStatus"] == "CREATE_COMPLETE", described
    assert described.get("RoleARN") == served.outputs["ServedVersionStackRoleArn"]
    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
    assert tags[FAMILY_TAG] == STACKS.endpoint_name and tags["fhe:model-package-arn"] == served.package_arn
    live = {logical: r for logical, r in stack_resources(stack).items()}
    assert {logical: r["ResourceType"] for logical, r in live.items()} == {
        "Model": "AWS::SageMaker::Model",
        "EndpointConfig": "AWS::SageMaker::EndpointConfig",
        "Endpoint": "AWS::SageMaker::Endpoint",
        "ScalableTarget": "AWS::ApplicationAutoScaling::ScalableTarget",
        "BacklogPerInstancePolicy": "AWS::ApplicationAutoScaling::ScalingPolicy",
        "FromZeroPolicy": "AWS::ApplicationAutoScaling::ScalingPolicy",
        "BacklogWithoutCapacityAlarm": "AWS::CloudWatch::Alarm",
        "NoCapacityAlarm": "AWS::CloudWatch::Alarm",  # ML ops' page: no instance could start
    }
    assert all(r["ResourceStatus"].endswith("_COMPLETE") for r in live.values()), live

    def named(logical: str) -> str:  # SageMaker's physical id is its ARN; the name ends it
        return str(live[logical]["PhysicalResourceId"]).rsplit("/", 1)[-1]

    sagemaker = aws.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=named("Endpoint"))
    assert endpoint["EndpointName"] == served.endpoint == stack and endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == named("EndpointConfig")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=named("EndpointConfig"))
    assert config["ProductionVariants"][0]["ModelName"] == named("Model")
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["NotificationConfig"]["SuccessTopic"] == served.outputs["EndpointSuccessTopicArn"]
    model = sagemaker.describe_model(ModelName=named("Model"))
    assert model["PrimaryContainer"]["ModelPackageName"] == served.package_arn
    assert model["ExecutionRoleArn"] == served.outputs["EndpointRoleArn"]
    [target], policies, alarms = _scaling_of(stack)
    named_alarms = {a["AlarmName"]: a for a in alarms}
    alarm = named_alarms[live["BacklogWithoutCapacityAlarm"]["PhysicalResourceId"]]
    paging = named_alarms[f"{stack}-no-capacity"]
    assert paging["AlarmActions"] == [served.outputs["AlarmTopicArn"]] and paging["Statistic"] == "Minimum"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    by_type = {p["PolicyType"]: p for p in policies}
    assert set(by_type) == {"TargetTrackingScaling", "StepScaling"}
    tracking = by_type["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert tracking["ScaleInCooldown"] == 45
    assert alarm["AlarmName"] == live["BacklogWithoutCapacityAlarm"]["PhysicalResourceId"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [by_type["StepScaling"]["PolicyARN"]]

    # A redeploy with new settings updates the same stack: a new configuration, the endpoint updated in place.
    with served.acting("ml-ops"):
        again = deploy_endpoint(
            replace(served.settings.endpoint, max_concurrent_invocations=3), package_arn=served.package_arn
        )
    assert again["stack"] == stack and again["endpoint_config"] != named("EndpointConfig")
    updated = sagemaker.describe_endpoint(EndpointName=stack)
    assert (
        updated["EndpointConfigName"] == again["endpoint_config"]
        and updated["CreationTime"] == endpoint["CreationTime"]
    )
    with pytest.raises(sagemaker.exceptions.ClientError):  # the old configuration went with the update
        sagemaker.describe_endpoint_config(EndpointConfigName=named("EndpointConfig"))

    # fhe-deploy down deletes the version's stack, and so its endpoint, configuration, model, scaling and alarm.
    result = down(STACKS, delete_data=True, report=lambda line: None)
    assert stack in result["deleted"], result
    assert describe_stack(stack) is None
    assert served_versions(sagemaker, STACKS.endpoint_name, serving_only=False) == {}
    with pytest.raises(sagemaker.exceptions.ClientError):
        sagemaker.describe_model(ModelName=model["ModelName"])
    assert _scaling_of(stack) == ([], [], [])
