"""The FHE side of the endpoint: the compiled circuit, loaded once, and a bounded cache of evaluation keys.

Concrete releases the GIL while it evaluates, so one thread per core evaluates the samples of a shard in
parallel within this single process, sharing the loaded circuit and the deserialized keys.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from common import artifacts
from common.bundle.schema import BundleError
from common.versions import VersionsRecord

DEFAULT_KEY_CACHE_BYTES = 2 * 1024**3


class _CachedKeys:
    def __init__(self, keys: Any, size: int) -> None:
        self.keys = keys
        self.size = size


class InferenceEngine:
    def __init__(
        self, model_dir: Path, *, workers: int | None = None, key_cache_bytes: int = DEFAULT_KEY_CACHE_BYTES
    ) -> None:
        from concrete.ml.deployment import FHEModelServer

        for name in (artifacts.SERVER_ZIP, artifacts.VERSIONS_JSON):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"the model folder {model_dir} lacks {name}")
        model_versions = VersionsRecord.from_dict(json.loads((model_dir / artifacts.VERSIONS_JSON).read_text()))
        self.versions = VersionsRecord.current()
        self.versions.check_compatible(model_versions, what="the model in /opt/ml/model")
        self.server = FHEModelServer(str(model_dir))
        self.server.load()
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fhe")
        self._keys: LRUCache[str, _CachedKeys] = LRUCache(maxsize=key_cache_bytes, getsizeof=lambda entry: entry.size)
        self._keys_lock = threading.Lock()

    def evaluation_keys(self, sha256: str, fetch: Callable[[], bytes]) -> Any:
        """The deserialized evaluation keys with content hash ``sha256``, fetched only on a cache miss."""
        with self._keys_lock:
            cached = self._keys.get(sha256)
        if cached is not None:
            return cached.keys
        return self.load_keys(fetch(), sha256)

    def load_keys(self, data: bytes, sha256: str) -> Any:
        from concrete import fhe

        try:
            keys = fhe.EvaluationKeys.deserialize(data)
        except Exception as error:  # concrete raises RuntimeError or ValueError on foreign bytes
            raise BundleError(
                "evaluation_key", f"is not an evaluation key ({type(error).__name__})", "bad_key"
            ) from None
        with self._keys_lock:
            self._keys[sha256] = _CachedKeys(keys, len(data))
        return keys

    def run_one(self, ciphertext: bytes, keys: Any, field: str = "query") -> bytes:
        try:
            result: bytes = self.server.run(ciphertext, keys)
        except Exception as error:  # a ciphertext for another circuit or another key set
            raise BundleError(
                field, f"could not be evaluated with this model and key ({type(error).__name__})", "bad_ciphertext"
            ) from None
        return result

    def run_many(self, ciphertexts: Sequence[bytes], keys: Any, field: str = "shard") -> list[bytes]:
        """Evaluate every ciphertext on the worker threads; results keep the input order."""
        futures = [self._pool.submit(self.run_one, c, keys, f"{field}.samples[{i}]") for i, c in enumerate(ciphertexts)]
        return [future.result() for future in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
