"""``serve``: what SageMaker runs in the inference image (``docker run <image> serve``).

gunicorn runs one worker process, the serving app, with request threads; the FHE work runs in the app's
evaluator processes (``FHE_EVALUATORS``, default 2: one per shard the endpoint takes at once), each sample of a
shard on one of its evaluator's threads (``FHE_WORKERS``, default one per core). The request threads default to
the evaluators and two more, so that ``/ping`` is answered while every evaluator is busy; a request beyond the
evaluators waits for one to be free.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from containers.inference.engine import evaluators_from_environment

DEFAULT_PORT = 8080


def serve(host: str, port: int, threads: int, timeout: int) -> None:
    from gunicorn.app.base import BaseApplication

    from containers.inference.app import create_app

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", timeout)
            self.cfg.set("accesslog", "-")

        def load(self) -> object:
            return create_app()

    Server().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fhe-inference-container", description=__doc__)
    parser.add_argument("command", choices=["serve"])
    # Inside the container SageMaker needs every interface; the local SageMaker passes 127.0.0.1.
    parser.add_argument("--host", default=os.environ.get("FHE_BIND_HOST", "0.0.0.0"))  # noqa: S104
    parser.add_argument("--port", type=int, default=int(os.environ.get("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("FHE_REQUEST_THREADS") or evaluators_from_environment() + 2)
    )
    # A shard may take minutes; SageMaker's async invocation timeout is the real bound.
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("FHE_REQUEST_TIMEOUT_S", "3600")))
    args = parser.parse_args(argv)
    # An evaluator evaluates one sample per thread. Concrete's loop parallelism inside each sample would make
    # the samples compete for the same cores, and each run has a serial part that only this way overlaps
    # (docs/benchmarks.md: throughput). Set before Concrete's runtime is loaded: the evaluators inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(args.host, args.port, args.threads, args.timeout)


if __name__ == "__main__":
    main()
