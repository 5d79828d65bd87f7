"""Operating the product: usage and cost per owner (audit/usage.py), an owner's data exported and erased
(infrastructure/owners.py; moto S3), the dashboard the templates deploy and what ``fhe-deploy status`` reads of it
(infrastructure/status.py; moto CloudWatch), and the serving time each shard result and result manifest carries."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from audit import usage
from common import aws
from common.audit_log import AuditRecord
from common.bundle.messages import ShardResult, parse_shard_result
from common.bundle.schema import BundleError
from common.bundle.store import OWNER_FOLDERS, BundleLayout
from common.bundle.usage import ServedUsage, parse_usage_record, served_usage, write_usage_record
from common.estimate import EstimateTable
from infrastructure import owners, status
from infrastructure.templates import PRODUCT, source
from lambdas import runtime
from tests.unit.conftest import UNIT_BUCKET

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
FAMILY = "fhe-inference"
PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/{}"


# ---- serving time on the wire and in the result manifest ----------------------------------------------------------


def test_a_shard_result_carries_its_instances_time_and_refuses_a_time_that_is_no_number() -> None:
    result = ShardResult("b-1", 0, f"s3://{UNIT_BUCKET}/outbox/a/b-1/shards/00000.out", 2, "c" * 64, 10, 1.5, 1.25)
    assert parse_shard_result(result.to_json()) == result
    untimed = ShardResult("b-1", 0, result.result_uri, 2, "c" * 64, 10)
    assert "seconds" not in json.loads(untimed.to_json()) and parse_shard_result(untimed.to_json()) == untimed
    for bad in ("1.5", -1, float("inf"), True, 10**9):
        with pytest.raises(BundleError):
            parse_shard_result({**json.loads(result.to_json()), "seconds": bad})
    assert served_usage([result, result]) == ServedUsage(2, 3.0, 2.5)
    assert served_usage([result, untimed]) == ServedUsage(2, 1.5, 1.25), "an unmeasured shard counts no time"


def test_a_usage_record_is_written_beside_the_result_and_read_back_only_for_its_bundle(s3: Any) -> None:
    layout = BundleLayout(UNIT_BUCKET, "clinic-a")
    written = write_usage_record(s3, layout, "b-1", ServedUsage(3, 12.3456, 10.0))
    assert written.uri == layout.usage_record("b-1") and str(written.uri).endswith("outbox/clinic-a/b-1/usage.json")
    data = s3.get_object(Bucket=UNIT_BUCKET, Key=written.uri.key)["Body"].read()
    assert parse_usage_record(data, "b-1") == ServedUsage(3, 12.346, 10.0)
    with pytest.raises(BundleError):
        parse_usage_record(data, "b-2")
    with pytest.raises(BundleError):
        parse_usage_record(
            json.dumps({"bundle_id": "b-1", "shards": 1, "serving_seconds": "x", "fhe_seconds": 0}).encode(), "b-1"
        )


# ---- usage per owner ------------------------------------------------------------------------------------------------


def _record(seq: int, kind: str, at: datetime, subject: str, **detail: Any) -> AuditRecord:
    body = {"kind": kind, "time": at.isoformat().replace("+00:00", "Z"), "subject": subject, "detail": detail}
    return AuditRecord(seq, json.dumps(body), "0" * 64, "0" * 64)


def _delivered(seq: int, at: datetime, owner: str, version: int, serving: float, samples: int = 10) -> AuditRecord:
    return _record(seq, "bundle_completed", at, f"{owner}/b-{seq}", owner=owner, bundle_id=f"b-{seq}",
                   model_package_arn=PACKAGE.format(version), samples=samples, shards=2,
                   usage=ServedUsage(2, serving, serving / 2).to_dict(), execution=f"arn:exec-{seq}")  # fmt: skip


def _quarantined(seq: int, at: datetime, owner: str, serving: float) -> AuditRecord:
    return _record(seq, "bundle_quarantined", at, f"{owner}/q-{seq}", owner=owner, bundle_id=f"q-{seq}",
                   stage="infer", code="endpoint_failed", usage=ServedUsage(3, serving, serving).to_dict(),
                   execution=f"arn:exec-{seq}")  # fmt: skip


def test_an_endpoints_instance_time_is_the_integral_of_its_count_within_its_life() -> None:
    endpoint = usage.EndpointTime(f"{FAMILY}-v1", "ml.c7i.4xlarge", T0, T0 + timedelta(hours=2), 1)
    assert usage.EndpointTime(f"{FAMILY}-v0", None, T0, None, 1).instance_seconds(T0, T0 + timedelta(seconds=9)) == 9
    endpoint.changes = [(T0 + timedelta(minutes=10), 0), (T0 + timedelta(minutes=30), 2), (T0 + timedelta(hours=1), 0)]
    assert endpoint.instance_seconds(T0, T0 + timedelta(hours=3)) == 600 + 2 * 1800
    assert endpoint.instance_seconds(T0 + timedelta(minutes=40), T0 + timedelta(minutes=50)) == 2 * 600
    assert endpoint.instance_seconds(T0 - timedelta(hours=1), T0) == 0, "nothing before the endpoint existed"
    assert endpoint.instance_seconds(T0 + timedelta(hours=2), T0 + timedelta(hours=3)) == 0, "nor after it retired"


def test_each_owner_is_charged_its_share_of_busy_time_and_the_shares_add_up_to_the_instance_time() -> None:
    one = usage.EndpointTime(f"{FAMILY}-v1", "ml.c7i.4xlarge", T0, None, 1)
    two = usage.EndpointTime(f"{FAMILY}-v2", "ml.c7i.4xlarge", T0, None, 0, [(T0 + timedelta(minutes=5), 1)])
    idle = usage.EndpointTime(f"{FAMILY}-v3", "ml.unpriced.large", T0, None, 1)
    records = [
        _delivered(1, T0 + timedelta(minutes=1), "clinic-a", 1, 30.0),
        _delivered(2, T0 + timedelta(minutes=2), "clinic-b", 1, 10.0),
        _delivered(3, T0 + timedelta(minutes=9), "clinic-b", 2, 5.0),
        _delivered(4, T0 - timedelta(minutes=9), "clinic-a", 2, 500.0),  # before the window
        _delivered(5, T0 + timedelta(minutes=3), "clinic-c", 7, 1.0),  # a version with no endpoint: the enclave path
        _quarantined(6, T0 + timedelta(minutes=4), "clinic-d", 40.0),  # its shards ran on v1, then it was quarantined
    ]
    endpoints = {e.endpoint: e for e in (one, two, idle)}
    report = usage.usage(
        records, endpoints, FAMILY, T0, T0 + timedelta(hours=1), EstimateTable.load(),
        endpoint_of={"arn:exec-6": f"{FAMILY}-v1"},
    )  # fmt: skip
    assert usage.quarantined_executions(records, T0, T0 + timedelta(hours=1)) == ["arn:exec-6"]
    rows = {row["owner"]: row for row in report["owners"]}
    assert rows["clinic-a"]["bundles"] == 1 and rows["clinic-b"]["bundles"] == 2 and rows["clinic-b"]["samples"] == 20
    assert (rows["clinic-d"]["bundles"], rows["clinic-d"]["quarantined"], rows["clinic-d"]["shards"]) == (0, 1, 3)
    assert rows["clinic-a"]["instance_seconds"] == pytest.approx(3600 * 30 / 80)
    assert rows["clinic-d"]["instance_seconds"] == pytest.approx(3600 * 40 / 80), "a quarantine pays its shards"
    assert rows["clinic-b"]["instance_seconds"] == pytest.approx(3600 * 10 / 80 + 3300)
    assert rows["clinic-c"]["instance_seconds"] == 0 and report["enclave_fleet_serving_seconds"] == 1.0
    assert rows["clinic-c"]["cost"] is None, "the enclave fleet's time is not priced: unknown, not free"
    assert rows[usage.UNATTRIBUTED]["instance_seconds"] == 3600 and rows[usage.UNATTRIBUTED]["cost"] is None
    total = report["reconciliation"]["endpoint_instance_seconds"]
    assert total == 3600 + 3300 + 3600
    assert sum(row["instance_seconds"] for row in report["owners"]) == pytest.approx(total, rel=0.01)
    price = EstimateTable.load().hourly("ml.c7i.4xlarge")
    assert rows["clinic-a"]["cost"] == pytest.approx(3 / 8 * price, abs=1e-6)
    lines = list(csv.DictReader(io.StringIO(usage.as_csv(report))))
    assert [line["owner"] for line in lines] == ["clinic-a", "clinic-b", "clinic-c", "clinic-d", usage.UNATTRIBUTED]
    assert float(lines[0]["instance_seconds"]) == rows["clinic-a"]["instance_seconds"]


# ---- an owner's data exported and erased ------------------------------------------------------------------------


@pytest.fixture
def versioned(s3: Any) -> Any:
    s3.put_bucket_versioning(Bucket=UNIT_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for owner in ("clinic-a", "clinic-b"):
        for top in OWNER_FOLDERS:
            key = f"{top}/{owner}/b-1/object.bin"
            s3.put_object(Bucket=UNIT_BUCKET, Key=key, Body=b"first")
            s3.put_object(Bucket=UNIT_BUCKET, Key=key, Body=b"second")  # two versions
        s3.delete_object(Bucket=UNIT_BUCKET, Key=f"inbox/{owner}/b-1/object.bin")  # and a delete marker
    return s3


def _versions(s3: Any, prefix: str) -> int:
    listed = s3.list_object_versions(Bucket=UNIT_BUCKET, Prefix=prefix)
    return len(listed.get("Versions", [])) + len(listed.get("DeleteMarkers", []))


def test_an_export_copies_the_owners_results_and_records_with_their_sha256_and_overwrites_nothing(
    versioned: Any, tmp_path: Path
) -> None:
    exported = owners.export(BundleLayout(UNIT_BUCKET, "clinic-a"), tmp_path / "export", lambda line: None)
    index = json.loads((tmp_path / "export" / owners.INDEX_NAME).read_text())
    assert sorted(e["key"] for e in index["objects"]) == ["outbox/clinic-a/b-1/object.bin",
                                                          "quarantine/clinic-a/b-1/object.bin"]  # fmt: skip
    assert (tmp_path / "export/outbox/clinic-a/b-1/object.bin").read_bytes() == b"second"
    assert exported["objects"] == 2 and exported["bytes"] == 12
    with pytest.raises(owners.OwnerError, match="not an empty folder"):
        owners.export(BundleLayout(UNIT_BUCKET, "clinic-a"), tmp_path / "export", lambda line: None)


def test_an_erasure_deletes_every_version_under_the_owners_folders_and_nothing_of_another_owner(
    versioned: Any,
) -> None:
    before = _versions(versioned, "")
    erased = owners.erase_folders(BundleLayout(UNIT_BUCKET, "clinic-a"), lambda line: None)
    assert erased["object_versions"] == 2 * len(OWNER_FOLDERS) + 1
    for top in OWNER_FOLDERS:
        assert _versions(versioned, f"{top}/clinic-a/") == 0
        assert _versions(versioned, f"{top}/clinic-b/") > 0
    assert _versions(versioned, "") == before - erased["object_versions"]
    for owner in ("clinic-a", "clinic-b"):  # an endpoint's answers name where each result lies
        answer = {"bundle_id": "b-1", "result_uri": f"s3://{UNIT_BUCKET}/outbox/{owner}/b-1/shards/00000.out"}
        versioned.put_object(Bucket=UNIT_BUCKET, Key=f"responses/e-v1/output/{owner}.out", Body=json.dumps(answer))
    assert owners.erase_responses(BundleLayout(UNIT_BUCKET, "clinic-a"), lambda line: None) == 1
    assert _versions(versioned, "responses/e-v1/output/clinic-a") == 0
    assert _versions(versioned, "responses/e-v1/output/clinic-b") == 1


# ---- the dashboard and fhe-deploy status --------------------------------------------------------------------------


def _dashboard_body() -> dict[str, Any]:
    """The template's dashboard as CloudFormation would make it: its substitutions given stand-in values."""
    text = source(PRODUCT)["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    given = {"EndpointName": FAMILY}
    return dict(json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: given.get(m[1], m[1].replace(".", "-")), text)))


