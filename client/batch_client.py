"""The batch owner's client as a library: :class:`BatchClient` makes keys, lists versions, estimates, encrypts,
submits, waits for and decrypts bundles, or runs all of it, each step returning a typed result.

    from client.batch_client import BatchClient, ClientSettings

    client = BatchClient(ClientSettings.for_deployment(outputs, owner="clinic-a"))
    client.keys()
    done = client.run(Path("patients.csv"), Path("predictions.csv"))
    done.decrypted.rows, done.decrypted.accuracy

It is the face of the client's parts (``model``, ``encrypt``, ``transfer``, ``decrypt``, ``kept``) and of the
shared estimate; ``client/cli.py`` (``fhe-client``) parses arguments, calls it and prints. Nothing here prints:
notes for the owner (a newer version served, the estimate, ignored columns, the accuracy against its labels) go
to the ``notes`` callback (default: this module's logger), progress bars only when asked. Errors the owner can act
on are those of ``client.errors.ACTIONABLE_ERRORS``.

AWS clients come from the ``session`` given, else from the environment at each call, so a caller that switches
credentials between calls (an owner's profile) is followed.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import numpy.typing as npt
from botocore.exceptions import BotoCoreError, ClientError

from client.decrypt import decrypt_result, write_predictions
from client.enclave_bundle import (
    class_probabilities,
    encrypt_enclave_bundle,
    encrypt_enclave_texts,
    open_enclave_result,
    open_enclave_texts,
    owner_key,
    public_bytes,
)
from client.encrypt import DEFAULT_SHARD_SIZE, InputRows, encrypt_rows, new_bundle_id, read_input
from client.errors import FheClientError, InputError
from client.kept import KeptColumns, accuracy, keep, keep_request, kept_for, kept_request
from client.model import (
    EVALUATION_KEY_JSON,
    ClientModel,
    client_home,
    ensure_evaluation_key_uploaded,
    ensure_keys,
    fetch_model,
    upload_evaluation_key,
)
from client.texts import read_prompts, write_completions
from client.transfer import (
    download_enclave_shards,
    download_result,
    load_local_bundle,
    read_either_manifest,
    submit,
    wait,
)
from common import artifacts, aws
from common.bundle.enclave_manifest import EnclaveManifest
from common.bundle.generation import MAX_PROMPTS_PER_SHARD, SHARD_SECONDS_BUDGET, GenerationSettings
from common.bundle.manifest import KeyRef, Manifest, package_ref
from common.bundle.schema import BundleError
from common.bundle.store import ESTIMATE_NAME, BundleLayout
from common.estimate import (
    Estimate,
    EstimateError,
    EstimateTable,
    FleetSizing,
    ModelCosts,
    estimate,
    estimate_enclave,
    serving_of,
)
from common.model_package import approved_packages, served_versions, version_endpoint
from common.preprocessing import SchemaError
from common.s3uri import S3Uri
from common.settings import ENDPOINT_NAME, MODEL_PACKAGE_GROUP

DEFAULT_BUCKET = "fhe-bundles"
DEFAULT_TIMEOUT_S = 3600.0

_log = logging.getLogger(__name__)

Source = Path | npt.NDArray[np.float64]  # an input file (CSV or NPY), or the feature rows themselves


@dataclass(frozen=True)
class ClientSettings:
    """Where a batch owner's client works. ``owner``: whose role it works under (its bundles, keys and results live
    under ``inbox/<owner>/``, ``outbox/<owner>/``, ``quarantine/<owner>/``); ``bucket``: the deployment's bundle
    bucket; ``group``: its model package group; ``endpoint``: its endpoint name, which each served version's
    endpoint extends (``<name>-v<version>``); ``home``: keys and model files (None: ``FHE_CLIENT_HOME`` or
    ``~/.fhe-batch``). The private key never leaves ``home``."""

    owner: str = ""
    bucket: str = DEFAULT_BUCKET
    group: str = MODEL_PACKAGE_GROUP
    endpoint: str = ENDPOINT_NAME
    home: Path | None = None
    # The deployment's enclave key (enclave stack output EnclaveKeyArn): enclave bundles' data keys are made under
    # it. Empty: the deployment has no enclave path.
    enclave_key_arn: str = ""
    # The enclave fleet's limits (enclave stack output EnclaveFleetSizing, JSON), for the estimate before paying.
    enclave_fleet: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        """``FHE_OWNER``, ``FHE_BUCKET``, ``FHE_MODEL_PACKAGE_GROUP``, ``FHE_ENDPOINT_NAME``, ``FHE_ENCLAVE_KEY_ARN``,
        ``FHE_ENCLAVE_FLEET`` (the home stays None:
        ``FHE_CLIENT_HOME`` is read where the home is used)."""
        env = os.environ if environ is None else environ
        return cls(
            owner=env.get("FHE_OWNER", ""),
            bucket=env.get("FHE_BUCKET", DEFAULT_BUCKET),
            group=env.get("FHE_MODEL_PACKAGE_GROUP", MODEL_PACKAGE_GROUP),
            endpoint=env.get("FHE_ENDPOINT_NAME", ENDPOINT_NAME),
            enclave_key_arn=env.get("FHE_ENCLAVE_KEY_ARN", ""),
            enclave_fleet=env.get("FHE_ENCLAVE_FLEET", ""),
        )

    @classmethod
    def for_deployment(cls, outputs: Mapping[str, str], owner: str, home: Path | None = None) -> ClientSettings:
        """The settings of ``owner`` in a deployment, from its outputs (``fhe-deploy outputs``)."""
        missing = [name for name in ("BundleBucketName", "ModelPackageGroup", "EndpointName") if not outputs.get(name)]
        if missing:
            raise FheClientError(f"the deployment's outputs lack {', '.join(missing)}; run `fhe-deploy up` again")
        return cls(
            owner,
            outputs["BundleBucketName"],
            outputs["ModelPackageGroup"],
            outputs["EndpointName"],
            home,
            outputs.get("EnclaveKeyArn", ""),
            outputs.get("EnclaveFleetSizing", ""),
        )

    @property
    def models_folder(self) -> Path:
        return (self.home or client_home()) / "models"


@dataclass(frozen=True)
class ServedVersion:
    version: int
    endpoint: str
    local_keys: bool  # whether the client home has keys for it


@dataclass(frozen=True)
class Versions:
    """The versions of a model package group: served (each by its own endpoint), approved but not served, and
    those the client home has keys for."""

    group: str
    served: tuple[ServedVersion, ...]
    approved_not_served: tuple[int, ...]
    local_keys: tuple[int, ...]

    @property
    def newest_served(self) -> int | None:
        return max((s.version for s in self.served), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "served": [{"version": s.version, "endpoint": s.endpoint, "local_keys": s.local_keys} for s in self.served],
            "approved_not_served": list(self.approved_not_served),
            "local_keys": list(self.local_keys),
            "newest_served": self.newest_served,
        }


@dataclass(frozen=True)
class Keys:
    """A model version's client artifacts fetched and its keys made; the evaluation key in the owner's folder (an
    enclave model has none: its results are sealed to the owner's key pair, whose public half is here)."""

    model: ClientModel
    evaluation_key: KeyRef | None
    uploaded: bool  # False: the same evaluation key was there already
    newer_version_served: int | None  # a version newer than the keys' one that is served, if any

    @property
    def model_package(self) -> str:
        return self.model.ref.package_arn

    owner_public_key: bytes | None = None  # an enclave model's: what its results are sealed to

    def to_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "newer_version_served": self.newer_version_served,
            "model_package": self.model_package,
            "model_kind": self.model.kind,
        }
        if self.evaluation_key is not None:
            answer |= {
                "keys": str(self.model.keys_folder),
                "evaluation_key": self.evaluation_key.uri,
                "evaluation_key_bytes": self.evaluation_key.size,
                "uploaded": self.uploaded,
            }
        if self.owner_public_key is not None:
            answer["owner_public_key"] = self.owner_public_key.hex()
        return answer


