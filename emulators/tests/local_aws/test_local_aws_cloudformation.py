"""The local AWS's CloudFormation as AWS runs it: a served version's stack (model, endpoint configuration, endpoint,
scalable target, both kinds of scaling policy, alarm) made in the local SageMaker under the stack's service role,
updated and deleted; the service role's checks; the properties ministack ignored; a SAM template.

The local AWS runs as the development stack runs it (``aws_emulators.local_aws.launch``: ministack's own venv,
loopback, TLS, IAM enforced) beside the local SageMaker started from its own entry point, whose endpoints serve a
small stand-in container (``serving_container.py``). Both are stopped after the module."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError
from local_aws_fixtures import ACCOUNT, REGION, LocalAws

pytestmark = pytest.mark.integration

SERVING_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/stand-in-serving:1"
BUCKET = "served-models"


# --------------------------------------------------------------------------------------------------- the account


def _trust(service: str) -> str:
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def _role(iam: Any, name: str, trusted: str, statements: list[dict[str, Any]]) -> str:
    arn = str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=_trust(trusted))["Role"]["Arn"])
    policy = {"Version": "2012-10-17", "Statement": statements}
    iam.put_role_policy(RoleName=name, PolicyName="permissions", PolicyDocument=json.dumps(policy))
    return arn


@dataclass
class Account:
    model_role: str
    deployer: str  # the served versions' service role: trusts CloudFormation
    untrusted: str  # the same permissions, trusting Lambda only
    no_sagemaker: str  # trusts CloudFormation, may not create SageMaker resources
    model_data: str
    topic: str


@pytest.fixture(scope="module")
def account(local_aws: LocalAws) -> Account:
    iam, s3 = local_aws.client("iam"), local_aws.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.json")
        payload = b'{"weights": [1, 2, 3]}'
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    s3.put_object(Bucket=BUCKET, Key="v1/model.tar.gz", Body=archive.getvalue())
    model_role = _role(
        iam, "served-model", "sagemaker.amazonaws.com",
        [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": f"arn:aws:s3:::{BUCKET}/*"}],
    )  # fmt: skip
    deploying: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": ["sagemaker:*", "application-autoscaling:*", "cloudwatch:*"], "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": model_role,
            "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        },
    ]
    no_sagemaker = [{"Effect": "Allow", "Action": ["application-autoscaling:*", "cloudwatch:*"], "Resource": "*"}]
    topic = local_aws.client("sns").create_topic(Name="served-version-events")["TopicArn"]
    return Account(
        model_role=model_role,
        deployer=_role(iam, "served-version-deployer", "cloudformation.amazonaws.com", deploying),
        untrusted=_role(iam, "not-for-cloudformation", "lambda.amazonaws.com", deploying),
        no_sagemaker=_role(iam, "deployer-without-sagemaker", "cloudformation.amazonaws.com", no_sagemaker),
        model_data=f"s3://{BUCKET}/v1/model.tar.gz",
        topic=topic,
    )


def _settled(cloudformation: Any, name: str) -> dict[str, Any]:
    """The stack once its operation has ended."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return dict(stack)
        time.sleep(0.5)
    raise AssertionError(f"stack {name} is still {stack['StackStatus']}")


def _failures(cloudformation: Any, name: str) -> list[str]:
    events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    failed = [e for e in events if "FAILED" in e["ResourceStatus"]]
    return [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}" for e in failed]


def _resources(cloudformation: Any, name: str) -> dict[str, dict[str, Any]]:
    summaries = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r for r in summaries}


# --------------------------------------------------------------------------------------------- a served version

