"""The audit report for a time window: gathered once as plain data (written as JSON), rendered as HTML with the
same content (tables and a timeline chart of pipeline and bundle runs)."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from cryptography import x509

from audit import checks, collect, usage
from audit.signatures import SigningKey
from common import aws
from common.attestation import trusted_root
from common.audit_log import SIGNING_ALGORITHM, AuditRecord
from common.estimate import EstimateError, EstimateTable
from common.settings import DEFAULT_PREFIX, PIPELINE_NAME
from common.stack_outputs import read_outputs

TEMPLATE = "report.html.j2"
AUDIT_SIGNING_KEY_OUTPUT = "AuditSigningKeyArn"  # the data stack's output naming the recorder's signing key
ENCLAVE_KEY_OUTPUT = "EnclaveKeyArn"  # the enclave stack's, where the deployment has the enclave path


def _records_settled(sources: collect.Sources, bundles: list[dict[str, Any]], settle: float) -> list[AuditRecord]:
    """The audit log, once it holds a record of every ended bundle or ``settle`` seconds have passed (the
    recorder runs a moment after a bundle ends)."""
    deadline = time.monotonic() + settle
    expected = {
        ("bundle_completed" if b["outcome"] == "delivered" else "bundle_quarantined", b["bundle"])
        for b in bundles
        if b["outcome"] in ("delivered", "quarantined")
    }
    while True:
        records = collect.audit_records(sources)
        present = {(r.body.get("kind"), r.body.get("subject")) for r in records}
        if expected <= present or time.monotonic() >= deadline:
            return records
        sources.progress(f"waiting for {len(expected - present)} bundle outcome(s) to reach the audit log")
        time.sleep(2.0)


def _in_window(window: collect.Window, time_text: Any) -> bool:
    """Whether an event time (as EventBridge writes it) is in the window; one that does not parse is shown."""
    try:
        return window.holds(datetime.fromisoformat(str(time_text).replace("Z", "+00:00")))
    except (TypeError, ValueError):
        return True


def build(sources: collect.Sources, window: collect.Window, *, settle: float = 30.0) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready data."""
    sources.progress("pipeline executions")
    pipeline_runs = collect.pipeline_runs(sources, window)
    sources.progress("bundle executions")
    bundles = collect.bundle_runs(sources, window)
    sources.progress("audit log")
    records = _records_settled(sources, bundles, settle)
    erasures = collect.erased_owners(records)
    for bundle in bundles:  # an owner's erasure after its bundle ended took the bundle's objects, by design
        erasure = erasures.get(bundle["owner"])
        # When the recorder saw the owner's folders empty (not the announcement's own, settable, time).
        when = erasure and (erasure.get("confirmed_at") or erasure["time"])
        erased_at, ended = collect.moment(when), collect.moment(bundle.get("ended"))
        if erasure and erased_at and ended and erased_at >= ended:
            bundle["erased"] = {"time": when, "seq": erasure["seq"]}
    signing_key = SigningKey.from_kms(sources.kms, sources.signing_key_arn)
    decisions = collect.approvals(records)
    package_arns = {str(r["model_package"]["arn"]) for r in pipeline_runs if "model_package" in r}
    package_arns |= {str(b["model_package_arn"]) for b in bundles if b.get("model_package_arn")}
    package_arns |= {str(d["package_arn"]) for d in decisions}
    registry = collect.packages(sources, package_arns)
    sources.progress("inbox, outbox and quarantine records")
    manifests = collect.inbox_manifests(sources, window)
    current = collect.current_record_digests(sources, {(b["owner"], b["bundle_id"]) for b in bundles})
    delivered = [b for b in bundles if b["outcome"] == "delivered"]
    serving = {
        arn: collect.serving_versions_of(sources, arn)
        for arn in {str(b["model_package_arn"]) for b in delivered if b.get("path") != "enclave"}
    }
    sources.progress("enclave attestations")
    key_policy = collect.enclave_key_policy(sources)
    model_digests = collect.registered_model_digests(
        sources, {str(b["model_package_arn"]) for b in delivered if b.get("path") == "enclave"}
    )
    results = [
        checks.inbox_accounted_for(manifests, bundles),
        checks.served_while_approved(bundles, decisions, registry),
        checks.result_versions_match_model(bundles, serving),
        checks.enclave_served_as_attested(bundles, key_policy, model_digests),
        checks.objects_match_manifests(bundles),
        checks.audit_log_unaltered(records, bundles, current, signing_key),
    ]
    head = records[-1] if records else None
    return {
        "report": {
            "generated_at": datetime.now(tz=UTC).isoformat(),
            "window": {"since": window.since.isoformat(), "until": window.until.isoformat()},
            "pipeline": sources.pipeline_name,
            "state_machine": sources.state_machine_arn,
            "bundle_bucket": sources.bundle_bucket,
            "audit_log": {
                "records": len(records),
                "head_seq": head.seq if head else 0,
                "head_digest": head.digest if head else None,
                "integrity": (
                    "hash chain (sha256 over each record and its predecessor's digest), each record signed by the "
                    f"recorder ({SIGNING_ALGORITHM}, KMS key {signing_key.arn})"
                ),
                "signing_key": signing_key.arn,
            },
        },
        "ok": all(c.ok for c in results),
        "checks": [c.to_dict() for c in results],
        "pipeline_executions": pipeline_runs,
        "model_packages": list(registry.values()),
        "approvals": [d for d in decisions if window.holds(datetime.fromisoformat(d["time"]))],
        "endpoints": collect.version_endpoints(records),
        "refused_events": [e for e in collect.refused_events(records) if _in_window(window, e["time"])],
        "bundles": bundles,
        "enclave_key_policy": key_policy,
        "inbox": manifests,
        "usage": owner_usage(sources, window, records),
        "offboarding": collect.offboarding(records, window),
    }