@dataclass(frozen=True)
class Encrypted:
    """A request bundle on disk: the manifest and its ciphertext shards under ``folder``."""

    manifest: Manifest | EnclaveManifest
    folder: Path
    id_columns: tuple[str, ...]  # kept on this machine, never encrypted
    ignored_columns: tuple[str, ...]  # neither feature, id nor label
    estimate: Estimate | None  # None when it could not be made (a note said why)

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "folder": str(self.folder),
            "samples": self.manifest.total_samples,
            "shards": len(self.manifest.shards),
            "id_columns": list(self.id_columns),
            "ignored_columns": list(self.ignored_columns),
            "estimate": self.estimate.to_dict() if self.estimate else None,
        }


@dataclass(frozen=True)
class Submitted:
    bundle_id: str
    manifest: S3Uri  # the request manifest, put last

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": str(self.manifest)}


@dataclass(frozen=True)
class Delivered:
    bundle_id: str
    result: S3Uri  # the result manifest

    def to_dict(self) -> dict[str, Any]:
        return {"result": str(self.result)}


@dataclass(frozen=True)
class Accuracy:
    """The predictions scored against the owner's own labels."""

    label_column: str | None
    accuracy: float
    correct: int
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "correct": self.correct, "rows": self.rows}


@dataclass(frozen=True)
class Decrypted:
    """A result bundle decrypted: ``predictions`` (CSV) has one line per input row, in input order."""

    bundle_id: str
    predictions: Path
    classes: tuple[str, ...]
    probabilities: npt.NDArray[np.float64] = field(repr=False, compare=False)  # a row per input row, a column per class
    accuracy: Accuracy | None  # with the owner's labels kept at encryption
    completions: tuple[str, ...] = field(default=(), repr=False)  # a text bundle's, one per prompt

    @property
    def rows(self) -> int:
        return len(self.completions) if self.completions else len(self.probabilities)

    @property
    def predicted_classes(self) -> list[str]:
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)]

    def to_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"bundle_id": self.bundle_id, "predictions": str(self.predictions), "rows": self.rows}
        if self.accuracy is not None:
            answer["accuracy"] = self.accuracy.to_dict()
        return answer


