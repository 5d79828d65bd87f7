"""Least privilege, read from the templates as IAM evaluates them (tests/iam.py): who may read and write what in
the data, model, bundle and artifact buckets, and what every bucket refuses whoever asks."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from common.artifacts import PUBLISHED_ARTIFACTS
from common.audit_log import BUNDLE_EVENT_SOURCE, EVENT_TYPES, REGISTRY_EVENT_SOURCE
from infrastructure.templates import BOOTSTRAP, OWNER, PRODUCT
from infrastructure.templates import DATA as DATA_TEMPLATE
from tests.iam import ACCOUNT, IMPORTS, PARAMETERS, REGION, Request, Template, decide

PRODUCT_T = Template(PRODUCT)
DATA_T = Template(DATA_TEMPLATE)
BOOTSTRAP_T = Template(BOOTSTRAP)
OWNER_T = Template(OWNER, {**PARAMETERS, "Owner": "clinic-a", "ModelPackageGroup": "fhe-models"})
AUDIT_TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{PARAMETERS['AuditTableName']}"
DATA = f"arn:aws:s3:::fhe-data-{ACCOUNT}-{REGION}"
MODELS = f"arn:aws:s3:::fhe-models-{ACCOUNT}-{REGION}"
BUNDLES = f"arn:aws:s3:::fhe-bundles-{ACCOUNT}-{REGION}"
ARTIFACTS = f"arn:aws:s3:::fhe-artifacts-{ACCOUNT}-{REGION}"
RUN = "pipelines/fhe-training/exec-1"
TRAINING_DATA = f"{DATA}/datasets/breast_cancer/breast_cancer.csv"
TRAINING_SPLIT = f"{MODELS}/{RUN}/train/train.npz"
MODEL_TAR = f"{MODELS}/{RUN}/model/fhe-train-1/output/model.tar.gz"
SERVER_ZIPS = [f"{MODELS}/{RUN}/model/server.zip", f"{MODELS}/{RUN}/evaluation/server.zip", f"{ARTIFACTS}/server.zip"]
CLIENT_ZIP = f"{MODELS}/{RUN}/client/client.zip"  # the run's own copy, whatever the package's approval
# What the approval of version 3 of the group publishes for batch owners (pipelines/approval.py).
PUBLISHED = f"{MODELS}/published/fhe-models/3"
EVALUATION_KEY = f"{BUNDLES}/inbox/clinic-a/keys/{'a' * 64}.ekey"
SHARD = f"{BUNDLES}/inbox/clinic-a/bundle-1/shards/00000.fhe"
RESULT = f"{BUNDLES}/outbox/clinic-a/bundle-1/shards/00000.out"
OTHER_OWNER = ["inbox/clinic-b/bundle-1/manifest.json", "outbox/clinic-b/bundle-1/manifest.json"]
ADMIN = [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}]


def allowed(template: Template, role: str, action: str, resource: str, context: dict[str, str | list[str]]) -> bool:
    """Whether ``role`` of ``template`` may do ``action`` on ``resource``, its bucket's policy included."""
    request = Request(template.arn(role), action, resource, context)
    return decide(request, template.identity_policies(role), _bucket_policies(resource)) == "Allow"


def can(role: str, action: str, resource: str, **context: str | list[str]) -> bool:
    """Whether ``role`` of the product stack may."""
    return allowed(PRODUCT_T, role, action, resource, context)


def owner_can(action: str, resource: str, **context: str | list[str]) -> bool:
    """Whether batch owner clinic-a's role (infrastructure/owner.yaml) may."""
    return allowed(OWNER_T, "OwnerRole", action, resource, context)


def _bucket_policies(resource: str) -> list[dict[str, Any]]:
    for template in (DATA_T, BOOTSTRAP_T):
        for name in template.of_type("AWS::S3::Bucket"):
            arn = template.arn(name)
            if resource == arn or resource.startswith(arn + "/"):
                return [template.bucket_policy(name)]
    return []


def roles(template: Template = PRODUCT_T) -> list[str]:
    return list(template.of_type("AWS::IAM::Role"))


