"""The enclave's side of the channel: it takes the model once (as data: its format and bytes), then shards, one at
a time, and answers each with the sealed results or a named refusal. The parent's temporary credentials come with
each shard (an enclave has no instance role of its own); KMS is reached at the endpoint the environment names (on
AWS the parent's vsock proxy to KMS, locally the local AWS), as every AWS client of the product is.

Requests: ``{"model": {"format", "content"}}`` answered ``{"loaded": <digest>}`` (a model too large for one message
comes as ``{"model_part": {"format", "size", "sha256", "offset", "data"}}`` in order, each answered ``{"received":
<bytes so far>}`` and the last ``{"loaded": <digest>}``); ``{"shard": {"owner",
"bundle_id", "shard", "encrypted_data_key", "encrypted_records", "owner_public_key"[, "generation"]}, "credentials":
{"AccessKeyId", "SecretAccessKey", "SessionToken"}, "region"}`` answered ``{"sealed_results", "samples",
"attestation_document"}``; a refusal is ``{"refused": <reason>, "detail": <text>}``, and never carries data."""

from __future__ import annotations

import hashlib
import logging
import socket
from typing import Any

import boto3

from common.bundle.binding import ShardBinding
from common.bundle.generation import GenerationSettings
from common.bundle.schema import BUNDLE_ID, OWNER, BundleError
from common.language_model import MAX_LANGUAGE_MODEL_BYTES
from containers.enclave import channel
from containers.enclave.application import EnclaveApplication, ShardRefused, ShardWork
from containers.enclave.key_release import KeyRelease
from containers.enclave.models import EnclaveModel, ModelError, load_model
from containers.enclave.nsm import Nsm

LOGGER = logging.getLogger("fhe.enclave")
CREDENTIAL_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken")


class RequestRefused(Exception):
    pass


def _bytes(fields: dict[str, Any], name: str) -> bytes:
    value = fields.get(name)
    if not isinstance(value, bytes) or not value:
        raise RequestRefused(f"{name} must be non-empty bytes")
    return value


def parse_shard(request: dict[str, Any]) -> tuple[ShardWork, dict[str, str], str]:
    shard, credentials, region = request.get("shard"), request.get("credentials"), request.get("region")
    if not isinstance(shard, dict) or not isinstance(credentials, dict) or not isinstance(region, str):
        raise RequestRefused("a shard request carries shard, credentials and region")
    owner, bundle_id, index = shard.get("owner"), shard.get("bundle_id"), shard.get("shard")
    if not isinstance(owner, str) or not OWNER.match(owner):
        raise RequestRefused("owner is not an owner's name")
    if not isinstance(bundle_id, str) or not BUNDLE_ID.match(bundle_id):
        raise RequestRefused("bundle_id is not a bundle id")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise RequestRefused("shard must be a shard's index")
    if not all(isinstance(credentials.get(name), str) for name in CREDENTIAL_FIELDS):
        raise RequestRefused("credentials must carry the parent's temporary credentials")
    generation = None
    if "generation" in shard:
        try:
            generation = GenerationSettings.from_dict(shard["generation"])
        except BundleError as error:
            raise RequestRefused(str(error)) from None
    work = ShardWork(
        # A text bundle's settings are bound in: settings other than the owner's open nothing.
        binding=ShardBinding(owner, bundle_id, index, generation.digest() if generation is not None else ""),
        encrypted_data_key=_bytes(shard, "encrypted_data_key"),
        encrypted_records=_bytes(shard, "encrypted_records"),
        owner_public_key=_bytes(shard, "owner_public_key"),
        generation=generation,
    )
    return work, {name: credentials[name] for name in CREDENTIAL_FIELDS}, region


