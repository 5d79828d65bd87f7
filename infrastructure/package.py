"""What the product stack's functions are made of: a zip of ``lambdas/`` and ``common/``, a Powertools layer built
from the installed distributions, and the state machine definition with the deployment's Maps' concurrency. Each is
staged in the artifact bucket under a key that carries its content hash, so a deploy that changes nothing replaces
nothing.

The Maps' MaxConcurrency is the one value of the definition set here rather than by the template's
DefinitionSubstitutions: those substitute text inside JSON strings, and MaxConcurrency must be a JSON number
(MaxConcurrencyPath would read it from the input, but the local Step Functions does not implement it)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from infrastructure.templates import ROOT, STATE_MACHINE

FUNCTION_PACKAGES = ("lambdas", "common")
LAYER_DISTRIBUTIONS = ("aws-lambda-powertools", "aws-xray-sdk", "wrapt", "jmespath", "typing-extensions")
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip entries carry a fixed time, so one source gives one hash
SHARD_MAP_STATE = "InferShards"
ENCLAVE_SHARD_MAP_STATE = "InferShardsInEnclave"


@dataclass(frozen=True)
class Upload:
    """One object to stage: the template parameter that names it, its key and its bytes."""

    parameter: str
    key: str
    body: bytes


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(zipfile.ZipInfo(name, _FIXED_TIME), files[name])
    return buffer.getvalue()


def functions_zip() -> bytes:
    files = {}
    for package in FUNCTION_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    return _zip(files)


def powertools_layer_zip() -> bytes:
    """The layer: each distribution's installed files under ``python/`` (no compiled caches, no scripts)."""
    files = {}
    for name in LAYER_DISTRIBUTIONS:
        distribution = metadata.distribution(name)
        for entry in distribution.files or []:
            parts = entry.parts
            if ".." in parts or entry.suffix == ".pyc" or "__pycache__" in parts or parts[0] == "bin":
                continue
            files[f"python/{entry.as_posix()}"] = Path(str(distribution.locate_file(entry))).read_bytes()
    return _zip(files)


def state_machine_definition(map_concurrency: int, enclave_concurrency: int | None = None) -> bytes:
    """The definition, its shard Map sending at most ``map_concurrency`` shards at once to the endpoint, and its
    enclave Map ``enclave_concurrency`` to the enclave fleet (the definition's own value where there is none)."""
    definition = json.loads(STATE_MACHINE.read_text())
    for state, concurrency in ((SHARD_MAP_STATE, map_concurrency), (ENCLAVE_SHARD_MAP_STATE, enclave_concurrency)):
        if concurrency is None:
            continue
        if concurrency < 1:
            raise ValueError(f"the Map's concurrency must be at least 1, not {concurrency}")
        definition["States"][state]["MaxConcurrency"] = concurrency
    return (json.dumps(definition, indent=2) + "\n").encode()


def _upload(parameter: str, name: str, body: bytes, suffix: str) -> Upload:
    return Upload(parameter, f"workflow/{name}-{hashlib.sha256(body).hexdigest()[:16]}{suffix}", body)


def uploads(map_concurrency: int, enclave_concurrency: int | None = None) -> list[Upload]:
    definition = state_machine_definition(map_concurrency, enclave_concurrency)
    return [
        _upload("FunctionsKey", "functions", functions_zip(), ".zip"),
        _upload("PowertoolsLayerKey", "powertools-layer", powertools_layer_zip(), ".zip"),
        _upload("StateMachineKey", "batch_inference", definition, ".asl.json"),
    ]
