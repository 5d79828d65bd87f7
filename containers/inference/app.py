"""The serving app under SageMaker's contract: ``GET /ping`` and ``POST /invocations`` on port 8080,
the model in ``/opt/ml/model``. The evaluator processes load the circuit when the app is created.

A refused request is a 400 naming the field and the reason; anything else is a 500 whose body says only that an
internal error happened, with an id to find its details in the container's log: an exception's text may name
the endpoint's role, its account or an object, none of which is the requester's to read."""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

from flask import Flask, Response, request

from common import aws
from common.artifacts import PACKAGE_ARN_VARIABLE
from common.bundle.schema import BundleError
from containers.contract import model_dir
from containers.inference.engine import DEFAULT_KEY_CACHE_BYTES, InferenceEngine, evaluators_from_environment
from containers.inference.handlers import Handlers

log = logging.getLogger("containers.inference")

MAX_REQUEST_BYTES = 64 * 1024


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_app(handlers: Handlers | None = None) -> Flask:
    if handlers is None:
        engine = InferenceEngine(
            model_dir(),
            evaluators=evaluators_from_environment(),
            threads=int(os.environ["FHE_WORKERS"]) if os.environ.get("FHE_WORKERS") else None,
            key_cache_bytes=int(os.environ.get("FHE_KEY_CACHE_BYTES") or DEFAULT_KEY_CACHE_BYTES),
        )
        handlers = Handlers(engine, aws.client("s3"), os.environ.get(PACKAGE_ARN_VARIABLE))
    app = Flask("fhe-inference")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    @app.get("/ping")
    def ping() -> Response:
        # Healthy while an evaluator runs or is being started: with none left, SageMaker replaces the instance.
        healthy = handlers.engine.serving
        status = {"status": "healthy" if healthy else "unhealthy", **handlers.engine.status()}
        return _json(200 if healthy else 503, status)

    @app.post("/invocations")
    def invocations() -> Response:
        try:
            try:
                body = json.loads(request.get_data() or b"")
            except (ValueError, RecursionError):
                raise BundleError("request", "the body is not JSON", "not_json") from None
            if not isinstance(body, dict):
                raise BundleError("request", "the body must be a JSON object", "not_json")
            answer = handlers.handle(body)
        except BundleError as error:
            # The code and field only: the message can name S3 places, which carry the owner's folder.
            log.warning("request refused (%s) at %s", error.code, error.field)
            return _json(400, {"error": error.to_dict()})
        except Exception as error:
            error_id = getattr(error, "error_id", None) or uuid.uuid4().hex[:12]
            log.exception("request failed (error id %s)", error_id)
            message = (
                f"internal error {error_id}: the endpoint could not serve this request; its operator finds why in "
                "the endpoint's log under this id"
            )
            return _json(500, {"error": {"field": "request", "code": "internal", "message": message}})
        return Response(answer.body, status=200, mimetype=answer.content_type)

    return app