SERVED_VERSION = {
    "AWSTemplateFormatVersion": "2010-09-09",
    "Parameters": {
        "Version": {"Type": "String"},
        "ModelDataUrl": {"Type": "String"},
        "ModelRole": {"Type": "String"},
        "Topic": {"Type": "String"},
        "InstanceCount": {"Type": "Number", "Default": 1},
    },
    "Resources": {
        "Model": {
            "Type": "AWS::SageMaker::Model",
            "Properties": {
                "ExecutionRoleArn": {"Ref": "ModelRole"},
                "PrimaryContainer": {
                    "Image": SERVING_IMAGE,
                    "ModelDataUrl": {"Ref": "ModelDataUrl"},
                    "Environment": {"MODEL_VERSION": {"Ref": "Version"}},
                },
            },
        },
        "EndpointConfig": {
            "Type": "AWS::SageMaker::EndpointConfig",
            "Properties": {
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": {"Fn::GetAtt": ["Model", "ModelName"]},
                        "InstanceType": "ml.m5.large",
                        "InitialInstanceCount": {"Ref": "InstanceCount"},
                    }
                ],
                "AsyncInferenceConfig": {
                    "OutputConfig": {
                        "S3OutputPath": f"s3://{BUCKET}/results",
                        "S3FailurePath": f"s3://{BUCKET}/failures",
                        "NotificationConfig": {"SuccessTopic": {"Ref": "Topic"}, "ErrorTopic": {"Ref": "Topic"}},
                    },
                    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
                },
            },
        },
        "Endpoint": {
            "Type": "AWS::SageMaker::Endpoint",
            "Properties": {
                "EndpointName": {"Fn::Sub": "${AWS::StackName}"},
                "EndpointConfigName": {"Fn::GetAtt": ["EndpointConfig", "EndpointConfigName"]},
            },
        },
        "ScalableTarget": {
            "Type": "AWS::ApplicationAutoScaling::ScalableTarget",
            "Properties": {
                "ServiceNamespace": "sagemaker",
                "ResourceId": {"Fn::Sub": "endpoint/${Endpoint.EndpointName}/variant/AllTraffic"},
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                "MinCapacity": 0,
                "MaxCapacity": 2,
            },
        },
        "BacklogPolicy": {
            "Type": "AWS::ApplicationAutoScaling::ScalingPolicy",
            "Properties": {
                "PolicyName": {"Fn::Sub": "${AWS::StackName}-backlog"},
                "PolicyType": "TargetTrackingScaling",
                "ScalingTargetId": {"Ref": "ScalableTarget"},
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue": 2.0,
                    "ScaleInCooldown": 300,
                    "ScaleOutCooldown": 60,
                    "CustomizedMetricSpecification": {
                        "MetricName": "ApproximateBacklogSizePerInstance",
                        "Namespace": "AWS/SageMaker",
                        "Dimensions": [{"Name": "EndpointName", "Value": {"Fn::GetAtt": ["Endpoint", "EndpointName"]}}],
                        "Statistic": "Average",
                    },
                },
            },
        },
        "WakeUpPolicy": {
            "Type": "AWS::ApplicationAutoScaling::ScalingPolicy",
            "Properties": {
                "PolicyName": {"Fn::Sub": "${AWS::StackName}-wake-up"},
                "PolicyType": "StepScaling",
                "ScalingTargetId": {"Ref": "ScalableTarget"},
                "StepScalingPolicyConfiguration": {
                    "AdjustmentType": "ChangeInCapacity",
                    "Cooldown": 60,
                    "MetricAggregationType": "Maximum",
                    "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
                },
            },
        },
        "WakeUpAlarm": {
            "Type": "AWS::CloudWatch::Alarm",
            "Properties": {
                "AlarmName": {"Fn::Sub": "${AWS::StackName}-has-backlog-without-capacity"},
                "Namespace": "AWS/SageMaker",
                "MetricName": "HasBacklogWithoutCapacity",
                "Dimensions": [{"Name": "EndpointName", "Value": {"Fn::GetAtt": ["Endpoint", "EndpointName"]}}],
                "Statistic": "Maximum",
                "Period": 60,
                "EvaluationPeriods": 1,
                "Threshold": 1,
                "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                "AlarmActions": [{"Ref": "WakeUpPolicy"}],
            },
        },
    },
    "Outputs": {
        "EndpointName": {"Value": {"Fn::GetAtt": ["Endpoint", "EndpointName"]}},
        "EndpointConfigName": {"Value": {"Fn::GetAtt": ["EndpointConfig", "EndpointConfigName"]}},
        "ModelName": {"Value": {"Fn::GetAtt": ["Model", "ModelName"]}},
    },
}