def training_data_readers(template: Template) -> list[str]:
    """The roles that can read a training data set or a training split."""
    return [
        role
        for role in roles(template)
        if any(
            decide(Request(template.arn(role), "s3:GetObject", target), template.identity_policies(role)) == "Allow"
            for target in (TRAINING_DATA, TRAINING_SPLIT)
        )
    ]


def wildcard_actions_on_buckets(template: Template) -> list[str]:
    """Statements granting a wildcard action (``s3:*``, ``s3:Get*``, ``*``) on a bucket or on every resource."""
    buckets = [DATA, MODELS, BUNDLES, ARTIFACTS]
    found = []
    for role in roles(template):
        for document in template.identity_policies(role):
            for statement in document["Statement"]:
                if statement["Effect"] != "Allow":
                    continue
                resources = statement.get("Resource", "*")
                resources = resources if isinstance(resources, list) else [resources]
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                touches = any(r == "*" or any(r.startswith(b) for b in buckets) for r in resources)
                wild = [a for a in actions if "*" in a and (a == "*" or a.lower().startswith("s3:") or touches)]
                if (touches and wild) or (any(a.lower().startswith("s3:") for a in actions) and "*" in resources):
                    found.append(f"{role}: {actions} on {resources}")
    return found


def test_no_wildcard_actions_on_data_buckets() -> None:
    assert wildcard_actions_on_buckets(PRODUCT_T) == []
    assert wildcard_actions_on_buckets(OWNER_T) == []


def test_only_the_training_role_reads_training_data() -> None:
    assert training_data_readers(PRODUCT_T) == ["ModelCreatorRole"]
    assert training_data_readers(OWNER_T) == []
    assert can("ModelCreatorRole", "s3:GetObject", TRAINING_DATA)
    # Whatever an identity policy grants, the bucket policy keeps anyone else out, and lets the training role in.
    for target in (TRAINING_DATA, TRAINING_SPLIT):
        administrator = Request(f"arn:aws:iam::{ACCOUNT}:role/Admin", "s3:GetObject", target)
        assert decide(administrator, ADMIN, _bucket_policies(target)) == "Deny", target


