"""The audit report on the local stack: after a successful and a failed pipeline execution, an approval, a
delivered and a quarantined bundle, fhe-audit lists them all, its HTML renders in headless Chromium, it carries no
key or plaintext, and its consistency checks fail (naming what) when a model serves without being Approved or a
record is altered. ML ops cannot forge the trail: a bundle outcome or an approval it puts on the bus is refused and
listed in the report, and a tail of the audit log rewritten consistently by someone who can write the table but
cannot sign fails the chain check, naming its first record."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from botocore.exceptions import ClientError

from audit import cli as audit_cli
from audit import report as audit_report
from audit.collect import Window
from client.batch_client import BatchClient, ClientSettings
from client.model import ClientModel, ensure_keys
from common import aws
from common.audit_log import (
    BUNDLE_EVENT_SOURCE,
    CHAIN,
    REFUSED_EVENT,
    REGISTRY_EVENT_SOURCE,
    AuditRecord,
    read_chain,
)
from common.bundle.store import BundleLayout
from common.stack_outputs import read_outputs
from common.workflow import waiting_shards
from containers.training.data import sample_records
from local.people import People, acting_as
from pipelines import runs
from pipelines.approval import approve
from pipelines.executions import runs_between
from tests.integration.helpers import (
    OWNER,
    Served,
    bundle_execution,
    deploy_and_serve,
    deployment_for,
    drop,
    injected_faults,
    settle,
)
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
    served: Served  # its people: each actor acts under its role


def _drop(
    served: Served, model: ClientModel, x: npt.NDArray[np.float64], folder: Path, bundle_id: str, *, skip_shard: bool
) -> None:
    """A bundle of two shards, dropped by its owner; with ``skip_shard`` its second shard never reaches the inbox."""
    layout = served.layout  # named before acting: the owner's role reads no stack
    with served.as_owner():
        drop(layout, model, x, folder / bundle_id, shard_size=2, skip_shard=skip_shard)


@cache
def _layout() -> BundleLayout:
    return BundleLayout(read_outputs(DEPLOYMENT.prefix)["BundleBucketName"], OWNER)


def _audit(served: Served, since: datetime, out: Path) -> dict[str, Any]:
    """The audit report, made by the auditor."""
    window = Window(since, datetime.now(tz=UTC) + timedelta(seconds=1))
    with served.acting("auditor"):
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
    with served.acting("trainer"):
        failed = runs.start(
            served.settings.pipeline,
            [
                {"Name": "ModelPackageGroupName", "Value": DEPLOYMENT.package_group},
                {"Name": "AccuracyThreshold", "Value": "1.01"},
            ],
        )
        assert runs.follow(failed, 900.0, out=io.StringIO())["PipelineExecutionStatus"] == "Failed"
    owner = BatchClient(ClientSettings.for_deployment(served.outputs, OWNER, home=tmp_path_factory.mktemp("home")))
    with served.as_owner():
        model = owner.keys().model
    x, folder = sample_records(12), tmp_path_factory.mktemp("bundles")
    _drop(served, model, x[:4], folder, "audit-good", skip_shard=False)
    _drop(served, model, x[4:8], folder, "audit-missing-shard", skip_shard=True)
    for bundle_id in ("audit-good", "audit-missing-shard"):
        settle(outputs["StateMachineArn"], bundle_id, 300.0)
    prefix = tmp_path_factory.mktemp("report") / "audit-report"
    report = _audit(served, since, prefix)
    return Scenario(
        since, outputs, package_arn, served.endpoint, succeeded, failed, model, x, folder, report, prefix, served
    )


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
    assert good["levers"] == {"n_bits": 8} and "certification rows" in good["levers_chosen_by"]
    assert good["budget"]["rows"] > 0 and good["budget"]["verdict"]
    assert bad["status"] == "Failed" and "model_package" not in bad
    assert bad["parameters"]["AccuracyThreshold"] == "1.01" and bad["failure_reason"]
    assert {s["name"]: s.get("condition") for s in bad["steps"]}["CheckQuality"] == "False"
    assert bad["metrics"]["accuracy"] > 0, "a failed quality gate still shows the metrics it judged"

    [decision] = [a for a in report["approvals"] if a["package_arn"] == scenario.package_arn]
    assert decision["status"] == "Approved" and decision["note"] == "audit tests: metrics reviewed"
    assert decision["decided_by"].startswith("arn:aws:") and decision["seq"] >= 1
    # What the product itself announced (the approval, the version served, both outcomes) was confirmed.
    assert report["refused_events"] == []
    [served] = report["endpoints"]
    assert (served["endpoint"], served["model_package_arn"]) == (scenario.endpoint, scenario.package_arn)

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
    assert tables.rows["checks-table"] == 1 + 6
    assert tables.rows["enclave-table"] == 1  # no enclave bundle: its header only
    assert tables.rows["refused-table"] == 1  # nothing refused: its header only
    assert tables.rows["pipeline-table"] == 1 + 2
    assert tables.rows["approvals-table"] >= 1 + 1
    assert tables.rows["bundles-table"] == 1 + 2
    assert tables.rows["objects-table"] == 1 + 3 + 3 + 3  # good: 3 in, 3 out; quarantined: manifest + 2 shards
    assert "All consistency checks passed." in dom.stdout and "<svg" in dom.stdout
    # The circuit's levers, how they were chosen with what the certification rows guarantee, and the test split's
    # check of the budget.
    assert "<code>n_bits=8</code>" in dom.stdout and "certification rows" in dom.stdout
    assert "points lost against the float model" in dom.stdout


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
        _drop(scenario.served, scenario.model, scenario.x[8:12], scenario.folder, "audit-revoked", skip_shard=False)
        # Both shards sent: the invoke function checks the package after parking a shard and before sending it
        # (a shard not sent yet would be stopped by the rejection, which is not this test's case), so wait for
        # both to be parked, then for the moment between parking and sending to pass.
        dynamodb, table, deadline = aws.client("dynamodb"), scenario.stack["WorkflowTableName"], time.monotonic() + 120
        while len(waiting_shards(dynamodb, table, scenario.endpoint)) < 2:
            assert time.monotonic() < deadline, "the bundle never reached the endpoint"
            time.sleep(0.2)
        time.sleep(2)
        # ML ops reject the model while its shards are on the endpoint: validation had passed, serving goes on.
        with scenario.served.acting("ml-ops"):
            approve(scenario.package_arn, DEPLOYMENT.package_group, "Rejected", "audit tests: revoked during serving")
        execution = settle(machine, "audit-revoked", 300.0)
    try:
        assert execution["status"] == "SUCCEEDED", execution
        report = _audit(scenario.served, since, tmp_path / "revoked")
        [check] = [c for c in report["checks"] if c["name"] == "served_while_approved"]
        assert not report["ok"] and not check["ok"]
        [failure] = check["failures"]
        assert f"bundle {OWNER}/audit-revoked" in failure and scenario.package_arn in failure and "Rejected" in failure
        # The command line fails loudly too.
        with pytest.raises(SystemExit) as exited, scenario.served.acting("auditor"):
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
        with scenario.served.acting("ml-ops"):
            approve(scenario.package_arn, DEPLOYMENT.package_group, "Approved", "audit tests: reinstated")


@pytest.fixture(scope="module")
def people(scenario: Scenario) -> People:
    """The deployment's actors (ML ops, the auditor…), each acting through its own role."""
    return scenario.served.people


