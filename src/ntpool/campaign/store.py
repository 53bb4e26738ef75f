"""The results file: one SQLite row per finished run, written as each run finishes.

Rows hold only what a run's description determines (no timestamps, no worker names), so a
campaign that was interrupted and resumed leaves the same rows as one that was not.
"""

from __future__ import annotations

import json
import sqlite3

SCHEMA_VERSION = 1


class ResultsFileError(ValueError):
    """The results file cannot be used (not ntpool's, another campaign's, unreadable)."""


class ResultStore:
    def __init__(self, path, campaign: dict, resume: bool = False):
        """Open ``path`` for ``campaign`` (a JSON-able description of the whole campaign).

        Without ``resume`` an existing file is refused rather than overwritten; with it, the
        file must belong to the same campaign.
        """
        self.path = str(path)
        self.campaign = json.dumps(campaign, sort_keys=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as error:
            raise ResultsFileError(f"{self.path}: not a results file ({error})") from None
        if tables and "campaign" not in tables:
            raise ResultsFileError(f"{self.path}: not an ntpool results file")
        if tables:
            (version, described), = self._db.execute("SELECT version, description FROM campaign")
            if not resume:
                raise ResultsFileError(f"{self.path} already holds a campaign: pass --resume to "
                                       f"finish it, or choose another file")
            if version != SCHEMA_VERSION or described != self.campaign:
                raise ResultsFileError(f"{self.path} holds a different campaign; --resume needs "
                                       f"the same command and arguments")
        else:
            with self._db:
                self._db.execute("CREATE TABLE campaign (version INTEGER, description TEXT)")
                self._db.execute("INSERT INTO campaign VALUES (?, ?)", (SCHEMA_VERSION, self.campaign))
                self._db.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, result TEXT)")
        self._cache = {key: json.loads(result) for key, result in
                       self._db.execute("SELECT key, result FROM runs")}

    def get(self, key: str) -> dict | None:
        return self._cache.get(key)

    def put(self, key: str, result: dict) -> None:
        text = json.dumps(result, sort_keys=True)
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (key, text))
        self._cache[key] = json.loads(text)

    def rows(self) -> list[tuple[str, dict]]:
        return sorted(self._cache.items())

    def close(self) -> None:
        self._db.close()
