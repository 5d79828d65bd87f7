"""What the secrecy scans look for: fragments of the client's private keys and of its plaintext records."""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np

from client.model import ClientModel


def private_key_fragments(model: ClientModel, evaluation_key: bytes, *, encoded: bool = False) -> list[bytes]:
    """256-byte windows of the stored secret keys (concrete stores binary coefficients as 64-bit words, so a
    window is 32 coefficients: a pattern that no ciphertext or log line carries by chance). ``encoded`` adds
    each window as hex and base64 (at every alignment), for scans of text such as reports."""
    fragments = []
    for path in model.keys_folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for start in range(128, max(128, len(data) - 256), 128):
                window = data[start : start + 256]
                if len(set(window)) >= 2 and window not in evaluation_key:
                    fragments.append(window)
    if encoded:
        fragments += [f.hex().encode() for f in list(fragments)]
        fragments += [base64.b64encode(f[shift : shift + 192])[4:-4] for f in list(fragments[:]) for shift in (0, 1, 2)]
    return fragments


def plaintext_fragments(x: np.ndarray[Any, Any], scaled: np.ndarray[Any, Any]) -> list[bytes]:
    """The records' values as text (as a CSV or a log line would print them) and as raw floats."""
    texts = {repr(float(v)) for v in x.ravel()} | {f"{v:g}" for v in x.ravel()}
    fragments = [t.encode() for t in texts if len(t) >= 6]
    fragments += [row.astype(np.float64).tobytes()[:24] for row in x]
    fragments += [row.astype(np.float32).tobytes()[:16] for row in scaled]
    return fragments


def numbers_in_text(blob: bytes, fragments: list[bytes]) -> list[bytes]:
    """The textual fragments that stand in ``blob`` as whole numbers (not as digits of a longer one, such as the
    fraction of a timestamp's seconds)."""
    found = []
    for fragment in fragments:
        pattern = rb"(?<![0-9.])" + re.escape(fragment) + rb"(?![0-9])"
        if re.search(pattern, blob):
            found.append(fragment)
    return found
