"""A pretrained causal language model in the enclave: loaded as data with transformers (safetensors weights, the
configuration and a fast tokenizer's JSON; never pickle, never remote code), run on CPU, completing a shard's
prompts with the owner's generation settings (``common/bundle/generation.py``).

The same code completes prompts in clear for the comparisons (``complete``): the enclave adds nothing to the text
but its encryption, so a bundle's completions equal the model's in clear with the same seed and settings.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.bundle.generation import MAX_PROMPT_TOKENS, SHARD_SECONDS_BUDGET, GenerationSettings
from common.language_model import LanguageModelError, unpack


class PromptRefused(ValueError):
    """A prompt the model will not complete: ``reason`` names why (``prompt_too_long``), ``index`` which."""

    def __init__(self, index: int, reason: str, detail: str) -> None:
        super().__init__(f"prompt {index}: {detail}")
        self.index, self.reason, self.detail = index, reason, detail


@dataclass
class LanguageModel:
    digest: str  # sha256 hex of the packed model: what the enclave attests to
    model: Any  # a transformers causal LM, in evaluation mode
    tokenizer: Any  # its fast tokenizer
    parameters: int

    def tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, return_token_type_ids=False)["input_ids"])

    def complete(self, prompts: Sequence[str], settings: GenerationSettings) -> list[str]:
        """Each prompt's completion (the new text only, cut at the first stop sequence), the generator seeded with
        ``settings.seed`` before each prompt; PromptRefused for a prompt over ``MAX_PROMPT_TOKENS`` tokens or one the
        model's positions cannot hold with its new tokens (checked before any is run), and for a shard that outlasts
        ``SHARD_SECONDS_BUDGET``. Only the owner's settings apply: a model's own generation_config.json (beams,
        penalties, top-k) does not."""
        import torch
        from transformers import GenerationConfig

        encoded = [self.tokenizer(prompt, return_tensors="pt", return_token_type_ids=False) for prompt in prompts]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        for index, tokens in enumerate(encoded):
            count = int(tokens["input_ids"].shape[1])
            if count > MAX_PROMPT_TOKENS:
                raise PromptRefused(index, "prompt_too_long", f"{count} tokens, more than {MAX_PROMPT_TOKENS}")
            if isinstance(positions, int) and count + settings.max_new_tokens > positions:
                raise PromptRefused(
                    index, "prompt_too_long", f"{count} tokens and {settings.max_new_tokens} new ones exceed the "
                    f"model's {positions} positions",
                )  # fmt: skip
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sampled = settings.temperature > 0
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=sampled,
            temperature=settings.temperature if sampled else 1.0,
            top_p=settings.top_p if sampled else 1.0,
            top_k=0,  # no top-k: the owner's settings have none
            num_beams=1,
            repetition_penalty=1.0,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        started = time.monotonic()
        completions = []
        with torch.inference_mode():
            for index, tokens in enumerate(encoded):
                left = SHARD_SECONDS_BUDGET - (time.monotonic() - started)
                if left <= 0:
                    raise PromptRefused(index, "shard_too_long", f"the shard outlasted {SHARD_SECONDS_BUDGET:.0f} s")
                torch.manual_seed(settings.seed)
                output = self.model.generate(**tokens, generation_config=config, max_time=left)
                new = output[0][tokens["input_ids"].shape[1] :]
                completions.append(_cut(self.tokenizer.decode(new, skip_special_tokens=True), settings.stop))
        return completions


def _cut(text: str, stop: Sequence[str]) -> str:
    ends = [text.find(sequence) for sequence in stop if sequence in text]
    return text[: min(ends)] if ends else text


def load_language_model(packed: bytes, *, threads: int | None = None) -> LanguageModel:
    """The packed model (``common/language_model.py``) loaded from a scratch folder: only its allowed files are
    written there, and transformers reads them with no network, no pickle and no remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="model-") as scratch:
        folder = Path(scratch)
        try:
            unpack(packed, folder)
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except LanguageModelError:
            raise
        except Exception as error:  # transformers, safetensors and torch raise many kinds for a model they refuse
            raise LanguageModelError(f"transformers refused the model ({type(error).__name__})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise LanguageModelError("the model's tokenizer must be a fast tokenizer (tokenizer.json)")
    model.eval()
    # The model's own generation_config.json (beams, penalties, top-k, minimum lengths) is set aside: transformers
    # would fill the owner's settings' unset fields from it; only the special tokens are kept.
    from transformers import GenerationConfig

    kept = {name: getattr(model.generation_config, name, None) for name in ("bos_token_id", "eos_token_id")}
    model.generation_config = GenerationConfig(**{k: v for k, v in kept.items() if v is not None})
    parameters = sum(int(p.numel()) for p in model.parameters())
    return LanguageModel(hashlib.sha256(packed).hexdigest(), model, tokenizer, parameters)
