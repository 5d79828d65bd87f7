"""Errors the batch owner can act on; the CLI prints their message and exits with status 2."""

from __future__ import annotations

from common.bundle.schema import BundleError
from common.estimate import EstimateError
from common.model_package import ModelPackageError
from common.versions import VersionMismatchError


class FheClientError(Exception):
    """Named apart from botocore's ClientError: this one is the batch owner's to act on."""


class InputError(FheClientError):
    """The input file does not match the model's schema."""


class BundleQuarantined(FheClientError):
    """The service refused the bundle; ``reason`` is its quarantine record."""

    def __init__(self, bundle_id: str, reason: dict[str, object]) -> None:
        super().__init__(f"bundle {bundle_id} was quarantined: {reason.get('message') or reason}")
        self.bundle_id = bundle_id
        self.reason = reason


class WaitTimeout(FheClientError):
    """No result or quarantine record of the bundle within the time given."""


# Everything the client raises whose message tells the owner what is wrong and what to do: its own errors, a
# bundle that breaks the format, no usable model package, artifacts of other concrete releases, no estimate.
ACTIONABLE_ERRORS: tuple[type[Exception], ...] = (
    FheClientError,
    BundleError,
    ModelPackageError,
    VersionMismatchError,
    EstimateError,
)
