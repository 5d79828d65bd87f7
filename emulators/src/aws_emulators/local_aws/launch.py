"""Starting the local AWS from another interpreter: ministack of the pinned version in a virtual environment of its
own (made on first use), this package importable there, and the command and environment that run it. Imports
nothing but the standard library, so the development stack and the tests can use it from any environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MINISTACK_VERSION = "1.5.33"
# ministack applies a template's SAM transform when samtranslator is importable; the version cfn-lint uses.
SAM_TRANSLATOR_VERSION = "1.106.0"
# boto3: ministack runs Lambda functions in its own interpreter, and the Lambda runtime provides boto3 (the
# CloudFormation extension calls the local SageMaker with it too). cryptography: without it ministack's KMS makes no
# asymmetric key, and KMS's Recipient verifies attestation documents with it, cbor2 and pycose, and writes its CMS
# answer with asn1crypto.
PACKAGES = (
    f"ministack=={MINISTACK_VERSION}",
    f"aws-sam-translator=={SAM_TRANSLATOR_VERSION}",
    "boto3",
    "cryptography",
    "cbor2",
    "pycose",
    "asn1crypto",
)
PACKAGE = Path(__file__).resolve().parents[1]  # aws_emulators, as it is here (a source tree or an installation)
# The variables that point the local AWS at the local SageMaker: its Lambda functions' calls and its CloudFormation's
# SageMaker and Application Auto Scaling resources go there, as they go to those services on AWS.
SAGEMAKER_VARIABLES = (
    "AWS_ENDPOINT_URL_SAGEMAKER",
    "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
    "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING",
)


def ensure_ministack(venv: Path) -> Path:
    """The Python of ``venv``, where ministack and what it needs are installed (now, if they are not yet)."""
    python = venv / "bin" / "python"
    marker = venv / (".installed-" + "-".join(package.replace("==", "-") for package in PACKAGES))
    if not marker.exists():
        print(f"installing ministack {MINISTACK_VERSION} into {venv} (first use only)…", file=sys.stderr, flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES], check=True)
        marker.touch()
    return python


def import_root(folder: Path) -> Path:
    """A folder that makes this package, and nothing else of the environment it is installed in, importable:
    ``folder/aws_emulators`` links to it. Put on ``PYTHONPATH`` of ministack's interpreter, the local AWS runs
    this tree's code, with no copy to go stale."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / PACKAGE.name
    if link.is_symlink() and link.resolve() != PACKAGE:
        link.unlink()
    if not link.exists():
        link.symlink_to(PACKAGE, target_is_directory=True)
    return folder


def command(python: Path) -> list[str]:
    """The command that runs the local AWS in ministack's interpreter ``python``."""
    return [str(python), "-m", "aws_emulators.local_aws"]


def environment(
    *,
    host: str,
    port: int,
    state_dir: Path,
    certificate: Path,
    key: Path,
    ca_bundle: Path,
    sagemaker_url: str,
    attestation_root: Path | None = None,
) -> dict[str, str]:
    """The local AWS's settings: loopback TLS with the stack's certificate, IAM enforced, state kept under
    ``state_dir`` across restarts, the local SageMaker at ``sagemaker_url``, and KMS trusting enclaves whose
    attestation documents chain to ``attestation_root`` (a PEM certificate; none trusted without it)."""
    attestation = {"LOCAL_ATTESTATION_ROOT": str(attestation_root)} if attestation_root else {}
    return {
        **attestation,
        "PYTHONPATH": str(import_root(state_dir / "extension")),
        "BIND_HOST": host,
        "GATEWAY_PORT": str(port),
        "PERSIST_STATE": "1",
        "STATE_DIR": str(state_dir / "state"),
        "S3_PERSIST": "1",
        "S3_DATA_DIR": str(state_dir / "s3"),
        "LOG_LEVEL": "WARNING",
        "AUTH": "true",
        "USE_SSL": "1",
        "MINISTACK_SSL_CERT": str(certificate),
        "MINISTACK_SSL_KEY": str(key),
        # What its Lambda functions and its CloudFormation trust when they call the stack's services.
        "AWS_CA_BUNDLE": str(ca_bundle),
        **dict.fromkeys(SAGEMAKER_VARIABLES, sagemaker_url),
    }
