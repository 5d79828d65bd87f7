"""Text bundles on the owner's side (moto: KMS): prompts read from a CSV column or a JSONL field with their ids kept
here, encrypted in shards bound to the generation settings the manifest carries, and completions opened in prompt
order and written keyed by the ids; what the owner gets wrong is named before anything is encrypted."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from client.batch_client import BatchClient, ClientSettings
from client.enclave_bundle import encrypt_enclave_texts, open_enclave_texts, owner_key, public_bytes
from client.errors import InputError
from client.model import ClientModel
from client.texts import read_prompts, write_completions
from common import artifacts
from common.bundle.enclave_crypto import decrypt_records, seal_results, texts_from_bytes, texts_to_bytes
from common.bundle.enclave_manifest import parse_enclave_manifest, result_manifest, sealed_entries
from common.bundle.generation import SHARD_TIMEOUT_SECONDS, GenerationSettings
from common.bundle.manifest import package_ref
from common.bundle.schema import MANIFEST_NAME, BundleError, sha256_hex
from common.versions import VersionsRecord

PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/notes-lm/2"
SETTINGS = GenerationSettings(max_new_tokens=32, temperature=0.5, top_p=0.95, seed=3, stop=("\n\n",))
PROMPTS = [f"note {i}: the patient reports pain" for i in range(7)]


@pytest.fixture
def kms() -> Any:
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        client.key_arn = client.create_key()["KeyMetadata"]["Arn"]
        yield client


def _bundle(kms: Any, folder: Path, settings: GenerationSettings = SETTINGS) -> Any:
    return encrypt_enclave_texts(
        kms,
        key_arn=kms.key_arn,
        owner="alice",
        model=package_ref(PACKAGE),
        versions=VersionsRecord.current().to_dict(),
        prompts=PROMPTS,
        generation=settings,
        owner_public_key=public_bytes(owner_key(folder.parent / "home")),
        destination=folder,
        bundle_id="b-0001",
        shard_size=3,
        progress=False,
    )


def _serve(kms: Any, folder: Path, settings: GenerationSettings | None = None) -> tuple[bytes, dict[int, bytes]]:
    """The enclave's part: each shard's prompts opened under the settings it is given (the manifest's unless a
    parent changed them), 'completed' (upper case), sealed to the owner."""
    request_bytes = (folder / MANIFEST_NAME).read_bytes()
    request = parse_enclave_manifest(request_bytes)
    given = request if settings is None else type(request)(request.header, request.enclave, settings)
    sealed = {}
    for shard in request.shards:
        binding = given.binding("alice", shard.index)
        data_key = kms.decrypt(CiphertextBlob=request.enclave.data_key, EncryptionContext=binding.encryption_context())
        prompts = texts_from_bytes(decrypt_records(data_key["Plaintext"], (folder / shard.key).read_bytes(), binding),
                                   "prompts")  # fmt: skip
        sealed[shard.index] = seal_results(
            request.enclave.owner_public_key, texts_to_bytes([p.upper() for p in prompts]), binding
        )
    return result_manifest(request, sha256_hex(request_bytes), sealed_entries(request, sealed)).to_json(), sealed


def test_a_text_bundle_carries_its_settings_and_its_completions_open_in_prompt_order(kms: Any, tmp_path: Path) -> None:
    manifest = _bundle(kms, tmp_path / "bundle")
    written = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_bytes())
    assert written["generation"] == SETTINGS.to_dict() and manifest.generation == SETTINGS
    assert [shard.samples for shard in manifest.shards] == [3, 3, 1]
    for shard in manifest.shards:  # no prompt in the clear in any object
        assert b"the patient" not in (tmp_path / "bundle" / shard.key).read_bytes()
    result, sealed = _serve(kms, tmp_path / "bundle")
    request = (tmp_path / "bundle" / MANIFEST_NAME).read_bytes()
    completions = open_enclave_texts(owner_key(tmp_path / "home"), "alice", request, result, sealed)
    assert completions == [p.upper() for p in PROMPTS]


def test_prompts_served_under_other_settings_open_nothing(kms: Any, tmp_path: Path) -> None:
    _bundle(kms, tmp_path / "bundle")
    with pytest.raises(BundleError, match="does not open") as refused:
        _serve(kms, tmp_path / "bundle", GenerationSettings(max_new_tokens=500))
    assert refused.value.code == "tampered"


def test_prompts_and_ids_are_read_from_a_csv_column_or_a_jsonl_field(tmp_path: Path) -> None:
    table = tmp_path / "notes.csv"
    table.write_text('note_id,text,site\nn-1,first note,a\nn-2,"second, with a comma",b\n')
    read = read_prompts(table, "text", ["note_id"])
    assert read.prompts == ["first note", "second, with a comma"] and read.ids == {"note_id": ["n-1", "n-2"]}
    lines = tmp_path / "notes.jsonl"
    lines.write_text('{"id": 7, "prompt": "first"}\n\n{"id": 8, "prompt": "second"}\n')
    read = read_prompts(lines, "prompt", ["id"])
    assert read.prompts == ["first", "second"] and read.ids == {"id": ["7", "8"]}
    out = tmp_path / "completions.csv"
    write_completions(out, ["one", "two"], read.ids)
    with out.open(newline="") as handle:
        assert list(csv.reader(handle)) == [["id", "row", "completion"], ["7", "0", "one"], ["8", "1", "two"]]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("notes.csv", "id,body\n1,x\n", "has no column text"),
        ("notes.csv", "id,text\n1,fine\n2,   \n", "row 2: the prompt is empty"),
        ("notes.csv", "id,text\n1," + "x" * 20_000 + "\n", "row 1: the prompt is longer than"),
        ("notes.jsonl", '{"id": 1, "text": "fine"}\nnot json\n', "line 2 is not JSON"),
        ("notes.jsonl", '{"id": 1, "text": 3}\n', "row 1: the prompt is not a text"),
        ("notes.jsonl", '{"id": 1}\n', "line 1 has no field text"),
        ("notes.csv", "id,text\n", "holds no prompt"),
    ],
)
def test_what_the_owner_gets_wrong_is_named_before_anything_is_encrypted(
    tmp_path: Path, name: str, content: str, problem: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError, match=problem):
        read_prompts(path, "text", ["id"])


def test_a_text_bundles_shards_fit_the_workflows_wait_at_the_models_measured_pace(tmp_path: Path) -> None:
    asl = json.loads((Path(__file__).parents[2] / "statemachines/batch_inference.asl.json").read_text())
    serve = asl["States"]["InferShardsInEnclave"]["ItemProcessor"]["States"]["ServeInEnclave"]
    assert serve["TimeoutSeconds"] == SHARD_TIMEOUT_SECONDS
    folder = tmp_path / "model"
    folder.mkdir()
    pace = {"enclave_seconds_per_prompt": 1.0, "enclave_seconds_per_token": 0.5}
    (folder / artifacts.COSTS_JSON).write_text(json.dumps(pace))
    notes: list[str] = []
    client = BatchClient(ClientSettings(owner="alice"), notes=notes.append)
    model = ClientModel(folder, package_ref(PACKAGE), "enclave")
    # 1 + 0.5 x 511 = 256.5 s a prompt of 512 new tokens: 7,500 s hold 29 of them.
    assert client._prompts_per_shard(model, GenerationSettings(max_new_tokens=512), 64) == 29
    assert notes[-1].startswith("29 prompts a shard, not 64")
    assert client._prompts_per_shard(model, GenerationSettings(max_new_tokens=8), 64) == 64
    (folder / artifacts.COSTS_JSON).unlink()
    assert client._prompts_per_shard(model, GenerationSettings(max_new_tokens=512), 64) == 64  # no pace measured
