"""A pretrained causal language model as the enclave path carries it: its folder (weights as safetensors, its
configuration and its tokenizer's files) packed into one archive whose bytes depend on the files' names and bytes
only, so its SHA-256 is the model's digest (what the registry records and the enclave attests to), as a tabular
enclave model's file is.

Only data crosses: the weights in safetensors (never a pickle: ``*.bin``, ``*.pt``, ``*.pkl`` are refused), JSON
configuration and tokenizer files; never code (``*.py``, or a configuration naming code to run: ``auto_map``). The
packing refuses anything else by name, and the enclave's loader (``containers/enclave/language_model.py``) checks
the same list again before a library sees the files.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

MAX_LANGUAGE_MODEL_BYTES = 8 * 1024**3  # Bloom-560m in float32 is about 2.2 GB
# The files of a model folder, by name: what transformers writes with save_pretrained(safe_serialization=True)
# and a fast tokenizer's save_pretrained.
WEIGHTS = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
DATA_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
)
CODE_KEYS = ("auto_map",)  # a configuration that names code for transformers to import


class LanguageModelError(ValueError):
    """A model folder or archive the enclave path will not carry; the message names the file and why."""


def allowed(name: str) -> bool:
    return name in DATA_FILES or bool(WEIGHTS.match(name))


def check_configuration(name: str, data: bytes) -> None:
    """A JSON file of the folder: JSON, and naming no code."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise LanguageModelError(f"{name} is not JSON") from None
    if isinstance(document, dict) and any(key in document for key in CODE_KEYS):
        raise LanguageModelError(f"{name} names code to run ({', '.join(CODE_KEYS)}): only data is carried")


def pack_folder(folder: Path) -> bytes:
    """The model folder as one archive: its allowed files, sorted, with no time, owner or mode of this machine."""
    names = sorted(path.name for path in folder.iterdir())
    refused = [
        name for name in names if not allowed(name) or (folder / name).is_symlink() or not (folder / name).is_file()
    ]
    if refused:
        raise LanguageModelError(
            f"{folder} holds {', '.join(refused)}: a language model is carried as safetensors weights, config.json "
            "and its tokenizer's JSON files only, each a plain file (no pickle, no code, no link)"
        )
    if not any(WEIGHTS.match(name) for name in names) or "config.json" not in names or "tokenizer.json" not in names:
        raise LanguageModelError(f"{folder} lacks model*.safetensors, config.json or tokenizer.json")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in names:
            data = (folder / name).read_bytes()
            if name.endswith(".json"):
                check_configuration(name, data)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    packed = buffer.getvalue()
    if len(packed) > MAX_LANGUAGE_MODEL_BYTES:
        raise LanguageModelError(f"{folder} packs to {len(packed)} bytes, more than {MAX_LANGUAGE_MODEL_BYTES}")
    return packed


def unpack(packed: bytes, destination: Path) -> list[str]:
    """The archive's files written flat into ``destination``, each checked by name (and, for JSON, by content)
    before it is written; the names written."""
    written = []
    try:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r:") as archive:
            for member in archive.getmembers():
                if not member.isfile() or "/" in member.name or not allowed(member.name):
                    raise LanguageModelError(f"the model archive holds {member.name!r}, which is not a model file")
                extracted = archive.extractfile(member)
                data = extracted.read() if extracted is not None else b""
                if member.name.endswith(".json"):
                    check_configuration(member.name, data)
                (destination / member.name).write_bytes(data)
                written.append(member.name)
    except tarfile.TarError as error:
        raise LanguageModelError(f"the model archive does not open ({error})") from None
    return written
