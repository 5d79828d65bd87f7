"""Command line for batch owners.

    fhe-client keys                      fetch the approved model's client.zip, make keys, upload the evaluation key
    fhe-client encrypt INPUT --out DIR   CSV/NPY rows → a bundle folder (manifest + ciphertext shards)
    fhe-client submit DIR                upload the bundle to the inbox (manifest last)
    fhe-client wait BUNDLE_ID            until its result bundle (or its quarantine record) appears
    fhe-client decrypt BUNDLE_ID --out predictions.csv
    fhe-client run INPUT --out predictions.csv     all of the above
    fhe-client versions                  the model versions served, approved, and those the local keys are for
    fhe-client estimate INPUT            samples, shards, upload size, time and cost, before paying (encrypt and
                                         run print the same line)

Settings come from options or the environment: FHE_OWNER (the batch owner whose role the client works under:
its bundles, keys and results live under inbox/<owner>/, outbox/<owner>/ and quarantine/<owner>/ and no other
owner's role reaches them), FHE_BUCKET (where bundles go), FHE_MODEL_PACKAGE_GROUP,
FHE_ENDPOINT_NAME (the deployment's endpoint name, which each served version's endpoint extends),
FHE_CLIENT_HOME (keys and model files, default ~/.fhe-batch). The private key never leaves FHE_CLIENT_HOME.

Each model version is served by its own endpoint, and keys belong to one version: keys for several versions live
side by side in the client home, `--package-arn` pins one, and `keys` and `run` warn when a newer version than
the keys' is served.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from client.decrypt import decrypt_result, write_predictions
from client.encrypt import DEFAULT_SHARD_SIZE, encrypt_rows, read_input
from client.errors import FheClientError
from client.kept import KeptColumns, accuracy, keep, kept_for
from client.model import (
    EVALUATION_KEY_JSON,
    ClientModel,
    client_home,
    ensure_evaluation_key_uploaded,
    ensure_keys,
    fetch_model,
    upload_evaluation_key,
)
from client.transfer import download_result, submit, wait
from common import aws
from common.bundle.manifest import package_ref
from common.bundle.schema import BundleError
from common.bundle.store import ESTIMATE_NAME, BundleLayout
from common.estimate import Estimate, EstimateError, EstimateTable, estimate, serving_of
from common.model_package import ModelPackageError, served_versions, version_endpoint
from common.s3uri import S3Uri
from common.settings import ENDPOINT_NAME, MODEL_PACKAGE_GROUP
from common.versions import VersionMismatchError

DEFAULT_BUCKET = "fhe-bundles"


def _layout(args: argparse.Namespace) -> BundleLayout:
    if not args.owner:
        raise FheClientError("name the batch owner: --owner NAME or FHE_OWNER (`fhe-deploy owner add NAME` made it)")
    try:
        return BundleLayout(args.bucket, args.owner)
    except BundleError as error:
        raise FheClientError(str(error)) from None


def _model(args: argparse.Namespace) -> ClientModel:
    if args.package_arn:
        return ClientModel.for_package(args.package_arn, args.home)
    return ClientModel.current(args.home)


def _served(args: argparse.Namespace) -> dict[int, str]:
    return served_versions(aws.client("sagemaker"), args.endpoint)


def _warn_if_newer_served(args: argparse.Namespace, model: ClientModel) -> int | None:
    """The newest served version when it is newer than ``model``'s (said on stderr), else None."""
    newer = [v for v in _served(args) if v > model.ref.package_version]
    if not newer:
        return None
    print(
        f"note: model version {max(newer)} is served; these keys are for version {model.ref.package_version}. "
        "`fhe-client keys` fetches the newest approved model and makes its keys (the old ones stay usable while "
        "their version is served)",
        file=sys.stderr,
        flush=True,
    )
    return max(newer)


def local_versions(home: Path | None, group: str) -> list[int]:
    """The versions of ``group`` the client home has a model and keys for."""
    models = (home or client_home()) / "models"
    found = []
    for folder in models.glob(f"{group}-v*"):
        try:
            model = ClientModel.open(folder)
        except FheClientError:
            continue
        if model.ref.package_group == group and any(model.keys_folder.glob("*")):
            found.append(model.ref.package_version)
    return sorted(found)


def cmd_versions(args: argparse.Namespace) -> dict[str, Any]:
    sagemaker = aws.client("sagemaker")
    pages = sagemaker.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=args.group, ModelApprovalStatus="Approved"
    )
    approved = sorted(
        package_ref(s["ModelPackageArn"]).package_version for p in pages for s in p.get("ModelPackageSummaryList", [])
    )
    served, local = _served(args), local_versions(args.home, args.group)
    return {
        "group": args.group,
        "served": [{"version": v, "endpoint": e, "local_keys": v in local} for v, e in served.items()],
        "approved_not_served": [v for v in approved if v not in served],
        "local_keys": local,
        "newest_served": max(served) if served else None,
    }


