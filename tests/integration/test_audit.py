"""The audit report on the local stack: after a successful and a failed pipeline execution, an approval, a
delivered and a quarantined bundle, fhe-audit lists them all, its HTML renders in headless Chromium, it carries no
key or plaintext, and its consistency checks fail (naming what) when a model serves without being Approved or a
record is altered."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from audit import cli as audit_cli
from audit import report as audit_report
from audit.collect import Window
from client.model import ClientModel, ensure_keys, fetch_model, upload_evaluation_key
from common import aws
from common.audit_log import CHAIN
from common.bundle_store import BundleLayout
from common.deployment import read_outputs
from common.workflow import waiting_shards
from containers.training.data import sample_records
from pipelines import runs
from pipelines.approval import approve
from pipelines.executions import runs_between
from tests.integration.helpers import OWNER, deploy_and_serve, deployment_for, drop, injected_faults, settle
from tests.leaks import numbers_in_text, plaintext_fragments, private_key_fragments

pytestmark = pytest.mark.integration

DEPLOYMENT = deployment_for("audit", function_concurrency=2)
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@dataclass
class Scenario:
    since: datetime
    stack: dict[str, str]
    package_arn: str
    endpoint: str
    succeeded: str  # pipeline execution ARNs
    failed: str
    model: ClientModel
    x: npt.NDArray[np.float64]
    folder: Path
    report: dict[str, Any]
    report_prefix: Path


def _drop(model: ClientModel, x: npt.NDArray[np.float64], folder: Path, bundle_id: str, *, skip_shard: bool) -> None:
    """A bundle of two shards; with ``skip_shard`` its second shard never reaches the inbox."""
    drop(_layout(), model, x, folder / bundle_id, shard_size=2, skip_shard=skip_shard)


@cache
def _layout() -> BundleLayout:
    return BundleLayout(read_outputs(DEPLOYMENT.prefix)["BundleBucketName"], OWNER)


def _audit(since: datetime, out: Path) -> dict[str, Any]:
    window = Window(since, datetime.now(tz=UTC) + timedelta(seconds=1))
    return audit_report.run(
        window, out, deployment=DEPLOYMENT.prefix, pipeline_name=DEPLOYMENT.pipeline_name, settle=60.0
    )


@pytest.fixture(scope="module")
def scenario(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    served = deploy_and_serve(DEPLOYMENT, "audit tests: metrics reviewed")
    outputs, package_arn = served.outputs, served.package_arn
    [succeeded] = runs_between(aws.client("sagemaker"), DEPLOYMENT.pipeline_name, since, datetime.now(tz=UTC))
    # A pipeline execution that fails its quality gate (no model reaches this threshold).
    failed = runs.start(
        served.settings.pipeline,
        [
            {"Name": "ModelPackageGroupName", "Value": DEPLOYMENT.package_group},
            {"Name": "AccuracyThreshold", "Value": "1.01"},
        ],
    )
    assert runs.follow(failed, 900.0, out=io.StringIO())["PipelineExecutionStatus"] == "Failed"
    s3 = aws.client("s3")
    home = tmp_path_factory.mktemp("home")
    model = fetch_model(aws.client("sagemaker"), s3, group=DEPLOYMENT.package_group, home=home)
    upload_evaluation_key(s3, _layout(), model, ensure_keys(model))
    x, folder = sample_records(12), tmp_path_factory.mktemp("bundles")
    _drop(model, x[:4], folder, "audit-good", skip_shard=False)
    _drop(model, x[4:8], folder, "audit-missing-shard", skip_shard=True)
    for bundle_id in ("audit-good", "audit-missing-shard"):
        settle(outputs["StateMachineArn"], bundle_id, 300.0)
    prefix = tmp_path_factory.mktemp("report") / "audit-report"
    report = _audit(since, prefix)
    return Scenario(since, outputs, package_arn, served.endpoint, succeeded, failed, model, x, folder, report, prefix)


def test_report_lists_both_executions_the_approval_and_both_bundles(scenario: Scenario) -> None:
    report = scenario.report
    failing = {c["name"]: c["failures"] for c in report["checks"] if not c["ok"]}
    assert report["ok"], failing
    runs = {r["execution"]: r for r in report["pipeline_executions"]}
    assert set(runs) == {scenario.succeeded, scenario.failed}
    good, bad = runs[scenario.succeeded], runs[scenario.failed]
    assert good["status"] == "Succeeded" and good["model_package"]["arn"] == scenario.package_arn
    assert good["model_package"]["status"] == "Approved"
    assert good["model_package"]["approval_note"] == "audit tests: metrics reviewed"
    assert [s["name"] for s in good["steps"]] == ["Preprocess", "Train", "Evaluate", "CheckQuality", "Register"]
    assert all(s["seconds"] is not None for s in good["steps"])
    for metric in ("accuracy", "accuracy_fhe_simulation", "accuracy_fhe", "fhe_latency_seconds_per_sample"):
        assert good["metrics"][metric] > 0, metric
    assert good["metrics"]["evaluation_key_bytes"] > 0 and good["started_by"].startswith("arn:aws:")
    assert good["levers"] == {"n_bits": 8} and good["levers_chosen_by"].startswith("chosen by the search")
    assert bad["status"] == "Failed" and "model_package" not in bad
    assert bad["parameters"]["AccuracyThreshold"] == "1.01" and bad["failure_reason"]
    assert {s["name"]: s.get("condition") for s in bad["steps"]}["CheckQuality"] == "False"
    assert bad["metrics"]["accuracy"] > 0, "a failed quality gate still shows the metrics it judged"

    [decision] = [a for a in report["approvals"] if a["package_arn"] == scenario.package_arn]
    assert decision["status"] == "Approved" and decision["note"] == "audit tests: metrics reviewed"
    assert decision["decided_by"].startswith("arn:aws:") and decision["seq"] >= 1

    bundles = {b["bundle_id"]: b for b in report["bundles"]}
    assert set(bundles) == {"audit-good", "audit-missing-shard"}
    delivered, quarantined = bundles["audit-good"], bundles["audit-missing-shard"]
    assert {(b["owner"], b["bundle"]) for b in bundles.values()} == {
        (OWNER, f"{OWNER}/audit-good"),
        (OWNER, f"{OWNER}/audit-missing-shard"),
    }
    assert delivered["outcome"] == "delivered" and delivered["model_package_arn"] == scenario.package_arn
    assert delivered["model_package_version"] == int(scenario.package_arn.rsplit("/", 1)[1])
    assert (delivered["shards"], delivered["samples"]) == (2, 4)
    assert set(delivered["stages"]) == {"Validate", "InferShards", "Assemble"}
    assert delivered["submitted_by"] and delivered["submitted_from"] == "127.0.0.1"
    assert len(delivered["input_objects"]) == 3 and len(delivered["output_objects"]) == 3  # manifest + 2 shards
    for obj in delivered["input_objects"] + delivered["output_objects"]:
        assert len(obj["sha256"]) == 64 and obj["declared_sha256"] in (None, obj["sha256"]), obj
    assert quarantined["outcome"] == "quarantined"
    assert quarantined["quarantine"]["stage"] == "validate"
    assert (quarantined["quarantine"]["code"], quarantined["quarantine"]["field"]) == ("missing_object", "shards[1]")
    assert "InferShards" not in quarantined["stages"] and quarantined["output_objects"] == []
    assert [o["sha256"] is None for o in quarantined["input_objects"]] == [False, False, True], "shard 1 is missing"
    assert {(i["owner"], i["bundle_id"]) for i in report["inbox"]} == {
        (OWNER, "audit-good"),
        (OWNER, "audit-missing-shard"),
    }


class _Tables(HTMLParser):
    """Rows per table id, from the DOM Chromium rendered."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, int] = {}
        self._table: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table.append(dict(attrs).get("id") or "")
        elif tag == "tr" and self._table:
            self.rows[self._table[-1]] = self.rows.get(self._table[-1], 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()


def _chromium() -> str:
    found = next((path for name in CHROMIUM if (path := shutil.which(name))), None)
    assert found, "headless Chromium is needed (Debian: apt-get install chromium; `make test` installs it)"
    return found


def test_html_report_renders_in_headless_chromium(scenario: Scenario, tmp_path: Path) -> None:
    page = scenario.report_prefix.with_name(scenario.report_prefix.name + ".html").as_uri()
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [*browser, "--window-size=1400,2200", f"--screenshot={screenshot}", page],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[0] == 2200 and pixels.shape[1] == 1400
    assert float(pixels[..., :3].std()) > 0.05, "the screenshot is blank"
    dom = subprocess.run([*browser, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120)
    tables = _Tables()
    tables.feed(dom.stdout)
    assert tables.rows["checks-table"] == 1 + 5
    assert tables.rows["pipeline-table"] == 1 + 2
    assert tables.rows["approvals-table"] >= 1 + 1
    assert tables.rows["bundles-table"] == 1 + 2
    assert tables.rows["objects-table"] == 1 + 3 + 3 + 3  # good: 3 in, 3 out; quarantined: manifest + 2 shards
    assert "All consistency checks passed." in dom.stdout and "<svg" in dom.stdout
    assert "<code>n_bits=8</code>" in dom.stdout and "chosen by the search" in dom.stdout  # the circuit's levers


def test_report_carries_no_private_key_bytes_and_no_plaintext(scenario: Scenario) -> None:
    prefix = scenario.report_prefix
    blobs = {suffix: prefix.with_name(prefix.name + suffix).read_bytes() for suffix in (".html", ".json")}
    secrets = private_key_fragments(scenario.model, ensure_keys(scenario.model), encoded=True)
    plaintext = plaintext_fragments(scenario.x, scenario.model.preprocessing.transform(scenario.x))
    assert len(secrets) >= 150 and len(plaintext) > 100, (len(secrets), len(plaintext))
    for name, blob in blobs.items():
        assert len(blob) > 10_000, name
        assert not any(fragment in blob for fragment in secrets), f"private key bytes in the {name} report"
        # Numbers as whole numbers (a timestamp's digits may contain a value's digits), floats as raw bytes.
        leaked = numbers_in_text(blob, [f for f in plaintext if f.isascii()]) + [
            f for f in plaintext if not f.isascii() and f in blob
        ]
        assert not leaked, f"plaintext {leaked[:3]} in the {name} report"


def test_a_bundle_served_while_its_model_was_not_approved_fails_the_check_naming_it(
    scenario: Scenario, tmp_path: Path
) -> None:
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    machine = scenario.stack["StateMachineArn"]
    slow = [{"input_contains": f"requests/{OWNER}/audit-revoked/", "delay_seconds": 6}]  # a slow endpoint
    with injected_faults(scenario.endpoint, slow):
        _drop(scenario.model, scenario.x[8:12], scenario.folder, "audit-revoked", skip_shard=False)
        # Both shards sent: the invoke function checks the package after parking a shard and before sending it
        # (a shard not sent yet would be stopped by the rejection, which is not this test's case), so wait for
        # both to be parked, then for the moment between parking and sending to pass.
        dynamodb, table, deadline = aws.client("dynamodb"), scenario.stack["WorkflowTableName"], time.monotonic() + 120
        while len(waiting_shards(dynamodb, table, scenario.endpoint)) < 2:
            assert time.monotonic() < deadline, "the bundle never reached the endpoint"
            time.sleep(0.2)
        time.sleep(2)
        # ML ops reject the model while its shards are on the endpoint: validation had passed, serving goes on.
        approve(scenario.package_arn, DEPLOYMENT.package_group, "Rejected", "audit tests: revoked during serving")
        execution = settle(machine, "audit-revoked", 300.0)
    try:
        assert execution["status"] == "SUCCEEDED", execution
        report = _audit(since, tmp_path / "revoked")
        [check] = [c for c in report["checks"] if c["name"] == "served_while_approved"]
        assert not report["ok"] and not check["ok"]
        [failure] = check["failures"]
        assert f"bundle {OWNER}/audit-revoked" in failure and scenario.package_arn in failure and "Rejected" in failure
        # The command line fails loudly too.
        with pytest.raises(SystemExit) as exited:
            audit_cli.main(
                [
                    "--since",
                    since.isoformat(),
                    "--out",
                    str(tmp_path / "cli"),
                    "--deployment",
                    DEPLOYMENT.prefix,
                    "--pipeline-name",
                    DEPLOYMENT.pipeline_name,
                    "--quiet",
                ]
            )
        assert exited.value.code == audit_cli.CHECKS_FAILED
    finally:
        approve(scenario.package_arn, DEPLOYMENT.package_group, "Approved", "audit tests: reinstated")


def test_an_altered_record_or_audit_log_entry_fails_the_check_naming_it(scenario: Scenario, tmp_path: Path) -> None:
    s3, layout = aws.client("s3"), _layout()
    reason = layout.quarantine_reason("audit-missing-shard")
    original = s3.get_object(Bucket=reason.bucket, Key=reason.key)["Body"].read()
    s3.put_object(Bucket=reason.bucket, Key=reason.key, Body=original.replace(b"missing_object", b"checksum"))
    table = aws.session().resource("dynamodb").Table(scenario.stack["AuditTableName"])
    first = table.get_item(Key={"chain": CHAIN, "seq": 1}, ConsistentRead=True)["Item"]
    table.put_item(Item={**first, "body": str(first["body"]).replace('"Approved"', '"Rejected"')})
    report = _audit(scenario.since, tmp_path / "altered")
    [check] = [c for c in report["checks"] if c["name"] == "audit_log_unaltered"]
    assert not check["ok"]
    assert any("record 1 was altered" in f for f in check["failures"]), check["failures"]
    assert any("audit-missing-shard" in f and "quarantine record was altered" in f for f in check["failures"])
