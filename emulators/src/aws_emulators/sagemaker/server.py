"""HTTP front of the local SageMaker: SageMaker's JSON protocol (``X-Amz-Target: SageMaker.<Operation>``),
sagemaker-runtime's ``InvokeEndpointAsync``, and Application Auto Scaling's JSON protocol
(``X-Amz-Target: AnyScaleFrontendService.<Operation>``) for the endpoints' scaling: point
``AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING`` here.

    fhe-local-sagemaker --port 4599 --state-dir .local-stack/sagemaker

Binds to loopback only. An operation it does not implement answers ``UnknownOperationException``. With
``--authorize-with URL`` (the local AWS), every call is authorized by IAM there, as on AWS
(``emulators/src/aws_emulators/sagemaker/authorization.py``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import sys
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.authorization import (
    Authorizer,
    Permission,
    SignedRequest,
    runtime_permission,
    sagemaker_permission,
    scaling_permission,
)
from aws_emulators.sagemaker.autoscaling import Autoscaling
from aws_emulators.sagemaker.backend import Backend
from aws_emulators.sagemaker.endpoints import Endpoints
from aws_emulators.sagemaker.errors import ApiError, UnknownOperation, ValidationError
from aws_emulators.sagemaker.pipelines import Pipelines
from aws_emulators.sagemaker.registry import Registry
from aws_emulators.sagemaker.runtime import RUNTIMES, ContainerError, runtime
from aws_emulators.sagemaker.store import Store
from common import aws

log = logging.getLogger("aws_emulators.sagemaker")
ACCOUNT_ID = "000000000000"
_ACCESS_KEY = re.compile(r"Credential=([^/]+)/")
SCALING_SERVICE = "AnyScaleFrontendService"  # Application Auto Scaling's target prefix
_ASYNC_INVOCATION = re.compile(r"^/endpoints/(?P<name>[^/]+)/async-invocations$")

Operation = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class LocalSageMaker:
    """The operations, by name, over one store."""

    def __init__(
        self,
        state_dir: Path,
        region: str = aws.DEFAULT_REGION,
        runtime_name: str = "process",
        authorizer: Authorizer | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.authorizer = authorizer
        self.runtime = runtime(runtime_name)
        self.store = Store(state_dir / "sagemaker.sqlite3")
        arn_prefix = self.arn_prefix = f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}"
        self.registry = Registry(self.store, arn_prefix)
        backend = Backend(
            self.store,
            self.registry,
            state_dir,
            arn_prefix,
            region,
            self.runtime,
            s3=lambda: aws.client("s3"),
        )
        self.pipelines = Pipelines(backend)
        self.autoscaling = Autoscaling(backend)
        self.endpoints = Endpoints(backend, self.autoscaling)
        p, r, e, a = self.pipelines, self.registry, self.endpoints, self.autoscaling
        self.operations: dict[str, Operation] = {
            "CreatePipeline": p.create_pipeline,
            "UpdatePipeline": p.update_pipeline,
            "DescribePipeline": p.describe_pipeline,
            "ListPipelines": p.list_pipelines,
            "DeletePipeline": p.delete_pipeline,
            "StartPipelineExecution": p.start_pipeline_execution,
            "DescribePipelineExecution": p.describe_pipeline_execution,
            "ListPipelineExecutions": p.list_pipeline_executions,
            "ListPipelineExecutionSteps": p.list_pipeline_execution_steps,
            "ListPipelineParametersForExecution": p.list_pipeline_parameters_for_execution,
            "StopPipelineExecution": p.stop_pipeline_execution,
            "DescribeProcessingJob": lambda b, c: p.describe_job("processing-job", b.get("ProcessingJobName", "")),
            "DescribeTrainingJob": lambda b, c: p.describe_job("training-job", b.get("TrainingJobName", "")),
            "CreateModelPackageGroup": lambda b, c: r.create_model_package_group(b),
            "DescribeModelPackageGroup": lambda b, c: r.describe_model_package_group(b),
            "ListModelPackageGroups": lambda b, c: r.list_model_package_groups(b),
            "CreateModelPackage": lambda b, c: r.create_model_package(b, created_by=c),
            "DescribeModelPackage": lambda b, c: r.describe_model_package(b),
            "ListModelPackages": lambda b, c: r.list_model_packages(b),
            "UpdateModelPackage": lambda b, c: r.update_model_package(b, modified_by=c),
            "CreateModel": lambda b, c: e.create_model(b),
            "DescribeModel": lambda b, c: e.describe_model(b),
            "DeleteModel": lambda b, c: e.delete_model(b),
            "CreateEndpointConfig": lambda b, c: e.create_endpoint_config(b),
            "DescribeEndpointConfig": lambda b, c: e.describe_endpoint_config(b),
            "DeleteEndpointConfig": lambda b, c: e.delete_endpoint_config(b),
            "CreateEndpoint": lambda b, c: e.create_endpoint(b),
            "UpdateEndpoint": lambda b, c: e.update_endpoint(b),
            "DescribeEndpoint": lambda b, c: e.describe_endpoint(b),
            "ListEndpoints": lambda b, c: e.list_endpoints(b),
            "DeleteEndpoint": lambda b, c: e.delete_endpoint(b),
        }
        self.scaling_operations: dict[str, Operation] = {
            "RegisterScalableTarget": lambda b, c: a.register_scalable_target(b),
            "DescribeScalableTargets": lambda b, c: a.describe_scalable_targets(b),
            "DeregisterScalableTarget": lambda b, c: a.deregister_scalable_target(b),
            "PutScalingPolicy": lambda b, c: a.put_scaling_policy(b),
            "DescribeScalingPolicies": lambda b, c: a.describe_scaling_policies(b),
            "DeleteScalingPolicy": lambda b, c: a.delete_scaling_policy(b),
            "DescribeScalingActivities": lambda b, c: a.describe_scaling_activities(b),
        }

    def caller(self, request: SignedRequest, permission: Permission) -> dict[str, Any]:
        """Who signed ``request``, once authorized for ``permission`` (SageMaker's ``CreatedBy`` shape); without
        an authorizer, the access key the signature names, unchecked."""
        if self.authorizer is None:
            authorization = next((v for k, v in request.headers if k.lower() == "authorization"), "")
            match = _ACCESS_KEY.search(authorization)
            key = match.group(1) if match else "anonymous"
            return {"IamIdentity": {"Arn": f"arn:aws:iam::{ACCOUNT_ID}:user/{key}", "PrincipalId": key}}
        principal = self.authorizer.authorize(request, permission)
        return {"IamIdentity": {"Arn": principal, "PrincipalId": principal.rsplit("/", 1)[-1]}}

    def call(
        self, operation: str, body: dict[str, Any], caller: dict[str, Any], service: str = "SageMaker"
    ) -> dict[str, Any]:
        operations = self.scaling_operations if service == SCALING_SERVICE else self.operations
        handler = operations.get(operation) if service in (SCALING_SERVICE, "SageMaker") else None
        if handler is None:
            raise UnknownOperation(f"The local SageMaker does not implement {service}.{operation}")
        return handler(body, caller)


def make_handler(service: LocalSageMaker) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", "local")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _signed(self, body: bytes) -> SignedRequest:
            return SignedRequest(self.command, self.path, list(self.headers.items()), body)

        def _runtime(self, path: str, raw: bytes) -> None:
            """sagemaker-runtime (REST-JSON): ``POST /endpoints/<name>/async-invocations``."""
            match = _ASYNC_INVOCATION.match(path)
            try:
                if not match:
                    raise UnknownOperation(f"the local SageMaker runtime does not implement {path}")
                endpoint = urllib.parse.unquote(match["name"])
                service.caller(self._signed(raw), runtime_permission(endpoint, service.arn_prefix))
                headers = {k.lower(): v for k, v in self.headers.items()}
                result, extra = service.endpoints.invoke_endpoint_async(endpoint, headers)
                self._send(202, result, extra)
            except ApiError as error:
                # REST-JSON names the error in a header; the runtime calls its client errors ValidationError.
                code = "ValidationError" if error.code == "ValidationException" else error.code
                self._send(error.status, {"message": error.message}, {"X-Amzn-ErrorType": code})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("", "/health", "/ping"):
                self._send(200, {"status": "running", "service": "local-sagemaker", "runtime": service.runtime.name})
            else:
                self._send(404, {"__type": "NotFound", "message": self.path})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            if path.startswith("/endpoints/"):
                self._runtime(path, raw)
                return
            target = self.headers.get("X-Amz-Target", "")
            service_name, _, operation = target.partition(".")
            try:
                if service_name not in ("SageMaker", SCALING_SERVICE):
                    raise UnknownOperation(f"unknown target {target!r}")
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    raise ValidationError("request body is not JSON") from None
                permission = (
                    scaling_permission(operation)
                    if service_name == SCALING_SERVICE
                    else sagemaker_permission(operation, body, service.arn_prefix)
                )
                caller = service.caller(self._signed(raw), permission)
                result = service.call(operation, body, caller, service_name)
                self._send(200, result)
            except ApiError as error:
                self._send(error.status, {"__type": error.code, "message": error.message})
            except Exception as error:
                log.exception("%s failed", operation)
                self._send(500, {"__type": "InternalFailure", "message": f"{type(error).__name__}: {error}"})

    return Handler


def serve_tls(server: ThreadingHTTPServer, certificate: Path, key: Path) -> None:
    """Make ``server`` answer HTTPS only. The handshake happens in each request's thread, on its first read, so a
    slow client cannot hold the accept loop."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)


def serve(
    host: str,
    port: int,
    state_dir: Path,
    runtime_name: str = "process",
    tls: tuple[Path, Path] | None = None,
    authorizer: Authorizer | None = None,
) -> None:
    """Serve until SIGTERM; over TLS with ``tls`` (certificate, key), as SageMaker's endpoints serve only HTTPS."""
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"the local SageMaker binds to loopback addresses only, not {host}")
    try:
        service = LocalSageMaker(state_dir, runtime_name=runtime_name, authorizer=authorizer)
    except ContainerError as error:
        raise SystemExit(f"the local SageMaker cannot use the {runtime_name} runtime: {error}") from None
    resumed = service.pipelines.resume_unfinished()
    hosted = service.endpoints.resume()
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    if tls is not None:
        serve_tls(server, *tls)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log.info(
        "local SageMaker on %s://%s:%d (state in %s); resumed %d execution(s), %d endpoint(s)",
        "https" if tls else "http",
        host,
        port,
        state_dir,
        len(resumed),
        len(hosted),
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.endpoints.shutdown()
        service.store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fhe-local-sagemaker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4599)
    parser.add_argument("--state-dir", type=Path, default=Path(".local-stack/sagemaker"))
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--tls-certificate", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="… and this key (PEM)")
    parser.add_argument(
        "--authorize-with",
        metavar="URL",
        help="the local AWS that authenticates and authorizes every call (trusting AWS_CA_BUNDLE); default: none",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="how jobs and endpoints run: the source tree's entry points (process) or the built images",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if (args.tls_certificate is None) != (args.tls_key is None):
        parser.error("--tls-certificate and --tls-key go together")
    tls = (args.tls_certificate, args.tls_key) if args.tls_certificate else None
    authorizer = Authorizer(args.authorize_with, os.environ.get("AWS_CA_BUNDLE")) if args.authorize_with else None
    serve(args.host, args.port, args.state_dir, args.runtime, tls, authorizer)


if __name__ == "__main__":
    main()
