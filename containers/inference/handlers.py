"""What ``POST /invocations`` does, for each kind of request it accepts.

- A shard request (``{"fhe_request": "fhe-shard", ...}``, see ``common.bundle``): read and validate the
  manifest, check model and versions and the key's size against the served circuit's keys, fetch the shard
  (checked against its size and hash), have an evaluator evaluate every ciphertext (fetching the evaluation key,
  checked against its hash, only when that evaluator has not loaded it), write the result shard to
  ``result_uri`` and answer where it is.
- The reference request (``{"evaluation_keys_uri": "s3://…", "encrypted_query_uri": "s3://…"}``): one
  serialized query, answered with the encrypted prediction bytes.

Every problem with the request is a ``BundleError`` naming the field; the app turns it into a 400.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from common.bundle.messages import ShardResult, parse_shard_request
from common.bundle.schema import BundleError, check_s3_uri, sha256_hex
from common.bundle.serving import check_model, check_versions
from common.bundle.shards import encode_shard, parse_shard
from common.bundle.store import get_bytes, read_evaluation_key, read_manifest, read_shard
from common.s3uri import S3Uri
from containers.inference.engine import InferenceEngine

log = logging.getLogger("containers.inference")

MAX_REFERENCE_QUERY_BYTES = 64 * 1024**2
REFERENCE_FIELDS = ("evaluation_keys_uri", "encrypted_query_uri")


@dataclass(frozen=True)
class Response:
    body: bytes
    content_type: str


class Handlers:
    def __init__(self, engine: InferenceEngine, s3: Any, package_arn: str | None) -> None:
        self.engine = engine
        self.s3 = s3
        self.package_arn = package_arn

    def handle(self, request: dict[str, Any]) -> Response:
        if "fhe_request" in request:
            return self.shard(request)
        if any(field in request for field in REFERENCE_FIELDS):
            return self.reference(request)
        raise BundleError(
            "request", "is neither a shard request (fhe_request) nor a reference request (evaluation_keys_uri)"
        )

    def shard(self, raw: dict[str, Any]) -> Response:
        started = time.perf_counter()
        request = parse_shard_request(raw)
        if not self.package_arn:
            raise RuntimeError("the endpoint's model lacks FHE_MODEL_PACKAGE_ARN; redeploy it with `deploy`")
        manifest_uri = S3Uri.parse(request.manifest_uri)
        manifest, _ = read_manifest(self.s3, manifest_uri)
        if manifest.kind != "request":
            raise BundleError("kind", "the endpoint evaluates request bundles only")
        check_model(manifest, self.package_arn)
        check_versions(manifest, self.engine.versions)
        self.engine.check_key_size(manifest.evaluation_key.size)
        entry = manifest.shard(request.shard_index)

        def fetch_key() -> bytes:
            # Logged so that key traffic can be counted: a cached key is fetched once per endpoint instance.
            data = read_evaluation_key(self.s3, manifest)
            log.info(
                "evaluation key %s fetched for bundle %s: %d bytes",
                manifest.evaluation_key.sha256[:16],
                manifest.bundle_id,
                len(data),
            )
            return data

        data = read_shard(self.s3, manifest_uri, entry)
        field = f"shards[{entry.index}]"
        ciphertexts = parse_shard(data, expected_samples=entry.samples, field=field)
        del data
        fhe_started = time.perf_counter()
        outputs = self.engine.evaluate(manifest.evaluation_key.sha256, fetch_key, ciphertexts, field)
        fhe_seconds = time.perf_counter() - fhe_started
        result = encode_shard(outputs, kind="results")
        result_uri = S3Uri.parse(request.result_uri)
        self.s3.put_object(Bucket=result_uri.bucket, Key=result_uri.key, Body=result)
        seconds = time.perf_counter() - started
        answer = ShardResult(
            bundle_id=manifest.bundle_id,
            shard_index=entry.index,
            result_uri=str(result_uri),
            samples=len(outputs),
            sha256=sha256_hex(result),
            size=len(result),
            seconds=round(seconds, 3),
            fhe_seconds=round(fhe_seconds, 3),
        )
        log.info(
            "shard evaluated: bundle %s shard %d, %d samples in %.3f s (FHE %.3f s) on %d threads",
            manifest.bundle_id,
            entry.index,
            len(outputs),
            seconds,
            fhe_seconds,
            self.engine.threads,
        )
        return Response(answer.to_json(), "application/json")

    def reference(self, request: dict[str, Any]) -> Response:
        unknown = sorted(set(request) - set(REFERENCE_FIELDS))
        if unknown:
            raise BundleError(unknown[0], "is not a field of the reference request")
        uris = {}
        for field in REFERENCE_FIELDS:
            value = request.get(field)
            if not isinstance(value, str):
                raise BundleError(field, "is missing or not a string", "missing_field")
            uris[field] = S3Uri.parse(check_s3_uri(value, field))
        key_bytes = get_bytes(
            self.s3, uris["evaluation_keys_uri"], field="evaluation_keys_uri", limit=self.engine.key_limit
        )
        query = get_bytes(
            self.s3, uris["encrypted_query_uri"], field="encrypted_query_uri", limit=MAX_REFERENCE_QUERY_BYTES
        )
        (prediction,) = self.engine.evaluate(sha256_hex(key_bytes), lambda: key_bytes, [query], "encrypted_query_uri")
        log.info("reference query evaluated: %d output bytes", len(prediction))
        return Response(prediction, "application/octet-stream")
