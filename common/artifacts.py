"""The files of a trained model, as they lie in ``model.tar.gz`` (and so in ``/opt/ml/model``)."""

from __future__ import annotations

CLIENT_ZIP = "client.zip"  # quantizers + client specs: all a batch owner needs to make keys
SERVER_ZIP = "server.zip"  # the compiled FHE circuit: all the endpoint needs
MODEL_JSON = "model.json"  # the fitted Concrete ML model (clear reference, simulation)
# The float model the accuracy budget is measured against: the given levers' model fitted on the same training
# split (the same model as model.json when the lever search kept the given levers). Evaluate's reference.
FLOAT_MODEL_JSON = "float_model.json"
PREPROCESSING_JSON = "preprocessing.json"
VERSIONS_JSON = "versions.json"
TRAINING_JSON = "training.json"  # hyperparameters and training statistics
# Published with the client artifacts by Evaluate: the model's measured costs per sample (common/estimate.py), what
# the batch owner's estimate before paying is made of. Optional for the client: older models lack it.
COSTS_JSON = "costs.json"

# What a batch owner fetches from a registered model: enough to make keys, encrypt and decrypt, and nothing
# of the server side. The Evaluate step publishes these next to the model (customer metadata "client_artifacts").
CLIENT_ARTIFACTS = (CLIENT_ZIP, PREPROCESSING_JSON, VERSIONS_JSON)
# An enclave model (ModelKind=enclave) in model.tar.gz: its file (common/enclave_model.py names it per format) and
# this record of its format, SHA-256 and features. Its owners get the record (what will serve their data, by
# digest), never the model.
ENCLAVE_MODEL_JSON = "enclave_model.json"
ENCLAVE_CLIENT_ARTIFACTS = (ENCLAVE_MODEL_JSON, PREPROCESSING_JSON, VERSIONS_JSON)
# A language model in the enclave takes prompts: no schema of features, so no preprocessing.json.
ENCLAVE_TEXT_CLIENT_ARTIFACTS = (ENCLAVE_MODEL_JSON, VERSIONS_JSON)
CLIENT_ARTIFACTS_PROPERTY = "client_artifacts"
# The path that serves a registered model (customer metadata "model_kind"): "fhe" (a compiled circuit, the default
# of packages registered before there were two) or "enclave" (a float model served in the attested enclave), and an
# enclave model's SHA-256 ("model_digest"), which the enclave's attestation document must carry.
MODEL_KIND_PROPERTY = "model_kind"
MODEL_DIGEST_PROPERTY = "model_digest"
MODEL_KINDS = ("fhe", "enclave")
# Where an Approved package's client artifacts (and costs) are published for batch owners, in the model bucket:
# published/<group>/<version>/. The approval copies them there and a rejection withdraws them; batch owners' roles
# read only there, so what a run made before its approval (the training data's per-feature ranges in
# preprocessing.json) stays out of their reach.
PUBLISHED_PREFIX = "published"
PUBLISHED_ARTIFACTS = (*CLIENT_ARTIFACTS, COSTS_JSON)
ENCLAVE_PUBLISHED_ARTIFACTS = (*ENCLAVE_CLIENT_ARTIFACTS, COSTS_JSON)


def client_artifacts(kind: str, takes_text: bool = False) -> tuple[str, ...]:
    """What a batch owner needs of a registered model of ``kind`` (one of MODEL_KINDS); ``takes_text``: a language
    model's (its ``enclave_model.json`` says so)."""
    if kind == "enclave":
        return ENCLAVE_TEXT_CLIENT_ARTIFACTS if takes_text else ENCLAVE_CLIENT_ARTIFACTS
    return CLIENT_ARTIFACTS


def published_artifacts(kind: str) -> tuple[str, ...]:
    """What the approval of a model of ``kind`` publishes: its client artifacts and, when measured, its costs."""
    return ENCLAVE_PUBLISHED_ARTIFACTS if kind == "enclave" else PUBLISHED_ARTIFACTS


# The model's environment names its package; the endpoint refuses bundles made for another package.
PACKAGE_ARN_VARIABLE = "FHE_MODEL_PACKAGE_ARN"
# The serving container's evaluator processes: the endpoint's invocations per instance (pipelines/endpoint.py).
EVALUATORS_VARIABLE = "FHE_EVALUATORS"
