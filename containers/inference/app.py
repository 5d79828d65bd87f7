"""The serving app under SageMaker's contract: ``GET /ping`` and ``POST /invocations`` on port 8080,
the model in ``/opt/ml/model``. The circuit is loaded once, when the app is created."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from flask import Flask, Response, request

from common import aws
from common.artifacts import PACKAGE_ARN_VARIABLE
from common.bundle.schema import BundleError
from containers.contract import model_dir
from containers.inference.engine import DEFAULT_KEY_CACHE_BYTES, InferenceEngine
from containers.inference.handlers import Handlers

log = logging.getLogger("containers.inference")

MAX_REQUEST_BYTES = 64 * 1024


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def create_app(handlers: Handlers | None = None) -> Flask:
    if handlers is None:
        engine = InferenceEngine(
            model_dir(),
            workers=int(os.environ["FHE_WORKERS"]) if os.environ.get("FHE_WORKERS") else None,
            key_cache_bytes=int(os.environ.get("FHE_KEY_CACHE_BYTES", DEFAULT_KEY_CACHE_BYTES)),
        )
        handlers = Handlers(engine, aws.client("s3"), os.environ.get(PACKAGE_ARN_VARIABLE))
    app = Flask("fhe-inference")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES

    @app.get("/ping")
    def ping() -> Response:
        return _json(200, {"status": "healthy", "workers": handlers.engine.workers})

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
            log.warning("request refused (%s): %s", error.code, error)
            return _json(400, {"error": error.to_dict()})
        except Exception as error:
            # The message names the failing operation only: no request content is echoed.
            log.exception("request failed")
            return _json(500, {"error": {"code": "internal", "message": f"{type(error).__name__}: {error}"[:500]}})
        return Response(answer.body, status=200, mimetype=answer.content_type)

    return app
