"""The parent instance's side of the channel: it hands its enclave the model and each shard's ciphertext with its
own temporary credentials, and takes back sealed results. It never holds a data key, a record or a prediction."""

from __future__ import annotations

import hashlib
from typing import Any

import boto3

from common.bundle.generation import SHARD_TIMEOUT_SECONDS
from containers.enclave import channel
from containers.enclave.application import ShardAnswer, ShardRefused, ShardWork

MODEL_PART_BYTES = 64 * 1024**2  # well under the channel's message limit


class EnclaveConnection:
    # A shard's answer may take as long as the workflow waits for it (a language model's shard: up to half of it).
    def __init__(self, address: str, timeout: float = SHARD_TIMEOUT_SECONDS) -> None:
        self.address = address
        self.timeout = timeout

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with channel.connect(self.address, self.timeout) as stream:
            channel.send(stream, request)
            answer = channel.receive(stream)
        if answer is None:
            raise channel.ChannelError("the enclave closed the channel without answering")
        return answer

    def load_model(self, model_format: str, content: bytes) -> str:
        """The model's digest, as the enclave computed it once it loaded the model. A model larger than a channel
        message (a language model's gigabytes) goes in parts, the enclave checking the whole against its size and
        SHA-256 before it loads it."""
        if len(content) <= MODEL_PART_BYTES:
            answer = self._ask({"model": {"format": model_format, "content": content}})
        else:
            whole = {"format": model_format, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
            for offset in range(0, len(content), MODEL_PART_BYTES):
                part = content[offset : offset + MODEL_PART_BYTES]
                answer = self._ask({"model_part": {**whole, "offset": offset, "data": part}})
                if "refused" in answer:
                    break
        if "refused" in answer:
            raise ShardRefused(str(answer["refused"]), str(answer.get("detail", "")))
        return str(answer["loaded"])

    def serve_shard(self, work: ShardWork, session: boto3.Session | None = None) -> ShardAnswer:
        session = session or boto3.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise ShardRefused("no_credentials", "the parent has no credentials to lend its enclave")
        frozen = credentials.get_frozen_credentials()
        answer = self._ask(
            {
                "shard": {
                    "owner": work.binding.owner,
                    "bundle_id": work.binding.bundle_id,
                    "shard": work.binding.shard,
                    "encrypted_data_key": work.encrypted_data_key,
                    "encrypted_records": work.encrypted_records,
                    "owner_public_key": work.owner_public_key,
                    **({"generation": work.generation.to_dict()} if work.generation is not None else {}),
                },
                "credentials": {
                    "AccessKeyId": frozen.access_key,
                    "SecretAccessKey": frozen.secret_key,
                    "SessionToken": frozen.token or "",
                },
                "region": session.region_name or "us-east-1",
            }
        )
        if "refused" in answer:
            raise ShardRefused(str(answer["refused"]), str(answer.get("detail", "")))
        return ShardAnswer(answer["sealed_results"], int(answer["samples"]), answer["attestation_document"])