def _parameters(account: Account, version: str) -> list[dict[str, str]]:
    values = {"Version": version, "ModelDataUrl": account.model_data, "ModelRole": account.model_role}
    values["Topic"] = account.topic
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _gone(call: Any, **names: str) -> bool:
    try:
        call(**names)
    except ClientError as error:
        return "Could not find" in str(error)
    return False


@pytest.fixture(scope="module")
def served_version(local_aws: LocalAws, account: Account) -> dict[str, Any]:
    """A served version's stack, created under its service role."""
    cloudformation = local_aws.client("cloudformation")
    cloudformation.create_stack(
        StackName="served-v1",
        TemplateBody=json.dumps(SERVED_VERSION),
        Parameters=_parameters(account, "1"),
        RoleARN=account.deployer,
    )
    stack = _settled(cloudformation, "served-v1")
    assert stack["StackStatus"] == "CREATE_COMPLETE", _failures(cloudformation, "served-v1")
    return stack


def test_a_served_versions_stack_makes_its_resources_in_the_local_sagemaker(
    local_aws: LocalAws, account: Account, served_version: dict[str, Any]
) -> None:
    cloudformation, sagemaker = local_aws.client("cloudformation"), local_aws.client("sagemaker")
    scaling, cloudwatch = local_aws.client("application-autoscaling"), local_aws.client("cloudwatch")
    resources = _resources(cloudformation, "served-v1")
    assert {r["ResourceStatus"] for r in resources.values()} == {"CREATE_COMPLETE"}
    outputs = _outputs(served_version)
    assert served_version["RoleARN"] == account.deployer

    endpoint = sagemaker.describe_endpoint(EndpointName="served-v1")
    assert endpoint["EndpointStatus"] == "InService"
    assert resources["Endpoint"]["PhysicalResourceId"] == endpoint["EndpointArn"]  # Ref: the ARN
    assert endpoint["EndpointConfigName"] == outputs["EndpointConfigName"]
    config = sagemaker.describe_endpoint_config(EndpointConfigName=outputs["EndpointConfigName"])
    assert resources["EndpointConfig"]["PhysicalResourceId"] == config["EndpointConfigArn"]
    variant = config["ProductionVariants"][0]
    assert (variant["ModelName"], variant["InitialInstanceCount"]) == (outputs["ModelName"], 1)
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert (output["S3OutputPath"], output["S3FailurePath"]) == (f"s3://{BUCKET}/results", f"s3://{BUCKET}/failures")
    assert output["NotificationConfig"] == {"SuccessTopic": account.topic, "ErrorTopic": account.topic}
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 1}
    model = sagemaker.describe_model(ModelName=outputs["ModelName"])
    assert resources["Model"]["PhysicalResourceId"] == model["ModelArn"]
    assert model["ExecutionRoleArn"] == account.model_role
    assert model["PrimaryContainer"]["Environment"] == {"MODEL_VERSION": "1"}

    resource_id = "endpoint/served-v1/variant/AllTraffic"
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])
    [target] = targets["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    target_ref = f"{resource_id}|sagemaker:variant:DesiredInstanceCount|sagemaker"
    assert resources["ScalableTarget"]["PhysicalResourceId"] == target_ref
    policies = {
        p["PolicyName"]: p
        for p in scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)[
            "ScalingPolicies"
        ]
    }
    backlog, wake_up = policies["served-v1-backlog"], policies["served-v1-wake-up"]
    assert backlog["PolicyType"] == "TargetTrackingScaling"
    metric = backlog["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert wake_up["PolicyType"] == "StepScaling"
    assert wake_up["StepScalingPolicyConfiguration"]["StepAdjustments"][0]["ScalingAdjustment"] == 1
    assert resources["BacklogPolicy"]["PhysicalResourceId"] == backlog["PolicyARN"]
    assert resources["WakeUpPolicy"]["PhysicalResourceId"] == wake_up["PolicyARN"]
    [alarm] = cloudwatch.describe_alarms(AlarmNames=["served-v1-has-backlog-without-capacity"])["MetricAlarms"]
    assert alarm["AlarmActions"] == [wake_up["PolicyARN"]]


def test_an_update_replaces_the_configuration_and_moves_the_endpoint_to_it(
    local_aws: LocalAws, account: Account, served_version: dict[str, Any]
) -> None:
    """A new model version: the model and its configuration are replaced (create-only properties changed), the
    endpoint is updated in place to the new configuration, and the old ones are deleted. No RoleARN this time:
    the stack keeps its service role."""
    cloudformation, sagemaker = local_aws.client("cloudformation"), local_aws.client("sagemaker")
    before = _outputs(served_version)
    endpoint_arn = sagemaker.describe_endpoint(EndpointName="served-v1")["EndpointArn"]
    cloudformation.update_stack(StackName="served-v1", UsePreviousTemplate=True, Parameters=_parameters(account, "2"))
    stack = _settled(cloudformation, "served-v1")
    assert stack["StackStatus"] == "UPDATE_COMPLETE", _failures(cloudformation, "served-v1")
    assert stack["RoleARN"] == account.deployer
    after = _outputs(stack)
    assert after["ModelName"] != before["ModelName"]
    assert after["EndpointConfigName"] != before["EndpointConfigName"]
    endpoint = sagemaker.describe_endpoint(EndpointName="served-v1")
    assert (endpoint["EndpointArn"], endpoint["EndpointStatus"]) == (endpoint_arn, "InService")
    assert endpoint["EndpointConfigName"] == after["EndpointConfigName"]
    assert sagemaker.describe_model(ModelName=after["ModelName"])["PrimaryContainer"]["Environment"] == {
        "MODEL_VERSION": "2"
    }
    assert _gone(sagemaker.describe_endpoint_config, EndpointConfigName=before["EndpointConfigName"])
    assert _gone(sagemaker.describe_model, ModelName=before["ModelName"])


def test_deleting_the_stack_removes_every_resource_of_the_version(
    local_aws: LocalAws, served_version: dict[str, Any]
) -> None:
    cloudformation, sagemaker = local_aws.client("cloudformation"), local_aws.client("sagemaker")
    scaling, cloudwatch = local_aws.client("application-autoscaling"), local_aws.client("cloudwatch")
    outputs = _outputs(cloudformation.describe_stacks(StackName="served-v1")["Stacks"][0])
    stack_id = served_version["StackId"]
    cloudformation.delete_stack(StackName="served-v1")
    assert _settled(cloudformation, stack_id)["StackStatus"] == "DELETE_COMPLETE", _failures(cloudformation, stack_id)
    assert _gone(sagemaker.describe_endpoint, EndpointName="served-v1")
    assert _gone(sagemaker.describe_endpoint_config, EndpointConfigName=outputs["EndpointConfigName"])
    assert _gone(sagemaker.describe_model, ModelName=outputs["ModelName"])
    resource_id = "endpoint/served-v1/variant/AllTraffic"
    assert (
        scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource_id])["ScalableTargets"]
        == []
    )
    assert (
        scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)["ScalingPolicies"] == []
    )
    assert cloudwatch.describe_alarms(AlarmNames=["served-v1-has-backlog-without-capacity"])["MetricAlarms"] == []


