"""One evaluator process: the compiled circuit, loaded once, a bounded cache of evaluation keys, and one request at
a time, its samples evaluated on one thread per core (concrete releases the GIL).

Concrete's native code runs only here, never in the serving app's process: whatever an owner's bytes make it do
(a segmentation fault, an assertion's abort), it takes down this process and the request it was running, and the
pool (``containers.inference.pool``) starts another. Before native code sees them, a key is checked against the
circuit's key set and every ciphertext against the circuit's input (``circuit_specs``).

The serving app talks to it over a pipe, one exchange at a time (``serve``): a small tuple, then the bytes it
announces, each as one message of its own (so no key or shard is copied into a pickle).
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from common.bundle.schema import BundleError
from containers.inference.circuit_specs import CircuitSpecs

log = logging.getLogger("containers.inference.evaluator")

# The exchanges (the first element of what the serving app sends) and the answers' first elements.
HAS_KEY, LOAD_KEY, EVALUATE = "has_key", "load_key", "evaluate"
READY, OK, REFUSED, FAILED = "ready", "ok", "refused", "failed"


@dataclass(frozen=True)
class CircuitFacts:
    """What the serving app learns of the circuit from a ready evaluator, for checks it makes before reading."""

    key_bytes: int | None  # the most bytes a key of this circuit takes serialized; None: not known
    key_memory_bytes: int  # what one loaded key holds in memory


class _CachedKeys:
    def __init__(self, keys: Any, size: int) -> None:
        self.keys = keys
        self.size = size


class Evaluator:
    """The circuit of ``model_dir`` and the keys it has loaded."""

    def __init__(self, model_dir: Path, threads: int, key_cache_bytes: int) -> None:
        from concrete.ml.deployment import FHEModelServer

        self.server = FHEModelServer(str(model_dir))
        self.server.load()
        self.specs = CircuitSpecs.from_program_info(json.loads(self.server.server.program_info.serialize()))
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="fhe")
        self.key_cache_bytes = key_cache_bytes
        self._keys: LRUCache[str, _CachedKeys] = LRUCache(maxsize=key_cache_bytes, getsizeof=lambda entry: entry.size)
        # A key the cache cannot hold serves the request that loaded it, then is dropped.
        self._uncached: tuple[str, Any] | None = None

    def facts(self) -> CircuitFacts:
        return CircuitFacts(self.specs.key_bytes, self.specs.key_memory_bytes)

    def check_key(self, data: bytes) -> None:
        self.specs.check_evaluation_key(data)

    def check_ciphertext(self, data: bytes, field: str) -> None:
        self.specs.check_ciphertext(data, field)

    def has_key(self, sha256: str) -> bool:
        return sha256 in self._keys

    def load_key(self, sha256: str, data: bytes) -> None:
        from concrete import fhe

        self.check_key(data)
        try:
            keys = fhe.EvaluationKeys.deserialize(data)
        except Exception as error:  # concrete raises RuntimeError or ValueError on bytes it cannot read
            raise BundleError(
                "evaluation_key", f"is not an evaluation key ({type(error).__name__})", "bad_key"
            ) from None
        size = self.specs.key_memory_bytes
        if size <= self.key_cache_bytes:
            self._keys[sha256] = _CachedKeys(keys, size)
            self._uncached = None
        else:
            log.info(
                "an evaluation key takes %d bytes in memory, more than this evaluator's key cache of %d: "
                "it serves this request only",
                size,
                self.key_cache_bytes,
            )
            self._uncached = (sha256, keys)

    def _keys_for(self, sha256: str) -> Any:
        cached = self._keys.get(sha256)
        if cached is not None:
            return cached.keys
        if self._uncached is not None and self._uncached[0] == sha256:
            return self._uncached[1]
        raise RuntimeError("evaluate was asked for a key this evaluator has not loaded")

    def run_one(self, ciphertext: bytes, keys: Any, field: str) -> bytes:
        try:
            result: bytes = self.server.run(ciphertext, keys)
        except Exception as error:  # concrete's own checks of a value against the circuit
            raise BundleError(
                field, f"could not be evaluated with this model and key ({type(error).__name__})", "bad_ciphertext"
            ) from None
        return result

    def evaluate(self, sha256: str, ciphertexts: list[bytes], field: str) -> list[bytes]:
        """Every ciphertext checked, then evaluated on the threads; results keep the input order."""
        try:
            keys = self._keys_for(sha256)
            fields = [f"{field}.samples[{i}]" for i in range(len(ciphertexts))]
            for ciphertext, name in zip(ciphertexts, fields, strict=True):
                self.check_ciphertext(ciphertext, name)
            futures = [self._pool.submit(self.run_one, c, keys, n) for c, n in zip(ciphertexts, fields, strict=True)]
            return [future.result() for future in futures]
        finally:
            self._uncached = None

    def answer(self, connection: Connection, request: tuple[Any, ...]) -> None:
        """Carry out one exchange; every byte the request announces is read before anything is answered."""
        kind = request[0]
        if kind == HAS_KEY:
            connection.send((OK, self.has_key(request[1])))
        elif kind == LOAD_KEY:
            data = connection.recv_bytes()
            self.load_key(request[1], data)
            del data
            connection.send((OK, None))
        elif kind == EVALUATE:
            _, sha256, field, count = request
            ciphertexts = [connection.recv_bytes() for _ in range(count)]
            outputs = self.evaluate(sha256, ciphertexts, field)
            connection.send((OK, len(outputs)))
            for output in outputs:
                connection.send_bytes(output)
        else:
            raise RuntimeError(f"unknown exchange {kind!r}")

    def serve(self, connection: Connection) -> None:
        """Answer the serving app until it closes the pipe."""
        while True:
            try:
                request = connection.recv()
                try:
                    self.answer(connection, request)
                except BundleError as error:
                    connection.send((REFUSED, error.field, error.problem, error.code))
                except (EOFError, OSError):
                    raise
                except Exception:
                    # The details stay in this container's log; the serving app answers with the id only.
                    error_id = uuid.uuid4().hex[:12]
                    log.exception("evaluation failed (error id %s)", error_id)
                    connection.send((FAILED, error_id))
            except (EOFError, OSError):
                return  # the serving app is gone


def run_evaluator(
    connection: Connection, model_dir: str, threads: int, key_cache_bytes: int, kind: type[Evaluator] = Evaluator
) -> None:
    """The evaluator process's entry point: load the circuit, say it is ready, serve."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    evaluator = kind(Path(model_dir), threads, key_cache_bytes)
    connection.send((READY, evaluator.facts()))
    evaluator.serve(connection)