class EnclaveServer:
    def __init__(self, nsm: Nsm) -> None:
        self.nsm = nsm
        self.model: EnclaveModel | None = None
        self._parts: tuple[dict[str, Any], bytearray] | None = None  # a model arriving in parts: what, and so far

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if "model" in request:
            return self._load(request["model"])
        if "model_part" in request:
            return self._load_part(request["model_part"])
        if "shard" in request:
            return self._shard(request)
        return {"refused": "invalid_request", "detail": "a request is a model or a shard"}

    def answer_safely(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer, or a named refusal for anything unforeseen: one request's failure never ends the enclave that
        serves every owner. Only the error's kind is told (its text could quote a record)."""
        try:
            return self.answer(request)
        except Exception as error:  # the enclave outlives any one request
            LOGGER.warning("a request failed: %s", type(error).__name__)
            return {"refused": "internal_error", "detail": f"the enclave could not serve it ({type(error).__name__})"}

    def _load(self, model: Any) -> dict[str, Any]:
        if not isinstance(model, dict) or not isinstance(model.get("format"), str):
            return {"refused": "invalid_model", "detail": "a model carries its format and content"}
        try:
            self.model = load_model(model["format"], model.get("content") or b"")
        except ModelError as error:
            return {"refused": "invalid_model", "detail": str(error)}
        LOGGER.info("model loaded: %s, digest %s", self.model.format, self.model.digest)
        return {"loaded": self.model.digest}

    def _load_part(self, part: Any) -> dict[str, Any]:
        """One part of a model too large for one message: parts come in order; the whole is checked against the
        size and SHA-256 the first part announced before it is loaded."""
        fields = ("format", "size", "sha256", "offset", "data")
        if not isinstance(part, dict) or any(name not in part for name in fields):
            return {"refused": "invalid_model", "detail": f"a model part carries {', '.join(fields)}"}
        whole = {name: part[name] for name in ("format", "size", "sha256")}
        if part["offset"] == 0:
            if not isinstance(whole["size"], int) or not 0 < whole["size"] <= MAX_LANGUAGE_MODEL_BYTES:
                return {"refused": "invalid_model", "detail": f"a model is 1 to {MAX_LANGUAGE_MODEL_BYTES} bytes"}
            self._parts = (whole, bytearray())
        if self._parts is None or self._parts[0] != whole or part["offset"] != len(self._parts[1]):
            self._parts = None
            return {"refused": "invalid_model", "detail": "a model part out of order"}
        received = self._parts[1]
        received.extend(part["data"] if isinstance(part["data"], bytes) else b"")
        if len(received) > whole["size"]:
            self._parts = None
            return {"refused": "invalid_model", "detail": "the model's parts exceed its size"}
        if len(received) < whole["size"]:
            return {"received": len(received)}
        self._parts = None
        if hashlib.sha256(received).hexdigest() != whole["sha256"]:
            return {"refused": "invalid_model", "detail": "the model's parts are not the model announced"}
        content = bytes(received)
        del received  # one copy of the model in memory while it loads, not two
        return self._load({"format": whole["format"], "content": content})

    def _shard(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.model is None:
            return {"refused": "no_model", "detail": "no model is loaded"}
        try:
            work, credentials, region = parse_shard(request)
        except RequestRefused as error:
            return {"refused": "invalid_request", "detail": str(error)}
        kms = boto3.client(
            "kms",
            region_name=region,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
        try:
            answer = EnclaveApplication(self.model, KeyRelease(kms, self.nsm)).run(work)
        except ShardRefused as refusal:
            LOGGER.info("shard %d refused: %s", work.binding.shard, refusal.reason)
            return {"refused": refusal.reason, "detail": refusal.detail}
        LOGGER.info("shard %d served: %d samples", work.binding.shard, answer.samples)
        return {
            "sealed_results": answer.sealed_results,
            "samples": answer.samples,
            "attestation_document": answer.attestation_document,
        }

    def serve(self, listener: socket.socket) -> None:
        """One connection at a time, one request after another on each, until the process is stopped."""
        while True:
            stream, _ = listener.accept()
            with stream:
                try:
                    while (request := channel.receive(stream)) is not None:
                        channel.send(stream, self.answer_safely(request))
                except (channel.ChannelError, OSError) as error:  # the parent gave up or went away: the next
                    LOGGER.warning("a connection was dropped: %s", type(error).__name__)  # connection is served
