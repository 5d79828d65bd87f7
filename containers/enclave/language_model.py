"""A pretrained causal language model in the enclave: loaded as data with transformers (safetensors weights, the
configuration and a fast tokenizer's JSON; never pickle, never remote code), run on CPU, completing a shard's
prompts with the owner's generation settings (``common/bundle/generation.py``).

The same code completes prompts in clear for the comparisons (``complete``): the enclave adds nothing to the text
but its encryption, so a bundle's completions equal the model's in clear with the same seed and settings.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.bundle.generation import MAX_PROMPT_TOKENS, GenerationSettings
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
        ``settings.seed`` before each prompt; PromptRefused for a prompt over ``MAX_PROMPT_TOKENS`` tokens, before
        any is run."""
        import torch

        encoded = [self.tokenizer(prompt, return_tensors="pt", return_token_type_ids=False) for prompt in prompts]
        for index, tokens in enumerate(encoded):
            count = int(tokens["input_ids"].shape[1])
            if count > MAX_PROMPT_TOKENS:
                raise PromptRefused(index, "prompt_too_long", f"{count} tokens, more than {MAX_PROMPT_TOKENS}")
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
            if settings.temperature > 0
            else {"do_sample": False}
        )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        completions = []
        with torch.inference_mode():
            for tokens in encoded:
                torch.manual_seed(settings.seed)
                output = self.model.generate(
                    **tokens, max_new_tokens=settings.max_new_tokens, pad_token_id=pad, **sampling
                )
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
        except (OSError, ValueError, KeyError) as error:
            raise LanguageModelError(f"transformers refused the model ({type(error).__name__}: {error})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise LanguageModelError("the model's tokenizer must be a fast tokenizer (tokenizer.json)")
    model.eval()
    parameters = sum(int(p.numel()) for p in model.parameters())
    return LanguageModel(hashlib.sha256(packed).hexdigest(), model, tokenizer, parameters)