def test_the_dashboard_reads_the_metrics_the_functions_publish() -> None:
    resources = source(PRODUCT)["Resources"]
    body = _dashboard_body()
    for widget in body["widgets"]:  # the rows naming their metric (a SEARCH finds the versions' at run time)
        widget["properties"]["metrics"] = [r for r in widget["properties"]["metrics"] if isinstance(r[0], str)]
    product_rows = [s for s in status.widget_series(body, None) if s.namespace == runtime.METRICS_NAMESPACE]
    assert len(product_rows) == 7
    published = set()
    for path in Path(runtime.__file__).parent.glob("*.py"):
        published |= set(re.findall(r'"([A-Z][A-Za-z]+)"', path.read_text()))  # every metric name is quoted
    for row in product_rows:
        assert row.metric in published, f"the dashboard shows {row.metric}, which no function publishes"
        assert row.dimensions == (("service", runtime.SERVICE),), "the functions' service dimension"
    alarm = resources["QuarantineRateAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["Dimensions"][0]["Value"]) == (runtime.METRICS_NAMESPACE, runtime.SERVICE)
    assert alarm["MetricName"] in published


def test_status_reads_every_series_of_the_dashboard_searches_included(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        cloudwatch = aws.client("cloudwatch")
        now = datetime.now(tz=UTC)
        for name, count in ((f"{FAMILY}-v1", 2.0), (f"{FAMILY}-v2", 0.0), ("another-v1", 5.0)):
            cloudwatch.put_metric_data(
                Namespace=runtime.METRICS_NAMESPACE,
                MetricData=[{"MetricName": "EndpointInstances", "Dimensions": [{"Name": "EndpointName", "Value": name}],
                             "Value": count, "Timestamp": now}],
            )  # fmt: skip
        cloudwatch.put_metric_data(
            Namespace=runtime.METRICS_NAMESPACE,
            MetricData=[{"MetricName": "BundlesQuarantined", "Value": 1.0, "Timestamp": now,
                         "Dimensions": [{"Name": "service", "Value": runtime.SERVICE}]}] * 3,
        )  # fmt: skip
        series = status.widget_series(_dashboard_body(), cloudwatch)
        by_widget: dict[str, list[status.Series]] = {}
        for item in series:
            by_widget.setdefault(item.widget, []).append(item)
        assert len(by_widget) == 8 and all(by_widget.values())
        instances = by_widget["Endpoint instances per version"]
        assert sorted(dict(s.dimensions)["EndpointName"] for s in instances) == [f"{FAMILY}-v1", f"{FAMILY}-v2"]
        assert len(by_widget["Errors per function"]) == 10 and len(by_widget["Dead letters received"]) == 5
        quarantined = next(s for s in by_widget["Bundles per hour"] if s.metric == "BundlesQuarantined")
        shown = status.figure(cloudwatch, quarantined, now - timedelta(hours=1), now + timedelta(minutes=1))
        assert shown["window"] == 3 and shown["dimensions"] == {"service": runtime.SERVICE}
        text = status.describe({"dashboard": "d", "window": {"since": "s", "until": "u"}, "alarms": [],
                                "figures": [shown]})  # fmt: skip
        assert "quarantined" in text and "sum over the window 3" in text


def test_the_heartbeat_publishes_each_served_versions_instance_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lambdas import heartbeat

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        sagemaker = aws.client("sagemaker")
        role = "arn:aws:iam::123456789012:role/endpoint"
        sagemaker.create_model(ModelName="m", ExecutionRoleArn=role, PrimaryContainer={"Image": "i"})
        for name, count in ((f"{FAMILY}-v1", 2), (f"{FAMILY}-v2", 1), (f"{FAMILY}-vnext", 1), ("other-v1", 3)):
            variant = {"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.xlarge",
                       "InitialInstanceCount": count}  # fmt: skip
            sagemaker.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant])
            sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
        monkeypatch.setattr(heartbeat, "client", aws.client)
        assert heartbeat.count_instances(FAMILY) == {f"{FAMILY}-v1": 2, f"{FAMILY}-v2": 1}
    published = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    counts = {p["EndpointName"]: p["EndpointInstances"] for p in published}  # a value or a list of values
    assert {name: value if isinstance(value, list) else [value] for name, value in counts.items()} == {
        f"{FAMILY}-v1": [2],
        f"{FAMILY}-v2": [1],
    }
    [directive] = published[0]["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == runtime.METRICS_NAMESPACE and directive["Dimensions"] == [["EndpointName"]]


def test_status_names_the_deployments_own_alarms_and_not_another_deployments() -> None:
    names = status.alarm_names("fhe", "fhe-inference")
    for own in ("fhe-executions-failed", "fhe-quarantine-rate", "fhe-shard-dead-letters",
                "fhe-inference-v3-no-capacity", "fhe-inference-v12-backlog-without-capacity"):  # fmt: skip
        assert names.match(own), own
    for other in ("fhe-staging-quarantine-rate", "fhe-inference-vx-no-capacity", "fhe-quarantine-rate-2"):
        assert not names.match(other), other