def cmd_keys(args: argparse.Namespace) -> dict[str, Any]:
    model = fetch_model(
        aws.client("sagemaker"), aws.client("s3"), group=args.group, package_arn=args.package_arn, home=args.home
    )
    evaluation_key = ensure_keys(model)
    ref, uploaded = upload_evaluation_key(aws.client("s3"), _layout(args), model, evaluation_key)
    newer = _warn_if_newer_served(args, model)
    return {
        "newer_version_served": newer,
        "model_package": model.ref.package_arn,
        "keys": str(model.keys_folder),
        "evaluation_key": ref.uri,
        "evaluation_key_bytes": ref.size,
        "uploaded": uploaded,
    }


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def _id_columns(args: argparse.Namespace, model: ClientModel) -> list[str]:
    """``--id-column`` as given, else the model's own id columns that the input has."""
    if args.id_column:
        return list(dict.fromkeys(args.id_column))
    recorded = model.preprocessing.id_columns
    if not recorded or args.input.suffix.lower() != ".csv":
        return []
    with args.input.open(newline="") as handle:
        header = next(csv.reader(handle), [])
    return [name for name in recorded if name in {h.strip() for h in header}]


def _estimate(args: argparse.Namespace, model: ClientModel, samples: int) -> Estimate:
    """The bundle's estimate: the model's measured costs, the serving endpoint's limits, the estimate table."""
    endpoint = version_endpoint(args.endpoint, model.ref.package_version)
    try:
        serving = serving_of(aws.client("sagemaker"), aws.client("application-autoscaling"), endpoint)
    except (ClientError, BotoCoreError) as error:
        raise EstimateError(f"the limits of endpoint {endpoint} cannot be read: {error}") from None
    key_uploaded = (model.folder / EVALUATION_KEY_JSON).exists()
    return estimate(samples, args.shard_size, model.costs(), serving, EstimateTable.load(), key_uploaded=key_uploaded)


def cmd_estimate(args: argparse.Namespace) -> dict[str, Any]:
    model = _model(args)
    rows = read_input(args.input, model.preprocessing.feature_names)
    made = _estimate(args, model, len(rows.x))
    _note(made.line())
    return made.to_dict()


def cmd_encrypt(args: argparse.Namespace) -> dict[str, Any]:
    model = _model(args)
    ids = _id_columns(args, model)
    rows = read_input(args.input, model.preprocessing.feature_names, ids, args.label_column)
    if rows.ignored:
        _note(f"column(s) {', '.join(rows.ignored)} of {args.input.name} are not used by the model and are ignored")
    made: Estimate | None = None
    try:
        made = _estimate(args, model, len(rows.x))
        _note(made.line())
    except EstimateError as error:  # the estimate informs; encryption goes on without it
        _note(f"no estimate: {error}")
    manifest = encrypt_rows(
        model, rows.x, args.out, shard_size=args.shard_size, bundle_id=args.bundle_id, progress=not args.quiet
    )
    if made is not None:
        (args.out / ESTIMATE_NAME).write_text(json.dumps(made.to_dict(), indent=2))
    # Never uploaded: the ids come back next to the predictions, the labels score them.
    keep(args.home, manifest.bundle_id, KeptColumns(rows.ids, args.label_column, rows.labels))
    return {
        "bundle_id": manifest.bundle_id,
        "folder": str(args.out),
        "samples": manifest.total_samples,
        "shards": len(manifest.shards),
        "id_columns": list(rows.ids),
        "ignored_columns": rows.ignored,
        "estimate": made.to_dict() if made else None,
    }


def cmd_submit(args: argparse.Namespace) -> dict[str, Any]:
    s3, layout = aws.client("s3"), _layout(args)
    model = _model(args)
    ensure_evaluation_key_uploaded(s3, model)
    uri = submit(s3, layout, args.folder, progress=not args.quiet)
    return {"manifest": str(uri)}


def cmd_wait(args: argparse.Namespace) -> dict[str, Any]:
    uri = wait(aws.client("s3"), _layout(args), args.bundle_id, timeout=args.timeout, progress=not args.quiet)
    return {"result": str(uri)}


def _decrypt(args: argparse.Namespace, manifest_uri: S3Uri, out: Path) -> dict[str, Any]:
    manifest, shards = download_result(aws.client("s3"), manifest_uri)
    model = ClientModel.for_package(manifest.model.package_arn, args.home)
    probabilities = decrypt_result(model, manifest, shards, progress=not args.quiet)
    kept = kept_for(args.home, manifest.bundle_id)
    if kept.rows not in (None, len(probabilities)):
        raise FheClientError(
            f"the columns kept for bundle {manifest.bundle_id} have {kept.rows} rows, the result {len(probabilities)}"
        )
    write_predictions(out, model.preprocessing.classes, probabilities, kept.ids)
    answer: dict[str, Any] = {"bundle_id": manifest.bundle_id, "predictions": str(out), "rows": len(probabilities)}
    if kept.labels is not None:
        scored = accuracy(model.preprocessing.classes, probabilities, kept.labels)
        _note(
            f"accuracy against {kept.label_column}: {scored['accuracy']:.4f} "
            f"({scored['correct']} of {scored['rows']} rows)"
        )
        answer["accuracy"] = scored
    return answer


