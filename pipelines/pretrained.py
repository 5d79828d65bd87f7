"""A pretrained causal language model registered for the enclave path: from a local folder or an S3 prefix (as
transformers saves one: safetensors weights, config.json, the fast tokenizer's JSON; no pickle, no code), packed
(``common/language_model.py``: its SHA-256 is the model's digest), and registered in the deployment's model package
group as every model is: ``model_kind=enclave``, ``model_digest``, ``PendingManualApproval``, its client artifacts
(the model's record, the releases it was packed with, and its pace measured here for owners' estimates) beside
``model.tar.gz``. Approval, publication to batch
owners, serving by the enclave fleet and the audit are then the same as for a trained model.

    fhe-pipeline register-pretrained --model-source FOLDER|s3://bucket/prefix/ [--deployment PREFIX]
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from common import artifacts
from common.bundle.generation import GenerationSettings
from common.enclave_model import CAUSAL_LM, EnclaveModelRecord
from common.language_model import LanguageModelError, allowed, pack_folder
from common.s3uri import S3Uri
from common.versions import VersionsRecord

PREFIX = "pipelines/pretrained"  # under the model bucket: pipelines/pretrained/<digest>/model/, .../client/
MAX_FILES = 64


class PretrainedError(ValueError):
    """A pretrained model that cannot be registered; the message names why."""


def _fetched(s3: Any, source: S3Uri, folder: Path) -> Path:
    """The model files under an S3 prefix, downloaded flat into ``folder`` (other keys are refused by name)."""
    prefix = source.key.rstrip("/") + "/"
    listed = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source.bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    if not listed or len(listed) > MAX_FILES:
        raise PretrainedError(f"{source} holds {len(listed)} objects; a model folder holds 1 to {MAX_FILES}")
    for key in listed:
        name = key[len(prefix) :]
        if "/" in name or not allowed(name):
            raise PretrainedError(f"{source} holds {name!r}: only safetensors weights and JSON files are carried")
        s3.download_file(source.bucket, key, str(folder / name))
    return folder


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type") or "causal-lm")
    except (OSError, ValueError):
        raise PretrainedError(f"{folder}/config.json is not a model configuration") from None


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


PACE_PROMPTS = ("the patient reports", "please summarise the note")
PACE_TOKENS = 16


def measure_pace(packed: bytes) -> dict[str, float]:
    """The model's pace in the enclave's own loader on this machine, for owners' estimates (``costs.json``): the
    seconds of a prompt's own work (prompt read, first token) and of each further new token, greedy."""
    from containers.enclave.language_model import load_language_model

    model = load_language_model(packed)
    one = GenerationSettings(max_new_tokens=1)
    model.complete(PACE_PROMPTS[:1], one)  # the first call's warm-up
    started = time.perf_counter()
    model.complete(PACE_PROMPTS, one)
    per_prompt = (time.perf_counter() - started) / len(PACE_PROMPTS)
    started = time.perf_counter()
    model.complete(PACE_PROMPTS, GenerationSettings(max_new_tokens=PACE_TOKENS))
    per_token = max(0.0, (time.perf_counter() - started) / len(PACE_PROMPTS) - per_prompt) / (PACE_TOKENS - 1)
    return {"enclave_seconds_per_prompt": per_prompt, "enclave_seconds_per_token": per_token}


def register_pretrained(
    sagemaker: Any,
    s3: Any,
    *,
    source: str,
    package_group: str,
    model_bucket: str,
    image_uri: str,
    report: Any = None,
) -> dict[str, Any]:
    """Pack, upload and register the model at ``source``; the new package's ARN, digest and size."""
    report = report or (lambda line: None)
    with tempfile.TemporaryDirectory(prefix="pretrained-") as scratch:
        if source.startswith("s3://"):
            folder = _fetched(s3, S3Uri.parse(source), Path(scratch))
        else:
            folder = Path(source)
            if not folder.is_dir():
                raise PretrainedError(f"{source} is neither a folder nor an s3:// prefix")
        try:
            packed = pack_folder(folder)
        except LanguageModelError as error:
            raise PretrainedError(str(error)) from None
        model_type = _model_type(folder)
    record = EnclaveModelRecord.of(CAUSAL_LM, packed, 0, model_type)
    versions = json.dumps(VersionsRecord.current().to_dict(), indent=2).encode()
    described = json.dumps(record.to_dict(), indent=2).encode()
    root = S3Uri(model_bucket, f"{PREFIX}/{record.sha256}")
    model_uri, client_uri = root.join("model/model.tar.gz"), root.join("client")
    report(f"packed {model_type} model: {len(packed)} bytes, digest {record.sha256}")
    archive = _tar_gz({record.file: packed, artifacts.ENCLAVE_MODEL_JSON: described, artifacts.VERSIONS_JSON: versions})
    s3.put_object(Bucket=model_uri.bucket, Key=model_uri.key, Body=archive)
    costs = measure_pace(packed)
    prompt, token = costs["enclave_seconds_per_prompt"], costs["enclave_seconds_per_token"]
    report(f"its pace here: {prompt:.3f} s a prompt, {token:.4f} s a new token (owners' estimates are made of it)")
    client_files = [(artifacts.ENCLAVE_MODEL_JSON, described), (artifacts.VERSIONS_JSON, versions),
                    (artifacts.COSTS_JSON, json.dumps(costs, indent=2).encode())]  # fmt: skip
    for name, data in client_files:
        target = client_uri.join(name)
        s3.put_object(Bucket=target.bucket, Key=target.key, Body=data)
    created = sagemaker.create_model_package(
        ModelPackageGroupName=package_group,
        ModelPackageDescription=f"pretrained {model_type} language model for the enclave path",
        InferenceSpecification={
            "Containers": [{"Image": image_uri, "ModelDataUrl": str(model_uri)}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/octet-stream"],
        },
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties={
            "model_type": model_type,
            artifacts.MODEL_KIND_PROPERTY: "enclave",
            artifacts.MODEL_DIGEST_PROPERTY: record.sha256,
            artifacts.CLIENT_ARTIFACTS_PROPERTY: str(client_uri),
            "source": "pretrained",
        },
    )
    arn = str(created["ModelPackageArn"])
    report(f"registered {arn} (PendingManualApproval): approve it as any model, then owners may use it")
    return {"model_package": arn, "model_digest": record.sha256, "model_bytes": len(packed), "model_type": model_type}
