"""Assemble the result bundle: every shard's result, read from its fixed key (``requests/<owner>/<bundle id>/results/``,
listed a page at a time: the execution's state carries none of them), checked against the request, then the
result manifest under ``outbox/<owner>/`` (written last, the commit point the client waits for), then a "Bundle
Completed" event."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.bundle.enclave_manifest import EnclaveManifest, parse_enclave_manifest
from common.bundle.enclave_manifest import result_manifest as enclave_result_manifest
from common.bundle.manifest import Manifest, parse_manifest
from common.bundle.schema import MAX_MANIFEST_BYTES, BundleError, sha256_hex
from common.bundle.store import (
    get_bytes,
    read_shard_results,
    result_entries,
    result_manifest,
    write_result_manifest,
)
from common.bundle.usage import ServedUsage, served_usage, write_usage_record
from common.workflow import BundleRef, EventError
from lambdas.runtime import BundleRejected, client, logger, metrics, publish, tracer, transient_aws_errors

STAGE = "assemble"


def _answer(s3: Any, bundle: BundleRef, plan: dict[str, Any]) -> tuple[Manifest | EnclaveManifest, ServedUsage]:
    """The result manifest of the bundle's path (its shards' results checked against the request's shards), and the
    time its servers reported."""
    layout = bundle.layout
    data = get_bytes(s3, bundle.manifest_uri, field="manifest", limit=MAX_MANIFEST_BYTES)
    request_sha256 = sha256_hex(data)
    if request_sha256 != plan.get("request_sha256"):
        raise BundleError("manifest", "changed while the bundle was running", "manifest_changed")
    prefix = layout.result_prefix(bundle.bundle_id)
    if plan.get("path") == "enclave":
        sealed = parse_enclave_manifest(data)
        indices = [entry.index for entry in sealed.shards]
        results = read_shard_results(s3, layout, bundle.bundle_id, indices)
        shards = result_entries(sealed.shards, sealed.bundle_id, prefix, results)
        return enclave_result_manifest(sealed, request_sha256, shards), served_usage(results)
    request = parse_manifest(data)
    results = read_shard_results(s3, layout, bundle.bundle_id, [entry.index for entry in request.shards])
    return result_manifest(request, request_sha256, prefix, results), served_usage(results)


def assemble(bundle: BundleRef, plan: dict[str, Any], execution: str) -> dict[str, Any]:
    s3, layout = client("s3"), bundle.layout
    try:
        with transient_aws_errors():
            answer, usage = _answer(s3, bundle, plan)
            # The usage record first: the result manifest is the owner's commit point.
            usage_record = write_usage_record(s3, layout, bundle.bundle_id, usage)
            written = write_result_manifest(s3, layout, answer)
    except BundleError as error:
        raise BundleRejected(STAGE, error.code, str(error), field=error.field) from None
    except (KeyError, ValueError) as error:
        raise BundleRejected(STAGE, "bad_result", f"an endpoint answer is unusable: {error}") from None
    detail = {
        "owner": bundle.owner,
        "bundle_id": bundle.bundle_id,
        "execution": execution,
        "model_package_arn": answer.model.package_arn,
        "samples": answer.total_samples,
        "shards": len(answer.shards),
        "result_manifest": str(written.uri),
        "result_manifest_sha256": written.sha256,
        "usage_record": str(usage_record.uri),
        "usage_sha256": usage_record.sha256,
    }
    publish("Bundle Completed", detail)
    # The log names no owner (nor its folders): the bundle id and execution say which bundle.
    logger.info("bundle delivered", extra={k: detail[k] for k in ("bundle_id", "execution", "samples", "shards")})
    metrics.add_metric(name="BundlesCompleted", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="SamplesCompleted", unit=MetricUnit.Count, value=answer.total_samples)
    return {"result_manifest": str(written.uri), "samples": answer.total_samples, "shards": len(answer.shards)}


@logger.inject_lambda_context(correlation_id_path="bundle.bundle_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    plan = event.get("plan")
    if not isinstance(plan, dict):
        raise EventError("assemble takes the plan Validate returned (an object)")
    return assemble(BundleRef.from_dict(event.get("bundle")), plan, str(event.get("execution") or ""))
