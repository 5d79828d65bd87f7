"""The serving app's evaluator processes: started with ``spawn`` (never forked from the threaded serving process),
each serving one request at a time; one that dies is replaced, and only the request it was running fails.

A request takes an idle evaluator for all of its exchanges (preferring one that loaded its key last), and gives it
back after; a request that finds none idle waits for one. A watcher replaces an evaluator that dies while idle; a
request whose evaluator dies under it learns how (:class:`EvaluatorLost`), and the evaluator is replaced as well.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from common.bundle.schema import BundleError
from containers.inference.evaluator import (
    EVALUATE,
    FAILED,
    HAS_KEY,
    LOAD_KEY,
    OK,
    READY,
    REFUSED,
    CircuitFacts,
    Evaluator,
    run_evaluator,
)

log = logging.getLogger("containers.inference.pool")

START_TIMEOUT_S = 600.0
# A replacement that cannot start is tried again this many times, then its place stays empty (``/ping`` tells).
REPLACEMENT_ATTEMPTS = 3
REPLACEMENT_BACKOFF_S = 5.0
WATCH_INTERVAL_S = 1.0
_RECENT_KEYS = 8
# Deaths no input causes: the instance's out-of-memory killer, or a stop.
_STOPPED = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT})


class EvaluatorLost(Exception):
    """The evaluator process died during an exchange."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        super().__init__(f"the evaluator process ended ({self.how})")

    @property
    def how(self) -> str:
        if self.exitcode is None:
            return "unknown"
        if self.exitcode < 0:
            try:
                return signal.Signals(-self.exitcode).name
            except ValueError:
                return f"signal {-self.exitcode}"
        return f"exit status {self.exitcode}"

    @property
    def crashed(self) -> bool:
        """Whether it died of what it was running (a fault or abort of native code), not of being stopped."""
        if self.exitcode is None or self.exitcode == 0:
            return False
        return self.exitcode > 0 or -self.exitcode not in {int(s) for s in _STOPPED}


class EvaluationFailed(RuntimeError):
    """The evaluator hit an unexpected error; its log has the details under ``error_id``."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"the evaluator failed (error id {error_id})")
        self.error_id = error_id


class EvaluatorHandle:
    """The serving app's end of one evaluator process."""

    def __init__(self, process: BaseProcess, connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.recent_keys: deque[str] = deque(maxlen=_RECENT_KEYS)
        self.retired = False
        self.desynchronized = False  # an exchange broke off half-way: the pipe can no longer be trusted

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout: float) -> CircuitFacts:
        try:
            if not self.connection.poll(timeout):
                raise RuntimeError(f"an FHE evaluator did not load the model within {timeout:.0f} s")
            kind, facts = self.connection.recv()
        except (EOFError, OSError):
            raise RuntimeError(
                f"an FHE evaluator could not load the model ({self._lost().how}); its log above says why"
            ) from None
        if kind != READY or not isinstance(facts, CircuitFacts):
            raise RuntimeError("an FHE evaluator answered its start with something else than ready")
        return facts

    def _lost(self) -> EvaluatorLost:
        self.process.join(timeout=10)
        if self.process.exitcode is None:  # the pipe broke but the process lives: it cannot be used either
            self.process.kill()
            self.process.join(timeout=10)
        return EvaluatorLost(self.process.exitcode)

    def _exchange(self, request: tuple[Any, ...], frames: Sequence[bytes] = ()) -> tuple[Any, ...]:
        completed = False
        try:
            self.connection.send(request)
            for frame in frames:
                self.connection.send_bytes(frame)
            answer: tuple[Any, ...] = self.connection.recv()
            completed = True
        except (EOFError, OSError):
            raise self._lost() from None
        finally:
            self.desynchronized = self.desynchronized or not completed
        if answer[0] == REFUSED:
            _, field, problem, code = answer
            raise BundleError(field, problem, code)
        if answer[0] == FAILED:
            # It may have answered before reading all that was sent, and its state is unknown: it is replaced.
            self.desynchronized = True
            raise EvaluationFailed(answer[1])
        if answer[0] != OK:
            self.desynchronized = True
            raise RuntimeError(f"an FHE evaluator answered {answer[0]!r} to {request[0]!r}")
        return answer

    def has_key(self, sha256: str) -> bool:
        return bool(self._exchange((HAS_KEY, sha256))[1])

    def load_key(self, sha256: str, data: bytes) -> None:
        self._exchange((LOAD_KEY, sha256), [data])
        self.recent_keys.append(sha256)

    def evaluate(self, sha256: str, ciphertexts: Sequence[bytes], field: str) -> list[bytes]:
        _, count = self._exchange((EVALUATE, sha256, field, len(ciphertexts)), ciphertexts)
        completed = False
        try:
            outputs = [self.connection.recv_bytes() for _ in range(count)]
            completed = True
        except (EOFError, OSError):
            raise self._lost() from None
        finally:
            self.desynchronized = self.desynchronized or not completed
        return outputs

    def stop(self) -> None:
        self.connection.close()
        self.process.terminate()
        self.process.join(timeout=10)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(timeout=10)


