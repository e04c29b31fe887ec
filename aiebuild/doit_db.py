"""doit's dependency file (its record of what is built), with a full disk said in
one line (registered in pyproject.toml under [tool.doit.plugins.backend] in place of
doit's own sqlite3 backend).

doit's sqlite3 backend reports a full disk while opening the file as a database
"with a bad format or corrupted" and tells the user to delete it, and a full disk
while saving it at the end of a run as a traceback. Neither is true: the file is
fine, the disk is full. Both become one line naming the file, and what to do.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from doit.dependency import DatabaseException, SqliteDB
from doit.exceptions import InvalidCommand


class DependencyFile(SqliteDB):
    desc = "doit's sqlite3 dependency file, reporting a full disk as one line"

    def _sqlite3(self, name: str):
        try:
            return super()._sqlite3(name)
        except DatabaseException as exc:
            if _disk_full(exc.__context__):
                raise InvalidCommand(_full_disk_message(name, exc.__context__)) from None
            raise

    def dump(self) -> None:
        try:
            super().dump()
        except sqlite3.Error as exc:
            if _disk_full(exc):
                raise InvalidCommand(_full_disk_message(self.name, exc)) from None
            raise


def _disk_full(exc: BaseException | None) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _full_disk_message(name: str, exc: BaseException) -> str:
    return (
        f"cannot update {name}, doit's record of what is built: {exc} (no space left on "
        f"device); free some space in {Path(name).parent} and run the command again "
        "(what was built is kept in the store, and is found there again)"
    )
