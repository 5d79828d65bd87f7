"""How a language model completes a text bundle's prompts: the owner's generation settings, part of the bundle's
manifest (not secret: they are recorded in the audit), each checked against its limits with the field named.

The limits keep a shard within the workflow's task timeout on the enclave fleet: at most ``MAX_PROMPTS_PER_SHARD``
prompts of at most ``MAX_PROMPT_TOKENS`` tokens each (counted by the model's own tokenizer, in the enclave: only
the enclave sees the text), each completed with at most ``MAX_NEW_TOKENS`` new tokens.

Sampling is reproducible: before each prompt the generator is seeded with ``seed``, so a prompt's completion does
not depend on the shard it lies in or the prompts before it, and the same model run in clear with the same settings
gives the same text. ``temperature`` 0 is greedy decoding (``top_p`` then unused).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from common.bundle.schema import BundleError, Fields

MAX_NEW_TOKENS = 512
MAX_PROMPT_TOKENS = 1024
MAX_PROMPTS_PER_SHARD = 64
MAX_PROMPT_CHARACTERS = 16 * 1024
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARACTERS = 64
MAX_TEMPERATURE = 2.0
MIN_TEMPERATURE = 0.01  # above 0 (greedy): the logits are divided by it
# The enclave Map's wait for a shard (statemachines/batch_inference.asl.json, ServeInEnclave's TimeoutSeconds); a
# text bundle's shards are sized to take at most half of it at the model's measured pace (client/batch_client.py).
SHARD_TIMEOUT_SECONDS = 15000
SHARD_SECONDS_BUDGET = SHARD_TIMEOUT_SECONDS / 2
MAX_SEED = 2**32 - 1
_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Checked, and held as the types the manifest's parser gives (1 and 1.0 must not hash apart).
        for name, value in check_settings(asdict(self) | {"stop": list(self.stop)}, "generation").items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, data: Any, path: str = "generation") -> GenerationSettings:
        values = check_settings(data, path)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}

    def digest(self) -> str:
        """The settings' SHA-256 (canonical JSON): what a text bundle's shards are bound to."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _text(value: Any, field_name: str, low: int, high: int, code: str) -> str:
    """A text of ``low`` to ``high`` characters that is valid Unicode (a lone surrogate is refused: it cannot be
    encoded, hashed or tokenized)."""
    if not isinstance(value, str):
        raise BundleError(field_name, f"must be a text, not {type(value).__name__}", "invalid")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(field_name, "is not valid Unicode", "invalid") from None
    if not low <= len(value) <= high:
        raise BundleError(field_name, f"must be {low} to {high} characters", code)
    return value


def _integer(fields: Fields, name: str, low: int, high: int) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(fields.name(name), f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise BundleError(fields.name(name), f"must be {low} to {high}, got {value}", "out_of_range")
    return value


def _number(fields: Fields, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BundleError(fields.name(name), f"must be a number, not {type(value).__name__}")
    if value != value or value > high or value < low or (low_open and value == low):
        bound = f"more than {low}" if low_open else f"at least {low}"
        raise BundleError(fields.name(name), f"must be {bound} and at most {high}, got {value}", "out_of_range")
    return float(value)


def check_settings(data: Any, path: str) -> dict[str, Any]:
    """The settings of ``data`` (every field given), checked: a BundleError naming the field otherwise (a value out
    of its range is ``out_of_range``, one of the wrong type ``invalid``)."""
    if not isinstance(data, Mapping):
        raise BundleError(path, f"must be an object, not {type(data).__name__}")
    fields = Fields(dict(data), path, _FIELDS)
    for name in _FIELDS:
        fields.get(name)
    max_new_tokens = _integer(fields, "max_new_tokens", 1, MAX_NEW_TOKENS)
    seed = _integer(fields, "seed", 0, MAX_SEED)
    temperature = _number(fields, "temperature", 0.0, MAX_TEMPERATURE)
    if 0 < temperature < MIN_TEMPERATURE:  # dividing the logits by less overflows them: no sampler survives it
        raise BundleError(
            fields.name("temperature"), f"must be 0 (greedy) or {MIN_TEMPERATURE} to {MAX_TEMPERATURE}", "out_of_range"
        )
    top_p = _number(fields, "top_p", 0.0, 1.0, low_open=True)
    stop = fields.get("stop")
    if not isinstance(stop, list | tuple):
        raise BundleError(fields.name("stop"), "must be a list of texts")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise BundleError(fields.name("stop"), f"holds more than {MAX_STOP_SEQUENCES} texts", "out_of_range")
    stops = tuple(
        _text(sequence, f"{fields.name('stop')}[{index}]", 1, MAX_STOP_CHARACTERS, "out_of_range")
        for index, sequence in enumerate(stop)
    )
    return {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
            "stop": stops}  # fmt: skip


def check_prompts(prompts: Any, path: str) -> list[str]:
    """A shard's prompts: a list of 1 to ``MAX_PROMPTS_PER_SHARD`` non-empty texts of at most
    ``MAX_PROMPT_CHARACTERS`` characters (their tokens are counted where the tokenizer is: in the enclave)."""
    if not isinstance(prompts, list) or not 0 < len(prompts) <= MAX_PROMPTS_PER_SHARD:
        raise BundleError(path, f"a shard holds 1 to {MAX_PROMPTS_PER_SHARD} prompts", "invalid_records")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise BundleError(f"{path}[{index}]", "a prompt is a text", "invalid_records")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise BundleError(f"{path}[{index}]", "is not valid Unicode", "invalid_records") from None
        if not prompt.strip():
            raise BundleError(f"{path}[{index}]", "is empty", "empty_prompt")
        if len(prompt) > MAX_PROMPT_CHARACTERS:
            raise BundleError(
                f"{path}[{index}]", f"is longer than {MAX_PROMPT_CHARACTERS} characters", "prompt_too_long"
            )
    return prompts