def owner_usage(
    sources: collect.Sources, window: collect.Window, records: list[AuditRecord] | None = None
) -> dict[str, Any]:
    """Usage and cost per owner in the window (audit/usage.py), at the estimate table's prices."""
    records = collect.audit_records(sources) if records is None else records
    sources.progress("endpoints' instance time")
    endpoints = usage.endpoint_times(records, sources.scaling, sources.progress)
    try:
        prices: EstimateTable | None = EstimateTable.load()
    except EstimateError as error:
        sources.progress(f"no prices: {error}")
        prices = None
    endpoint_of = {
        execution: collect.validated_plan(sources, execution).get("endpoint")
        for execution in usage.quarantined_executions(records, window.since, window.until)
    }
    return usage.usage(
        records, endpoints, sources.endpoint_family, window.since, window.until, prices, endpoint_of=endpoint_of
    )


# ---- rendering -----------------------------------------------------------------------------------------------


def _bars(report: dict[str, Any]) -> list[tuple[str, datetime, datetime, str]]:
    """(label, start, end, outcome) for every pipeline and bundle run, in start order."""
    now = datetime.fromisoformat(report["report"]["generated_at"])
    bars = []
    for run in report["pipeline_executions"]:
        start = datetime.fromisoformat(run["started"])
        end = datetime.fromisoformat(run["ended"]) if run.get("ended") else now
        bars.append((f"pipeline {run['execution'].rsplit('/', 1)[-1]}", start, end, str(run["status"]).lower()))
    for bundle in report["bundles"]:
        start = datetime.fromisoformat(bundle["started"])
        end = datetime.fromisoformat(bundle["ended"]) if bundle.get("ended") else now
        bars.append((f"bundle {bundle['bundle']}", start, end, bundle["outcome"]))
    return sorted(bars, key=lambda bar: bar[1])


COLOURS = {
    "succeeded": "#2e7d32",
    "delivered": "#2e7d32",
    "failed": "#c62828",
    "quarantined": "#ef6c00",
    "executing": "#1565c0",
    "running": "#1565c0",
}


def timeline_svg(report: dict[str, Any]) -> str:
    """The runs as horizontal bars on a time axis (an inline SVG; no script, no external resource)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text (searchable, small), not glyph outlines
    bars = _bars(report)
    origin = bars[0][1] if bars else datetime.fromisoformat(report["report"]["window"]["since"])
    figure, axes = plt.subplots(figsize=(10, max(1.6, 0.35 * len(bars) + 1.0)))
    try:
        for row, (_, start, end, outcome) in enumerate(bars):
            left = (start - origin).total_seconds()
            width = max((end - start).total_seconds(), 0.5)  # an instant still shows
            axes.barh(row, width, left=left, color=COLOURS.get(outcome, "#757575"), height=0.6)
            axes.text(left, row, f" {outcome}", va="center", fontsize=7, color="black")
        axes.set_yticks(range(len(bars)), [bar[0] for bar in bars], fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel(f"seconds after {origin.isoformat(timespec='seconds')}")
        axes.set_title("Pipeline and bundle runs")
        axes.grid(axis="x", alpha=0.3)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog: the SVG sits inside the HTML page


@cache
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: dict[str, Any]) -> str:
    from markupsafe import Markup

    chart = Markup(timeline_svg(report))  # noqa: S704 (matplotlib's own SVG: no value from the report is markup)
    return str(_environment().get_template(TEMPLATE).render(r=report, chart=chart))


def sources_for(
    deployment: str, pipeline_name: str, progress: Any, attestation_root: x509.Certificate | None = None
) -> collect.Sources:
    stack = read_outputs(deployment)
    missing = [
        k for k in ("StateMachineArn", "BundleBucketName", "AuditTableName", AUDIT_SIGNING_KEY_OUTPUT) if k not in stack
    ]
    if missing:
        raise RuntimeError(
            f"deployment {deployment} lacks the outputs {', '.join(missing)}: redeploy it (fhe-deploy up)"
        )
    return collect.Sources(
        sagemaker=aws.client("sagemaker"),
        stepfunctions=aws.client("stepfunctions"),
        s3=aws.client("s3"),
        audit_table=aws.session().resource("dynamodb").Table(stack["AuditTableName"]),
        state_machine_arn=stack["StateMachineArn"],
        bundle_bucket=stack["BundleBucketName"],
        pipeline_name=pipeline_name,
        kms=aws.client("kms"),
        signing_key_arn=stack[AUDIT_SIGNING_KEY_OUTPUT],
        enclave_key_arn=stack.get(ENCLAVE_KEY_OUTPUT, ""),
        attestation_root=attestation_root or trusted_root(),  # FHE_ATTESTATION_ROOT's, else AWS's Nitro root
        progress=progress,
        scaling=aws.client("application-autoscaling"),
        endpoint_family=stack.get("EndpointName", ""),
    )


def write(data: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """``out``.json and ``out``.html; written next to each other, the JSON first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".html")
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    html_path.write_text(render_html(data))
    return json_path, html_path


def run(
    window: collect.Window,
    out: Path,
    *,
    deployment: str = DEFAULT_PREFIX,
    pipeline_name: str = PIPELINE_NAME,
    settle: float = 30.0,
    progress: Any = None,
    attestation_root: x509.Certificate | None = None,
) -> dict[str, Any]:
    """Build and write the report; returns its data (``data["ok"]`` says whether every check passed)."""
    sources = sources_for(deployment, pipeline_name, progress or (lambda line: None), attestation_root)
    data = build(sources, window, settle=settle)
    json_path, html_path = write(data, out)
    data["files"] = {"json": str(json_path), "html": str(html_path)}
    return data