def test_a_role_that_does_not_trust_cloudformation_is_refused(local_aws: LocalAws, account: Account) -> None:
    cloudformation = local_aws.client("cloudformation")
    with pytest.raises(ClientError, match="is invalid or cannot be assumed") as refused:
        cloudformation.create_stack(
            StackName="served-untrusted",
            TemplateBody=json.dumps(SERVED_VERSION),
            Parameters=_parameters(account, "1"),
            RoleARN=account.untrusted,
        )
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(ClientError, match=r"does not exist|not found"):
        cloudformation.describe_stacks(StackName="served-untrusted")


def test_a_caller_who_may_not_pass_the_role_is_refused_and_without_one_acts_as_itself(
    local_aws: LocalAws, account: Account
) -> None:
    """Refused before anything starts when the caller may not pass the service role to CloudFormation; without a
    service role the stack's resources are made with the caller's own credentials, so what it may not do fails."""
    iam = local_aws.client("iam")
    iam.create_user(UserName="releaser-without-pass-role")
    allowed = {"Effect": "Allow", "Action": "cloudformation:*", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [allowed]}
    iam.put_user_policy(UserName="releaser-without-pass-role", PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="releaser-without-pass-role")["AccessKey"]
    cloudformation = local_aws.client(
        "cloudformation", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"]
    )
    with pytest.raises(ClientError, match="not authorized to perform: iam:PassRole") as refused:
        cloudformation.create_stack(
            StackName="served-not-passed",
            TemplateBody=json.dumps(SERVED_VERSION),
            Parameters=_parameters(account, "1"),
            RoleARN=account.deployer,
        )
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    cloudformation.create_stack(
        StackName="served-as-caller",
        TemplateBody=json.dumps(SERVED_VERSION),
        Parameters=_parameters(account, "1"),
        OnFailure="DO_NOTHING",
    )
    assert _settled(cloudformation, "served-as-caller")["StackStatus"] == "CREATE_FAILED"
    failures = _failures(cloudformation, "served-as-caller")
    assert any(f.startswith("Model:") and "releaser-without-pass-role" in f for f in failures), failures
    cloudformation.delete_stack(StackName="served-as-caller")


