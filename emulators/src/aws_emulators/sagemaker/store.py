"""Durable state of the local SageMaker: one SQLite table of JSON documents, keyed by kind and id.

Every write commits at once, so killing the server loses nothing that an API call acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS documents_parent ON documents (kind, parent, seq);
"""


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, kind: str, id_: str, body: dict[str, Any], parent: str = "") -> None:
        with self._lock:
            row = self._db.execute("SELECT seq FROM documents WHERE kind=? AND id=?", (kind, id_)).fetchone()
            if row is None:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM documents").fetchone()[0]
            else:
                seq = row[0]
            self._db.execute(
                "INSERT OR REPLACE INTO documents (kind, id, parent, seq, body) VALUES (?, ?, ?, ?, ?)",
                (kind, id_, parent, seq, json.dumps(body, default=str)),
            )

    def get(self, kind: str, id_: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM documents WHERE kind=? AND id=?", (kind, id_)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def list(self, kind: str, parent: str | None = None) -> list[dict[str, Any]]:
        """Documents in creation order."""
        with self._lock:
            if parent is None:
                rows = self._db.execute("SELECT body FROM documents WHERE kind=? ORDER BY seq", (kind,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT body FROM documents WHERE kind=? AND parent=? ORDER BY seq", (kind, parent)
                ).fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def count(self, kind: str, parent: str, field: str, values: tuple[str, ...]) -> int:
        """How many documents of ``kind`` under ``parent`` have one of ``values`` in their top-level ``field``."""
        marks = ", ".join("?" * len(values))
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM documents WHERE kind=? AND parent=? AND json_extract(body, ?) IN ({marks})",
                (kind, parent, f"$.{field}", *values),
            ).fetchone()
        return int(row[0])

    def delete(self, kind: str, id_: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM documents WHERE kind=? AND id=?", (kind, id_))

    def close(self) -> None:
        with self._lock:
            self._db.close()
