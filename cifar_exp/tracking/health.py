"""What a store's failure means: unreachable, full or damaged (or none of these), and the sqlite
check a store passes before a job writes to it."""
from __future__ import annotations

import functools
import os
import sqlite3

from cifar_exp.errors import ConfigError

UNREACHABLE, FULL, DAMAGED = "unreachable", "full", "damaged"
# Substrings of the errors each kind raises: requests/urllib3 through MLflow's REST client
# ("API request to ... failed with exception ... Connection refused"), HTTP 5xx from a server whose
# own store failed, sqlite through SQLAlchemy (SQLITE_FULL, SQLITE_CORRUPT), OSError(ENOSPC).
_SIGNS = {
    FULL: ("database or disk is full", "no space left on device", "disk quota exceeded"),
    DAMAGED: ("database disk image is malformed", "file is not a database"),
    UNREACHABLE: ("connection refused", "max retries exceeded", "failed to establish a new connection",
                  "read timed out", "connecttimeout", "connection aborted", "connection reset",
                  "remotedisconnected", "temporarily unavailable", "bad gateway", "service unavailable",
                  "gateway timeout", "response code 5", "too many 500 error responses", "too many 502",
                  "too many 503", "too many 504", "api request to"),
}


def failure_kind(error: BaseException) -> str | None:
    """FULL, DAMAGED or UNREACHABLE for an error a store raised on a write, None for any other
    (a refused value, a locked sqlite file: those are not outages and are raised as before)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return FULL
    text = f"{type(error).__name__}: {error}".lower()
    for kind in (FULL, DAMAGED, UNREACHABLE):  # a server answering 500 for a full disk says "full"
        if any(sign in text for sign in _SIGNS[kind]):
            return kind
    if isinstance(error, (ConnectionError, TimeoutError)):
        return UNREACHABLE
    return None


def sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a sqlite:/// URI, else None."""
    return os.path.abspath(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def repair_hint(path: str) -> str:
    return (f"recover what is readable into a new file (`sqlite3 {path} .recover | sqlite3 {path}.recovered` then "
            f"move it in place, keeping the damaged file) or restore a backup")


def check_sqlite(tracking_uri: str) -> None:
    """Raise ConfigError when the sqlite store of `tracking_uri` fails sqlite's `PRAGMA quick_check`
    (a damaged page: writes into it fail, or land nowhere a reader finds them). Other stores, and a
    file that does not exist yet, pass. Checked once per file and process (a sweep's jobs share it)."""
    path = sqlite_path(tracking_uri)
    if path is None or not os.path.isfile(path):
        return
    problem = _quick_check(path, os.stat(path).st_ino)
    if problem:
        raise ConfigError("mlflow.tracking_uri", tracking_uri,
                          f"an undamaged store; sqlite's quick_check of {path} says: {problem}. No run was "
                          f"started. {repair_hint(path)[0].upper()}{repair_hint(path)[1:]}, or choose another store")


@functools.cache
def _quick_check(path: str, inode: int) -> str | None:
    # Read-only and immediate: never creates the file, never waits on a writer's lock for long.
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as connection:
            rows = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as error:  # not a database at all, or a damaged header
        return str(error)
    return None if rows == ["ok"] else "; ".join(" ".join(row.split()) for row in rows)
