"""The parent instance's shard worker: it takes the workflow's shard messages from the enclave shard queue (the
state machine's ``sqs:sendMessage.waitForTaskToken``, as the endpoint path queues its shards), hands each shard's
ciphertext to its enclave, writes the sealed results where the workflow's Assemble reads them, and completes the
task: success with what served the shard (the enclave's measurement and the model's digest, from the attestation
document KMS released the key to), or failure with a named reason. It reads no record and no prediction: it moves
ciphertext only.

The owner is taken from where the bundle lies (``inbox/<owner>/``, which only that owner's role can write), never
from the manifest: the enclave binds the shard to it, so one owner's key never opens for another's bundle.
"""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from botocore.exceptions import ClientError

from common.archives import UnsafeArchiveError, extract_tar
from common.bundle.enclave_manifest import attestation_key, parse_enclave_manifest, sealed_results_key
from common.bundle.messages import ShardResult
from common.bundle.schema import MAX_MANIFEST_BYTES, BundleError, sha256_hex
from common.bundle.store import BundleLayout, get_bytes, read_shard, write_shard_result
from common.enclave_model import EnclaveModelError, EnclaveModelRecord
from common.model_package import ModelPackageError, describe, enclave_model_digest, model_kind
from common.s3uri import S3Uri
from common.workflow import BundleRef, EventError, FailureReason, as_object, text_field
from containers.enclave.application import ShardRefused, ShardWork
from containers.enclave.channel import ChannelError
from containers.enclave.parent import EnclaveConnection

LOG = logging.getLogger("fhe.parent")
STAGE = "infer"
HEARTBEAT_SECONDS = 60.0  # the workflow's HeartbeatSeconds is 300: a few beats fit in each window
# Failures the state machine retries (ShardFailed) and those it does not: a refusal of the bundle or of this
# enclave will not change on a retry.
RETRIED = "ShardFailed"
REFUSED = "ShardRefused"
_RETRIED_REASONS = {"no_credentials", "enclave_unavailable", "model_unreadable", "internal_error"}


