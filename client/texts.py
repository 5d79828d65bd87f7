"""A text bundle's input and output on the owner's machine: prompts read from a CSV column or a JSONL field (with
id columns kept here, never encrypted), and completions written back keyed by those ids.

Every prompt is checked before anything is encrypted (``common/bundle/generation.check_prompts``'s rules, with the
row named): an empty prompt or one over the character limit stops the bundle here rather than in the enclave.
Token counts are the model's own tokenizer's, so the enclave counts them (``prompt_too_long``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client.errors import FheClientError, InputError
from common.bundle.generation import MAX_PROMPT_CHARACTERS

MAX_INPUT_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class InputTexts:
    prompts: list[str]
    ids: dict[str, list[str]] = field(default_factory=dict)  # column → one value per prompt, kept here


def _checked(prompt: object, where: str) -> str:
    if not isinstance(prompt, str):
        raise InputError(f"{where}: the prompt is not a text")
    if not prompt.strip():
        raise InputError(f"{where}: the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARACTERS:
        raise InputError(f"{where}: the prompt is longer than {MAX_PROMPT_CHARACTERS} characters")
    return prompt


def read_prompts(path: Path, text_column: str, id_columns: Sequence[str] = ()) -> InputTexts:
    """The prompts of a CSV (``text_column``) or a JSONL file (one object per line, its ``text_column`` field), with
    ``id_columns`` kept as text."""
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    if not 0 < path.stat().st_size <= MAX_INPUT_BYTES:
        raise InputError(f"input file {path.name} is empty or larger than {MAX_INPUT_BYTES} bytes")
    wanted = [text_column, *id_columns]
    rows: list[dict[str, object]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise InputError(f"{path.name} line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise InputError(f"{path.name} line {number} is not a JSON object")
            missing = [name for name in wanted if name not in row]
            if missing:
                raise InputError(f"{path.name} line {number} has no field {', '.join(missing)}")
            rows.append(row)
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in wanted if name not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path.name} has no column {', '.join(missing)}")
            rows = [dict(row) for row in reader]
    if not rows:
        raise InputError(f"{path.name} holds no prompt")
    prompts = [_checked(row[text_column], f"{path.name} row {number}") for number, row in enumerate(rows, 1)]
    ids = {name: [str(row[name]) for row in rows] for name in id_columns}
    return InputTexts(prompts, ids)


def write_completions(path: Path, completions: Sequence[str], ids: dict[str, list[str]] | None = None) -> None:
    """One line per prompt: its ``ids`` (kept on this machine) first, then ``row`` and the completion."""
    ids = ids or {}
    for name, values in ids.items():
        if len(values) != len(completions):
            raise FheClientError(f"id column {name!r} has {len(values)} values for {len(completions)} completions")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*ids, "row", "completion"])
        for row, completion in enumerate(completions):
            writer.writerow([*(values[row] for values in ids.values()), row, completion])
