"""The local AWS (ministack), with one route more: ``POST /_fhe/authorize``, where the local SageMaker asks the
local AWS to authenticate and authorize a request it received, as SageMaker asks IAM on AWS.

The body is the request as the local SageMaker received it (method, raw path, query, headers, body in base64)
and what it asks for (an IAM action, the resource ARN, the request's own condition keys). ministack checks the
signature, the session token and the clock skew with the caller's own secret, resolves the principal, and
evaluates its identity policies (and session policies, boundaries) for the action on the resource. The answer
is the decision and the principal's ARN, never a credential.

This file runs in ministack's own virtual environment (``local/lifecycle.py`` starts it in place of
``python -m ministack``), so it imports nothing of the project's; it relies on ministack's request-pinning and
evaluation functions of the pinned version, the ones its own dispatch uses.

Two corrections to ministack, so it is no stricter than AWS, where it authorizes on ``*`` a call that AWS
authorizes on the resource it names (a policy granting the call on that resource, as AWS allows, would be
refused): ``cloudwatch:DeleteAlarms`` naming one alarm is authorized on the alarm's ARN, and a Step Functions
call naming a map run (``ListExecutions``, ``DescribeMapRun``) on the map run's ARN.

Rules of AWS that ministack does not apply:
- ``events:PutEvents`` carries the condition keys ``events:source`` and ``events:detail-type`` (each entry's), so a
  policy can let a role send only its own events; ministack leaves them out, and a policy naming them refused
  every event.
- A standard execution that runs past its state machine's top-level ``TimeoutSeconds`` ends as ``TIMED_OUT`` (an
  ``ExecutionTimedOut`` history event and the EventBridge status change); ministack let it run.
- ``aws:PrincipalArn`` of a role session is the role's ARN (``arn:aws:iam::<account>:role/<name>``), as AWS
  documents, where ministack gave the session's (``arn:aws:sts::…:assumed-role/<name>/<session>``), which no
  condition naming a role could match.
- An execution that has ended (stopped, timed out) stays as it ended; ministack overwrote it as FAILED when its
  walk failed later."""

# mypy: ignore-errors

from __future__ import annotations

import base64
import contextvars
import json
import re
import sys
import threading
from urllib.parse import parse_qs

from ministack import app as ministack
from ministack.core import iam_actions
from ministack.core import iam_evaluator as iam
from ministack.core.responses import set_request_account_id, set_request_client_ip, set_request_region
from ministack.core.router import extract_access_key_id, extract_region
from ministack.services import stepfunctions as sfn

ROUTE = "/_fhe/authorize"
_served = ministack.app
_ministack_resource_arn = iam_actions.extract_resource_arn
_ministack_run_execution = sfn._run_execution
_ministack_request_context = iam_actions.request_tag_context
_ministack_condition_key = iam._resolve_condition_key
_ROLE_SESSION = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")
_ministack_fail_execution = sfn._fail_execution


def _named_alarms(body: bytes, query: dict) -> list:
    try:
        names = json.loads(body or b"{}").get("AlarmNames") or []
    except (ValueError, AttributeError):
        names = []
    return names or [values[0] for key, values in sorted(query.items()) if key.startswith("AlarmNames.member.")]


def resource_arn(service, method, path, headers, body, query_params, region, account_id) -> str:
    """ministack's resource ARN of a request, corrected as the module says."""
    resource = _ministack_resource_arn(service, method, path, headers, body, query_params, region, account_id)
    if resource != "*":
        return resource
    if service == "monitoring" and len(names := _named_alarms(body, query_params or {})) == 1:
        return f"arn:aws:cloudwatch:{region}:{account_id}:alarm:{names[0]}"
    if service == "states":
        try:
            map_run = json.loads(body or b"{}").get("mapRunArn")
        except (ValueError, AttributeError):
            map_run = None
        return str(map_run) if map_run else resource
    return resource


def decide(question: dict, client_ip: str) -> dict:
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


def _time_out(execution: dict, seconds: float) -> None:
    """End ``execution`` as AWS does once it has run ``seconds``: the walk of its states stops at the next state,
    since it only goes on while the status is RUNNING."""
    if execution.get("status") != "RUNNING":
        return
    execution["status"] = "TIMED_OUT"
    execution["stopDate"] = sfn.now_iso()
    execution["error"] = "States.Timeout"
    execution["cause"] = f"The execution ran longer than its TimeoutSeconds ({seconds:g} s)."
    sfn._add_event(
        execution,
        "ExecutionTimedOut",
        {
            "executionTimedOutEventDetails": {"error": execution["error"], "cause": execution["cause"]},
        },
    )
    sfn._emit_execution_status_event(execution)


def run_execution(exec_arn) -> None:
    """ministack's execution walk, under its state machine's TimeoutSeconds."""
    execution = sfn._executions.get(exec_arn)
    machine = sfn._state_machines.get((execution or {}).get("stateMachineArn"))
    try:
        seconds = json.loads(machine["definition"]).get("TimeoutSeconds") if machine else None
    except (ValueError, TypeError):
        seconds = None
    timer = None
    if isinstance(seconds, int) and seconds > 0 and not execution.get("sync"):
        # In the execution's own context (its account and region), as its walk runs.
        timer = threading.Timer(seconds, contextvars.copy_context().run, args=(_time_out, execution, seconds))
        timer.daemon = True
        timer.start()
    try:
        _ministack_run_execution(exec_arn)
    finally:
        if timer is not None:
            timer.cancel()


def request_context(service, iam_action, body, params) -> dict:
    """ministack's request condition keys, with PutEvents' own: every entry's source and detail type."""
    context = _ministack_request_context(service, iam_action, body, params)
    if iam_action != "events:PutEvents":
        return context
    try:
        entries = json.loads(body or b"{}").get("Entries") or []
    except (ValueError, AttributeError):
        entries = []
    entries = [entry for entry in entries if isinstance(entry, dict)]
    return {
        **context,
        "events:source": [str(entry.get("Source", "")) for entry in entries],
        "events:detail-type": [str(entry.get("DetailType", "")) for entry in entries],
    }


def condition_key(key, ctx):
    """ministack's value of a condition key, with a role session's ``aws:PrincipalArn`` its role's ARN."""
    value = _ministack_condition_key(key, ctx)
    if key.lower() == "aws:principalarn" and isinstance(value, str) and (session := _ROLE_SESSION.match(value)):
        partition, account, role = session.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return value


def fail_execution(execution: dict, error, cause) -> None:
    if execution.get("status") == "RUNNING":
        _ministack_fail_execution(execution, error, cause)


async def app(scope: dict, receive, send) -> None:
    if scope.get("type") != "http" or scope.get("path") != ROUTE or scope.get("method") != "POST":
        await _served(scope, receive, send)
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


if __name__ == "__main__":
    ministack.app = app  # what main() serves
    iam_actions.extract_resource_arn = resource_arn  # looked up at each call by ministack's dispatch
    sfn._run_execution = run_execution  # looked up when an execution starts
    sfn._fail_execution = fail_execution
    iam_actions.request_tag_context = request_context  # imported from the module at each call by the dispatch
    iam._resolve_condition_key = condition_key  # looked up at each condition evaluated
    sys.argv[1:] = []
    ministack.main()