class EvaluatorPool:
    """``size`` evaluator processes for the model in ``model_dir``; the constructor returns once all are ready."""

    def __init__(
        self,
        model_dir: Path,
        *,
        size: int,
        threads: int,
        key_cache_bytes: int,
        evaluator: type[Evaluator] = Evaluator,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if size < 1:
            raise ValueError(f"an evaluator pool needs at least one evaluator, not {size}")
        self.size = size
        self._arguments = (str(model_dir), threads, key_cache_bytes, evaluator)
        self._context = multiprocessing.get_context("spawn")
        self._changed = threading.Condition()
        self._idle: list[EvaluatorHandle] = []
        self._running: set[EvaluatorHandle] = set()
        self._places = size  # evaluators running or being started; a place is given up only when its start fails
        self._closed = False
        started = [self._start() for _ in range(size)]
        try:
            facts = [handle.wait_ready(start_timeout_s) for handle in started]
        except BaseException:
            for handle in started:
                handle.stop()
            raise
        self.facts = facts[0]
        self._start_timeout_s = start_timeout_s
        self._idle.extend(started)
        self._running.update(started)
        self._watcher = threading.Thread(target=self._watch, name="fhe-evaluator-watch", daemon=True)
        self._watcher.start()

    def _start(self) -> EvaluatorHandle:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run_evaluator, args=(theirs, *self._arguments), name="fhe-evaluator", daemon=True
        )
        process.start()
        theirs.close()
        return EvaluatorHandle(process, ours)

    def pids(self) -> list[int]:
        """The process ids of the evaluators running now (for the operator and the tests)."""
        with self._changed:
            return sorted(h.pid for h in self._running if h.pid is not None)

    def status(self) -> dict[str, int]:
        with self._changed:
            return {"evaluators": len(self._running), "starting": self._places - len(self._running), "of": self.size}

    @property
    def serving(self) -> bool:
        """Whether a request can still be served: an evaluator runs or one is being started."""
        with self._changed:
            return self._places > 0 and not self._closed

    def wait_full(self, timeout: float) -> bool:
        """Wait until every place has a running evaluator; whether it came to that within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._running) < self.size:
                left = deadline - time.monotonic()
                if left <= 0 or self._places < self.size:
                    return False
                self._changed.wait(left)
            return True

    @contextlib.contextmanager
    def evaluator(self, key_sha256: str) -> Iterator[EvaluatorHandle]:
        """An idle evaluator, the caller's alone until the block ends; one that has this key if any is idle."""
        with self._changed:
            while not self._idle:
                if self._places == 0 or self._closed:
                    raise RuntimeError("no FHE evaluator is running")
                self._changed.wait()
            handle = next((h for h in self._idle if key_sha256 in h.recent_keys), self._idle[0])
            self._idle.remove(handle)
        try:
            yield handle
        finally:
            if handle.desynchronized or handle.process.exitcode is not None:
                self._retire(handle)
            else:
                with self._changed:
                    if not handle.retired:
                        self._idle.append(handle)
                    self._changed.notify()

    def _retire(self, handle: EvaluatorHandle) -> None:
        """Take ``handle`` out of service and start its replacement (once, whoever notices first)."""
        with self._changed:
            if handle.retired or self._closed:
                return
            handle.retired = True
            self._running.discard(handle)
            if handle in self._idle:
                self._idle.remove(handle)
        if handle.process.exitcode is None:
            handle.stop()
        else:
            handle.connection.close()
        how = EvaluatorLost(handle.process.exitcode).how
        log.warning("FHE evaluator %s ended (%s); starting another", handle.pid, how)
        threading.Thread(target=self._replace, name="fhe-evaluator-start", daemon=True).start()

    def _replace(self) -> None:
        for attempt in range(1, REPLACEMENT_ATTEMPTS + 1):
            handle = self._start()
            try:
                handle.wait_ready(self._start_timeout_s)
            except RuntimeError as error:
                handle.stop()
                log.error("a replacement FHE evaluator did not start (attempt %d): %s", attempt, error)
                time.sleep(REPLACEMENT_BACKOFF_S * attempt)
                continue
            with self._changed:
                if self._closed:
                    handle.stop()
                    return
                self._running.add(handle)
                self._idle.append(handle)
                self._changed.notify_all()
            log.info("FHE evaluator %s started", handle.pid)
            return
        with self._changed:
            self._places -= 1
            self._changed.notify_all()  # a request waiting on an empty pool fails instead of waiting forever

    def _watch(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                # A busy evaluator's death is its request's to notice: that thread still reads the pipe.
                dead = [h for h in self._idle if h.process.exitcode is not None]
            for handle in dead:
                self._retire(handle)
            time.sleep(WATCH_INTERVAL_S)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            running = list(self._running)
            self._running.clear()
            self._idle.clear()
            self._changed.notify_all()
        for handle in running:
            handle.stop()
