"""The FHE side of the endpoint, as the request handlers see it: the model's versions checked, a pool of evaluator
processes (``containers.inference.pool``) that hold the circuit and the keys, and what a request's failure in
one of them means for its owner.

The serving app's own process never runs concrete's native code, nor imports concrete: an owner's key or
ciphertexts that crash native code end one evaluator process and the request it ran, never the app, nor the
requests of other owners that other evaluators are running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from common import artifacts
from common.bundle.schema import MAX_EVALUATION_KEY_BYTES, BundleError
from common.versions import VersionsRecord
from containers.inference.evaluator import Evaluator
from containers.inference.pool import EvaluatorLost, EvaluatorPool

# Keys kept in memory between requests, over all evaluators (each holds its share), weighed by what a loaded key
# takes in memory: its payload as read plus its decompressed form.
DEFAULT_KEY_CACHE_BYTES = 2 * 1024**3
# One evaluator per shard the endpoint takes at once: the product's default InvocationsPerInstance.
DEFAULT_EVALUATORS = 2
# A request whose evaluator died while idle, before any of the request reached it, goes to another.
_ATTEMPTS_BEFORE_ANY_INPUT = 2


def evaluators_from_environment() -> int:
    """``FHE_EVALUATORS``, the evaluator processes (the deploy sets the endpoint's InvocationsPerInstance; 2, the
    product's default, without it)."""
    return int(os.environ.get(artifacts.EVALUATORS_VARIABLE) or DEFAULT_EVALUATORS)


class InferenceEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        evaluators: int = DEFAULT_EVALUATORS,
        threads: int | None = None,
        key_cache_bytes: int = DEFAULT_KEY_CACHE_BYTES,
        evaluator: type[Evaluator] = Evaluator,
    ) -> None:
        """``threads``: each evaluator's threads for a shard's samples (default one per core); ``evaluator``: what
        each evaluator process runs."""
        for name in (artifacts.SERVER_ZIP, artifacts.VERSIONS_JSON):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"the model folder {model_dir} lacks {name}")
        model_versions = VersionsRecord.from_dict(json.loads((model_dir / artifacts.VERSIONS_JSON).read_text()))
        self.versions = VersionsRecord.current()
        self.versions.check_compatible(model_versions, what="the model in /opt/ml/model")
        self.threads = threads or os.cpu_count() or 1
        self.key_cache_bytes = key_cache_bytes
        self.pool = EvaluatorPool(
            model_dir,
            size=evaluators,
            threads=self.threads,
            key_cache_bytes=key_cache_bytes // evaluators,
            evaluator=evaluator,
        )

    @property
    def key_limit(self) -> int:
        """The most bytes an evaluation key for the served circuit may take: what the circuit's keys take, within the
        bundle format's limit."""
        circuit = self.pool.facts.key_bytes
        return MAX_EVALUATION_KEY_BYTES if circuit is None else min(circuit, MAX_EVALUATION_KEY_BYTES)

    def check_key_size(self, size: int, field: str = "evaluation_key") -> None:
        """Refuse, before reading it, a key larger than a key of the served circuit can be."""
        if size > self.key_limit:
            raise BundleError(
                field,
                f"is {size} bytes, and a key of the served model takes at most {self.key_limit}: it is not a key of "
                "this model; run `fhe-client keys` for it",
                "bad_key",
            )

    def evaluate(
        self, key_sha256: str, fetch_key: Callable[[], bytes], ciphertexts: Sequence[bytes], field: str
    ) -> list[bytes]:
        """Evaluate ``ciphertexts`` with the key of content hash ``key_sha256``, fetched only when the evaluator
        has not loaded it; results keep the input order."""
        attempts_left = _ATTEMPTS_BEFORE_ANY_INPUT
        while True:
            with self.pool.evaluator(key_sha256) as evaluator:
                try:
                    loaded = evaluator.has_key(key_sha256)
                except EvaluatorLost:
                    attempts_left -= 1
                    if attempts_left == 0:
                        raise
                    continue
                try:
                    if not loaded:
                        evaluator.load_key(key_sha256, fetch_key())
                except EvaluatorLost as lost:
                    raise _failure(lost, "evaluation_key", "the evaluation key") from None
                try:
                    return evaluator.evaluate(key_sha256, ciphertexts, field)
                except EvaluatorLost as lost:
                    raise _failure(lost, field, "the evaluation key and these ciphertexts") from None

    def status(self) -> dict[str, int]:
        return {**self.pool.status(), "threads": self.threads}

    @property
    def serving(self) -> bool:
        return self.pool.serving

    def close(self) -> None:
        self.pool.close()


def _failure(lost: EvaluatorLost, field: str, what: str) -> Exception:
    """What a request whose evaluator died tells: a crash is the input's (not retried, the owner can act on it);
    a stop (the out-of-memory killer, a shutdown) is the endpoint's, an internal error."""
    if lost.crashed:
        return BundleError(
            field,
            f"the FHE evaluator crashed ({lost.how}) on {what}, not made for the served circuit; make the key "
            "with `fhe-client keys` and the bundle with `fhe-client encrypt` for this model",
            "evaluation_crashed",
        )
    return RuntimeError(f"the FHE evaluator was stopped ({lost.how})")
