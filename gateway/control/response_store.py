"""Stored responses of the Responses API (``store``, OpenAI's default): what ``GET /v1/responses/{id}``,
``input_items`` and ``previous_response_id`` read, in one SQLite file in the gateway's state directory, so it
survives a restart.

Bounded three ways (settings): a response older than ``max_age`` is gone, and past ``max_count`` responses or
``max_bytes`` the oldest go first. Each row keeps the whole conversation up to its response (the items
``previous_response_id`` continues from), not a link to the one before: a conversation whose first turns were
pruned still continues from any turn kept, at the cost of storing the earlier turns again with each turn
(bounded by ``max_bytes`` like everything else).

A response belongs to the API key that made it (its name; "" when the gateway is open): another key reads it
as missing, the answer an unknown id gets.

The methods are blocking (SQLite): the routes call them through ``asyncio.to_thread``. One connection, behind
a lock; SQLite's own busy timeout bounds a wait for the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TOTALS = "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses"
_DELETE = "DELETE FROM responses WHERE id = ? AND owner = ?"
BUSY_TIMEOUT = 5.0  # seconds SQLite waits for a lock on the file (another process holding it)


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]  # this turn's input, as listed by input_items
    conversation: list[dict[str, Any]]  # every item up to and including this turn's output


class ResponseStore:
    def __init__(
        self,
        path: Path,
        max_count: int,
        max_bytes: int,
        max_age: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL "
            "NOT NULL, size INTEGER NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL, "
            "conversation TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_created ON responses (created)")
        self._prune()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(self, owner: str, stored: Stored) -> None:
        rows = [json.dumps(stored.response), json.dumps(stored.input_items), json.dumps(stored.conversation)]
        size = sum(len(r) for r in rows)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stored.response["id"], owner, self._clock(), size, *rows),
            )
            self._prune()

    def get(self, owner: str, response_id: str) -> Stored | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items, conversation FROM responses "
                "WHERE id = ? AND owner = ? AND created >= ?",
                (response_id, owner, self._clock() - self.max_age),
            ).fetchone()
        if row is None:
            return None
        return Stored(json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute(_DELETE, (response_id, owner))
        return cursor.rowcount > 0

    def totals(self) -> tuple[int, int]:
        """How many responses are kept, and their bytes."""
        with self._lock:
            count, size = self._db.execute(_TOTALS).fetchone()
        return int(count), int(size)

    def _prune(self) -> None:
        """Expired responses out, then the oldest until within the count and the bytes (lock held)."""
        db = self._db
        db.execute("DELETE FROM responses WHERE created < ?", (self._clock() - self.max_age,))
        count, size = db.execute(_TOTALS).fetchone()
        if count <= self.max_count and size <= self.max_bytes:
            return
        over_count, over_bytes = count - self.max_count, size - self.max_bytes
        doomed: list[str] = []
        for response_id, row_size in db.execute("SELECT id, size FROM responses ORDER BY created, rowid"):
            if over_count <= 0 and over_bytes <= 0:
                break
            doomed.append(response_id)
            over_count -= 1
            over_bytes -= row_size
        db.executemany("DELETE FROM responses WHERE id = ?", [(d,) for d in doomed])