def _audit_table(scenario: Scenario) -> Any:
    return aws.session().resource("dynamodb").Table(scenario.stack["AuditTableName"])


def _refused_on_record(scenario: Scenario, event_ids: set[str], timeout: float = 120.0) -> dict[str, AuditRecord]:
    """The refused_event records of ``event_ids``, once the recorder has chained them all."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            str(r.body.get("event_id")): r
            for r in read_chain(_audit_table(scenario))
            if r.body.get("kind") == REFUSED_EVENT and r.body.get("event_id") in event_ids
        }
        if set(found) == event_ids:
            return found
        assert time.monotonic() < deadline, f"the recorder chained only {sorted(found)} of {sorted(event_ids)}"
        time.sleep(1.0)


def _put_as(people: People, actor: str, source: str, detail_type: str, detail: dict[str, Any]) -> str:
    """Put one event as ``actor``: the event id when the bus took it, or what refused it (IAM, EventBridge)."""
    with acting_as(people, actor):
        entry = {"Source": source, "DetailType": detail_type, "Detail": json.dumps(detail)}
        try:
            answer = aws.client("events").put_events(Entries=[entry])
        except ClientError as error:
            return f"refused by the local AWS: {error.response.get('Error', {}).get('Code')}"
    [result] = answer["Entries"]
    if answer.get("FailedEntryCount"):
        return f"refused by the local AWS: {result.get('ErrorCode')}"
    return str(result["EventId"])


def test_ml_ops_cannot_forge_a_bundle_outcome_or_an_approval(
    scenario: Scenario, people: People, tmp_path: Path
) -> None:
    """ML ops put on the bus what only the workflow or SageMaker may say. IAM refuses the bundle outcome (ML ops'
    events:PutEvents grant names its own source and detail types only; the local AWS evaluates those conditions as
    AWS does). The approvals are ML ops' own kind of event, so IAM lets them through: the recorder refuses them
    against the registry. Each refusal by the recorder is on record and in the report the auditor makes under its
    own role."""
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    machine, layout = scenario.stack["StateMachineArn"], _layout()
    quarantined = bundle_execution(machine, "audit-missing-shard")
    assert quarantined is not None
    forgeries = {
        # A delivery of the bundle that was quarantined, naming its real execution and the result it never had.
        "bundle outcome": (
            BUNDLE_EVENT_SOURCE,
            "Bundle Completed",
            {
                "owner": OWNER,
                "bundle_id": "audit-missing-shard",
                "execution": quarantined["executionArn"],
                "model_package_arn": scenario.package_arn,
                "samples": 4,
                "shards": 2,
                "result_manifest": str(layout.result_manifest("audit-missing-shard")),
                "result_manifest_sha256": "0" * 64,
            },
        ),
        # The approval as the registry has it, but naming someone else as the one who decided.
        "approval naming another decider": (
            REGISTRY_EVENT_SOURCE,
            "Model Package Approval",
            {
                "ModelPackageArn": scenario.package_arn,
                "ModelApprovalStatus": "Approved",
                "decided_by": "arn:aws:iam::000000000000:user/chief-medical-officer",
            },
        ),
        # A decision the registry does not hold.
        "approval the registry does not hold": (
            REGISTRY_EVENT_SOURCE,
            "Model Package Approval",
            {"ModelPackageArn": scenario.package_arn, "ModelApprovalStatus": "Rejected"},
        ),
    }
    put = {name: _put_as(people, "ml-ops", *forgery) for name, forgery in forgeries.items()}
    through = {name: answer for name, answer in put.items() if not answer.startswith("refused by the local AWS")}
    # Which layer refused each: the local AWS (IAM) or, for what it let through, the recorder.
    refused = _refused_on_record(scenario, set(through.values()))
    layers = {name: put[name] if name not in through else "refused by the recorder" for name in forgeries}
    assert set(layers) == set(forgeries) and all(layer.startswith("refused by") for layer in layers.values()), layers
    # The approvals are of ML ops' own source and detail type: IAM lets them through; the outcome is not ML ops'.
    assert set(through) == {"approval naming another decider", "approval the registry does not hold"}, layers
    assert put["bundle outcome"] == "refused by the local AWS: AccessDeniedException", layers
    reasons = {name: str(refused[event_id].body["detail"]["reason"]) for name, event_id in through.items()}
    expected = {
        "bundle outcome": "the execution it names did not deliver (it is FAILED)",
        "approval naming another decider": "names its own decider",
        "approval the registry does not hold": "registry's approval status of the package (Approved)",
    }
    for name, reason in reasons.items():
        assert expected[name] in reason, (name, reason)
    # The forged decider is nowhere on record, and no approval by that name was chained.
    for record in read_chain(_audit_table(scenario)):
        assert "chief-medical-officer" not in record.body_json, record.seq

    report = _audit(scenario.served, since, tmp_path / "forged")
    listed = {e["event_id"]: e for e in report["refused_events"]}
    for name, event_id in through.items():
        assert listed[event_id]["reason"] == reasons[name] and listed[event_id]["seq"] == refused[event_id].seq
    assert {listed[i]["detail_type"] for i in through.values()} <= {"Bundle Completed", "Model Package Approval"}
    assert not [a for a in report["approvals"] if "chief-medical-officer" in str(a["decided_by"])]
    html = tmp_path.joinpath("forged.html").read_text()
    assert html.count("names its own decider") == ("approval naming another decider" in through)
    [check] = [c for c in report["checks"] if c["name"] == "audit_log_unaltered"]
    assert check["ok"], check["failures"]


def test_the_auditor_reads_no_evaluation_key(scenario: Scenario, people: People) -> None:
    s3, keys = aws.client("s3"), _layout().keys_prefix
    [key] = [o["Key"] for o in s3.list_objects_v2(Bucket=keys.bucket, Prefix=keys.key + "/")["Contents"]]
    manifest = _layout().request_manifest("audit-good")
    with acting_as(people, "auditor"):
        auditor = aws.client("s3")
        assert auditor.get_object(Bucket=manifest.bucket, Key=manifest.key)["Body"].read()
        with pytest.raises(ClientError) as refused:
            auditor.get_object(Bucket=keys.bucket, Key=key)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


@pytest.fixture
def restored_audit_log(scenario: Scenario) -> Iterator[list[AuditRecord]]:
    """The audit log as it is; whatever a test rewrites in it is put back afterwards."""
    records = list(read_chain(_audit_table(scenario)))
    yield records
    for record in records:
        _audit_table(scenario).put_item(Item=record.to_item())


def test_a_tail_rewritten_by_someone_who_cannot_sign_fails_the_chain_check_naming_its_first_record(
    scenario: Scenario, restored_audit_log: list[AuditRecord], tmp_path: Path
) -> None:
    """Whoever can write the audit table (not the recorder's role: it may only append) rewrites the log's tail
    consistently: one record changed, every digest after it recomputed. Without the recorder's key they cannot
    sign, so the report's chain check fails at the first rewritten record."""
    records = restored_audit_log
    # The signing key is what the deployment's CloudFormation made of the template: asymmetric, for signing.
    key = aws.client("kms").describe_key(KeyId=scenario.stack["AuditSigningKeyArn"])["KeyMetadata"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert all(r.signature and r.signing_key for r in records), "every record the recorder wrote is signed"
    # The first approval is rewritten to name another decider.
    start = next(i for i, r in enumerate(records) if r.body.get("kind") == "approval")
    assert len(records) - start >= 3, "a tail of several records"
    rewritten = records[:start]
    for original in records[start:]:
        body = original.body
        if original is records[start]:
            body["detail"]["decided_by"] = "arn:aws:iam::000000000000:user/chief-medical-officer"
        forged = AuditRecord.next_after(rewritten[-1] if rewritten else None, body)
        rewritten.append(replace(forged, signature=original.signature, signing_key=original.signing_key))
    table = _audit_table(scenario)
    for record in rewritten[start:]:
        table.put_item(Item=record.to_item())
    report = _audit(scenario.served, scenario.since, tmp_path / "rewritten")
    [check] = [c for c in report["checks"] if c["name"] == "audit_log_unaltered"]
    assert not report["ok"] and not check["ok"]
    first = records[start].seq
    assert check["failures"][0].startswith(f"record {first} does not carry a valid signature"), check["failures"]
    assert f"and {len(records) - start - 1} later record(s)" in check["failures"][0]
    # The hash chain itself is consistent: only the signatures tell.
    assert not [f for f in check["failures"] if "was altered" in f or "does not follow" in f], check["failures"]


def test_an_altered_record_or_audit_log_entry_fails_the_check_naming_it(scenario: Scenario, tmp_path: Path) -> None:
    s3, layout = aws.client("s3"), _layout()
    reason = layout.quarantine_reason("audit-missing-shard")
    original = s3.get_object(Bucket=reason.bucket, Key=reason.key)["Body"].read()
    s3.put_object(Bucket=reason.bucket, Key=reason.key, Body=original.replace(b"missing_object", b"checksum"))
    table = aws.session().resource("dynamodb").Table(scenario.stack["AuditTableName"])
    first = table.get_item(Key={"chain": CHAIN, "seq": 1}, ConsistentRead=True)["Item"]
    table.put_item(Item={**first, "body": str(first["body"]).replace('"Approved"', '"Rejected"')})
    report = _audit(scenario.served, scenario.since, tmp_path / "altered")
    [check] = [c for c in report["checks"] if c["name"] == "audit_log_unaltered"]
    assert not check["ok"]
    assert any("record 1 was altered" in f for f in check["failures"]), check["failures"]
    assert any("audit-missing-shard" in f and "quarantine record was altered" in f for f in check["failures"])
