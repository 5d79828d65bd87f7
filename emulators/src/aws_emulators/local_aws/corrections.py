"""Corrections to ministack's own services, where it is laxer or stricter than AWS (the list is in the package's
docstring): the Step Functions, CloudWatch and IAM rules. Each function here wraps the ministack function of the pinned
version it replaces (``install``)."""

from __future__ import annotations

import contextvars
import json
import re
import threading
from typing import Any

from ministack.core import iam_actions
from ministack.core import iam_evaluator as iam
from ministack.services import ec2
from ministack.services import stepfunctions as sfn

from aws_emulators.local_aws.kms_recipient import request_condition_keys

_ministack_resource_arn = iam_actions.extract_resource_arn
_ministack_run_execution = sfn._run_execution
_ministack_request_context = iam_actions.request_tag_context
_ministack_condition_key = iam._resolve_condition_key
_ministack_fail_execution = sfn._fail_execution
_ministack_conditions_met = iam._conditions_met
_ministack_parse_lt_data = ec2._parse_lt_data
_ministack_lt_data_xml = ec2._lt_data_xml
_ROLE_SESSION = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$")
# A policy variable in a condition's value: ``${aws:PrincipalTag/owner}``, ``${key, 'default'}``; ``${*}``, ``${?}``
# and ``${$}`` stand for the characters themselves.
_POLICY_VARIABLE = re.compile(r"\$\{([^}',]+)(?:,\s*'([^']*)')?\s*\}")
_LITERALS = {"*": "*", "?": "?", "$": "$"}


class _Unresolved(Exception):
    """A policy variable whose key the request does not carry, and without a default."""


def _named_alarms(body: bytes, query: dict[str, list[str]]) -> list[str]:
    try:
        names = json.loads(body or b"{}").get("AlarmNames") or []
    except (ValueError, AttributeError):
        names = []
    return names or [values[0] for key, values in sorted(query.items()) if key.startswith("AlarmNames.member.")]


def resource_arn(
    service: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query_params: dict[str, list[str]] | None,
    region: str,
    account_id: str,
) -> str:
    """ministack's resource ARN of a request, corrected as the module says."""
    resource: str = _ministack_resource_arn(service, method, path, headers, body, query_params, region, account_id)
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


def _time_out(execution: dict[str, Any], seconds: float) -> None:
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


def run_execution(exec_arn: str) -> None:
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


def _encryption_context_keys(body: bytes) -> dict[str, Any]:
    """KMS's ``kms:EncryptionContext:<key>`` (each pair of the request's encryption context; the key's name is
    matched without regard to case, as AWS does) and ``kms:EncryptionContextKeys``."""
    try:
        context = json.loads(body or b"{}").get("EncryptionContext")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    if not isinstance(context, dict) or not context:
        return {}
    pairs = {str(key): str(value) for key, value in context.items()}
    return {
        **{f"kms:encryptioncontext:{key.lower()}": value for key, value in pairs.items()},
        "kms:encryptioncontextkeys": sorted(pairs),
    }


def request_context(service: str, iam_action: str, body: bytes, params: dict[str, Any]) -> dict[str, Any]:
    """ministack's request condition keys, with PutEvents' own (every entry's source and detail type) and KMS's
    (the encryption context's, and the attestation keys of a verified ``Recipient``)."""
    context: dict[str, Any] = _ministack_request_context(service, iam_action, body, params)
    if service == "kms":
        return {**context, **_encryption_context_keys(body), **request_condition_keys(iam_action, body)}
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


def condition_key(key: str, ctx: Any) -> Any:
    """ministack's value of a condition key, with a role session's ``aws:PrincipalArn`` its role's ARN."""
    value = _ministack_condition_key(key, ctx)
    if key.lower() == "aws:principalarn" and isinstance(value, str) and (session := _ROLE_SESSION.match(value)):
        partition, account, role = session.groups()
        return f"arn:{partition}:iam::{account}:role/{role}"
    return value


def _substituted(value: Any, ctx: Any) -> Any:
    if isinstance(value, list):
        return [_substituted(item, ctx) for item in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def resolve(variable: re.Match[str]) -> str:
        key, default = variable.group(1).strip(), variable.group(2)
        if key in _LITERALS:
            return _LITERALS[key]
        resolved = condition_key(key, ctx)
        if isinstance(resolved, str):
            return resolved
        if default is not None:
            return default
        raise _Unresolved(key)

    return _POLICY_VARIABLE.sub(resolve, value)


def conditions_met(conditions: dict[str, Any], ctx: Any) -> bool:
    """ministack's evaluation of a statement's conditions, with the policy variables in their values replaced by the
    request's values, as AWS does; a variable whose key the request lacks (and has no default) fails the condition.
    ministack compared the text ``${aws:PrincipalTag/owner}`` itself, which no request could match."""
    try:
        substituted = {
            operator: {key: _substituted(expected, ctx) for key, expected in pairs.items()}
            if isinstance(pairs, dict)
            else pairs
            for operator, pairs in (conditions or {}).items()
        }
    except _Unresolved:
        return False
    return bool(_ministack_conditions_met(substituted, ctx))


def _flag(value: Any) -> str:
    return "true" if str(value).lower() == "true" else "false"


def launch_template_data(params: dict[str, Any], prefix: str = "LaunchTemplateData") -> dict[str, Any]:
    """ministack's launch template data of a CreateLaunchTemplate(Version) request, with ``EnclaveOptions``, which
    it dropped."""
    data: dict[str, Any] = _ministack_parse_lt_data(params, prefix)
    enabled = ec2._p(params, f"{prefix}.EnclaveOptions.Enabled")
    if enabled:
        data["EnclaveOptions"] = {"Enabled": _flag(enabled) == "true"}
    return data


def launch_template_data_xml(data: dict[str, Any]) -> str:
    """ministack's rendering of launch template data, with ``EnclaveOptions``, which it left out."""
    xml: str = _ministack_lt_data_xml(data)
    if isinstance(options := data.get("EnclaveOptions"), dict) and "Enabled" in options:
        xml += f"<enclaveOptions><enabled>{_flag(options['Enabled'])}</enabled></enclaveOptions>"
    return xml


def fail_execution(execution: dict[str, Any], error: str, cause: str) -> None:
    if execution.get("status") == "RUNNING":
        _ministack_fail_execution(execution, error, cause)


def install() -> None:
    """Put the corrections in place of the functions they wrap (each looked up by ministack at every call)."""
    iam_actions.extract_resource_arn = resource_arn  # looked up at each call by ministack's dispatch
    sfn._run_execution = run_execution  # looked up when an execution starts
    sfn._fail_execution = fail_execution
    iam_actions.request_tag_context = request_context  # imported from the module at each call by the dispatch
    iam._resolve_condition_key = condition_key  # looked up at each condition evaluated
    iam._conditions_met = conditions_met  # looked up at each statement evaluated
    ec2._parse_lt_data = launch_template_data  # looked up by CreateLaunchTemplate(Version)
    ec2._lt_data_xml = launch_template_data_xml  # looked up by each rendering of a version