def test_the_local_sagemaker_decides_with_the_service_roles_own_permissions(
    local_aws: LocalAws, account: Account
) -> None:
    """The resources are made with the role's credentials, so IAM refuses what the role may not do."""
    cloudformation = local_aws.client("cloudformation")
    cloudformation.create_stack(
        StackName="served-denied",
        TemplateBody=json.dumps(SERVED_VERSION),
        Parameters=_parameters(account, "1"),
        RoleARN=account.no_sagemaker,
        OnFailure="DO_NOTHING",
    )
    stack = _settled(cloudformation, "served-denied")
    assert stack["StackStatus"] == "CREATE_FAILED"
    failures = _failures(cloudformation, "served-denied")
    assert any(f.startswith("Model:") and "sagemaker:CreateModel" in f for f in failures), failures
    cloudformation.delete_stack(StackName="served-denied")


# ------------------------------------------------------------------------------------ properties ministack ignored


def _function_zip() -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", "def handler(event, context):\n    return event\n")
    return archive.getvalue()


def _lambda_role(local_aws: LocalAws, name: str) -> str:
    return _role(
        local_aws.client("iam"), name, "lambda.amazonaws.com",
        [{"Effect": "Allow", "Action": "logs:*", "Resource": "*"}],
    )  # fmt: skip


def _settings_template(concurrency: int, lifecycle: bool, role: str) -> str:
    bucket: dict[str, Any] = {
        "BucketName": "settings-applied",
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {
                    "ServerSideEncryptionByDefault": {
                        "SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/data",
                    },
                    "BucketKeyEnabled": True,
                }
            ]
        },
    }
    if lifecycle:
        bucket["LifecycleConfiguration"] = {
            "Rules": [
                {
                    "Id": "expire-replaced",
                    "Status": "Enabled",
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 365},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
                }
            ]
        }
    function = {
        "FunctionName": "settings-applied",
        "Runtime": "python3.12",
        "Handler": "app.handler",
        "Role": role,
        "Code": {"S3Bucket": BUCKET, "S3Key": "code/app.zip"},
        "ReservedConcurrentExecutions": concurrency,
    }
    resources = {
        "Bucket": {"Type": "AWS::S3::Bucket", "Properties": bucket},
        "Function": {"Type": "AWS::Lambda::Function", "Properties": function},
    }
    return json.dumps({"Resources": resources})


