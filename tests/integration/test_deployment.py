"""fhe-deploy on the local stack: both stacks hold exactly what the dry run listed, the buckets and roles are as
the policy tests read them, the retraining schedule starts the pipeline and a round is skipped while a run is
going, and teardown keeps the data unless told otherwise."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from common import aws
from common.artifacts import PUBLISHED_ARTIFACTS
from common.settings import from_outputs
from common.stack_outputs import describe_stack
from infrastructure import deployment as deploy
from infrastructure import owners
from infrastructure.templates import BOOTSTRAP, DATA, PRODUCT
from local.people import ACTORS, acting_as, ensure_people, owner_actor
from pipelines import runs
from pipelines.approval import publish_client_artifacts, withdraw_client_artifacts
from tests.declared import declared_resources

pytestmark = pytest.mark.integration

DEPLOYMENT = deploy.Deployment(
    prefix="fhe-deploy-test",
    endpoint_name="fhe-deploy-test",
    pipeline_name="fhe-deploy-test-training",
    package_group="fhe-deploy-tests",
    retraining_schedule="rate(1 minute)",  # the shortest cadence, so the test sees it fire
    function_concurrency=2,
)
OWNER = "clinic-a"
SCHEDULED_TIMEOUT = 200.0  # the scheduler ticks every 10 s; the first round is due a minute after creation


@pytest.fixture(scope="module")
def deployed(local_stack: dict[str, str]) -> Iterator[dict[str, str]]:
    outputs = deploy.up(DEPLOYMENT, report=lambda line: None)
    owner = owners.add(DEPLOYMENT.prefix, OWNER, report=lambda line: None)
    yield {**outputs, "OwnerRoleArn": owner["OwnerRoleArn"]}
    deploy.down(DEPLOYMENT, delete_data=True, report=lambda line: None)


def _executions() -> list[dict[str, Any]]:
    response = aws.client("sagemaker").list_pipeline_executions(PipelineName=DEPLOYMENT.pipeline_name)
    return list(response["PipelineExecutionSummaries"])


def _wait_ended(arn: str, timeout: float = 600.0) -> str:
    sagemaker, deadline = aws.client("sagemaker"), time.monotonic() + timeout
    while (status := sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"]) in (
        "Executing",
        "Stopping",
    ):
        assert time.monotonic() < deadline, f"{arn} still {status}"
        time.sleep(2.0)
    return str(status)


def test_the_stacks_hold_every_resource_their_templates_declare(deployed: dict[str, str]) -> None:
    cloudformation = aws.client("cloudformation")
    for name, template in (
        (DEPLOYMENT.bootstrap_stack, BOOTSTRAP),
        (DEPLOYMENT.data_stack, DATA),
        (DEPLOYMENT.product_stack, PRODUCT),
    ):
        pages = cloudformation.get_paginator("list_stack_resources").paginate(StackName=name)
        live = {r["LogicalResourceId"]: r for page in pages for r in page["StackResourceSummaries"]}
        assert {n: r["ResourceType"] for n, r in live.items()} == declared_resources(template)
        assert all(r["ResourceStatus"].endswith("_COMPLETE") for r in live.values())
    assert deployed["PipelineArn"].endswith(f":pipeline/{DEPLOYMENT.pipeline_name}")
    pipeline = aws.client("sagemaker").describe_pipeline(PipelineName=DEPLOYMENT.pipeline_name)
    assert pipeline["RoleArn"] == deployed["ModelCreatorRoleArn"]
    definition = json.loads(pipeline["PipelineDefinition"])
    images = {step["Arguments"].get("AppSpecification", {}).get("ImageUri") for step in definition["Steps"]}
    assert deployed["TrainingImageUri"] in images


def test_every_bucket_is_encrypted_under_the_key_and_refuses_plain_http(deployed: dict[str, str]) -> None:
    s3 = aws.client("s3")
    buckets = [deployed[k] for k in ("ArtifactBucketName", "DataBucketName", "ModelBucketName", "BundleBucketName")]
    for bucket in buckets:
        [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": deployed["KeyArn"],
        }
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        assert s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        statements = {s["Sid"]: s for s in json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]}
        assert statements["DenyInsecureTransport"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert {"DenyPutsNotUnderTheKey", "DenyPutsUnderAnotherKey"} <= set(statements)
    # An object written without encryption headers is stored under the deployment's key.
    s3.put_object(Bucket=deployed["BundleBucketName"], Key="inbox/probe/object", Body=b"ciphertext stand-in")
    head = s3.head_object(Bucket=deployed["BundleBucketName"], Key="inbox/probe/object")
    assert head.get("ServerSideEncryption") == "aws:kms"
    assert head.get("SSEKMSKeyId") == deployed["KeyArn"]


def _decisions(role_arn: str, action: str, resources: list[str]) -> dict[str, str]:
    iam = aws.client("iam")
    return {
        resource: iam.simulate_principal_policy(
            PolicySourceArn=role_arn, ActionNames=[action], ResourceArns=[resource]
        )["EvaluationResults"][0]["EvalDecision"]
        for resource in resources
    }


def test_the_deployed_roles_grant_what_the_policy_tests_expect(deployed: dict[str, str]) -> None:
    """The same questions as tests/unit/test_policies.py, asked of IAM about the roles the stack created."""
    data, models, bundles = (
        f"arn:aws:s3:::{deployed[k]}" for k in ("DataBucketName", "ModelBucketName", "BundleBucketName")
    )
    run = "pipelines/fhe-deploy-test-training/e1"
    published = f"{models}/published/{DEPLOYMENT.package_group}/1/client.zip"  # what an approval published
    client, endpoint = deployed["OwnerRoleArn"], deployed["EndpointRoleArn"]
    assert _decisions(client, "s3:GetObject", [f"{bundles}/outbox/{OWNER}/b/manifest.json", published]) == {
        f"{bundles}/outbox/{OWNER}/b/manifest.json": "allowed",
        published: "allowed",
    }
    refused = [
        f"{models}/{run}/client/client.zip",  # the run's own copy, approved or not
        f"{models}/{run}/client/preprocessing.json",
        f"{data}/datasets/d.csv",
        f"{models}/{run}/model/j/output/model.tar.gz",
        f"{models}/{run}/model/server.zip",
        f"{bundles}/outbox/clinic-b/b/manifest.json",
    ]
    assert set(_decisions(client, "s3:GetObject", refused).values()) == {"implicitDeny"}
    assert _decisions(client, "s3:PutObject", [f"{bundles}/inbox/{OWNER}/b/manifest.json"]) == {
        f"{bundles}/inbox/{OWNER}/b/manifest.json": "allowed"
    }
    inbox = [f"{bundles}/inbox/{OWNER}/b/s.fhe", f"{bundles}/inbox/{OWNER}/keys/k.ekey"]
    assert set(_decisions(endpoint, "s3:PutObject", inbox).values()) == {"implicitDeny"}
    result = [f"{bundles}/outbox/{OWNER}/b/shards/00000.out"]
    assert set(_decisions(endpoint, "s3:PutObject", result).values()) == {"allowed"}
    assert set(_decisions(endpoint, "s3:GetObject", [f"{data}/datasets/d.csv"]).values()) == {"implicitDeny"}
    creator = deployed["EndpointCreatorRoleArn"]  # the approval's copy from the run to the published folder
    assert set(_decisions(creator, "s3:GetObject", [f"{models}/{run}/client/client.zip"]).values()) == {"allowed"}
    assert set(_decisions(creator, "s3:PutObject", [published]).values()) == {"allowed"}
    assert set(_decisions(creator, "s3:PutObject", [f"{models}/{run}/client/client.zip"]).values()) == {"implicitDeny"}
    model_creator = deployed["ModelCreatorRoleArn"]
    assert set(_decisions(model_creator, "s3:GetObject", [f"{data}/datasets/d.csv"]).values()) == {"allowed"}


def _refused(call: Any, **kwargs: Any) -> str:
    """The error code of a call that must fail."""
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return str(raised.value.response["Error"]["Code"])


def test_the_local_stack_enforces_each_roles_policy_over_tls_only(deployed: dict[str, str]) -> None:
    """Not the simulator: the roles' own sessions calling the local AWS and the local SageMaker, which refuse what
    the policies do not grant (AUTH=true), and serve nothing over plain HTTP."""
    for url in (os.environ["AWS_ENDPOINT_URL"], os.environ["AWS_ENDPOINT_URL_SAGEMAKER"]):
        plain = url.replace("https://", "http://", 1) + "/"
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(plain, timeout=5).read()  # noqa: S310 - loopback
    bundles, models = deployed["BundleBucketName"], deployed["ModelBucketName"]
    endpoint = aws.role_session(deployed["EndpointRoleArn"], "SageMaker")
    s3 = endpoint.client("s3")
    s3.put_object(Bucket=bundles, Key=f"outbox/{OWNER}/probe/shards/00000.out", Body=b"stand-in")  # granted
    for key in (f"inbox/{OWNER}/probe/manifest.json", f"inbox/{OWNER}/keys/{'a' * 64}.ekey"):
        assert _refused(s3.put_object, Bucket=bundles, Key=key, Body=b"{}") == "AccessDenied", key
    assert _refused(endpoint.client("sagemaker").list_endpoints) == "AccessDeniedException"
    client = aws.role_session(deployed["OwnerRoleArn"], "owner")
    run = f"pipelines/{DEPLOYMENT.pipeline_name}/e1"
    assert _refused(client.client("s3").get_object, Bucket=models, Key=f"{run}/model/server.zip") == "AccessDenied"
    data = deployed["DataBucketName"]
    assert _refused(client.client("s3").get_object, Bucket=data, Key="datasets/d/d.csv") == "AccessDenied"
    assert _refused(client.client("sagemaker").delete_endpoint, EndpointName="any-v1") == "AccessDeniedException"
    # Not asked here: a put under another KMS key. The bucket policy refuses it on AWS, but the local AWS does not
    # evaluate the encryption condition keys, so tests/unit/test_policies.py keeps answering that one.
    auditor = aws.role_session(deployed["AuditorRoleArn"], "auditor").client("s3")
    assert auditor.list_objects_v2(Bucket=bundles, Prefix="outbox/")["KeyCount"] >= 1  # reads the sources
    for key in (f"outbox/{OWNER}/probe/manifest.json", f"quarantine/{OWNER}/probe/reason.json"):
        assert _refused(auditor.put_object, Bucket=bundles, Key=key, Body=b"{}") == "AccessDenied", key


def test_ml_ops_publish_an_approved_packages_client_artifacts_and_only_those_reach_the_owner(
    deployed: dict[str, str],
) -> None:
    """The approval's copy under ML ops' own role, on the local AWS that enforces IAM and KMS: from a run's client
    folder to published/<group>/<version>/, which the owner reads, while the run's own copy stays refused to it;
    the rejection's withdrawal leaves the owner nothing."""
    models, run = deployed["ModelBucketName"], f"pipelines/{DEPLOYMENT.pipeline_name}/e-publish/client"
    admin = aws.client("s3")
    for name in PUBLISHED_ARTIFACTS:
        admin.put_object(Bucket=models, Key=f"{run}/{name}", Body=f"{name} stand-in".encode())
    package = {
        "ModelPackageArn": f"arn:aws:sagemaker:{aws.region()}:000000000000:model-package/{DEPLOYMENT.package_group}/7",
        "CustomerMetadataProperties": {"client_artifacts": f"s3://{models}/{run}"},
    }
    ml_ops = aws.role_session(deployed["EndpointCreatorRoleArn"], "ml-ops").client("s3")
    owner = aws.role_session(deployed["OwnerRoleArn"], "owner").client("s3")
    published = publish_client_artifacts(ml_ops, package)
    assert published.key == f"published/{DEPLOYMENT.package_group}/7"
    for name in PUBLISHED_ARTIFACTS:
        body = owner.get_object(Bucket=models, Key=published.join(name).key)["Body"].read()
        assert body == f"{name} stand-in".encode(), name
        assert _refused(owner.get_object, Bucket=models, Key=f"{run}/{name}") == "AccessDenied", name
    withdraw_client_artifacts(ml_ops, package)
    for name in PUBLISHED_ARTIFACTS:
        assert _refused(owner.get_object, Bucket=models, Key=published.join(name).key) in {"AccessDenied", "NoSuchKey"}


