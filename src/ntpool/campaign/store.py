"""The results file: one SQLite row per finished run, written as each run finishes.

Rows hold only what a run's description determines (no timestamps, no worker names), so a
campaign that was interrupted and resumed leaves the same rows as one that was not.

Each row is committed on its own (SQLite's write-ahead log), so a campaign killed at any
point, even with SIGKILL, leaves a file holding every run it finished. A file damaged by
other means (truncated by a copy, overwritten in part) is never a traceback: opened with
``resume`` it is *recovered* (the rows that can still be read are copied into a new file,
the damaged one kept beside it as ``FILE.damaged``), else refused with what to do. Recovery
cannot mix campaigns: a row's key is the digest of its run's whole description, so a row
is only ever used for the very run that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3

SCHEMA_VERSION = 2  # 2: each row carries a digest of its key and result
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ResultsFileError(ValueError):
    """The results file cannot be used (not ntpool's, another campaign's, unreadable)."""


class _Damaged(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ResultStore:
    def __init__(self, path, campaign: dict, resume: bool = False):
        """Open ``path`` for ``campaign`` (a JSON-able description of the whole campaign).

        Without ``resume`` an existing file is refused rather than overwritten; with it, the
        file must belong to the same campaign (a damaged one is recovered: ``recovered``
        then says how many runs were saved from it and where the damaged file went).
        """
        self.path = str(path)
        self.campaign = json.dumps(campaign, sort_keys=True)
        self.recovered: tuple[int, str] | None = None
        self._db = None
        try:
            self._open(resume)
        except _Damaged as damage:
            self._close_quietly()
            if not resume:
                raise ResultsFileError(
                    f"{self.path} is damaged ({damage.reason}): pass --resume to recover the "
                    f"runs it still holds and finish the campaign, or choose another file") from None
            self._recover(damage.reason)

    def _open(self, resume: bool) -> None:
        if os.path.isfile(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as existing:
                if existing.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise ResultsFileError(f"{self.path}: not an ntpool results file (not SQLite)")
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except _UNREADABLE as error:
            raise _Damaged(_damage_of(error)) from None
        except sqlite3.Error as error:  # cannot be opened at all (a folder, no permission)
            raise ResultsFileError(f"{self.path}: cannot open the results file ({error})") from None
        if tables and "campaign" not in tables:
            raise ResultsFileError(f"{self.path}: not an ntpool results file")
        if tables:
            try:
                (version, described), = self._db.execute("SELECT version, description FROM campaign")
            except (sqlite3.DatabaseError, ValueError) as error:
                raise _Damaged(str(error) or "no campaign description") from None
            if not resume:
                raise ResultsFileError(f"{self.path} already holds a campaign: pass --resume to "
                                       f"finish it, or choose another file")
            if version != SCHEMA_VERSION:
                raise ResultsFileError(f"{self.path} was written by another version of ntpool "
                                       f"(results file version {version}, this one reads "
                                       f"{SCHEMA_VERSION}): choose another file")
            if described != self.campaign:
                raise ResultsFileError(f"{self.path} holds a different campaign; --resume needs "
                                       f"the same command and arguments")
            if "runs" not in tables:
                raise _Damaged("its table of runs is missing")
        else:
            self._create()
        self._cache = {}
        try:
            for key, text, digest in self._db.execute("SELECT key, result, digest FROM runs"):
                result = _checked(key, text, digest)
                if result is None:
                    raise _Damaged(f"the row of run {key!r} fails its check")
                self._cache[key] = result
        except _UNREADABLE as error:
            raise _Damaged(_damage_of(error)) from None

    def _create(self) -> None:
        try:
            with self._db:
                self._db.execute("CREATE TABLE campaign (version INTEGER, description TEXT)")
                self._db.execute("INSERT INTO campaign VALUES (?, ?)", (SCHEMA_VERSION, self.campaign))
                self._db.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, result TEXT, digest TEXT)")
        except sqlite3.Error as error:
            raise ResultsFileError(f"{self.path}: cannot write the results file ({error})") from None

    def _recover(self, reason: str) -> None:
        """Copy the readable rows of the damaged file into a new one at the same path."""
        kept = self.path + ".damaged"
        number = 1
        while os.path.exists(kept):
            number += 1
            kept = f"{self.path}.damaged-{number}"
        os.replace(self.path, kept)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, kept + suffix)
        rows = _readable_rows(kept)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._create()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)",
                                 [_row(key, result) for key, result in rows])
        self._cache = dict(rows)
        self.recovered = (len(self._cache), kept)
        self.damage = reason

    def _close_quietly(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, key: str) -> dict | None:
        return self._cache.get(key)

    def put(self, key: str, result: dict) -> None:
        row = _row(key, result)
        try:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?)", row)
        except sqlite3.Error as error:
            raise ResultsFileError(
                f"{self.path}: cannot store a finished run ({error}); the {len(self._cache)} "
                f"runs stored before it are kept: --resume finishes the campaign") from None
        self._cache[key] = json.loads(row[1])

    def rows(self) -> list[tuple[str, dict]]:
        return sorted(self._cache.items())

    def close(self) -> None:
        self._close_quietly()


def _digest(key: str, text: str) -> str:
    return hashlib.sha256(f"{key}\n{text}".encode()).hexdigest()[:16]


def _row(key: str, result: dict) -> tuple[str, str, str]:
    text = json.dumps(result, sort_keys=True)
    return key, text, _digest(key, text)


def _checked(key, text, digest) -> dict | None:
    """A row's result if the row is whole (SQLite checks its pages' structure, not their
    bytes: a damaged byte in a key or a result would otherwise be read as a finished run)."""
    if not (isinstance(key, str) and isinstance(text, str) and isinstance(digest, str)):
        return None
    if _digest(key, text) != digest:
        return None
    try:
        result = json.loads(text)
    except ValueError:
        return None
    return result if isinstance(result, dict) and result.get("key") == key else None


# What reading a damaged file raises: SQLite's refusal, or Python's when a damaged page
# hands it bytes that are not UTF-8 where it decodes text (a name in the schema, SQLite's
# message quoting it, a row's TEXT).
_UNREADABLE = (sqlite3.DatabaseError, UnicodeDecodeError)
_UNREADABLE_OR_UNOPENED = (sqlite3.Error, UnicodeDecodeError)


def _damage_of(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return "text in it is not UTF-8"
    return str(error)


def _readable_rows(path: str) -> list[tuple[str, dict]]:
    """The rows of a damaged results file that can still be read whole: row by row through
    the table's rowids, so a damaged page costs only the rows on it. A truncated file is
    also read through a copy whose header gives its real length (SQLite refuses a file
    shorter than its header says before reading any row)."""
    rows: dict[str, dict] = {}
    _read_rows(path, rows)
    try:
        with open(path, "rb") as damaged:
            data = bytearray(damaged.read())
    except OSError:
        data = bytearray()
    if len(data) >= 100 and data.startswith(_SQLITE_MAGIC):
        page_size = int.from_bytes(data[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size >= 512:
            data[28:32] = (len(data) // page_size).to_bytes(4, "big")
            copy = path + ".reading"
            try:
                with open(copy, "wb") as out:
                    out.write(data[: len(data) // page_size * page_size])
                _read_rows(copy, rows)
            except OSError:
                pass
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    try:
                        os.remove(copy + suffix)
                    except OSError:
                        pass
    return sorted(rows.items())


def _read_rows(path: str, rows: dict[str, dict]) -> None:
    try:
        db = sqlite3.connect(path)
    except _UNREADABLE_OR_UNOPENED:
        return
    try:
        try:
            highest = db.execute("SELECT max(rowid) FROM runs").fetchone()[0] or 0
        except _UNREADABLE_OR_UNOPENED:
            # The table's pages cannot be walked to its end: look as far as the file could
            # hold rows (each at least a key's 24 characters).
            highest = os.path.getsize(path) // 24
        for rowid in range(1, highest + 1):
            try:
                row = db.execute("SELECT key, result, digest FROM runs WHERE rowid = ?",
                                 (rowid,)).fetchone()
            except _UNREADABLE_OR_UNOPENED:
                continue
            result = _checked(*row) if row is not None else None
            if result is not None:
                rows[row[0]] = result
    finally:
        db.close()
