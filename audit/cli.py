"""fhe-audit: what ran, on which model, with what outcome, for a time window, without any data.

    fhe-audit [--since 2026-11-22T00:00Z] [--until 2026-11-23T00:00Z] [--out audit-report]
              [--deployment fhe] [--pipeline-name fhe-training] [--attestation-root PEM]
    fhe-audit usage [--from 2026-11-01T00:00Z] [--to 2026-12-01T00:00Z] [--format json|csv] [--out FILE]
              usage and cost per batch owner (audit/usage.py), for billing; also a section of the report

Reads SageMaker (pipeline executions, steps, the model registry), Step Functions (executions and histories), the
bundle bucket's inbox/outbox/quarantine records and the hash-chained audit log, then writes ``<out>.html``
(tables and a timeline) and ``<out>.json`` (the same content). Enclave bundles are checked against the
attestation documents their enclaves presented, verified against AWS's Nitro Enclaves root (or the PEM file
``--attestation-root`` or ``FHE_ATTESTATION_ROOT`` names: the local stack's own root). Exit status: 0 when every
consistency check passes, 3 when one fails (the failures are printed), 2 for bad arguments or an unreachable service.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from audit import collect, usage
from audit.report import owner_usage, run, sources_for
from common.attestation import ROOT_VARIABLE, AttestationInvalid, trusted_root
from common.settings import DEFAULT_PREFIX, PIPELINE_NAME

CHECKS_FAILED = 3


def moment(text: str) -> datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-22T09:30:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def window(parser: argparse.ArgumentParser, args: argparse.Namespace, default: timedelta) -> collect.Window:
    """The window the arguments name: ``until`` (default now), ``since`` (default ``default`` before it)."""
    until = args.until or datetime.now(tz=UTC)
    since = args.since or until - default
    if since >= until:
        parser.error(f"the window's start ({since.isoformat()}) must be before its end ({until.isoformat()})")
    return collect.Window(since, until)


def progress_lines(quiet: bool, name: str) -> Callable[[str], None]:
    """Progress on stderr, each line named; nothing with ``quiet``."""

    def progress(line: str) -> None:
        if not quiet:
            print(f"{name}: {line}", file=sys.stderr, flush=True)

    return progress


def usage_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="fhe-audit usage",
        description="Usage and cost per batch owner in a time window: bundles, samples, shards, serving and FHE "
        "seconds, each owner's share of the endpoints' instance time (by its share of their busy time) and its cost "
        "at the estimate table's prices; the shares add up to the endpoints' instance time (see audit/usage.py).",
    )
    parser.add_argument(
        "--from", "--since", dest="since", type=moment, help="window start (default: 30 days before --to)"
    )
    parser.add_argument("--to", "--until", dest="until", type=moment, help="window end (default: now)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="(%(default)s)")
    parser.add_argument("--out", type=Path, help="write here instead of standard output")
    parser.add_argument("--deployment", default=os.environ.get("FHE_DEPLOYMENT", DEFAULT_PREFIX))
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    chosen = window(parser, args, timedelta(days=30))
    progress = progress_lines(args.quiet, "usage")
    try:
        sources = sources_for(args.deployment, PIPELINE_NAME, progress)
        data = owner_usage(sources, chosen)
    except (RuntimeError, ClientError, BotoCoreError) as error:  # a missing stack, a refusal, no connection
        print(f"fhe-audit usage: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    text = usage.as_csv(data) if args.format == "csv" else json.dumps(data, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
        progress(f"written to {args.out}")
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["usage"]:
        usage_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="fhe-audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--since", type=moment, help="window start, ISO 8601 (default: 24 hours before --until)")
    parser.add_argument("--until", type=moment, help="window end, ISO 8601 (default: now)")
    parser.add_argument("--out", type=Path, default=Path("audit-report"), help="path prefix of the .html and .json")
    parser.add_argument(
        "--deployment",
        default=os.environ.get("FHE_DEPLOYMENT", DEFAULT_PREFIX),
        help="the deployment's prefix, as given to fhe-deploy (%(default)s)",
    )
    parser.add_argument("--pipeline-name", default=os.environ.get("FHE_PIPELINE_NAME", PIPELINE_NAME))
    parser.add_argument(
        "--settle", type=float, default=30.0, help="seconds to wait for just-ended bundles to reach the audit log"
    )
    parser.add_argument(
        "--attestation-root",
        type=Path,
        help=f"PEM certificate enclaves' attestation documents must chain to (default: ${ROOT_VARIABLE}, else AWS's "
        "Nitro Enclaves root)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    chosen = window(parser, args, timedelta(hours=24))
    try:
        root = trusted_root(args.attestation_root)
    except AttestationInvalid as error:
        parser.error(str(error))
    progress = progress_lines(args.quiet, "audit")
    try:
        data = run(
            chosen,
            args.out,
            deployment=args.deployment,
            pipeline_name=args.pipeline_name,
            settle=args.settle,
            progress=progress,
            attestation_root=root,
        )
    except RuntimeError as error:
        print(f"fhe-audit: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = {
        "ok": data["ok"],
        "files": data["files"],
        "pipeline_executions": len(data["pipeline_executions"]),
        "bundles": len(data["bundles"]),
        "approvals": len(data["approvals"]),
        "refused_events": len(data["refused_events"]),
        "failed_checks": {c["name"]: c["failures"] for c in data["checks"] if not c["ok"]},
    }
    print(json.dumps(summary, indent=2))
    if not data["ok"]:
        for name, failures in summary["failed_checks"].items():
            for failure in failures:
                print(f"FAILED {name}: {failure}", file=sys.stderr)
        raise SystemExit(CHECKS_FAILED)


if __name__ == "__main__":
    main()