def cmd_decrypt(args: argparse.Namespace) -> dict[str, Any]:
    return _decrypt(args, _layout(args).result_manifest(args.bundle_id), args.out)


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    keys = cmd_keys(args)
    args.package_arn = keys["model_package"]
    with tempfile.TemporaryDirectory(prefix="fhe-bundle-") as scratch:
        args.out, predictions = Path(scratch) / "bundle", args.out
        encrypted = cmd_encrypt(args)
        args.folder = args.out
        submitted = cmd_submit(args)
    result = wait(
        aws.client("s3"),
        _layout(args),
        encrypted["bundle_id"],
        timeout=args.timeout,
        progress=not args.quiet,
    )
    return {**encrypted, **submitted, **_decrypt(args, result, predictions), "keys": keys}


def _client_only_columns(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--id-column",
        action="append",
        default=[],
        metavar="NAME",
        help="a column that identifies the row (repeatable; default: the model's IdColumns the input has): kept on "
        "this machine only, never encrypted or uploaded, and written as the first columns of predictions.csv",
    )
    command.add_argument(
        "--label-column",
        metavar="NAME",
        help="the input's own labels: kept on this machine, and the accuracy against them printed after decryption",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fhe-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--owner",
        default=os.environ.get("FHE_OWNER", ""),
        help="the batch owner this client works for (FHE_OWNER); its role reaches only its own folders",
    )
    common.add_argument(
        "--bucket", default=os.environ.get("FHE_BUCKET", DEFAULT_BUCKET), help="bucket of inbox/, outbox/, quarantine/"
    )
    common.add_argument(
        "--group", default=os.environ.get("FHE_MODEL_PACKAGE_GROUP", MODEL_PACKAGE_GROUP), help="model package group"
    )
    common.add_argument(
        "--package-arn", help="a specific Approved model package: pins its version (default: the newest)"
    )
    common.add_argument(
        "--endpoint",
        default=os.environ.get("FHE_ENDPOINT_NAME", ENDPOINT_NAME),
        help="the deployment's endpoint name, which each served version's endpoint extends (<name>-v<version>)",
    )
    common.add_argument("--home", type=Path, default=None, help="client home (default FHE_CLIENT_HOME or ~/.fhe-batch)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("keys", parents=[common], help="fetch client.zip, make keys, upload the evaluation key")
    encrypt = commands.add_parser("encrypt", parents=[common], help="CSV/NPY → bundle folder")
    encrypt.add_argument("input", type=Path)
    encrypt.add_argument("--out", type=Path, required=True, help="an empty folder for the bundle")
    encrypt.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=f"rows per shard (default {DEFAULT_SHARD_SIZE})"
    )
    encrypt.add_argument("--bundle-id", help="default: a timestamp and a random suffix")
    _client_only_columns(encrypt)
    submit_parser = commands.add_parser("submit", parents=[common], help="upload a bundle folder")
    submit_parser.add_argument("folder", type=Path)
    wait_parser = commands.add_parser("wait", parents=[common], help="wait for a bundle's result")
    wait_parser.add_argument("bundle_id")
    wait_parser.add_argument("--timeout", type=float, default=3600.0)
    decrypt = commands.add_parser("decrypt", parents=[common], help="result bundle → predictions CSV")
    decrypt.add_argument("bundle_id")
    decrypt.add_argument("--out", type=Path, required=True)
    run = commands.add_parser("run", parents=[common], help="keys, encrypt, submit, wait, decrypt")
    run.add_argument("input", type=Path)
    run.add_argument("--out", type=Path, required=True, help="the predictions CSV")
    run.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    run.add_argument("--bundle-id")
    _client_only_columns(run)
    run.add_argument("--timeout", type=float, default=3600.0)
    commands.add_parser("versions", parents=[common], help="versions served, approved, and the local keys' ones")
    estimate_parser = commands.add_parser("estimate", parents=[common], help="time and cost of a bundle, before it")
    estimate_parser.add_argument("input", type=Path)
    estimate_parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    return top


COMMANDS = {
    "keys": cmd_keys,
    "encrypt": cmd_encrypt,
    "submit": cmd_submit,
    "wait": cmd_wait,
    "decrypt": cmd_decrypt,
    "run": cmd_run,
    "versions": cmd_versions,
    "estimate": cmd_estimate,
}


def answer(argv: list[str]) -> dict[str, Any]:
    """One command's answer as data, for what drives the client in-process (the demo, the benchmarks)."""
    args = parser().parse_args(argv)
    result: dict[str, Any] = COMMANDS[args.command](args)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (FheClientError, BundleError, ModelPackageError, VersionMismatchError, EstimateError) as error:
        print(f"fhe-client {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
