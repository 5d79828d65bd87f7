"""``POST /_fhe/authorize``: where the local SageMaker asks the local AWS to authenticate and authorize a request it
received, as SageMaker asks IAM on AWS.

The body is the request as the local SageMaker received it (method, raw path, query, headers, body in base64)
and what it asks for (an IAM action, the resource ARN, the request's own condition keys). ministack checks the
signature, the session token and the clock skew with the caller's own secret, resolves the principal, and
evaluates its identity policies (and session policies, boundaries) for the action on the resource. The answer
is the decision and the principal's ARN, never a credential. It relies on ministack's request-pinning and
evaluation functions of the pinned version, the ones its own dispatch uses."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from ministack import app as ministack
from ministack.core import iam_evaluator as iam
from ministack.core.responses import set_request_account_id, set_request_client_ip, set_request_region
from ministack.core.router import extract_access_key_id, extract_region

ROUTE = "/_fhe/authorize"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def decide(question: dict[str, Any], client_ip: str) -> dict[str, Any]:
    """Authenticate the signed request in ``question`` and authorize its ``action`` on its ``resource``."""
    request = question["request"]
    raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request["headers"]]
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in raw_headers}
    query = parse_qs(request.get("query", ""), keep_blank_values=True)
    body = base64.b64decode(request.get("body", ""))
    access_key = extract_access_key_id(headers, query)
    set_request_client_ip(client_ip)
    iam.pin_request_origin(client_ip, bool(request.get("secure", True)))
    if access_key:
        set_request_account_id(ministack._request_account_scope(access_key))
    set_request_region(extract_region(headers, query))
    iam.pin_signed_request(request["method"], request["path"], query, raw_headers)
    iam.pin_signed_body(body)
    iam.pin_request_caller(headers, query)
    action, resource = question["action"], question.get("resource") or "*"
    context = question.get("context") or None  # the request's own condition keys (iam:PassedToService…)
    service = action.split(":", 1)[0]
    denied = iam.enforce(access_key, action, service, extract_region(headers, query), resource, context)
    principal = iam.caller_arn()
    if denied is None:
        return {"decision": "Allow", "principal": principal}
    if isinstance(denied, iam.AuthError):
        return {"decision": "Unauthenticated", "code": denied.code, "message": denied.message}
    return {"decision": denied.decision, "principal": denied.principal_arn or principal}


def with_authorize_route(served: Asgi) -> Asgi:
    """``served`` (ministack's ASGI application) with the authorization route in front."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("path") != ROUTE or scope.get("method") != "POST":
            await served(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        client_ip = (scope.get("client") or ("127.0.0.1",))[0]
        try:
            status, answer = 200, decide(json.loads(b"".join(chunks)), client_ip)
        except (KeyError, TypeError, ValueError) as error:
            status, answer = 400, {"decision": "Invalid", "message": f"malformed authorization question: {error}"}
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app
