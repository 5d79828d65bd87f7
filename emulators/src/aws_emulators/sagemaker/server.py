"""HTTP front of the local SageMaker: SageMaker's JSON protocol (``X-Amz-Target: SageMaker.<Operation>``),
sagemaker-runtime's ``InvokeEndpointAsync``, and Application Auto Scaling's JSON protocol
(``X-Amz-Target: AnyScaleFrontendService.<Operation>``) for the endpoints' scaling. Point
``AWS_ENDPOINT_URL_SAGEMAKER``, ``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` and
``AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING`` here.

    local-sagemaker --port 4599 --state-dir state/sagemaker \
        --process-command "training=python -m my_images.training" --serving-env BIND_HOST=127.0.0.1

Binds to loopback only. An operation it does not implement answers ``UnknownOperationException``. With
``--authorize-with URL`` (a local AWS with the authorization route), every call is authorized by IAM there, as
on AWS (``authorization.py``). The configuration (``--config FILE`` and the options) is ``configuration.py``'s.
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
from aws_emulators.sagemaker.aws_clients import AwsClients
from aws_emulators.sagemaker.backend import Backend
from aws_emulators.sagemaker.configuration import (
    RUNTIMES,
    Configuration,
    ConfigurationError,
    assignment,
    process_command,
)
from aws_emulators.sagemaker.container_runtime import ContainerError, runtime
from aws_emulators.sagemaker.endpoints import Endpoints
from aws_emulators.sagemaker.errors import ApiError, UnknownOperation, ValidationError
from aws_emulators.sagemaker.pipeline_executions import Pipelines
from aws_emulators.sagemaker.registry import Registry
from aws_emulators.sagemaker.store import Store

log = logging.getLogger("aws_emulators.sagemaker")
_ACCESS_KEY = re.compile(r"Credential=([^/]+)/")
# The services served, by botocore's name, and the target prefix of the JSON protocol ones.
SAGEMAKER, RUNTIME, SCALING = "sagemaker", "sagemaker-runtime", "application-autoscaling"
TARGET_PREFIXES = {"SageMaker": SAGEMAKER, "AnyScaleFrontendService": SCALING}
_ASYNC_INVOCATION = re.compile(r"^/endpoints/(?P<name>[^/]+)/async-invocations$")

Operation = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


class LocalSageMaker:
    """The operations of each service served, by name, over one store."""

    def __init__(
        self, state_dir: Path, configuration: Configuration | None = None, authorizer: Authorizer | None = None
    ) -> None:
        self.state_dir = state_dir
        self.configuration = configuration = configuration or Configuration()
        self.authorizer = authorizer
        self.runtime = runtime(configuration.runtime, configuration.process_commands, configuration.process_python)
        self.store = Store(state_dir / "sagemaker.sqlite3")
        arn_prefix = self.arn_prefix = configuration.arn_prefix
        self.registry = Registry(self.store, arn_prefix)
        backend = Backend(
            self.store, self.registry, state_dir, configuration, self.runtime, AwsClients(configuration.region)
        )
        self.pipelines = Pipelines(backend)
        self.autoscaling = Autoscaling(backend)
        self.endpoints = Endpoints(backend, self.autoscaling)
        p, r, e, a = self.pipelines, self.registry, self.endpoints, self.autoscaling
        sagemaker: dict[str, Operation] = {
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
        scaling: dict[str, Operation] = {
            "RegisterScalableTarget": lambda b, c: a.register_scalable_target(b),
            "DescribeScalableTargets": lambda b, c: a.describe_scalable_targets(b),
            "DeregisterScalableTarget": lambda b, c: a.deregister_scalable_target(b),
            "PutScalingPolicy": lambda b, c: a.put_scaling_policy(b),
            "DescribeScalingPolicies": lambda b, c: a.describe_scaling_policies(b),
            "DeleteScalingPolicy": lambda b, c: a.delete_scaling_policy(b),
            "DescribeScalingActivities": lambda b, c: a.describe_scaling_activities(b),
        }
        # sagemaker-runtime is REST-JSON: its one operation reads the endpoint from the path and the rest from
        # headers, which the handler gathers into the body it passes.
        runtime_operations: dict[str, Operation] = {
            "InvokeEndpointAsync": lambda b, c: e.invoke_endpoint_async(b["EndpointName"], b["Headers"]),
        }
        # The dispatch table: every operation served, by service (botocore's service name) and operation name.
        self.services: dict[str, dict[str, Operation]] = {
            SAGEMAKER: sagemaker,
            SCALING: scaling,
            RUNTIME: runtime_operations,
        }

    def resume(self) -> tuple[list[str], list[str]]:
        """After a start on an existing state folder: the executions that were running run on, the endpoints that
        were serving serve again. Returns both, by ARN and by name."""
        return self.pipelines.resume_unfinished(), self.endpoints.resume()

    def caller(self, request: SignedRequest, permission: Permission) -> dict[str, Any]:
        """Who signed ``request``, once authorized for ``permission`` (SageMaker's ``CreatedBy`` shape); without
        an authorizer, the access key the signature names, unchecked."""
        if self.authorizer is None:
            authorization = next((v for k, v in request.headers if k.lower() == "authorization"), "")
            match = _ACCESS_KEY.search(authorization)
            key = match.group(1) if match else "anonymous"
            account = self.configuration.account_id
            return {"IamIdentity": {"Arn": f"arn:aws:iam::{account}:user/{key}", "PrincipalId": key}}
        principal = self.authorizer.authorize(request, permission)
        return {"IamIdentity": {"Arn": principal, "PrincipalId": principal.rsplit("/", 1)[-1]}}

    def call(self, service: str, operation: str, body: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
        """``operation`` of ``service`` (botocore's service name) with its request ``body``."""
        handler = self.services.get(service, {}).get(operation)
        if handler is None:
            raise UnknownOperation(f"The local SageMaker does not implement {service} {operation}")
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
                caller = service.caller(self._signed(raw), runtime_permission(endpoint, service.arn_prefix))
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = service.call(
                    RUNTIME, "InvokeEndpointAsync", {"EndpointName": endpoint, "Headers": headers}, caller
                )
                self._send(202, answer["Body"], answer["Headers"])
            except ApiError as error:
                # REST-JSON names the error in a header; the runtime calls its client errors ValidationError.
                code = "ValidationError" if error.code == "ValidationException" else error.code
                self._send(error.status, {"message": error.message}, {"X-Amzn-ErrorType": code})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("", "/health", "/ping"):
                health = {"status": "running", "service": "local-sagemaker", "runtime": service.runtime.name}
                self._send(200, health)
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
            prefix, _, operation = target.partition(".")
            try:
                service_name = TARGET_PREFIXES.get(prefix)
                if service_name is None:
                    raise UnknownOperation(f"unknown target {target!r}")
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    raise ValidationError("request body is not JSON") from None
                permission = (
                    scaling_permission(operation)
                    if service_name == SCALING
                    else sagemaker_permission(operation, body, service.arn_prefix)
                )
                caller = service.caller(self._signed(raw), permission)
                result = service.call(service_name, operation, body, caller)
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
    configuration: Configuration,
    tls: tuple[Path, Path] | None = None,
    authorizer: Authorizer | None = None,
) -> None:
    """Serve until SIGTERM; over TLS with ``tls`` (certificate, key), as SageMaker's endpoints serve only HTTPS."""
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"the local SageMaker binds to loopback addresses only, not {host}")
    try:
        service = LocalSageMaker(state_dir, configuration, authorizer)
    except ContainerError as error:
        raise SystemExit(f"the local SageMaker cannot use the {configuration.runtime} runtime: {error}") from None
    resumed, hosted = service.resume()
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    if tls is not None:
        serve_tls(server, *tls)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    log.info(
        "local SageMaker on %s://%s:%d (state in %s, %s runtime); resumed %d execution(s), %d endpoint(s)",
        "https" if tls else "http",
        host,
        port,
        state_dir,
        configuration.runtime,
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


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="local-sagemaker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to bind to (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4599)
    parser.add_argument("--state-dir", type=Path, default=Path("local-sagemaker"), help="where its state is kept")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--tls-certificate", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="… and this key (PEM)")
    parser.add_argument(
        "--authorize-with",
        metavar="URL",
        help="the local AWS that authenticates and authorizes every call (trusting AWS_CA_BUNDLE); default: none",
    )
    parser.add_argument("--config", type=Path, help="a JSON file of configuration (the options below win over it)")
    parser.add_argument("--account-id", help="the account in its ARNs (default 000000000000)")
    parser.add_argument("--region", help="the region of its ARNs and clients (default: AWS_REGION, else us-east-1)")
    parser.add_argument(
        "--runtime", choices=RUNTIMES, help="how jobs and endpoints run: a process per container, or the image in "
        "podman or docker (default process)"
    )  # fmt: skip
    parser.add_argument(
        "--process-command",
        action="append",
        metavar="IMAGE=COMMAND",
        type=process_command,
        help="the process runtime's stand-in for images named IMAGE (or <prefix>-IMAGE), split as a shell would; "
        "repeatable",
    )
    parser.add_argument(
        "--process-python", help="the process runtime's interpreter for python/python3 (default: its own)"
    )
    parser.add_argument(
        "--serving-env",
        action="append",
        metavar="NAME=VALUE",
        type=assignment,
        help="a variable every serving container gets; repeatable",
    )
    parser.add_argument("--endpoint-start-timeout", type=float, help="seconds an instance has to answer /ping (300)")
    parser.add_argument("--scaling-period", type=float, help="seconds between scaling rounds (2)")
    return parser


def configuration_from(args: argparse.Namespace) -> Configuration:
    """The configuration file's, with the options given on the command line applied over it."""
    base = Configuration.from_file(args.config) if args.config else Configuration()
    return base.with_changes(
        account_id=args.account_id,
        region=args.region,
        runtime=args.runtime,
        process_commands=dict(args.process_command) if args.process_command else None,
        process_python=args.process_python,
        serving_environment=dict(args.serving_env) if args.serving_env else None,
        endpoint_start_timeout_s=args.endpoint_start_timeout,
        scaling_period_s=args.scaling_period,
    )


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    try:
        args = parser.parse_args(argv)
        configuration = configuration_from(args)
    except ConfigurationError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if (args.tls_certificate is None) != (args.tls_key is None):
        parser.error("--tls-certificate and --tls-key go together")
    tls = (args.tls_certificate, args.tls_key) if args.tls_certificate else None
    authorizer = Authorizer(args.authorize_with, os.environ.get("AWS_CA_BUNDLE")) if args.authorize_with else None
    serve(args.host, args.port, args.state_dir, configuration, tls, authorizer)


if __name__ == "__main__":
    main()