@dataclass(frozen=True)
class RunResult:
    """Every step of :meth:`BatchClient.run`."""

    keys: Keys
    encrypted: Encrypted
    submitted: Submitted
    delivered: Delivered
    decrypted: Decrypted

    @property
    def bundle_id(self) -> str:
        return self.encrypted.bundle_id

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.encrypted.to_dict(),
            **self.submitted.to_dict(),
            **self.decrypted.to_dict(),
            "keys": self.keys.to_dict(),
        }


class BatchClient:
    """One batch owner's client. ``session``: the AWS credentials it works with (default: the environment's, read
    at each call); ``notes``: where notes for the owner go (default: this module's logger, INFO);
    ``progress_bars``: show encryption, upload, wait and decryption progress on stderr."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        session: boto3.Session | None = None,
        notes: Callable[[str], None] | None = None,
        progress_bars: bool = False,
    ) -> None:
        self.settings = settings
        self._session = session
        self._notes = notes or _log.info
        self._bars = progress_bars

    def _aws(self, service: str) -> Any:
        return aws.client(service, self._session)

    @property
    def _home(self) -> Path:
        return self.settings.home or client_home()

    @property
    def layout(self) -> BundleLayout:
        """The owner's folders in the bundle bucket."""
        if not self.settings.owner:
            raise FheClientError(
                "name the batch owner: --owner NAME or FHE_OWNER (`fhe-deploy owner add NAME` made it)"
            )
        try:
            return BundleLayout(self.settings.bucket, self.settings.owner)
        except BundleError as error:
            raise FheClientError(str(error)) from None

    def model(self, package_arn: str | None = None) -> ClientModel:
        """The local copy of ``package_arn``'s model, or of the one :meth:`keys` fetched last."""
        if package_arn:
            return ClientModel.for_package(package_arn, self.settings.home)
        return ClientModel.current(self.settings.home)

    def local_versions(self) -> list[int]:
        """The versions of the group the client home has a model and keys for."""
        found = []
        for folder in self.settings.models_folder.glob(f"{self.settings.group}-v*"):
            try:
                model = ClientModel.open(folder)
            except FheClientError:
                continue
            if model.ref.package_group == self.settings.group and any(model.keys_folder.glob("*")):
                found.append(model.ref.package_version)
        return sorted(found)

    def served_versions(self) -> dict[int, str]:
        """Model version → the endpoint serving it."""
        return served_versions(self._aws("sagemaker"), self.settings.endpoint)

    def versions(self) -> Versions:
        approved = sorted(
            package_ref(s["ModelPackageArn"]).package_version
            for s in approved_packages(self._aws("sagemaker"), self.settings.group)
        )
        served, local = self.served_versions(), self.local_versions()
        return Versions(
            group=self.settings.group,
            served=tuple(ServedVersion(v, e, v in local) for v, e in served.items()),
            approved_not_served=tuple(v for v in approved if v not in served),
            local_keys=tuple(local),
        )

    def keys(self, package_arn: str | None = None) -> Keys:
        """Fetch the client artifacts of ``package_arn`` (default: the newest Approved package of the group), make
        its keys once (reused afterwards) and upload the evaluation key to the owner's folder unless it is there."""
        s3 = self._aws("s3")
        model = fetch_model(
            self._aws("sagemaker"), s3, group=self.settings.group, package_arn=package_arn, home=self.settings.home
        )
        if model.kind == "enclave":  # no evaluation key: results come sealed to the owner's key pair
            return Keys(model, None, False, None, public_bytes(owner_key(self._home)))
        evaluation_key = ensure_keys(model)
        ref, uploaded = upload_evaluation_key(s3, self.layout, model, evaluation_key)
        newer = [v for v in self.served_versions() if v > model.ref.package_version]
        if newer:
            self._notes(
                f"model version {max(newer)} is served; these keys are for version {model.ref.package_version}. "
                "`fhe-client keys` fetches the newest approved model and makes its keys (the old ones stay usable "
                "while their version is served)"
            )
        return Keys(model, ref, uploaded, max(newer) if newer else None)

    def _rows(
        self, model: ClientModel, source: Source, id_columns: Sequence[str] | None, label_column: str | None
    ) -> InputRows:
        """The rows of ``source``; ``id_columns`` None: the model's own id columns that a CSV has."""
        names = model.preprocessing.feature_names
        if not isinstance(source, Path):
            if id_columns or label_column:
                raise InputError("rows given as an array have no named columns: ids and labels need a CSV")
            x = np.asarray(source, dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != len(names) or len(x) == 0:
                raise InputError(f"the rows must be a non-empty 2-D array with {len(names)} columns, got {x.shape}")
            if not np.isfinite(x).all():
                raise InputError(f"row {int(np.argwhere(~np.isfinite(x))[0][0]) + 1} has a missing or infinite value")
            return InputRows(x)
        if id_columns is None:
            id_columns = []
            recorded = model.preprocessing.id_columns
            if recorded and source.suffix.lower() == ".csv" and source.is_file():
                with source.open(newline="") as handle:
                    header = {h.strip() for h in next(csv.reader(handle), [])}
                id_columns = [name for name in recorded if name in header]
        return read_input(source, names, list(dict.fromkeys(id_columns)), label_column)

    def _estimate(self, model: ClientModel, samples: int, shard_size: int) -> Estimate:
        """The bundle's estimate: the model's measured costs, the limits of what serves it (the version's endpoint,
        or the enclave fleet), the estimate table."""
        if model.kind == "enclave":
            if not self.settings.enclave_fleet:
                raise EstimateError(
                    "the enclave fleet's limits are not known (FHE_ENCLAVE_FLEET, the enclave stack's output "
                    "EnclaveFleetSizing)"
                )
            fleet = FleetSizing.parse(self.settings.enclave_fleet)
            made = estimate_enclave(samples, shard_size, model.costs(), fleet, EstimateTable.load())
            self._notes(made.line())
            return made
        endpoint = version_endpoint(self.settings.endpoint, model.ref.package_version)
        try:
            serving = serving_of(self._aws("sagemaker"), self._aws("application-autoscaling"), endpoint)
        except (ClientError, BotoCoreError) as error:
            raise EstimateError(f"the limits of endpoint {endpoint} cannot be read: {error}") from None
        key_uploaded = (model.folder / EVALUATION_KEY_JSON).exists()
        made = estimate(samples, shard_size, model.costs(), serving, EstimateTable.load(), key_uploaded=key_uploaded)
        self._notes(made.line())
        return made

    def estimate(
        self, source: Source, *, shard_size: int = DEFAULT_SHARD_SIZE, package_arn: str | None = None
    ) -> Estimate:
        """Samples, shards, upload size, time and cost of a bundle of ``source``, before paying for it."""
        model = self.model(package_arn)
        return self._estimate(model, len(self._rows(model, source, [], None).x), shard_size)

    def encrypt(
        self,
        source: Source,
        out: Path,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        bundle_id: str | None = None,
        package_arn: str | None = None,
        id_columns: Sequence[str] | None = None,
        label_column: str | None = None,
        text_column: str | None = None,
        generation: GenerationSettings | None = None,
    ) -> Encrypted:
        """``source``'s rows → a bundle folder ``out`` (manifest + ciphertext shards) for ``package_arn``'s model
        (default: the one :meth:`keys` fetched last). Id columns (default: the model's own that a CSV has) and the
        label column stay on this machine, beside the predictions later; the estimate goes with the bundle. For a
        language model, ``text_column`` names the prompts' column (CSV) or field (JSONL) and ``generation`` how they
        are completed (default: greedy, 64 new tokens)."""
        model = self.model(package_arn)
        if model.takes_text:
            return self._encrypt_texts(
                model, source, out, text_column, generation or GenerationSettings(), id_columns or (), bundle_id,
                shard_size,
            )  # fmt: skip
        if text_column is not None or generation is not None:
            raise InputError(f"{model.ref.package_arn} takes records of numbers, not prompts: drop --text-column")
        rows = self._rows(model, source, id_columns, label_column)
        if rows.ignored:
            name = source.name if isinstance(source, Path) else "the input"
            self._notes(f"column(s) {', '.join(rows.ignored)} of {name} are not used by the model and are ignored")
        made: Estimate | None = None
        manifest: Manifest | EnclaveManifest
        try:
            made = self._estimate(model, len(rows.x), shard_size)
        except EstimateError as error:  # the estimate informs; encryption goes on without it
            self._notes(f"no estimate: {error}")
        if model.kind == "enclave":
            manifest = self._encrypt_for_enclave(model, rows.x, out, shard_size, bundle_id)
        else:
            manifest = encrypt_rows(model, rows.x, out, shard_size=shard_size, bundle_id=bundle_id, progress=self._bars)
        if made is not None:
            (out / ESTIMATE_NAME).write_text(json.dumps(made.to_dict(), indent=2))
        # Never uploaded: the ids come back next to the predictions, the labels score them.
        keep(self.settings.home, manifest.bundle_id, KeptColumns(rows.ids, label_column, rows.labels))
        return Encrypted(manifest, out, tuple(rows.ids), tuple(rows.ignored), made)

    def _enclave_key_arn(self, model: ClientModel) -> str:
        """The deployment's enclave key, which every enclave bundle's data key is made under."""
        if not self.settings.enclave_key_arn:
            raise FheClientError(
                f"{model.ref.package_arn} is served in the enclave: name the deployment's enclave key "
                "(FHE_ENCLAVE_KEY_ARN, the enclave stack's output EnclaveKeyArn)"
            )
        return self.settings.enclave_key_arn

    def _encrypt_texts(
        self,
        model: ClientModel,
        source: Source,
        out: Path,
        text_column: str | None,
        generation: GenerationSettings,
        id_columns: Sequence[str],
        bundle_id: str | None,
        shard_size: int,
    ) -> Encrypted:
        """Prompts for a language model in the enclave → a text bundle: ids kept here, the prompts encrypted under a
        data key KMS makes for this bundle, bound to the generation settings the manifest carries."""
        if not isinstance(source, Path) or text_column is None:
            raise InputError(f"{model.ref.package_arn} is a language model: give a CSV or JSONL and its --text-column")
        key_arn = self._enclave_key_arn(model)
        texts = read_prompts(source, text_column, id_columns)
        shard_size = self._prompts_per_shard(model, generation, min(shard_size, MAX_PROMPTS_PER_SHARD))
        made: Estimate | None = None
        try:
            made = self._estimate_texts(model, texts.prompts, generation, shard_size)
        except EstimateError as error:  # the estimate informs; encryption goes on without it
            self._notes(f"no estimate: {error}")
        manifest = encrypt_enclave_texts(
            self._aws("kms"),
            key_arn=key_arn,
            owner=self.layout.owner,
            model=model.ref,
            versions=model.versions.to_dict(),
            prompts=texts.prompts,
            generation=generation,
            owner_public_key=public_bytes(owner_key(self._home)),
            destination=out,
            bundle_id=bundle_id or new_bundle_id(),
            shard_size=shard_size,
            progress=self._bars,
        )
        keep_request(self.settings.home, manifest.bundle_id, manifest.to_json())
        keep(self.settings.home, manifest.bundle_id, KeptColumns(texts.ids, None, None))
        if made is not None:
            (out / ESTIMATE_NAME).write_text(json.dumps(made.to_dict(), indent=2))
        return Encrypted(manifest, out, tuple(texts.ids), (), made)

    def _prompts_per_shard(self, model: ClientModel, generation: GenerationSettings, wanted: int) -> int:
        """``wanted``, or fewer prompts a shard where the model's measured pace says a full shard of the longest
        completions could outlast half the workflow's wait for a shard."""
        try:
            costs = ModelCosts.for_prompts(json.loads((model.folder / artifacts.COSTS_JSON).read_text()),
                                           generation.max_new_tokens, 0.0)  # fmt: skip
        except (FileNotFoundError, ValueError):
            return wanted  # no measured pace: the limits alone bound a shard
        fitting = max(1, int(SHARD_SECONDS_BUDGET // max(costs.seconds_per_sample, 1e-9)))
        if fitting < wanted:
            pace, tokens = costs.seconds_per_sample, generation.max_new_tokens
            self._notes(
                f"{fitting} prompts a shard, not {wanted}: at the model's measured pace ({pace:.1f} s a prompt of "
                f"{tokens} new tokens) a shard stays within {SHARD_SECONDS_BUDGET:.0f} s"
            )
        return min(wanted, fitting)

    def _estimate_texts(
        self, model: ClientModel, prompts: Sequence[str], generation: GenerationSettings, shard_size: int
    ) -> Estimate:
        """A text bundle's estimate: the model's measured pace for these settings, on the enclave fleet."""
        if not self.settings.enclave_fleet:
            raise EstimateError(
                "the enclave fleet's limits are not known (FHE_ENCLAVE_FLEET, the enclave stack's output "
                "EnclaveFleetSizing)"
            )
        try:
            metrics = json.loads((model.folder / artifacts.COSTS_JSON).read_text())
        except FileNotFoundError:
            raise EstimateError(
                f"model {model.ref.package_arn} carries no measured pace ({artifacts.COSTS_JSON})"
            ) from None
        average = sum(len(p.encode()) for p in prompts) / len(prompts) + 4  # JSON quotes and separators, about
        costs = ModelCosts.for_prompts(metrics, generation.max_new_tokens, average)
        fleet = FleetSizing.parse(self.settings.enclave_fleet)
        made = estimate_enclave(len(prompts), shard_size, costs, fleet, EstimateTable.load())
        self._notes(made.line())
        return made

    def _encrypt_for_enclave(
        self, model: ClientModel, x: npt.NDArray[np.float64], out: Path, shard_size: int, bundle_id: str | None
    ) -> EnclaveManifest:
        """The rows as the model takes them, encrypted under a data key KMS makes for this owner's bundle on the
        deployment's enclave key (the owner's role may make data keys, never decrypt them)."""
        key_arn = self._enclave_key_arn(model)
        try:
            prepared = model.preprocessing.transform(x).astype(np.float64)
        except SchemaError as error:
            raise InputError(str(error)) from None
        manifest = encrypt_enclave_bundle(
            self._aws("kms"),
            key_arn=key_arn,
            owner=self.layout.owner,
            model=model.ref,
            versions=model.versions.to_dict(),
            rows=prepared,
            owner_public_key=public_bytes(owner_key(self._home)),
            destination=out,
            bundle_id=bundle_id or new_bundle_id(),
            shard_size=shard_size,
            progress=self._bars,
        )
        keep_request(self.settings.home, manifest.bundle_id, manifest.to_json())
        return manifest

    def submit(self, folder: Path) -> Submitted:
        """Upload the bundle in ``folder`` under ``inbox/<owner>/<bundle id>/``: the shards, then the manifest."""
        s3, layout = self._aws("s3"), self.layout
        manifest = load_local_bundle(folder)
        try:
            model = ClientModel.for_package(manifest.model.package_arn, self.settings.home)
        except FheClientError:
            model = None  # encrypted elsewhere: the upload checks that its evaluation key is in S3
        if model is not None and isinstance(manifest, Manifest):
            ensure_evaluation_key_uploaded(s3, model)
        return Submitted(manifest.bundle_id, submit(s3, layout, folder, progress=self._bars))

    def wait(self, bundle_id: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Delivered:
        """Until the result of the bundle as last dropped; raises ``BundleQuarantined`` with the service's reason,
        or ``WaitTimeout``."""
        result = wait(self._aws("s3"), self.layout, bundle_id, timeout=timeout, progress=self._bars)
        return Delivered(bundle_id, result)

    def decrypt(self, bundle_id: str, out: Path) -> Decrypted:
        """The bundle's result → predictions CSV ``out``, keyed by the ids kept at encryption, scored against the
        owner's labels if they were kept."""
        return self._decrypt(self.layout.result_manifest(bundle_id), out)

    def _decrypt(self, manifest_uri: S3Uri, out: Path) -> Decrypted:
        s3 = self._aws("s3")
        found, data = read_either_manifest(s3, manifest_uri)
        model = ClientModel.for_package(found.model.package_arn, self.settings.home)
        if isinstance(found, EnclaveManifest) and found.generation is not None:
            shards = download_enclave_shards(s3, manifest_uri, found)
            request = kept_request(self.settings.home, found.bundle_id)
            completions = open_enclave_texts(owner_key(self._home), self.layout.owner, request, data, shards)
            kept = kept_for(self.settings.home, found.bundle_id)
            write_completions(out, completions, kept.ids)
            return Decrypted(found.bundle_id, out, (), np.empty((0, 0)), None, tuple(completions))
        if isinstance(found, EnclaveManifest):
            shards = download_enclave_shards(s3, manifest_uri, found)
            request = kept_request(self.settings.home, found.bundle_id)
            opened = open_enclave_result(owner_key(self._home), self.layout.owner, request, data, shards)
            probabilities = class_probabilities(opened, len(model.preprocessing.classes))
            manifest: Manifest | EnclaveManifest = found
        else:
            manifest, fhe_shards = download_result(s3, manifest_uri)
            probabilities = decrypt_result(model, manifest, fhe_shards, progress=self._bars)
        kept = kept_for(self.settings.home, manifest.bundle_id)
        if kept.rows not in (None, len(probabilities)):
            raise FheClientError(
                f"the columns kept for bundle {manifest.bundle_id} have {kept.rows} rows, the result "
                f"{len(probabilities)}"
            )
        classes = model.preprocessing.classes
        write_predictions(out, classes, probabilities, kept.ids)
        scored: Accuracy | None = None
        if kept.labels is not None:
            counted = accuracy(classes, probabilities, kept.labels)
            scored = Accuracy(
                kept.label_column, float(counted["accuracy"]), int(counted["correct"]), int(counted["rows"])
            )
            self._notes(
                f"accuracy against {kept.label_column}: {scored.accuracy:.4f} ({scored.correct} of {scored.rows} rows)"
            )
        return Decrypted(manifest.bundle_id, out, tuple(classes), probabilities, scored)

    def run(
        self,
        source: Source,
        out: Path,
        *,
        shard_size: int = DEFAULT_SHARD_SIZE,
        bundle_id: str | None = None,
        package_arn: str | None = None,
        id_columns: Sequence[str] | None = None,
        label_column: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        text_column: str | None = None,
        generation: GenerationSettings | None = None,
    ) -> RunResult:
        """Keys, encrypt, submit, wait, decrypt: ``source``'s rows → predictions CSV ``out`` (a language model's
        completions, for prompts in ``text_column``)."""
        keys = self.keys(package_arn)
        with tempfile.TemporaryDirectory(prefix="fhe-bundle-") as scratch:
            encrypted = self.encrypt(
                source,
                Path(scratch) / "bundle",
                shard_size=shard_size,
                bundle_id=bundle_id,
                package_arn=keys.model_package,
                id_columns=id_columns,
                label_column=label_column,
                text_column=text_column,
                generation=generation,
            )
            submitted = self.submit(encrypted.folder)
        delivered = self.wait(encrypted.bundle_id, timeout=timeout)
        decrypted = self._decrypt(delivered.result, out)
        return RunResult(keys, encrypted, submitted, delivered, decrypted)