def test_reserved_concurrency_and_bucket_settings_are_applied_from_the_template(
    local_aws: LocalAws, account: Account
) -> None:
    cloudformation, s3, lambdas = (local_aws.client(s) for s in ("cloudformation", "s3", "lambda"))
    s3.put_object(Bucket=BUCKET, Key="code/app.zip", Body=_function_zip())
    role = _lambda_role(local_aws, "settings-function")
    cloudformation.create_stack(StackName="settings", TemplateBody=_settings_template(3, True, role))
    status = _settled(cloudformation, "settings")["StackStatus"]
    assert status == "CREATE_COMPLETE", _failures(cloudformation, "settings")
    assert lambdas.get_function_concurrency(FunctionName="settings-applied")["ReservedConcurrentExecutions"] == 3
    [rule] = s3.get_bucket_encryption(Bucket="settings-applied")["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/data",
    }
    assert rule["BucketKeyEnabled"] is True
    [lifecycle] = s3.get_bucket_lifecycle_configuration(Bucket="settings-applied")["Rules"]
    assert lifecycle["ID"] == "expire-replaced"
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == 365
    assert lifecycle["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}

    cloudformation.update_stack(StackName="settings", TemplateBody=_settings_template(5, False, role))
    status = _settled(cloudformation, "settings")["StackStatus"]
    assert status == "UPDATE_COMPLETE", _failures(cloudformation, "settings")
    assert lambdas.get_function_concurrency(FunctionName="settings-applied")["ReservedConcurrentExecutions"] == 5
    with pytest.raises(ClientError, match="NoSuchLifecycleConfiguration"):
        s3.get_bucket_lifecycle_configuration(Bucket="settings-applied")


def test_a_sam_template_with_globals_deploys_its_functions_with_them(local_aws: LocalAws, account: Account) -> None:
    cloudformation, s3, lambdas = (local_aws.client(s) for s in ("cloudformation", "s3", "lambda"))
    s3.put_object(Bucket=BUCKET, Key="code/sam.zip", Body=_function_zip())
    layer = lambdas.publish_layer_version(LayerName="shared", Content={"ZipFile": _function_zip()})
    role = _lambda_role(local_aws, "sam-function")
    function = {"Type": "AWS::Serverless::Function", "Properties": {"Handler": "app.handler", "Role": role}}
    template = {
        "Transform": "AWS::Serverless-2016-10-31",
        "Globals": {
            "Function": {
                "Runtime": "python3.12",
                "CodeUri": {"Bucket": BUCKET, "Key": "code/sam.zip"},
                "Layers": [layer["LayerVersionArn"]],
                "Tracing": "Active",
                "Environment": {"Variables": {"STAGE": "local"}},
            }
        },
        "Resources": {"First": function, "Second": function},
    }
    with pytest.raises(ClientError, match="CAPABILITY_AUTO_EXPAND"):
        cloudformation.create_stack(StackName="sam-globals", TemplateBody=json.dumps(template))
    cloudformation.create_stack(
        StackName="sam-globals", TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_AUTO_EXPAND"]
    )
    stack = _settled(cloudformation, "sam-globals")
    assert stack["StackStatus"] == "CREATE_COMPLETE", _failures(cloudformation, "sam-globals")
    resources = _resources(cloudformation, "sam-globals")
    for logical in ("First", "Second"):
        assert resources[logical]["ResourceType"] == "AWS::Lambda::Function"
        configuration = lambdas.get_function_configuration(FunctionName=resources[logical]["PhysicalResourceId"])
        assert configuration["Runtime"] == "python3.12"
        assert configuration["Role"] == role
        assert [entry["Arn"] for entry in configuration["Layers"]] == [layer["LayerVersionArn"]]
        assert configuration["TracingConfig"] == {"Mode": "Active"}
        assert configuration["Environment"]["Variables"] == {"STAGE": "local"}
