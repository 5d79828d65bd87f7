"""``InvokeEndpointAsync`` as SageMaker answers it: each request queued durably (the store) on the endpoint's
queue, taken by the workers of whichever instance is free (``MaxConcurrentInvocationsPerInstance`` of them per
instance; with no instance it waits, which is the backlog the endpoint scales on), handed to the instance's
``POST /invocations``, and answered with the response body at ``<S3OutputPath>/<inference id>.out`` and a
notification to the success topic, or the error body at ``<S3FailurePath>/<inference id>-error.out`` and a
notification to the error topic."""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aws_emulators.sagemaker.backend import Backend, timestamp
from aws_emulators.sagemaker.errors import ValidationError
from aws_emulators.sagemaker.faults import Faults
from aws_emulators.sagemaker.hosting import Host
from aws_emulators.sagemaker.s3_objects import S3Uri

log = logging.getLogger("aws_emulators.sagemaker.invocations")

DEFAULT_INVOCATION_TIMEOUT_S = 900
DEFAULT_CONCURRENCY = 4
WAITING = ("Queued", "InProgress")  # the backlog: taken, or still to take


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Invocations:
    def __init__(self, backend: Backend, lost: Callable[[Host], None]) -> None:
        self.backend = backend
        self.faults = Faults(backend.state_dir)
        self.lost = lost  # an instance whose serving container died: replaced by the endpoint

    def start_workers(self, host: Host, waiting: queue.Queue[str]) -> int:
        """The instance's workers, as many as its configuration lets it take at once; returns how many."""
        async_config = host.config.get("AsyncInferenceConfig") or {}
        per_instance = (async_config.get("ClientConfig") or {}).get(
            "MaxConcurrentInvocationsPerInstance", DEFAULT_CONCURRENCY
        )
        concurrency = max(1, int(per_instance))
        for number in range(concurrency):
            worker = threading.Thread(
                target=self.work, args=(host, waiting), name=f"invoke-{host.container_name}-{number}", daemon=True
            )
            worker.start()
            host.workers.append(worker)
        return concurrency

    def requeue(self, endpoint: str, waiting: queue.Queue[str]) -> None:
        """After a restart: every request of the endpoint not answered yet goes back on its queue (one that was in
        progress when the server stopped runs again)."""
        with self.backend.store.transaction():
            for invocation in self.backend.store.list("invocation", parent=endpoint):
                if invocation["Status"] in WAITING:
                    invocation["Status"] = "Queued"
                    self.backend.store.put("invocation", invocation["InferenceId"], invocation, parent=endpoint)
                    waiting.put(invocation["InferenceId"])

    def backlog(self, endpoint: str) -> int:
        """Requests taken or still to take: SageMaker's ApproximateBacklogSize."""
        return self.backend.store.count("invocation", endpoint, "Status", WAITING)

    def _claim(self, inference_id: str) -> dict[str, Any] | None:
        """The queued request, now InProgress; None when another worker took it or it is answered."""
        with self.backend.store.transaction():
            invocation = self.backend.store.get("invocation", inference_id)
            if invocation is None or invocation["Status"] != "Queued":
                return None
            invocation["Status"] = "InProgress"
            self.backend.store.put("invocation", inference_id, invocation, parent=invocation["EndpointName"])
        return invocation

    def accept(
        self, name: str, headers: dict[str, str], waiting: queue.Queue[str] | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Queue one InvokeEndpointAsync request, durably and on the endpoint's queue."""
        endpoint = self.backend.store.get("endpoint", name)
        if endpoint is None:
            raise ValidationError(f"Endpoint {name} of account {self.backend.arn_prefix.rsplit(':', 1)[-1]} not found.")
        if endpoint["EndpointStatus"] not in ("InService", "Updating"):
            raise ValidationError(f"Endpoint {name} is not in service (status {endpoint['EndpointStatus']}).")
        config = self.backend.store.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
        async_config = config.get("AsyncInferenceConfig")
        if not async_config:
            raise ValidationError(f"Endpoint {name} is not an asynchronous endpoint.")
        input_location = headers.get("x-amzn-sagemaker-inputlocation", "")
        if not input_location:
            raise ValidationError("InputLocation is required")
        try:
            S3Uri.parse(input_location)
        except ValueError as error:
            raise ValidationError(f"InputLocation: {error}") from None
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        output = async_config["OutputConfig"]
        output_uri = S3Uri.parse(output["S3OutputPath"]).join(f"{inference_id}.out")
        failure_uri = (
            S3Uri.parse(output["S3FailurePath"]).join(f"{inference_id}-error.out")
            if output.get("S3FailurePath")
            else None
        )
        with self.backend.store.transaction():
            if self.backend.store.get("invocation", inference_id):
                # The queue is keyed by it; sagemaker-runtime refuses with ValidationError only.
                raise ValidationError(f"InferenceId {inference_id} was already used")
            now = timestamp()
            ttl = int(headers.get("x-amzn-sagemaker-requestttlseconds") or 6 * 3600)
            timeout = int(headers.get("x-amzn-sagemaker-invocationtimeoutseconds") or DEFAULT_INVOCATION_TIMEOUT_S)
            invocation = {
                "InferenceId": inference_id,
                "EndpointName": name,
                "InputLocation": input_location,
                "ContentType": headers.get("x-amzn-sagemaker-content-type", "application/octet-stream"),
                "Accept": headers.get("x-amzn-sagemaker-accept", ""),
                "CustomAttributes": headers.get("x-amzn-sagemaker-custom-attributes", ""),
                "OutputLocation": str(output_uri),
                "FailureLocation": str(failure_uri) if failure_uri else "",
                "ReceivedTime": now,
                "ExpiresAt": now + ttl,
                "TimeoutSeconds": timeout,
                "Status": "Queued",
            }
            self.backend.store.put("invocation", inference_id, invocation, parent=name)
        if waiting is not None:
            waiting.put(inference_id)
        response_headers = {"X-Amzn-SageMaker-OutputLocation": str(output_uri)}
        if failure_uri:
            response_headers["X-Amzn-SageMaker-FailureLocation"] = str(failure_uri)
        return {"InferenceId": inference_id}, response_headers

    def work(self, host: Host, waiting: queue.Queue[str]) -> None:
        """Take requests off the endpoint's queue until the instance stops (after the request in hand)."""
        while not host.stopping.is_set():
            try:
                inference_id = waiting.get(timeout=0.5)
            except queue.Empty:
                continue
            if host.stopping.is_set():
                waiting.put(inference_id)  # another instance takes it
                return
            invocation = self._claim(inference_id)
            if invocation is None:
                continue
            host.busy += 1
            try:
                self._invoke(host, invocation)
            except Exception:
                log.exception("invocation %s could not be completed", inference_id)
            finally:
                host.busy -= 1

    def _invoke(self, host: Host, invocation: dict[str, Any]) -> None:
        inference_id = invocation["InferenceId"]
        if timestamp() > invocation["ExpiresAt"]:
            self._finish(host, invocation, None, "Request expired before it was processed (RequestTTLSeconds)", b"")
            return
        try:
            source = S3Uri.parse(invocation["InputLocation"])
            s3 = host.client("s3")
            payload = s3.get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
        except Exception as error:
            reason = f"ClientError: Failed to download data. {type(error).__name__}: {error}"
            self._finish(host, invocation, None, reason, b"")
            return
        if self.faults.fails(host.endpoint, invocation["InputLocation"]):
            self._finish(host, invocation, None, "ServerError: the instance failed (injected fault)", b"")
            return
        request = urllib.request.Request(  # noqa: S310 - loopback
            host.url + "/invocations",
            data=payload,
            method="POST",
            headers={
                "Content-Type": invocation["ContentType"],
                "Accept": invocation["Accept"] or "*/*",
                "X-Amzn-SageMaker-Custom-Attributes": invocation["CustomAttributes"],
                "X-Amzn-SageMaker-Inference-Id": inference_id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=invocation["TimeoutSeconds"]) as response:  # noqa: S310
                body = response.read()
                content_type = response.headers.get("Content-Type", "application/octet-stream")
            self._finish(host, invocation, (body, content_type), None, b"")
        except urllib.error.HTTPError as error:
            body = error.read()
            reason = (
                f"ClientError: Received server error ({error.code}) from primary with message "
                f'"{body[:512].decode(errors="replace")}".'
            )
            self._finish(host, invocation, None, reason, body)
        except (urllib.error.URLError, OSError) as error:
            reason = f"ServerError: the model container did not answer ({error})"
            self._finish(host, invocation, None, reason, b"")
            if host.process.poll() is not None and not host.stopping.is_set():
                log.error("the serving container %s exited; replacing the instance", host.container_name)
                self.lost(host)

    def _finish(
        self,
        host: Host,
        invocation: dict[str, Any],
        success: tuple[bytes, str] | None,
        failure_reason: str | None,
        failure_body: bytes,
    ) -> None:
        s3 = host.client("s3")
        config = host.config["AsyncInferenceConfig"]["OutputConfig"]
        notification = config.get("NotificationConfig") or {}
        message: dict[str, Any] = {
            "awsRegion": self.backend.region,
            "eventTime": _iso(timestamp()),
            "receivedTime": _iso(invocation["ReceivedTime"]),
            "invocationStatus": "Completed" if success else "Failed",
            "requestParameters": {
                "contentType": invocation["ContentType"],
                "endpointName": invocation["EndpointName"],
                "inputLocation": invocation["InputLocation"],
            },
            "inferenceId": invocation["InferenceId"],
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if invocation["CustomAttributes"]:
            message["requestParameters"]["customAttributes"] = invocation["CustomAttributes"]
        if success:
            body, content_type = success
            target = S3Uri.parse(invocation["OutputLocation"])
            s3.put_object(Bucket=target.bucket, Key=target.key, Body=body, ContentType=content_type)
            message["responseParameters"] = {"contentType": content_type, "outputLocation": str(target)}
            include = "SUCCESS_NOTIFICATION_TOPIC" in (notification.get("IncludeInferenceResponseIn") or [])
            if include and len(body) <= 128 * 1024:
                message["responseBody"] = {"content": body.decode(errors="replace"), "contentType": content_type}
            topic = notification.get("SuccessTopic")
            invocation["Status"] = "Completed"
        else:
            message["failureReason"] = failure_reason
            if invocation["FailureLocation"]:
                target = S3Uri.parse(invocation["FailureLocation"])
                s3.put_object(
                    Bucket=target.bucket, Key=target.key, Body=failure_body or (failure_reason or "").encode()
                )
                message["responseParameters"] = {"contentType": "application/json", "failureLocation": str(target)}
            topic = notification.get("ErrorTopic")
            invocation["Status"] = "Failed"
            invocation["FailureReason"] = failure_reason
        invocation["CompletedTime"] = timestamp()
        if topic:
            host.client("sns").publish(TopicArn=topic, Message=json.dumps(message))
        self.backend.store.put("invocation", invocation["InferenceId"], invocation, parent=host.endpoint)
        log.info("invocation %s on %s: %s", invocation["InferenceId"], host.endpoint, invocation["Status"])
