"""CloudWatch metrics the local AWS publishes as AWS's services do, and alarms evaluated on their own metric.
Without ministack: the embedded metric format read from a log line. On the running local AWS (IAM enforced): a
failed execution counted in ``AWS/States`` for its state machine only, a function's embedded metrics becoming
metric data, and each alarm reading only the dimensions it names."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any

import pytest
from local_aws_fixtures import ACCOUNT, LocalAws

from aws_emulators.local_aws.metrics import embedded_metrics

ALARM_WAIT_S = 60.0


def _emf(**fields: Any) -> str:
    directive = {"Namespace": "Product", "Dimensions": [["service"]], "Metrics": [{"Name": "Done", "Unit": "Count"}]}
    return json.dumps({"_aws": {"Timestamp": 0, "CloudWatchMetrics": [directive]}, "service": "svc", **fields})


def test_an_embedded_metric_line_gives_its_data_with_their_dimensions() -> None:
    assert list(embedded_metrics(_emf(Done=2))) == [("Product", "Done", 2.0, "Count", {"service": "svc"})]
    assert list(embedded_metrics(_emf(Done=[1, 3]))) == [
        ("Product", "Done", 1.0, "Count", {"service": "svc"}),
        ("Product", "Done", 3.0, "Count", {"service": "svc"}),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "a plain log line",
        json.dumps({"level": "INFO", "message": "no metrics"}),
        json.dumps({"_aws": {"CloudWatchMetrics": "not a list"}}),
        _emf(Done="two"),  # a value that is no number
        _emf(Done=True),
        _emf(),  # the metric's value missing
        "{" + "x" * 300_000,  # over a log event's size, and no JSON
    ],
)
def test_a_line_that_is_no_embedded_metric_gives_nothing(line: str) -> None:
    assert list(embedded_metrics(line)) == []


# ---- on the running local AWS -----------------------------------------------------------------------------------


def _role(local_aws: LocalAws, name: str, service: str) -> str:
    iam = local_aws.client("iam")
    trust = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Statement": [trust]}))["Role"]["Arn"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_role_policy(RoleName=name, PolicyName="all", PolicyDocument=json.dumps(policy))
    return str(arn)


def _alarm(local_aws: LocalAws, name: str, namespace: str, metric: str, dimensions: dict[str, str]) -> None:
    local_aws.client("cloudwatch").put_metric_alarm(
        AlarmName=name,
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()],
        Statistic="Sum",
        Period=300,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )


def _state(local_aws: LocalAws, name: str) -> str:
    [alarm] = local_aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    return str(alarm["StateValue"])


def _wait_state(local_aws: LocalAws, name: str, state: str) -> None:
    deadline = time.monotonic() + ALARM_WAIT_S
    while (now := _state(local_aws, name)) != state:
        assert time.monotonic() < deadline, f"alarm {name} is {now}, not {state}"
        time.sleep(0.5)


@pytest.mark.integration
def test_a_failed_execution_puts_its_state_machines_alarm_in_alarm_and_no_other(local_aws: LocalAws) -> None:
    sfn = local_aws.client("stepfunctions")
    role = _role(local_aws, "metrics-test-states", "states.amazonaws.com")
    definition = {"StartAt": "Fail", "States": {"Fail": {"Type": "Fail", "Error": "Boom", "Cause": "test"}}}
    failing = sfn.create_state_machine(name="metrics-failing", definition=json.dumps(definition), roleArn=role)
    other = f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:metrics-other"
    _alarm(
        local_aws, "failing-fails", "AWS/States", "ExecutionsFailed", {"StateMachineArn": failing["stateMachineArn"]}
    )
    _alarm(local_aws, "other-fails", "AWS/States", "ExecutionsFailed", {"StateMachineArn": other})
    sfn.start_execution(stateMachineArn=failing["stateMachineArn"], input="{}")
    _wait_state(local_aws, "failing-fails", "ALARM")
    assert _state(local_aws, "other-fails") == "INSUFFICIENT_DATA", "an alarm reads its own dimensions only"
    statistics = local_aws.client("cloudwatch").get_metric_statistics(
        Namespace="AWS/States",
        MetricName="ExecutionsStarted",
        Dimensions=[{"Name": "StateMachineArn", "Value": failing["stateMachineArn"]}],
        StartTime=time.time() - 600,
        EndTime=time.time() + 60,
        Period=600,
        Statistics=["Sum"],
    )
    assert sum(point["Sum"] for point in statistics["Datapoints"]) == 1


@pytest.mark.integration
def test_a_functions_embedded_metrics_become_metric_data_that_alarms_read(local_aws: LocalAws) -> None:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        handler = f"import json\ndef handler(event, context):\n    print({_emf(Done=1)!r})\n    return {{}}\n"
        archive.writestr("app.py", handler)
    role = _role(local_aws, "metrics-test-lambda", "lambda.amazonaws.com")
    functions = local_aws.client("lambda")
    functions.create_function(
        FunctionName="metrics-emf",
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": code.getvalue()},
    )
    _alarm(local_aws, "done", "Product", "Done", {"service": "svc"})
    _alarm(local_aws, "done-elsewhere", "Product", "Done", {"service": "another"})
    functions.invoke(FunctionName="metrics-emf", Payload=b"{}")
    _wait_state(local_aws, "done", "ALARM")
    assert _state(local_aws, "done-elsewhere") == "INSUFFICIENT_DATA"


@pytest.mark.integration
def test_an_alarm_over_several_periods_needs_each_to_breach(local_aws: LocalAws) -> None:
    """Fifteen one-minute periods, Minimum ≥ 1: one breaching datum is not enough (CloudWatch needs every period to
    breach); ministack's single statistic over the whole window would have fired."""
    cloudwatch = local_aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="long-backlog", Namespace="Product", MetricName="Waiting", Dimensions=[{"Name": "e", "Value": "1"}],
        Statistic="Minimum", Period=60, EvaluationPeriods=15, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching",
    )  # fmt: skip
    datum = {"MetricName": "Waiting", "Dimensions": [{"Name": "e", "Value": "1"}], "Value": 1.0}
    cloudwatch.put_metric_data(Namespace="Product", MetricData=[datum])
    assert _state(local_aws, "long-backlog") == "OK"
