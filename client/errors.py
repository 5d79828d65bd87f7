"""Errors the batch owner can act on; the CLI prints their message and exits with status 2."""

from __future__ import annotations


class ClientError(Exception):
    pass


class InputError(ClientError):
    """The input file does not match the model's schema."""


class BundleQuarantined(ClientError):
    """The service refused the bundle; ``reason`` is its quarantine record."""

    def __init__(self, bundle_id: str, reason: dict[str, object]) -> None:
        super().__init__(f"bundle {bundle_id} was quarantined: {reason.get('message') or reason}")
        self.bundle_id = bundle_id
        self.reason = reason


class WaitTimeout(ClientError):
    pass
