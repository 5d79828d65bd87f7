"""The parent instance's side of the channel: it hands its enclave the model and each shard's ciphertext with its
own temporary credentials, and takes back sealed results. It never holds a data key, a record or a prediction."""

from __future__ import annotations

from typing import Any

import boto3

from containers.enclave import channel
from containers.enclave.application import ShardAnswer, ShardRefused, ShardWork


class EnclaveConnection:
    def __init__(self, address: str, timeout: float = 600.0) -> None:
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
        """The model's digest, as the enclave computed it once it loaded the model."""
        answer = self._ask({"model": {"format": model_format, "content": content}})
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
