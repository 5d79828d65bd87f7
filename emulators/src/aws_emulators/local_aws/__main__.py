"""Run the local AWS: ministack with this package's routes, resource types and corrections in place (in
ministack's own virtual environment; ``launch`` says how it is started)."""

from __future__ import annotations

import sys

from ministack import app as ministack

from aws_emulators.local_aws import cloudformation, corrections, kms_recipient, metrics
from aws_emulators.local_aws.authorize import with_authorize_route


def main() -> None:
    corrections.install()
    cloudformation.install()
    kms_recipient.install()
    metrics.install()
    ministack.app = with_authorize_route(ministack.app)  # what ministack's main() serves
    sys.argv[1:] = []
    ministack.main()


if __name__ == "__main__":
    main()