def test_each_actor_works_under_its_own_role_and_no_other(deployed: dict[str, str]) -> None:
    """The deployment's people (local/people.py): each actor's profile assumes its role, and its identity may
    assume nothing else: a role whose trust policy does not allow it is refused, naming sts:AssumeRole."""
    people = ensure_people(DEPLOYMENT.prefix, deployed)
    roles = {
        **{actor: deployed[output] for actor, output in ACTORS.items()},
        owner_actor(OWNER): deployed["OwnerRoleArn"],
    }
    assert set(people.actors) == set(roles)
    for actor, role_arn in roles.items():
        with acting_as(people, actor):
            arn = aws.client("sts").get_caller_identity()["Arn"]
            role = role_arn.rsplit("/", 1)[1]
            assert arn.startswith(f"arn:aws:sts::000000000000:assumed-role/{role}/"), (actor, arn)
            assert "AWS_ACCESS_KEY_ID" not in os.environ
    with acting_as(people, owner_actor(OWNER)):  # the people's own identity, through their profile files
        source = boto3.Session(profile_name=people.source_profile)
        with pytest.raises(ClientError, match=r"not authorized to perform: sts:AssumeRole"):
            source.client("sts").assume_role(RoleArn=deployed["EndpointRoleArn"], RoleSessionName="intruder")
    # An identity allowed to assume any role still cannot take one whose trust policy names only SageMaker.
    iam = aws.client("iam")
    iam.create_user(UserName="fhe-deploy-test-anyone")
    anything = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="fhe-deploy-test-anyone", PolicyName="any", PolicyDocument=json.dumps(anything))
    key = iam.create_access_key(UserName="fhe-deploy-test-anyone")["AccessKey"]
    anyone = boto3.Session(
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name=aws.region()
    )
    with pytest.raises(ClientError, match=r"sts:AssumeRole") as refused:
        anyone.client("sts").assume_role(RoleArn=deployed["EndpointRoleArn"], RoleSessionName="intruder")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    anyone.client("sts").assume_role(RoleArn=deployed["OwnerRoleArn"], RoleSessionName="owner")  # trusted: the account


