"""Reading the templates' IAM as AWS would: the intrinsics resolved to concrete ARNs, and a policy evaluator for the
subset of IAM the templates use (Allow/Deny, Action/NotAction, Resource, Principal, and the condition operators
below, with the ForAllValues/ForAnyValue set qualifiers). An operator it does not know is an error, never a silent
match. Another stack's export (``Fn::ImportValue``) resolves to the value in ``IMPORTS``.

The evaluation order is AWS's within one account: an explicit Deny in any policy wins; otherwise an Allow in an
identity policy or in the resource's policy allows; otherwise the request is implicitly denied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from infrastructure.templates import load

ACCOUNT = "111122223333"
REGION = "us-east-1"
PARAMETERS = {
    "Prefix": "fhe",
    "KeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/deployment-key",
    "ArtifactBucket": f"fhe-artifacts-{ACCOUNT}-{REGION}",
    "TrainingRepositoryArn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/fhe-training",
    "InferenceRepositoryArn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/fhe-inference",
    "EndpointName": "fhe-inference",
    "DataBucketName": f"fhe-data-{ACCOUNT}-{REGION}",
    "ModelBucketName": f"fhe-models-{ACCOUNT}-{REGION}",
    "BundleBucketName": f"fhe-bundles-{ACCOUNT}-{REGION}",
    "AuditTableName": "fhe-audit",
}
NO_VALUE = object()  # AWS::NoValue: the property or list item is left out
# What the product stack imports from the data stack, by export name.
IMPORTS = {"fhe-audit-signing-key": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/audit-signing-key"}
ROOT = f"arn:aws:iam::{ACCOUNT}:root"  # in a resource policy: the account, whose IAM policies then decide
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/fhe/0",
}
_SERVICE = {
    "AWS::SQS::Queue": "sqs",
    "AWS::DynamoDB::Table": "dynamodb",
    "AWS::SNS::Topic": "sns",
    "AWS::Lambda::Function": "lambda",
    "AWS::StepFunctions::StateMachine": "states",
    "AWS::Events::Rule": "events",
    "AWS::KMS::Key": "kms",
    "AWS::ECR::Repository": "ecr",
    "AWS::Scheduler::Schedule": "scheduler",
}


class Template:
    """A template with its parameters' defaults and ``PARAMETERS`` filled in, and every intrinsic resolvable."""

    def __init__(self, path: Path, parameters: dict[str, str] | None = None) -> None:
        self.raw = load(path)
        declared = self.raw.get("Parameters", {})
        self.parameters = {n: str(s["Default"]) for n, s in declared.items() if "Default" in s}
        self.parameters.update({k: v for k, v in (parameters or PARAMETERS).items() if k in declared})
        self.resources: dict[str, dict[str, Any]] = self.raw["Resources"]
        self._names: dict[str, str] = {}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: spec for name, spec in self.resources.items() if spec["Type"] == kind}

    def properties(self, name: str) -> Any:
        return self.resolve(self.resources[name].get("Properties", {}))

    def _name(self, logical: str) -> str:
        spec = self.resources[logical]
        properties = spec.get("Properties", {})
        for key in ("BucketName", "RoleName", "FunctionName", "TopicName", "StateMachineName", "Name"):
            if key in properties:
                return str(self.resolve(properties[key]))
        return logical

    def ref(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if name in PSEUDO:
            return PSEUDO[name]
        kind = self.resources[name]["Type"]
        if kind in ("AWS::S3::Bucket", "AWS::IAM::Role", "AWS::Lambda::Function", "AWS::DynamoDB::Table"):
            return self._name(name)
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        return self.arn(name)

    def arn(self, name: str) -> str:
        kind, resource = self.resources[name]["Type"], self._name(name)
        if kind == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{resource}"
        if kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{resource}"
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:aws:iam::{ACCOUNT}:policy/{resource}"
        if kind == "AWS::Lambda::Function":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{resource}"
        if kind == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{resource}"
        if kind == "AWS::StepFunctions::StateMachine":
            return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{resource}"
        return f"arn:aws:{_SERVICE[kind]}:{REGION}:{ACCOUNT}:{resource}"

    def _sub(self, text: str, extra: dict[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            token = match[1]
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in extra:
                return str(self.resolve(extra[token]))
            if token.endswith(".Arn"):
                return self.arn(token.removesuffix(".Arn"))
            return self.ref(token)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    def condition(self, node: Any) -> bool:
        """A template condition (by name, or a condition function), evaluated with the template's parameters."""
        if isinstance(node, str):
            return self.condition(self.raw["Conditions"][node])
        ((function, arguments),) = node.items()
        if function == "Condition":
            return self.condition(arguments)
        if function == "Fn::Not":
            return not self.condition(arguments[0])
        if function == "Fn::And":
            return all(self.condition(item) for item in arguments)
        if function == "Fn::Or":
            return any(self.condition(item) for item in arguments)
        if function == "Fn::Equals":
            left, right = (self.resolve(item) for item in arguments)
            return bool(str(left) == str(right))
        raise AssertionError(f"condition function {function} is not evaluated here")

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [resolved for item in node if (resolved := self.resolve(item)) is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            return self.resolve(when_true if self.condition(name) else when_false)
        if set(node) == {"Ref"}:
            if node["Ref"] == "AWS::NoValue":
                return NO_VALUE
            return self.ref(node["Ref"])
        if set(node) == {"Fn::GetAtt"}:
            logical, attribute = node["Fn::GetAtt"]
            if attribute != "Arn":
                return f"{logical}.{attribute}"
            return self.arn(logical)
        if set(node) == {"Fn::Sub"}:
            value = node["Fn::Sub"]
            text, extra = (value, {}) if isinstance(value, str) else (value[0], value[1])
            return self._sub(text, extra)
        if set(node) == {"Fn::ImportValue"}:
            return IMPORTS[str(self.resolve(node["Fn::ImportValue"]))]
        if set(node) == {"Fn::Join"}:
            separator, items = node["Fn::Join"]
            return separator.join(str(self.resolve(item)) for item in items)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not NO_VALUE}

    def identity_policies(self, role: str) -> list[dict[str, Any]]:
        """Every policy document attached to ``role``: inline ones and the template's managed policies."""
        properties = self.resources[role]["Properties"]
        documents = [self.resolve(p["PolicyDocument"]) for p in properties.get("Policies", [])]
        for attached in properties.get("ManagedPolicyArns", []):
            if isinstance(attached, dict) and "Ref" in attached:
                documents.append(self.resolve(self.resources[attached["Ref"]]["Properties"]["PolicyDocument"]))
        return documents

    def bucket_policy(self, bucket: str) -> dict[str, Any]:
        for name, spec in self.of_type("AWS::S3::BucketPolicy").items():
            if spec["Properties"]["Bucket"] == {"Ref": bucket}:
                return dict(self.properties(name)["PolicyDocument"])
        raise AssertionError(f"bucket {bucket} has no bucket policy")


@dataclass(frozen=True)
class Request:
    principal: str  # the role's ARN (aws:PrincipalArn)
    action: str
    resource: str
    # Condition keys (any case) → value, a list for a multivalued key; absent = not sent.
    context: Mapping[str, str | list[str]] = field(default_factory=dict)

    def key(self, name: str) -> str | list[str] | None:
        lowered = {k.lower(): v for k, v in self.context.items()}
        lowered.setdefault("aws:principalarn", self.principal)
        lowered.setdefault("aws:securetransport", "true")
        return lowered.get(name.lower())


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def matches(pattern: str, value: str, *, case_sensitive: bool = True) -> bool:
    """IAM wildcards: ``*`` any run of characters (``/`` included), ``?`` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


_POSITIVE: dict[str, Callable[[Any, str], bool]] = {
    "StringEquals": lambda expected, actual: actual == expected,
    "StringLike": lambda expected, actual: matches(expected, actual),
    "ArnEquals": lambda expected, actual: actual == expected,
    "ArnLike": lambda expected, actual: matches(expected, actual),
    "Bool": lambda expected, actual: actual.lower() == str(expected).lower(),
}
_NEGATED = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals"}


def _condition_holds(operator: str, key: str, expected: list[Any], request: Request) -> bool:
    qualifier, _, operator = operator.rpartition(":")
    if qualifier:
        if qualifier not in ("ForAllValues", "ForAnyValue"):
            raise ValueError(f"condition qualifier {qualifier} is not modelled; extend tests/iam.py")
        values = request.key(key)
        if values is None:  # no values: every one of none matches, and no one does
            return qualifier == "ForAllValues"
        each = [_condition_holds(operator, key, expected, replace(request, context={key: v})) for v in _as_list(values)]
        return all(each) if qualifier == "ForAllValues" else any(each)
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    actual = request.key(key)
    if isinstance(actual, list):
        raise ValueError(f"{key} has several values: {operator} needs ForAllValues or ForAnyValue")
    if base == "Null":
        return (actual is None) == (str(expected[0]).lower() == "true")
    if actual is None:
        # A missing key: an IfExists operator holds; a negated operator holds (nothing it must not equal); others fail.
        return if_exists or base in _NEGATED
    if base in _NEGATED:
        return not any(_POSITIVE[_NEGATED[base]](e, actual) for e in expected)
    if base in _POSITIVE:
        return any(_POSITIVE[base](e, actual) for e in expected)
    raise ValueError(f"condition operator {operator} is not modelled; extend tests/iam.py")


def statement_applies(statement: dict[str, Any], request: Request, *, resource_policy: bool) -> bool:
    if "Action" in statement:
        if not any(matches(a, request.action, case_sensitive=False) for a in _as_list(statement["Action"])):
            return False
    elif any(matches(a, request.action, case_sensitive=False) for a in _as_list(statement["NotAction"])):
        return False
    if not any(matches(r, request.resource) for r in _as_list(statement.get("Resource", "*"))):
        return False
    if resource_policy:
        principal = statement.get("Principal")
        aws_principals = _as_list(principal.get("AWS", [])) if isinstance(principal, dict) else [principal]
        in_account = request.principal.startswith(f"arn:aws:iam::{ACCOUNT}:")
        if not any(p == "*" or p == request.principal or (p == ROOT and in_account) for p in aws_principals):
            return False
    return all(
        _condition_holds(operator, key, _as_list(expected), request)
        for operator, entries in statement.get("Condition", {}).items()
        for key, expected in entries.items()
    )


def decide(request: Request, identity: list[dict[str, Any]], resource: list[dict[str, Any]] | None = None) -> str:
    """``"Deny"`` (explicit), ``"Allow"`` or ``"ImplicitDeny"``."""
    applying = [
        (statement["Effect"], kind)
        for kind, documents in (("identity", identity), ("resource", resource or []))
        for document in documents
        for statement in _as_list(document["Statement"])
        if statement_applies(statement, request, resource_policy=kind == "resource")
    ]
    if any(effect == "Deny" for effect, _ in applying):
        return "Deny"
    return "Allow" if any(effect == "Allow" for effect, _ in applying) else "ImplicitDeny"
