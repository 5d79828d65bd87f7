"""The checks of a bundle against what serves it: the model package and the concrete releases."""

from __future__ import annotations

from common.bundle.manifest import Manifest
from common.bundle.schema import BundleError
from common.versions import LABELS, VersionsRecord


def check_model(manifest: Manifest, package_arn: str) -> None:
    if manifest.model.package_arn != package_arn:
        raise BundleError(
            "model.package_arn",
            f"the bundle is for {manifest.model.package_arn}, this endpoint serves {package_arn}",
            "model_mismatch",
        )


def check_versions(manifest: Manifest, serving: VersionsRecord) -> None:
    """The bundle's releases against the endpoint's, by the rule of ``VersionsRecord.mismatches``."""
    for name, theirs, ours in serving.mismatches(VersionsRecord.from_dict(manifest.versions)):
        raise BundleError(
            f"versions.{name}",
            f"the bundle was made with {LABELS[name]} {theirs}, the endpoint runs {ours}",
            "version_mismatch",
        )