def test_the_checks_fail_on_a_role_that_breaks_them() -> None:
    """The checks above can fail: an owner role that can read training data, or holds s3:*, is caught."""
    broken = Template(OWNER, OWNER_T.parameters)
    broken.resources = copy.deepcopy(broken.resources)
    statements = broken.resources["OwnerRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    statements.append({"Effect": "Allow", "Action": "s3:*", "Resource": f"{DATA}/*"})
    assert "OwnerRole" in training_data_readers(broken)
    assert any(line.startswith("OwnerRole") for line in wildcard_actions_on_buckets(broken))


def test_an_owner_writes_only_its_inbox_and_reads_only_its_results_and_client_artifacts() -> None:
    """Asked of the template; the same questions are asked of the local AWS under the owners' own credentials in
    tests/integration/test_deployment.py."""
    assert owner_can("s3:PutObject", SHARD)
    assert owner_can("s3:PutObject", EVALUATION_KEY)
    assert owner_can("s3:PutObject", f"{BUNDLES}/inbox/clinic-a/bundle-1/manifest.json")
    assert owner_can("s3:GetObject", RESULT)
    assert owner_can("s3:GetObject", f"{PUBLISHED}/client.zip")
    assert owner_can("s3:GetObject", f"{BUNDLES}/quarantine/clinic-a/bundle-1/reason.json")
    assert owner_can("s3:ListBucket", BUNDLES, **{"s3:prefix": "inbox/clinic-a/keys/"})
    for target in [TRAINING_DATA, TRAINING_SPLIT, MODEL_TAR, *SERVER_ZIPS, CLIENT_ZIP, SHARD, EVALUATION_KEY]:
        assert not owner_can("s3:GetObject", target), target
    for target in [RESULT, f"{BUNDLES}/requests/clinic-a/b/00000.json", f"{BUNDLES}/quarantine/clinic-a/b/reason.json"]:
        assert not owner_can("s3:PutObject", target), target
    assert not owner_can("s3:PutObject", CLIENT_ZIP)
    assert not owner_can("s3:PutObject", f"{PUBLISHED}/client.zip")
    assert not owner_can("s3:ListBucket", BUNDLES, **{"s3:prefix": "requests/"})
    assert not owner_can("s3:ListBucket", DATA)
    # Nothing of another owner: not its inbox, its results, its quarantine records or its listing.
    for key in OTHER_OWNER:
        assert not owner_can("s3:PutObject", f"{BUNDLES}/{key}"), key
        assert not owner_can("s3:GetObject", f"{BUNDLES}/{key}"), key
    assert not owner_can("s3:GetObject", f"{BUNDLES}/quarantine/clinic-b/bundle-1/reason.json")
    for prefix in ("outbox/clinic-b/", "inbox/clinic-b/", "quarantine/clinic-b/", "outbox/", "inbox/clinic-a-x/"):
        assert not owner_can("s3:ListBucket", BUNDLES, **{"s3:prefix": prefix}), prefix


def test_an_owner_reads_the_client_artifacts_of_an_approved_package_only() -> None:
    """A pipeline run's Evaluate step writes its client artifacts (and preprocessing.json holds the training data's
    per-feature ranges) before anyone approved it: batch owners cannot read them there, approved or not. The
    approval publishes an Approved package's copy under published/<group>/<version>/, which owners read and which
    only ML ops' approval (the endpoint creator) writes; a rejection deletes it, and an older version of a deleted
    object stays unreadable."""
    unapproved_run = "pipelines/fhe-training/exec-2"
    for name in PUBLISHED_ARTIFACTS:
        for run in (RUN, unapproved_run):
            assert not owner_can("s3:GetObject", f"{MODELS}/{run}/client/{name}"), (run, name)
        assert owner_can("s3:GetObject", f"{PUBLISHED}/{name}"), name
        assert not owner_can("s3:GetObjectVersion", f"{PUBLISHED}/{name}"), name
    assert not owner_can("s3:GetObject", f"{MODELS}/published/other-group/1/client.zip")
    assert not owner_can("s3:ListBucket", MODELS, **{"s3:prefix": "published/fhe-models/"})
    # The approval's copy: from any run's client folder to the group's published folder, and its withdrawal.
    for name in PUBLISHED_ARTIFACTS:
        assert can("EndpointCreatorRole", "s3:GetObject", f"{MODELS}/{unapproved_run}/client/{name}"), name
        assert can("EndpointCreatorRole", "s3:PutObject", f"{PUBLISHED}/{name}"), name
        assert can("EndpointCreatorRole", "s3:DeleteObject", f"{PUBLISHED}/{name}"), name
    assert can("EndpointCreatorRole", "s3:ListBucket", MODELS, **{"s3:prefix": f"{RUN}/client/costs.json"})
    assert can("EndpointCreatorRole", "kms:GenerateDataKey", PARAMETERS["KeyArn"])
    # … and nothing else of a run, nor another group's folder.
    for target in (f"{MODELS}/{RUN}/evaluation/evaluation.json", MODEL_TAR, TRAINING_SPLIT):
        assert not can("EndpointCreatorRole", "s3:GetObject", target), target
    assert not can("EndpointCreatorRole", "s3:ListBucket", MODELS, **{"s3:prefix": f"{RUN}/"})
    for target in (CLIENT_ZIP, f"{MODELS}/published/other-group/1/client.zip"):
        assert not can("EndpointCreatorRole", "s3:PutObject", target), target
    writers = [role for role in roles() if can(role, "s3:PutObject", f"{PUBLISHED}/client.zip")]
    assert writers == ["EndpointCreatorRole"]


def test_endpoint_reads_keys_and_shards_and_writes_results_only() -> None:
    assert can("EndpointRole", "s3:GetObject", EVALUATION_KEY)
    assert can("EndpointRole", "s3:GetObject", SHARD)
    assert can("EndpointRole", "s3:GetObject", f"{BUNDLES}/requests/clinic-a/bundle-1/00000.json")
    assert can("EndpointRole", "s3:GetObject", MODEL_TAR)  # SageMaker loads the model with the endpoint's role
    assert can("EndpointRole", "s3:PutObject", RESULT)
    for target in [
        SHARD,
        EVALUATION_KEY,
        f"{BUNDLES}/inbox/clinic-a/bundle-1/manifest.json",
        f"{BUNDLES}/quarantine/clinic-a/b/r",
    ]:
        assert not can("EndpointRole", "s3:PutObject", target), target
    for target in [TRAINING_DATA, TRAINING_SPLIT, RESULT, CLIENT_ZIP, f"{BUNDLES}/quarantine/clinic-a/b/reason.json"]:
        assert not can("EndpointRole", "s3:GetObject", target), target
    assert not can("EndpointRole", "s3:ListBucket", BUNDLES)
    assert not can("EndpointRole", "s3:DeleteObject", SHARD)


def test_the_other_roles_stay_off_the_data_they_do_not_need() -> None:
    for role in ("EndpointCreatorRole", "AuditorRole", "StartRole", "ValidateRole", "NotifyRole", "RetrainRole"):
        for target in (TRAINING_DATA, MODEL_TAR, SERVER_ZIPS[0]):
            assert not can(role, "s3:GetObject", target), (role, target)
    assert not can("AuditorRole", "s3:PutObject", RESULT)
    for stack in ("fhe", "fhe-data", "fhe-bootstrap"):  # what fhe-audit reads the deployment's outputs from
        assert can(
            "AuditorRole", "cloudformation:DescribeStacks", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{stack}/1"
        )
    assert not can(
        "AuditorRole", "cloudformation:DescribeStacks", f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/other/1"
    )
    assert can("AuditorRole", "dynamodb:Query", AUDIT_TABLE)
    assert not can("RecordRole", "dynamodb:UpdateItem", AUDIT_TABLE)
    assert not can("RecordRole", "dynamodb:DeleteItem", AUDIT_TABLE)
    assert can("RecordRole", "dynamodb:PutItem", AUDIT_TABLE)
    # Served versions are stacks: ML ops pass the stacks' service role to CloudFormation, which alone passes the
    # endpoint's role to SageMaker; ML ops may make and delete the versions' stacks, not the product's.
    assert can(
        "EndpointCreatorRole",
        "iam:PassRole",
        PRODUCT_T.arn("ServedVersionStackRole"),
        **{"iam:PassedToService": "cloudformation.amazonaws.com"},
    )
    assert not can(
        "EndpointCreatorRole",
        "iam:PassRole",
        PRODUCT_T.arn("EndpointRole"),
        **{"iam:PassedToService": "sagemaker.amazonaws.com"},
    )
    assert can(
        "ServedVersionStackRole",
        "iam:PassRole",
        PRODUCT_T.arn("EndpointRole"),
        **{"iam:PassedToService": "sagemaker.amazonaws.com"},
    )
    version_stack = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/fhe-inference-v3/1"
    for action in ("cloudformation:CreateStack", "cloudformation:UpdateStack", "cloudformation:DeleteStack"):
        assert can("EndpointCreatorRole", action, version_stack), action
        assert not can("EndpointCreatorRole", action, f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/fhe/1"), action
    assert not can(
        "EndpointCreatorRole",
        "sagemaker:CreateEndpoint",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/fhe-inference-v3",
    )
    assert can(
        "ServedVersionStackRole",
        "sagemaker:CreateEndpoint",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/fhe-inference-v3",
    )
    assert not can(
        "EndpointCreatorRole",
        "iam:PassRole",
        PRODUCT_T.arn("ModelCreatorRole"),
        **{"iam:PassedToService": "sagemaker.amazonaws.com"},
    )


BUCKETS = [(DATA_T, name) for name in DATA_T.of_type("AWS::S3::Bucket")] + [
    (BOOTSTRAP_T, name) for name in BOOTSTRAP_T.of_type("AWS::S3::Bucket")
]


@pytest.mark.parametrize(("template", "bucket"), BUCKETS, ids=[name for _, name in BUCKETS])
def test_every_bucket_denies_plain_http(template: Template, bucket: str) -> None:
    arn, policy = template.arn(bucket), [template.bucket_policy(bucket)]
    administrator = f"arn:aws:iam::{ACCOUNT}:role/Admin"
    for action, resource in (("s3:GetObject", f"{arn}/k"), ("s3:PutObject", f"{arn}/k"), ("s3:ListBucket", arn)):
        plain = Request(administrator, action, resource, {"aws:SecureTransport": "false"})
        assert decide(plain, ADMIN, policy) == "Deny", (action, resource)
    tls = Request(administrator, "s3:PutObject", f"{arn}/k", {"aws:SecureTransport": "true"})
    assert decide(tls, ADMIN, policy) == "Allow"


@pytest.mark.parametrize(("template", "bucket"), BUCKETS, ids=[name for _, name in BUCKETS])
def test_every_bucket_refuses_puts_not_encrypted_under_the_deployment_key(template: Template, bucket: str) -> None:
    arn, policy = template.arn(bucket), [template.bucket_policy(bucket)]
    key = PARAMETERS["KeyArn"] if template is DATA_T else template.arn("Key")
    administrator = f"arn:aws:iam::{ACCOUNT}:role/Admin"

    def put(**headers: str) -> str:
        return decide(Request(administrator, "s3:PutObject", f"{arn}/k", headers), ADMIN, policy)

    assert put(**{"s3:x-amz-server-side-encryption": "AES256"}) == "Deny"
    assert put(**{"s3:x-amz-server-side-encryption": "aws:kms"}) == "Allow"
    other_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/someone-elses"
    assert (
        put(
            **{
                "s3:x-amz-server-side-encryption": "aws:kms",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": other_key,
            }
        )
        == "Deny"
    )
    assert (
        put(**{"s3:x-amz-server-side-encryption": "aws:kms", "s3:x-amz-server-side-encryption-aws-kms-key-id": key})
        == "Allow"
    )
    # A put that names no encryption is allowed and stored under the bucket's default: SSE-KMS with the
    # deployment's key (asking for aws:kms without a key id would pick the account's aws/s3 key instead).
    assert put() == "Allow"
    properties = template.properties(bucket)
    [rule] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    assert rule["BucketKeyEnabled"] is True
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(properties["PublicAccessBlockConfiguration"].values())
    assert properties["LifecycleConfiguration"]["Rules"], "every bucket has lifecycle rules"


def test_the_data_buckets_outlive_their_stack() -> None:
    for name in ("DataBucket", "ModelBucket", "BundleBucket", "AuditTable"):
        assert DATA_T.resources[name].get("DeletionPolicy") == "Retain", name
    assert BOOTSTRAP_T.resources["Key"].get("DeletionPolicy") == "Retain"


# ---- the audit trail: who may announce what, who may sign the log, what the auditor reads -----------------------

DEFAULT_BUS = f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default"
SIGNING_KEY = IMPORTS["fhe-audit-signing-key"]
ALL_EVENT_PAIRS = sorted((source, kind) for source, kinds in EVENT_TYPES.items() for kind in kinds)
# What each role may put on the bus; every other role may put nothing.
OWN_EVENTS = {
    "AssembleRole": {(BUNDLE_EVENT_SOURCE, "Bundle Completed")},
    "QuarantineRole": {(BUNDLE_EVENT_SOURCE, "Bundle Quarantined")},
    # A manifest dropped again under a delivered id, and the ends no workflow step recorded.
    "StartRole": {(BUNDLE_EVENT_SOURCE, "Bundle Quarantined")},
    "ReconcileRole": {(BUNDLE_EVENT_SOURCE, "Bundle Quarantined")},
    "EndpointCreatorRole": {
        (REGISTRY_EVENT_SOURCE, kind)
        for kind in ("Model Package Approval", "Model Version Served", "Model Version Retired")
    },
}


def may_put(template: Template, role: str, sources: list[str], kinds: list[str]) -> bool:
    """Whether ``role`` may put one call's entries of these sources and detail types (one value per entry)."""
    context: dict[str, str | list[str]] = {"events:source": sources, "events:detail-type": kinds}
    return allowed(template, role, "events:PutEvents", DEFAULT_BUS, context)


def test_each_role_may_put_only_its_own_events_on_the_bus() -> None:
    for template in (PRODUCT_T, OWNER_T):
        for role in roles(template):
            sendable = {pair for pair in ALL_EVENT_PAIRS if may_put(template, role, [pair[0]], [pair[1]])}
            assert sendable == OWN_EVENTS.get(role, set()), role
            # Nothing outside the recorder's table either: another detail type of its own source, or another source.
            for source, kind in OWN_EVENTS.get(role, set()):
                assert not may_put(template, role, [source], ["Bundle Started"]), role
                assert not may_put(template, role, ["com.example.other"], [kind]), role
    # One call may carry several entries: a forged one among ML ops' own is refused with the whole call.
    registry, forged = (REGISTRY_EVENT_SOURCE, "Model Package Approval"), (BUNDLE_EVENT_SOURCE, "Bundle Completed")
    assert may_put(PRODUCT_T, "EndpointCreatorRole", [registry[0]], [registry[1]])
    assert not may_put(PRODUCT_T, "EndpointCreatorRole", [registry[0], forged[0]], [registry[1], forged[1]])
    # What each role may send is a pair the recorder accepts from that source.
    assert set().union(*OWN_EVENTS.values()) <= set(ALL_EVENT_PAIRS)


def test_every_put_events_grant_names_its_sources_and_detail_types() -> None:
    """The check above asks about today's roles; this one holds any future grant to the same rule."""
    for template in (PRODUCT_T, OWNER_T, DATA_T, BOOTSTRAP_T):
        for role in roles(template):
            for document in template.identity_policies(role):
                for statement in document["Statement"]:
                    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                    if statement["Effect"] != "Allow" or not any(
                        a.lower() in ("events:putevents", "events:*", "*") for a in actions
                    ):
                        continue
                    keys = statement.get("Condition", {}).get("ForAllValues:StringEquals", {})
                    assert {"events:source", "events:detail-type"} <= set(keys), (role, statement)


def _key_policy() -> list[dict[str, Any]]:
    return [DATA_T.properties("AuditSigningKey")["KeyPolicy"]]


def kms_allows(template: Template, role: str, action: str) -> bool:
    """Whether ``role`` may ``action`` on the audit signing key: KMS needs both its identity policies and the key
    policy (whose account statements delegate to IAM) to allow, with the role's tags as its principal tags."""
    tags: dict[str, str | list[str]] = {
        f"aws:PrincipalTag/{t['Key']}": t["Value"] for t in template.properties(role).get("Tags", [])
    }
    request = Request(template.arn(role), action, SIGNING_KEY, tags)
    return decide(request, template.identity_policies(role)) == "Allow" and decide(request, [], _key_policy()) == (
        "Allow"
    )


def test_only_the_recorder_may_sign_the_audit_log_and_the_auditor_reads_the_public_key() -> None:
    key = DATA_T.properties("AuditSigningKey")
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert DATA_T.resources["AuditSigningKey"].get("DeletionPolicy") == "Retain", "signatures outlive the product"
    signers = [(t, role) for t in (PRODUCT_T, OWNER_T) for role in roles(t) if kms_allows(t, role, "kms:Sign")]
    assert [role for _, role in signers] == ["RecordRole"]
    assert kms_allows(PRODUCT_T, "AuditorRole", "kms:GetPublicKey")
    assert not kms_allows(PRODUCT_T, "AuditorRole", "kms:Sign")
    # An administrator of the account holds every IAM permission, but the key policy lets no untagged principal sign.
    administrator = Request(f"arn:aws:iam::{ACCOUNT}:role/Admin", "kms:Sign", SIGNING_KEY)
    assert decide(administrator, ADMIN) == "Allow" and decide(administrator, [], _key_policy()) != "Allow"
    assert decide(replace(administrator, action="kms:PutKeyPolicy"), [], _key_policy()) == "Allow"
    # A principal that tagged itself as the signer is not the recorder's role: it cannot sign either.
    tagged = Request(
        f"arn:aws:iam::{ACCOUNT}:role/Admin", "kms:Sign", SIGNING_KEY, {"aws:PrincipalTag/fhe-audit-signer": "fhe"}
    )
    assert decide(tagged, [], _key_policy()) != "Allow"
    assert PRODUCT_T.arn("RecordRole") == f"arn:aws:iam::{ACCOUNT}:role/fhe-audit-recorder"


def test_the_auditor_reads_the_enclave_keys_policy_where_the_deployment_has_one_and_never_decrypts_with_it() -> None:
    enclave_key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/enclave-key"
    with_enclave = Template(PRODUCT, {**PRODUCT_T.parameters, "EnclaveKeyArn": enclave_key})

    def auditor_may(template: Template, action: str) -> bool:
        request = Request(template.arn("AuditorRole"), action, enclave_key)
        return decide(request, template.identity_policies("AuditorRole")) == "Allow"

    assert auditor_may(with_enclave, "kms:GetKeyPolicy")
    assert not auditor_may(with_enclave, "kms:Decrypt") and not auditor_may(with_enclave, "kms:PutKeyPolicy")
    assert not auditor_may(PRODUCT_T, "kms:GetKeyPolicy")  # no enclave path: no statement (AWS::NoValue)


def test_the_auditor_reads_no_evaluation_key_and_the_recorder_only_what_it_checks() -> None:
    manifest = f"{BUNDLES}/inbox/clinic-a/bundle-1/manifest.json"
    estimate = f"{BUNDLES}/inbox/clinic-a/bundle-1/estimate.json"
    result_manifest = f"{BUNDLES}/outbox/clinic-a/bundle-1/manifest.json"
    reason = f"{BUNDLES}/quarantine/clinic-a/bundle-1/reason.json"
    attestation = f"{BUNDLES}/outbox/clinic-a/bundle-1/shards/00000.attestation"
    for target in (manifest, estimate, SHARD, result_manifest, RESULT, reason, attestation):
        assert can("AuditorRole", "s3:GetObject", target), target
    for target in (
        EVALUATION_KEY,
        f"{BUNDLES}/requests/clinic-a/bundle-1/00000.json",
        f"{BUNDLES}/responses/fhe-inference-v3/x.out",
    ):
        assert not can("AuditorRole", "s3:GetObject", target), target
        assert not can("AuditorRole", "s3:GetObjectVersion", target), target
    for target in (result_manifest, reason):
        assert can("RecordRole", "s3:GetObject", target), target
    for target in (SHARD, RESULT, EVALUATION_KEY, manifest):
        assert not can("RecordRole", "s3:GetObject", target), target
    package = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/fhe-models/3"
    assert can("RecordRole", "sagemaker:DescribeModelPackage", package)
    assert not can("RecordRole", "sagemaker:DescribeModelPackage", package.replace("fhe-models", "other"))
    assert not can("RecordRole", "sagemaker:UpdateModelPackage", package)
    assert can(
        "RecordRole", "states:DescribeExecution", f"arn:aws:states:{REGION}:{ACCOUNT}:execution:fhe-batch-inference:b-1"
    )


def test_the_event_checks_fail_on_a_grant_without_its_conditions() -> None:
    """The checks above can fail: ML ops' PutEvents grant without its conditions lets it forge a bundle outcome."""
    broken = Template(PRODUCT, PRODUCT_T.parameters)
    broken.resources = copy.deepcopy(broken.resources)
    statements = broken.resources["EndpointCreatorRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    [grant] = [s for s in statements if s["Action"] == "events:PutEvents"]
    del grant["Condition"]
    assert may_put(broken, "EndpointCreatorRole", [BUNDLE_EVENT_SOURCE], ["Bundle Completed"])
    assert not may_put(PRODUCT_T, "EndpointCreatorRole", [BUNDLE_EVENT_SOURCE], ["Bundle Completed"])
