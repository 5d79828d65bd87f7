"""A language model on the enclave path: packed as data only (safetensors, JSON; pickle and code refused by name,
on packing and again on unpacking), loaded by the enclave's loader, completing prompts reproducibly with the owner's
generation settings, identical to the same model run in clear with transformers; the settings' limits named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from common.bundle.generation import (
    MAX_NEW_TOKENS,
    MAX_PROMPTS_PER_SHARD,
    GenerationSettings,
    check_prompts,
)
from common.bundle.schema import BundleError
from common.language_model import LanguageModelError, pack_folder, unpack
from containers.enclave.language_model import LanguageModel, PromptRefused, load_language_model
from tests.language_models import tiny_bloom

PROMPTS = ["the patient reports", "the contract renewal", "please summarise the note"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bloom(tmp_path_factory.mktemp("bloom") / "model")


@pytest.fixture(scope="module")
def packed(folder: Path) -> bytes:
    return pack_folder(folder)


@pytest.fixture(scope="module")
def loaded(packed: bytes) -> LanguageModel:
    return load_language_model(packed)


def test_a_model_folder_packs_to_the_same_bytes_whatever_its_files_times(folder: Path, packed: bytes) -> None:
    for path in folder.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
    assert pack_folder(folder) == packed
    with tarfile.open(fileobj=io.BytesIO(packed)) as archive:
        names = archive.getnames()
    assert names == sorted(names) and "model.safetensors" in names and "tokenizer.json" in names


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("pytorch_model.bin", b"\x80\x04pickle", "pytorch_model.bin"),
        ("modeling_evil.py", b"import os", "modeling_evil.py"),
        ("config.json", b'{"auto_map": {"AutoModelForCausalLM": "evil.Model"}}', "names code to run"),
    ],
)
def test_pickle_and_code_are_refused_by_name(
    folder: Path, tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / name).write_bytes(content)
    with pytest.raises(LanguageModelError, match=problem):
        pack_folder(copy)


def test_an_archive_with_anything_but_model_files_is_refused_before_a_library_sees_it(tmp_path: Path) -> None:
    def archive(*members: tuple[str, bytes, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, kind, data in members:
                info = tarfile.TarInfo(name)
                info.type, info.size = kind, len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    for bad, problem in (
        (archive(("model.pkl", tarfile.REGTYPE, b"x")), "'model.pkl'"),
        (archive(("sub/config.json", tarfile.REGTYPE, b"{}")), "'sub/config.json'"),
        (archive(("config.json", tarfile.SYMTYPE, b"")), "'config.json'"),
        (archive(("config.json", tarfile.REGTYPE, b'{"auto_map": {}}')), "names code to run"),
        (b"not a tar archive at all" * 30, "does not open"),
    ):
        with pytest.raises(LanguageModelError, match=problem):
            unpack(bad, tmp_path)
        with pytest.raises(LanguageModelError):
            load_language_model(bad)


def test_the_loaded_models_digest_is_the_packed_bytes_sha256(packed: bytes, loaded: LanguageModel) -> None:
    assert loaded.digest == hashlib.sha256(packed).hexdigest()
    assert loaded.parameters > 0


def test_completions_are_reproducible_and_equal_the_model_run_in_clear(folder: Path, loaded: LanguageModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7)
    completions = loaded.complete(PROMPTS, settings)
    assert completions == loaded.complete(PROMPTS, settings)  # the same seed and settings: the same text
    assert loaded.complete(PROMPTS[1:2], settings) == completions[1:2]  # whatever else the shard holds
    assert loaded.complete(PROMPTS, GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=8)) != (
        completions
    )
    # The same model in clear, straight from its folder with transformers.
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    clear = []
    for prompt in PROMPTS:
        torch.manual_seed(7)
        tokens = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
        output = model.generate(**tokens, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9, top_k=0,
                                pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        clear.append(tokenizer.decode(output[0][tokens["input_ids"].shape[1] :], skip_special_tokens=True))
    assert completions == clear


def test_greedy_decoding_stop_sequences_and_the_token_limit(loaded: LanguageModel) -> None:
    greedy = loaded.complete(PROMPTS[:1], GenerationSettings(max_new_tokens=16))
    assert greedy == loaded.complete(PROMPTS[:1], GenerationSettings(max_new_tokens=16, seed=99))  # no sampling
    full = greedy[0]
    if len(full) > 2:
        stop = full[1:3]
        cut = loaded.complete(PROMPTS[:1], GenerationSettings(max_new_tokens=16, stop=(stop,)))
        assert cut == [full[: full.find(stop)]]
    long_prompt = " ".join(["the patient reports mild pain"] * 400)
    with pytest.raises(PromptRefused) as refused:
        loaded.complete([PROMPTS[0], long_prompt], GenerationSettings())
    assert (refused.value.index, refused.value.reason) == (1, "prompt_too_long")


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"max_new_tokens": 0}, "generation.max_new_tokens", "out_of_range"),
        ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "generation.max_new_tokens", "out_of_range"),
        ({"temperature": -0.1}, "generation.temperature", "out_of_range"),
        ({"temperature": 2.5}, "generation.temperature", "out_of_range"),
        ({"temperature": "hot"}, "generation.temperature", "invalid"),
        ({"top_p": 0}, "generation.top_p", "out_of_range"),
        ({"top_p": 1.5}, "generation.top_p", "out_of_range"),
        ({"temperature": 1e-45}, "generation.temperature", "out_of_range"),  # would overflow the logits
        ({"seed": -1}, "generation.seed", "out_of_range"),
        ({"seed": 1.5}, "generation.seed", "invalid"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "generation.stop", "out_of_range"),
        ({"stop": [""]}, "generation.stop[0]", "out_of_range"),
        ({"stop": ["\ud800"]}, "generation.stop[0]", "invalid"),  # a lone surrogate: no UTF-8, no digest
        ({"beam_search": True}, "generation.beam_search", "invalid"),
    ],
)
def test_out_of_range_generation_settings_are_refused_naming_the_field(
    change: dict[str, object], field: str, code: str
) -> None:
    settings = {**GenerationSettings().to_dict(), **change}
    with pytest.raises(BundleError) as refused:
        GenerationSettings.from_dict(settings)
    assert (refused.value.field, refused.value.code) == (field, code), refused.value


def test_settings_made_in_code_hash_as_the_manifests_parser_reads_them() -> None:
    made = GenerationSettings(max_new_tokens=8, temperature=1, top_p=1, seed=3, stop=["x"])  # type: ignore[arg-type]
    parsed = GenerationSettings.from_dict(json.loads(json.dumps(made.to_dict())))
    assert made == parsed and made.digest() == parsed.digest() and isinstance(made.temperature, float)


def test_a_shards_prompts_are_checked_with_named_reasons() -> None:
    assert check_prompts(["a", "b"], "prompts") == ["a", "b"]
    for prompts, code in (
        ([], "invalid_records"),
        (["x"] * (MAX_PROMPTS_PER_SHARD + 1), "invalid_records"),
        (["fine", "   "], "empty_prompt"),
        (["fine", 3], "invalid_records"),
        (["fine", "\ud800 lone"], "invalid_records"),
        (["x" * 20_000], "prompt_too_long"),
    ):
        with pytest.raises(BundleError) as refused:
            check_prompts(prompts, "prompts")
        assert refused.value.code == code


def test_only_the_owners_settings_apply_not_the_models_own_generation_config(
    folder: Path, tmp_path: Path, loaded: LanguageModel
) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    config = json.loads((copy / "generation_config.json").read_text())
    config.update(num_beams=4, repetition_penalty=3.0, min_new_tokens=12, top_k=2)
    (copy / "generation_config.json").write_text(json.dumps(config))
    settings = GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7)
    assert load_language_model(pack_folder(copy)).complete(PROMPTS, settings) == loaded.complete(PROMPTS, settings)
    (copy / "config.json").unlink()
    (copy / "config.json").symlink_to(folder / "config.json")
    with pytest.raises(LanguageModelError, match="no link"):
        pack_folder(copy)


def test_a_prompt_the_models_positions_cannot_hold_with_its_new_tokens_is_refused(tmp_path: Path) -> None:
    """A model with learned positions (GPT-2's kind) holds at most its positions: prompt and new tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tiny_bloom(tmp_path / "model")  # its tokenizer, with a GPT-2 of 32 positions in place of the Bloom
    (folder / "model.safetensors").unlink()
    config = GPT2Config(vocab_size=400, n_positions=32, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    model = load_language_model(pack_folder(folder))
    assert len(model.complete(["the patient"], GenerationSettings(max_new_tokens=8))) == 1
    with pytest.raises(PromptRefused) as refused:
        model.complete(["the patient reports mild pain in the left knee"], GenerationSettings(max_new_tokens=30))
    assert refused.value.reason == "prompt_too_long" and "32 positions" in refused.value.detail