@dataclass(frozen=True)
class EnclaveShardTask:
    """One Map iteration of an enclave bundle: shard ``shard_index`` of ``bundle``, completed through
    ``task_token``."""

    bundle: BundleRef
    model_package_arn: str
    shard_index: int
    task_token: str

    @classmethod
    def from_message(cls, body: str) -> EnclaveShardTask:
        try:
            data = as_object(json.loads(body), "the shard message")
        except ValueError as error:
            raise EventError(f"the shard message is not JSON: {error}") from None
        index = data.get("shard_index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EventError(f"shard_index must be a non-negative integer, got {index!r}")
        return cls(
            BundleRef.from_dict(data.get("bundle")),
            text_field(data, "model_package_arn"),
            index,
            text_field(data, "task_token"),
        )


class ServedModel:
    """The model this parent's enclave serves: the enclave model of the shard's package, as registered. Each shard's
    package is looked up in the registry (a revoked package serves nothing more); the model is loaded into the
    enclave from the package's ``model.tar.gz`` only when its registered digest differs from the one loaded, and is
    refused unless the file, the registry and the enclave's own digest agree."""

    def __init__(self, sagemaker: Any, s3: Any, enclave: EnclaveConnection) -> None:
        self.sagemaker = sagemaker
        self.s3 = s3
        self.enclave = enclave
        self.loaded: str | None = None  # the digest the enclave reported for the model it holds

    def ensure(self, package_arn: str) -> str:
        """Load ``package_arn``'s model into the enclave unless it holds it already; its registered digest."""
        try:
            package = describe(self.sagemaker, package_arn)
            if package.get("ModelApprovalStatus") != "Approved":
                raise ShardRefused("model_revoked", f"{package_arn} is {package.get('ModelApprovalStatus')}")
            if model_kind(package) != "enclave":
                raise ShardRefused("wrong_path", f"{package_arn} is not an enclave model")
            digest = enclave_model_digest(package)
        except ModelPackageError as error:
            raise ShardRefused("model_unusable", str(error)) from None
        except ClientError as error:  # retried: a throttled or unreachable registry may answer next time
            raise ShardRefused("model_unreadable", f"the registry did not describe {package_arn}: {error}") from None
        if digest == self.loaded:
            return digest
        uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "model.tar.gz"
            try:
                self.s3.download_file(uri.bucket, uri.key, str(archive))
            except ClientError as error:  # retried: the bucket may answer on the next try
                raise ShardRefused("model_unreadable", f"{package_arn}'s model.tar.gz: {error}") from None
            try:
                extract_tar(archive, Path(scratch) / "model")
                record, content = EnclaveModelRecord.load(Path(scratch) / "model")
            except (EnclaveModelError, UnsafeArchiveError, tarfile.TarError) as error:
                raise ShardRefused("model_unusable", f"{package_arn}'s model.tar.gz: {error}") from None
        if record.sha256 != digest:
            raise ShardRefused("model_unusable", f"{package_arn}'s model.tar.gz holds a model other than registered")
        self.loaded = None  # until the enclave confirms the new one
        loaded = self.enclave.load_model(record.format, content)
        if loaded != digest:
            raise ShardRefused("model_unusable", f"the enclave loaded a model of another digest than {package_arn}'s")
        self.loaded = loaded
        return digest


def served_by(attestation_document: bytes) -> dict[str, str]:
    """The enclave measurement (PCR0) and the model digest (``user_data``) of the document KMS released the shard's
    key to. Read, not verified: KMS verified it before releasing the key, and the audit verifies it again."""
    _, _, payload, _ = cbor2.loads(attestation_document)
    document = cbor2.loads(payload)
    return {"image_sha384": bytes(document["pcrs"][0]).hex(), "model_digest": bytes(document["user_data"]).hex()}


class ShardWorker:
    """Serves one shard message at a time through one enclave."""

    def __init__(
        self,
        s3: Any,
        sfn: Any,
        enclave: EnclaveConnection,
        *,
        model: ServedModel | None,
        image_sha384: str,
        lend: Callable[[], Any],
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.s3 = s3
        self.sfn = sfn
        self.enclave = enclave
        self.model = model  # None: the enclave's model is loaded by the caller (and not checked against a package)
        self.image_sha384 = image_sha384  # this enclave's measurement, as the image was built
        self.lend = lend  # the session whose credentials the enclave's KMS calls are made with
        self.heartbeat_seconds = heartbeat_seconds

    @contextmanager
    def _heartbeats(self, task_token: str) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_seconds):
                try:
                    self.sfn.send_task_heartbeat(taskToken=task_token)
                except ClientError:
                    return  # the wait ended (timed out, the execution stopped): completing it will say so

        thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def serve(self, task: EnclaveShardTask) -> tuple[ShardResult, dict[str, str]]:
        """Shard ``task.shard_index`` through the enclave, its sealed results written to the result bundle; the
        result's record and what served it."""
        started = time.perf_counter()
        layout = BundleLayout(task.bundle.bucket, task.bundle.owner)
        manifest_uri = S3Uri(task.bundle.bucket, task.bundle.manifest_key)
        manifest = parse_enclave_manifest(get_bytes(self.s3, manifest_uri, field="manifest", limit=MAX_MANIFEST_BYTES))
        if manifest.bundle_id != task.bundle.bundle_id:
            raise BundleError("bundle_id", f"the manifest names {manifest.bundle_id}, not {task.bundle.bundle_id}")
        if manifest.header.model.package_arn != task.model_package_arn:
            raise BundleError("model.package_arn", "is not the model package the workflow chose", "model_mismatch")
        entry = manifest.header.shards[task.shard_index] if task.shard_index < len(manifest.shards) else None
        if entry is None:
            raise BundleError("shard_index", f"bundle {manifest.bundle_id} has no shard {task.shard_index}")
        digest = self.model.ensure(task.model_package_arn) if self.model is not None else None
        work = ShardWork(
            binding=manifest.binding(layout.owner, entry.index),
            encrypted_data_key=manifest.enclave.data_key,
            encrypted_records=read_shard(self.s3, manifest_uri, entry),
            owner_public_key=manifest.enclave.owner_public_key,
            generation=manifest.generation,
        )
        answer = self.enclave.serve_shard(work, session=self.lend())
        served = served_by(answer.attestation_document)
        if digest is not None and served["model_digest"] != digest:
            raise ShardRefused("model_unusable", f"the enclave attested a model other than {task.model_package_arn}'s")
        if answer.samples != entry.samples:
            raise ShardRefused("invalid_records", f"the shard holds {answer.samples} records, the manifest says "
                               f"{entry.samples}")  # fmt: skip
        results = layout.result_prefix(manifest.bundle_id)
        proof = results.join(attestation_key(entry.index))
        self.s3.put_object(Bucket=proof.bucket, Key=proof.key, Body=answer.attestation_document)
        uri = results.join(sealed_results_key(entry.index))
        self.s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=answer.sealed_results)
        result = ShardResult(
            manifest.bundle_id,
            entry.index,
            str(uri),
            entry.samples,
            sha256_hex(answer.sealed_results),
            len(answer.sealed_results),
            seconds=round(time.perf_counter() - started, 3),
            fhe_seconds=0.0,
        )
        write_shard_result(self.s3, layout, result)
        return result, served

    def handle(self, task: EnclaveShardTask) -> str:
        """Serve the task's shard and complete its wait; the outcome's name (``served`` or the refusal's reason)."""
        try:
            with self._heartbeats(task.task_token):
                result, served = self.serve(task)
        except (ChannelError, OSError) as error:
            return self._fail(task, "enclave_unavailable", f"the enclave did not answer ({type(error).__name__})", None)
        except ShardRefused as refusal:
            return self._fail(task, refusal.reason, refusal.detail, None)
        except BundleError as error:
            return self._fail(task, error.code, str(error), error.field)
        except Exception as error:  # one shard's unforeseen failure never ends the parent's worker
            LOG.warning("shard %d of a bundle failed: %s", task.shard_index, type(error).__name__)
            return self._fail(task, "internal_error", f"the shard could not be served ({type(error).__name__})", None)
        output = {"shard_index": result.shard_index, "samples": result.samples, **served}
        self._complete(lambda: self.sfn.send_task_success(taskToken=task.task_token, output=json.dumps(output)))
        return "served"

    def _fail(self, task: EnclaveShardTask, code: str, message: str, field: str | None) -> str:
        error = RETRIED if code in _RETRIED_REASONS else REFUSED
        reason = FailureReason(STAGE, code, message, field=field, shard=task.shard_index, error=error)
        self._complete(
            lambda: self.sfn.send_task_failure(taskToken=task.task_token, error=error, cause=reason.to_json())
        )
        return code

    @staticmethod
    def _complete(send: Callable[[], Any]) -> None:
        try:
            send()
        except ClientError as error:
            # The wait already ended (timed out, stopped, or completed by an earlier delivery of the message):
            # nothing is waiting for this answer, and the execution's own record says why.
            if error.response.get("Error", {}).get("Code") not in ("TaskTimedOut", "TaskDoesNotExist"):
                raise


def poll(sqs: Any, queue_url: str, worker: ShardWorker, *, wait_seconds: int = 20) -> int:
    """Take up to one message from the queue and handle it; the number handled. A message that is not a shard task
    is left to the queue's redrive policy (dead letters), never deleted unread."""
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=wait_seconds)
    handled = 0
    for message in received.get("Messages", []):
        try:
            task = EnclaveShardTask.from_message(message["Body"])
        except EventError:
            continue
        worker.handle(task)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        handled += 1
    return handled
