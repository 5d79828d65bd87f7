"""The client's copy of a model: its client artifacts (never ``server.zip``) and its keys, in the client home.

<home>/models/<group>-v<version>/
    package.json           the model package ARN, where its client artifacts came from, its kind (fhe | enclave)
    client.zip, preprocessing.json, versions.json, costs.json (the measured costs per sample, if published)
                           (an enclave model: enclave_model.json in place of client.zip; its results are sealed to
                           the owner's key pair in the client home, client/enclave_bundle.py)
    keys/                  the private key set (owner-only: 0700 folder, 0600 files)
    evaluation_key.json    sha256, size and S3 URI of the uploaded evaluation key
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from client.errors import FheClientError
from common import artifacts
from common.bundle.manifest import KeyRef, ModelRef, package_ref
from common.bundle.schema import sha256_hex
from common.bundle.store import BundleLayout, object_exists
from common.enclave_model import EnclaveModelError, EnclaveModelRecord
from common.estimate import EstimateError, ModelCosts
from common.model_package import (
    ModelPackageError,
    describe,
    model_kind,
    newest_approved,
    published_client_artifacts_uri,
    require_approved,
)
from common.preprocessing import PreprocessingRecord
from common.s3uri import S3Uri
from common.versions import VersionsRecord

HOME_VARIABLE = "FHE_CLIENT_HOME"
PACKAGE_JSON = "package.json"
EVALUATION_KEY_JSON = "evaluation_key.json"
KEYS_FOLDER = "keys"
CURRENT = "current"  # names the model folder `keys` fetched last: the default for encrypt and run


def client_home() -> Path:
    return Path(os.environ.get(HOME_VARIABLE) or Path.home() / ".fhe-batch").expanduser()


def _private_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(stat.S_IRWXU)
    return path


@dataclass(frozen=True)
class ClientModel:
    folder: Path
    ref: ModelRef
    kind: str = "fhe"  # the path that serves it (common.artifacts.MODEL_KINDS)

    @classmethod
    def open(cls, folder: Path) -> ClientModel:
        try:
            data = json.loads((folder / PACKAGE_JSON).read_text())
        except FileNotFoundError:
            raise FheClientError(f"{folder} holds no model; run `fhe-client keys` first") from None
        return cls(folder, package_ref(data["package_arn"]), str(data.get("model_kind", "fhe")))

    @classmethod
    def for_package(cls, package_arn: str, home: Path | None = None) -> ClientModel:
        ref = package_ref(package_arn)
        return cls.open((home or client_home()) / "models" / f"{ref.package_group}-v{ref.package_version}")

    @classmethod
    def current(cls, home: Path | None = None) -> ClientModel:
        models = (home or client_home()) / "models"
        try:
            name = (models / CURRENT).read_text().strip()
        except FileNotFoundError:
            raise FheClientError("no model fetched yet; run `fhe-client keys` first") from None
        return cls.open(models / name)

    @cached_property
    def takes_text(self) -> bool:
        """Whether the model completes prompts (a language model in the enclave) rather than scoring records."""
        if self.kind != "enclave":
            return False
        if not (self.folder / artifacts.ENCLAVE_MODEL_JSON).exists():
            raise FheClientError(f"{self.folder} lacks {artifacts.ENCLAVE_MODEL_JSON}; run `fhe-client keys` again")
        return _takes_text(self.folder)

    @cached_property
    def preprocessing(self) -> PreprocessingRecord:
        return PreprocessingRecord.load(self.folder / artifacts.PREPROCESSING_JSON)

    def costs(self) -> ModelCosts:
        """What a sample costs with this model, as Evaluate measured it."""
        try:
            metrics = json.loads((self.folder / artifacts.COSTS_JSON).read_text())
            return (
                ModelCosts.from_enclave_metrics(metrics) if self.kind == "enclave" else ModelCosts.from_metrics(metrics)
            )
        except FileNotFoundError:
            raise EstimateError(
                f"model {self.ref.package_arn} carries no measured costs ({artifacts.COSTS_JSON}): it was evaluated "
                "by an older pipeline"
            ) from None

    @cached_property
    def versions(self) -> VersionsRecord:
        return VersionsRecord.from_dict(json.loads((self.folder / artifacts.VERSIONS_JSON).read_text()))

    @property
    def keys_folder(self) -> Path:
        return self.folder / KEYS_FOLDER

    def fhe_client(self) -> Any:
        """concrete-ml's client over this model's ``client.zip`` and key folder (keys loaded if present)."""
        from concrete.ml.deployment import FHEModelClient

        VersionsRecord.current().check_compatible(self.versions, what=f"model {self.ref.package_arn}")
        return FHEModelClient(path_dir=str(self.folder), key_dir=str(_private_folder(self.keys_folder)))

    def evaluation_key(self) -> KeyRef:
        try:
            data = json.loads((self.folder / EVALUATION_KEY_JSON).read_text())
        except FileNotFoundError:
            raise FheClientError(
                f"no evaluation key recorded for {self.ref.package_arn}; run `fhe-client keys`"
            ) from None
        return KeyRef(data["sha256"], data["uri"], int(data["size"]))


def _takes_text(folder: Path) -> bool:
    path = folder / artifacts.ENCLAVE_MODEL_JSON
    if not path.exists():
        return False
    try:
        return EnclaveModelRecord.from_dict(json.loads(path.read_text())).takes_text
    except (ValueError, EnclaveModelError) as error:
        raise FheClientError(f"{path} is not an enclave model's record: {error}") from None


def fetch_model(
    sagemaker: Any, s3: Any, *, group: str, package_arn: str | None = None, home: Path | None = None
) -> ClientModel:
    """Download the published client artifacts of an Approved package (the newest of ``group`` by default)."""
    package = describe(sagemaker, package_arn) if package_arn else newest_approved(sagemaker, group)
    require_approved(package)
    ref = package_ref(package["ModelPackageArn"])
    try:
        kind = model_kind(package)
    except ModelPackageError as error:
        raise FheClientError(str(error)) from None
    folder = _private_folder((home or client_home()) / "models" / f"{ref.package_group}-v{ref.package_version}")
    # The copy the approval published, the only one a batch owner's role may read (pipelines/approval.py).
    source = published_client_artifacts_uri(package)

    def download(name: str) -> None:
        target = folder / name
        if not target.exists():
            uri = source.join(name)
            try:
                s3.download_file(uri.bucket, uri.key, str(target))
            except s3.exceptions.ClientError:  # 403 to a role that may not list the bucket, 404 to others
                raise FheClientError(
                    f"the client artifacts of {ref.package_arn} are not published ({name} cannot be read from "
                    f"{source}): ML ops publish them with `fhe-pipeline approve --package-arn {ref.package_arn}`"
                ) from None

    if kind == "enclave":  # its record first: it says whether the model takes texts (with no preprocessing.json)
        download(artifacts.ENCLAVE_MODEL_JSON)
    for name in artifacts.client_artifacts(kind, _takes_text(folder)):
        download(name)
    costs = source.join(artifacts.COSTS_JSON)
    if not (folder / artifacts.COSTS_JSON).exists():
        # Older models have none: S3 answers 404, or 403 to a role that may not list the bucket.
        with contextlib.suppress(s3.exceptions.ClientError):
            s3.download_file(costs.bucket, costs.key, str(folder / artifacts.COSTS_JSON))
    (folder / PACKAGE_JSON).write_text(
        json.dumps({"package_arn": ref.package_arn, "client_artifacts": str(source), "model_kind": kind}, indent=2)
    )
    (folder.parent / CURRENT).write_text(folder.name)
    model = ClientModel(folder, ref, kind)
    VersionsRecord.current().check_compatible(model.versions, what=f"model {ref.package_arn}")
    return model


def ensure_keys(model: ClientModel) -> bytes:
    """Generate the key set once (reused afterwards); returns the serialized evaluation key."""
    previous = os.umask(0o077)  # every file concrete writes for the key set is owner-only
    try:
        client = model.fhe_client()
        client.generate_private_and_evaluation_keys(force=False)
        evaluation_key: bytes = client.get_serialized_evaluation_keys()
    finally:
        os.umask(previous)
    for path in model.keys_folder.rglob("*"):
        path.chmod(stat.S_IRWXU if path.is_dir() else stat.S_IRUSR | stat.S_IWUSR)
    return evaluation_key


def upload_evaluation_key(
    s3: Any, layout: BundleLayout, model: ClientModel, evaluation_key: bytes
) -> tuple[KeyRef, bool]:
    """Put the evaluation key under its content hash unless that object exists; returns (ref, uploaded)."""
    digest = sha256_hex(evaluation_key)
    uri = layout.evaluation_key(digest)
    uploaded = False
    if not object_exists(s3, uri):
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=evaluation_key)
        uploaded = True
    ref = KeyRef(digest, str(uri), len(evaluation_key))
    (model.folder / EVALUATION_KEY_JSON).write_text(
        json.dumps({"sha256": digest, "uri": str(uri), "size": len(evaluation_key)})
    )
    return ref, uploaded


def ensure_evaluation_key_uploaded(s3: Any, model: ClientModel) -> KeyRef:
    """Before a submit: the recorded key must be in S3 (it is uploaded again from the key set if not)."""
    ref = model.evaluation_key()
    uri = S3Uri.parse(ref.uri)
    if not object_exists(s3, uri):
        key = ensure_keys(model)
        if sha256_hex(key) != ref.sha256:
            raise FheClientError("the key set changed since its evaluation key was recorded; run `fhe-client keys`")
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=key)
    return ref