def test_the_schedule_starts_the_pipeline(deployed: dict[str, str]) -> None:
    schedule = aws.client("scheduler").get_schedule(Name=deployed["RetrainingScheduleName"])
    assert (schedule["ScheduleExpression"], schedule["State"]) == ("rate(1 minute)", "ENABLED")
    assert schedule["Target"]["Arn"].endswith(":function:fhe-deploy-test-retrain")
    deadline = time.monotonic() + SCHEDULED_TIMEOUT
    while not (
        scheduled := [e for e in _executions() if e.get("PipelineExecutionDisplayName", "").startswith("schedule")]
    ):
        assert time.monotonic() < deadline, f"no scheduled execution after {SCHEDULED_TIMEOUT} s"
        time.sleep(5.0)
    assert scheduled[0]["PipelineExecutionDisplayName"] == "schedule-fhe-deploy-test-retraining"
    for execution in scheduled:
        _wait_ended(execution["PipelineExecutionArn"])


def test_a_round_is_skipped_while_a_run_is_going(deployed: dict[str, str]) -> None:
    settings = from_outputs(deployed, region=aws.region()).pipeline
    runs.stage_dataset(settings, "breast_cancer")
    running = runs.start(settings, [{"Name": "ModelPackageGroupName", "Value": DEPLOYMENT.package_group}])
    response = aws.client("lambda").invoke(
        FunctionName="fhe-deploy-test-retrain",
        Payload=json.dumps({"pipeline_name": DEPLOYMENT.pipeline_name, "reason": "test"}).encode(),
    )
    answer = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, answer
    assert answer["started"] is None and running in answer["skipped_because"], answer
    run = runs.outcome(running) if _wait_ended(running) != "Succeeded" else {"status": "Succeeded"}
    assert run["status"] == "Succeeded", run
    # A request for another pipeline is refused by name, not attempted.
    refused = aws.client("lambda").invoke(
        FunctionName="fhe-deploy-test-retrain", Payload=json.dumps({"pipeline_name": "someone-elses"}).encode()
    )
    assert refused.get("FunctionError") and "is not this deployment" in refused["Payload"].read().decode()


