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

A model served in the attested enclave (ModelKind=enclave) takes the same commands: `keys` makes the owner's
X25519 key pair (results come back sealed to it) instead of FHE keys, `encrypt` encrypts the rows under a data key
KMS makes for this owner's bundle on the deployment's enclave key (FHE_ENCLAVE_KEY_ARN), `decrypt` opens the
sealed result. A language model in the enclave takes prompts (`--text-column`, from a CSV column or a JSONL field,
with `--max-new-tokens`, `--temperature`, `--top-p`, `--seed`, `--stop`), and `decrypt` writes the completions
keyed by the id columns.

Each model version is served by its own endpoint, and keys belong to one version: keys for several versions live
side by side in the client home, `--package-arn` pins one, and `keys` and `run` warn when a newer version than
the keys' is served.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.batch_client import DEFAULT_TIMEOUT_S, BatchClient, ClientSettings
from client.encrypt import DEFAULT_SHARD_SIZE
from client.errors import ACTIONABLE_ERRORS, InputError
from common.bundle.generation import MAX_NEW_TOKENS, MAX_STOP_SEQUENCES, GenerationSettings
from common.bundle.schema import BundleError


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def client_of(args: argparse.Namespace) -> BatchClient:
    settings = ClientSettings(
        args.owner, args.bucket, args.group, args.endpoint, args.home, args.enclave_key_arn, args.enclave_fleet
    )
    return BatchClient(settings, notes=_note, progress_bars=not args.quiet)


def _id_columns(args: argparse.Namespace) -> list[str] | None:
    """``--id-column`` as given; None (the model's own id columns that the input has) when none is."""
    return list(args.id_column) or None


def cmd_versions(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.versions().to_dict()


def cmd_keys(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.keys(args.package_arn).to_dict()


def cmd_estimate(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.estimate(args.input, shard_size=args.shard_size, package_arn=args.package_arn).to_dict()


def cmd_encrypt(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    encrypted = client.encrypt(
        args.input,
        args.out,
        shard_size=args.shard_size,
        bundle_id=args.bundle_id,
        package_arn=args.package_arn,
        id_columns=_id_columns(args),
        label_column=args.label_column,
        **_text_options(args),
    )
    return encrypted.to_dict()


def cmd_submit(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.submit(args.folder).to_dict()


def cmd_wait(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.wait(args.bundle_id, timeout=args.timeout).to_dict()


def cmd_decrypt(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    return client.decrypt(args.bundle_id, args.out).to_dict()


def cmd_run(client: BatchClient, args: argparse.Namespace) -> dict[str, Any]:
    done = client.run(
        args.input,
        args.out,
        shard_size=args.shard_size,
        bundle_id=args.bundle_id,
        package_arn=args.package_arn,
        id_columns=_id_columns(args),
        label_column=args.label_column,
        timeout=args.timeout,
        **_text_options(args),
    )
    return done.to_dict()


def _text_options(args: argparse.Namespace) -> dict[str, Any]:
    """A language model's prompts and generation settings, as given (none: the model takes records)."""
    if args.text_column is None:
        return {}
    try:
        generation = GenerationSettings(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            stop=tuple(args.stop),
        )  # fmt: skip
    except BundleError as error:
        raise InputError(f"--{error.field.removeprefix('generation.').replace('_', '-')}: {error.problem}") from None
    return {"text_column": args.text_column, "generation": generation}


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
    text = command.add_argument_group("a language model's prompts (a model that takes texts)")
    text.add_argument("--text-column", metavar="NAME", help="the prompts' CSV column or JSONL field")
    text.add_argument("--max-new-tokens", type=int, default=64, help=f"(%(default)s; at most {MAX_NEW_TOKENS})")
    text.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding (%(default)s; at most 2)")
    text.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling's mass (%(default)s)")
    text.add_argument("--seed", type=int, default=0, help="the sampler's seed, set before each prompt (%(default)s)")
    text.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="cut a completion where this text starts "
        f"(repeatable, at most {MAX_STOP_SEQUENCES})",
    )  # fmt: skip


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="fhe-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = ClientSettings.from_environment()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--owner",
        default=defaults.owner,
        help="the batch owner this client works for (FHE_OWNER); its role reaches only its own folders",
    )
    common.add_argument("--bucket", default=defaults.bucket, help="bucket of inbox/, outbox/, quarantine/")
    common.add_argument("--group", default=defaults.group, help="model package group")
    common.add_argument(
        "--package-arn", help="a specific Approved model package: pins its version (default: the newest)"
    )
    common.add_argument(
        "--endpoint",
        default=defaults.endpoint,
        help="the deployment's endpoint name, which each served version's endpoint extends (<name>-v<version>)",
    )
    common.add_argument(
        "--enclave-key-arn",
        default=defaults.enclave_key_arn,
        help="the deployment's enclave key (FHE_ENCLAVE_KEY_ARN): data keys for bundles of an enclave model",
    )
    common.add_argument(
        "--enclave-fleet",
        default=defaults.enclave_fleet,
        help="the enclave fleet's limits (FHE_ENCLAVE_FLEET, the enclave stack's output EnclaveFleetSizing): for the "
        "estimate of an enclave bundle",
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
    wait_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    decrypt = commands.add_parser("decrypt", parents=[common], help="result bundle → predictions CSV")
    decrypt.add_argument("bundle_id")
    decrypt.add_argument("--out", type=Path, required=True)
    run = commands.add_parser("run", parents=[common], help="keys, encrypt, submit, wait, decrypt")
    run.add_argument("input", type=Path)
    run.add_argument("--out", type=Path, required=True, help="the predictions CSV")
    run.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    run.add_argument("--bundle-id")
    _client_only_columns(run)
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    commands.add_parser("versions", parents=[common], help="versions served, approved, and the local keys' ones")
    estimate_parser = commands.add_parser("estimate", parents=[common], help="time and cost of a bundle, before it")
    estimate_parser.add_argument("input", type=Path)
    estimate_parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    return top


COMMANDS: dict[str, Callable[[BatchClient, argparse.Namespace], dict[str, Any]]] = {
    "keys": cmd_keys,
    "encrypt": cmd_encrypt,
    "submit": cmd_submit,
    "wait": cmd_wait,
    "decrypt": cmd_decrypt,
    "run": cmd_run,
    "versions": cmd_versions,
    "estimate": cmd_estimate,
}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](client_of(args), args)
    except ACTIONABLE_ERRORS as error:
        print(f"fhe-client {args.command}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
