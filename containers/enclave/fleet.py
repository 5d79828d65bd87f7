"""The parent instance's entry point, as the fleet's launch template starts it once its enclave runs:

    python3 -m containers.enclave.fleet --queue-url URL --enclave vsock:16:5000 --image-sha384 MEASUREMENT

It takes shard messages from the enclave shard queue one at a time until stopped (SIGTERM, as Auto Scaling's
scale-in sends it, ends the loop after the shard in hand), loading the model of each shard's package into its
enclave when it differs (``worker.ServedModel``). The instance's own credentials are lent to the enclave for its
KMS calls; its endpoints, like every client's here, come from the environment (``common/aws.py``)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from common import aws
from containers.enclave.parent import EnclaveConnection
from containers.enclave.worker import ServedModel, ShardWorker, poll

LOG = logging.getLogger("enclave.fleet")


def parent_worker(enclave_address: str, image_sha384: str, session: Any = None) -> ShardWorker:
    """The shard worker of one parent: its enclave at ``enclave_address``, its AWS clients under ``session`` (the
    instance's role by default)."""
    session = session or aws.session()
    enclave = EnclaveConnection(enclave_address)
    s3 = aws.client("s3", session)
    return ShardWorker(
        s3,
        aws.client("stepfunctions", session),
        enclave,
        model=ServedModel(aws.client("sagemaker", session), s3, enclave),
        image_sha384=image_sha384,
        lend=lambda: session,
    )


def serve(
    queue_url: str, worker: ShardWorker, stop: threading.Event, *, sqs: Any = None, wait_seconds: int = 20
) -> int:
    """Poll the queue until ``stop`` is set; the number of shard messages handled."""
    sqs = sqs or aws.client("sqs")
    handled = 0
    while not stop.is_set():
        handled += poll(sqs, queue_url, worker, wait_seconds=wait_seconds)
    return handled


def _stop_on(signals: tuple[int, ...], stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping after the shard in hand", signum)
        stop.set()

    for number in signals:
        signal.signal(number, handler)


def main(argv: list[str] | None = None, install: Callable[..., None] = _stop_on) -> None:
    parser = argparse.ArgumentParser(prog="containers.enclave.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--queue-url", required=True, help="the enclave shard queue (enclave stack output)")
    parser.add_argument("--enclave", required=True, help="the enclave's address: vsock:CID:PORT or unix:PATH")
    parser.add_argument("--image-sha384", required=True, help="the enclave image's measurement, as built")
    parser.add_argument("--wait-seconds", type=int, default=20, help="SQS long poll (default 20)")
    parser.add_argument("--artifacts", help="where the enclave image was fetched from (recorded, not read)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    install((signal.SIGTERM, signal.SIGINT), stop)
    worker = parent_worker(args.enclave, args.image_sha384)
    LOG.info("serving shards for enclave measurement %s", args.image_sha384)
    handled = serve(args.queue_url, worker, stop, wait_seconds=args.wait_seconds)
    LOG.info("stopped after %d shard messages", handled)


if __name__ == "__main__":
    main()