def test_teardown_keeps_the_data_unless_asked(deployed: dict[str, str]) -> None:
    s3 = aws.client("s3")
    s3.put_object(Bucket=deployed["DataBucketName"], Key="datasets/kept.csv", Body=b"a,b\n1,2\n")
    # (A served version's stack and its deletion by teardown: tests/integration/test_versions.py.)
    result = deploy.down(DEPLOYMENT, report=lambda line: None)
    assert result == {
        "deleted": [f"{DEPLOYMENT.prefix}-owner-{OWNER}", DEPLOYMENT.product_stack],  # the owners' roles go too
        "kept": [DEPLOYMENT.bootstrap_stack, DEPLOYMENT.data_stack],
    }
    assert describe_stack(DEPLOYMENT.product_stack) is None
    assert s3.get_object(Bucket=deployed["DataBucketName"], Key="datasets/kept.csv")["Body"].read() == b"a,b\n1,2\n"
    sagemaker = aws.client("sagemaker")
    with pytest.raises(sagemaker.exceptions.ResourceNotFound):
        sagemaker.describe_pipeline(PipelineName=DEPLOYMENT.pipeline_name)
    # A later up finds it all again.
    again = deploy.up(DEPLOYMENT, report=lambda line: None)
    assert again["DataBucketName"] == deployed["DataBucketName"] and again["KeyArn"] == deployed["KeyArn"]
    assert s3.get_object(Bucket=deployed["DataBucketName"], Key="datasets/kept.csv")["Body"].read() == b"a,b\n1,2\n"
    result = deploy.down(DEPLOYMENT, delete_data=True, report=lambda line: None)
    assert result["kept"] == [] and deployed["DataBucketName"] in result["deleted"]
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert not any(name.startswith(f"{DEPLOYMENT.prefix}-") for name in names), names
    assert all(describe_stack(s) is None for s in (DEPLOYMENT.bootstrap_stack, DEPLOYMENT.data_stack))
    key = aws.client("kms").describe_key(KeyId=deployed["KeyArn"])["KeyMetadata"]
    assert key["KeyState"] == "PendingDeletion"
