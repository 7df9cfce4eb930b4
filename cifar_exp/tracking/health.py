"""What a store's failure means: unreachable, full or damaged (or none of these), and the sqlite
check a store passes before a job writes to it."""
from __future__ import annotations

import functools
import os
import sqlite3
import sys

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


def cause(error: BaseException, kind: str | None = None) -> str:
    """The cause of a store's failure in a few words, for a warning: the database's own line for a
    damaged or full store ('(sqlite3.DatabaseError) database disk image is malformed', not
    SQLAlchemy's autoflush advice), the transport's reason for an unreachable server ('connection
    refused', not urllib3's 500 characters of pool and retry objects). At most 300 characters."""
    from cifar_exp.tracking.databases import error_line

    text = f"{type(error).__name__}: {error}"
    lower = text.lower()
    if kind == UNREACHABLE:
        specific = [sign for sign in _SIGNS[UNREACHABLE]
                    if sign in lower and sign not in ("max retries exceeded", "api request to")]
        if specific:
            return specific[0]
    if kind in (FULL, DAMAGED):
        for line in str(error).splitlines():
            if any(sign in line.lower() for sign in _SIGNS[kind]):
                return line.strip()[:300]
    return error_line(error)[:300] if str(error).strip() else type(error).__name__


def sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a sqlite:/// URI, else None."""
    return os.path.abspath(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def repair_hint(path: str) -> str:
    return (f"copy what is readable into a new file beside it with `cifar-exp recover {path}` (it keeps the "
            f"damaged file, writes {path}.recovered and prints the runs and metric values it kept; check them "
            f"before moving it in place) or restore a backup")


def recover_sqlite(path: str, destination: str) -> dict[str, int]:
    """Copy every readable row of the sqlite file `path` into a new file `destination`: the schema
    first (tables, then indexes, triggers and views), then each table row by row in rowid order,
    skipping past a damaged page where sqlite can (`rowid > last`). The damaged file is only read.

    Returns {table: rows kept}. Raises FileExistsError when `destination` exists (never overwritten),
    sqlite3.DatabaseError when `path` has no readable schema (nothing can be recovered from it).
    sqlite3's own `.recover` needs the dbpage virtual table that Debian's sqlite3 3.40 lacks ("SQL logic
    error"), and `.dump` ends a damaged file's dump with ROLLBACK: both leave an empty store."""
    from contextlib import closing

    if os.path.exists(destination):
        raise FileExistsError(f"{destination} exists; move it away first")
    kept: dict[str, int] = {}
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as source, \
            closing(sqlite3.connect(destination, isolation_level=None)) as target:
        schema = source.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                                "AND name NOT LIKE 'sqlite_%'").fetchall()
        target.execute("BEGIN")
        for _, name, sql in (row for row in schema if row[0] == "table"):
            target.execute(sql)
            kept[name] = _copy_rows(source, target, name)
        for kind, name, sql in schema:
            if kind != "table":
                try:
                    target.execute(sql)
                except sqlite3.DatabaseError:  # e.g. a unique index over rows a damaged page duplicated
                    pass
        target.execute("COMMIT")
    return kept


def _copy_rows(source, target, table: str) -> int:
    quoted = '"' + table.replace('"', '""') + '"'
    columns = len(source.execute(f"SELECT * FROM {quoted} LIMIT 0").description)
    insert = f"INSERT OR IGNORE INTO {quoted} VALUES ({', '.join('?' * columns)})"
    count, after, gap = 0, None, 1
    # Each pass reads on from `after`. A damaged page ends a pass: the next starts just past the last
    # row read; when that lands in the damaged page again, it jumps further (1, 2, 4, ... rowids).
    for _ in range(10_000):
        query, args = (f"SELECT rowid, * FROM {quoted} ORDER BY rowid", ()) if after is None else \
            (f"SELECT rowid, * FROM {quoted} WHERE rowid > ? ORDER BY rowid", (after,))
        progressed = False
        try:
            for row in source.execute(query, args):
                target.execute(insert, row[1:])
                count, after, progressed = count + 1, row[0], True
            return count
        except sqlite3.OperationalError as error:  # a WITHOUT ROWID table: no rowid to resume from
            if "rowid" in str(error).lower() and after is None and not progressed:
                return _copy_without_rowid(source, target, quoted, insert)
            return count
        except sqlite3.DatabaseError:
            if progressed:
                gap = 1
                continue
            gap *= 2
            if gap > 2 ** 40:
                return count
            after = (after or 0) + gap
    return count


def _copy_without_rowid(source, target, quoted: str, insert: str) -> int:
    count = 0
    try:
        for row in source.execute(f"SELECT * FROM {quoted}"):
            target.execute(insert, row)
            count += 1
    except sqlite3.DatabaseError:
        pass
    return count


def recover_main(argv: list[str]) -> int:
    """`cifar-exp recover PATH`: PATH.recovered holding what is readable of the damaged sqlite store
    PATH, what it kept printed per table, and how to check it and move it in place. Exit 0 when a
    file was written, 2 otherwise."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("Usage: cifar-exp recover PATH/mlflow.db   (writes PATH/mlflow.db.recovered, keeps the damaged file)",
              file=sys.stderr)
        return 2
    path = sqlite_path(argv[0]) or os.path.abspath(argv[0])
    destination = path + ".recovered"
    if not os.path.isfile(path):
        print(f"Error: {path} is not a file", file=sys.stderr)
        return 2
    try:
        kept = recover_sqlite(path, destination)
    except (FileExistsError, sqlite3.DatabaseError) as error:
        if isinstance(error, sqlite3.DatabaseError) and os.path.exists(destination):
            os.remove(destination)
        print(f"Error: nothing recovered from {path}: {error}", file=sys.stderr)
        return 2
    problem = _quick_check(destination, os.stat(destination).st_ino)
    for table in ("experiments", "runs", "metrics", "params", "tags"):
        if table in kept:
            print(f"{table}: {kept[table]} rows kept")
    print(f"All tables: {sum(kept.values())} rows kept in {destination} ({len(kept)} tables). "
          f"{path} is unchanged. quick_check of the copy: {problem or 'ok'}.")
    print(f"Check it (`mlflow ui --backend-store-uri sqlite:///{destination}`, or `sqlite3 {destination} "
          f"'SELECT count(*) FROM runs'`), then put it in place keeping the damaged file: "
          f"`mv {path} {path}.damaged && mv {destination} {path}`")
    return 0 if not problem and kept.get("runs", 1) else 2


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


def check_not_empty(tracking_uri: str) -> None:
    """Raise ConfigError when the sqlite store's file exists but holds no table at all (0 bytes: what
    `sqlite3 DAMAGED .recover | sqlite3 NEW` or `.dump | sqlite3 NEW` leave when they fail, exit 0
    and all). MLflow would create fresh tables in it, and the store's earlier runs would be gone
    without a word. A path with no file is a new store. Call it where no other process is creating
    the store (runs.sqlite_creation_lock held): a store being created is not refused."""
    path = sqlite_path(tracking_uri)
    if path is None or not os.path.isfile(path):
        return
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as connection:
            tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError:
        return  # not a database: check_sqlite says so
    if tables == 0:
        raise ConfigError("mlflow.tracking_uri", tracking_uri,
                          f"a store with its tables, or a path where no file exists yet ({path} is an empty "
                          f"database: a repair that failed? {repair_hint(path)[0].upper()}{repair_hint(path)[1:]}; "
                          f"to start a new store there, delete the empty file)")


@functools.cache
def _quick_check(path: str, inode: int) -> str | None:
    # Read-only first: never creates the file, never waits on a writer's lock for long.
    from contextlib import closing

    def quick_check(mode: str) -> list[str]:
        with closing(sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=10)) as connection:
            return [row[0] for row in connection.execute("PRAGMA quick_check(3)")]

    try:
        try:
            rows = quick_check("ro")
        except sqlite3.OperationalError as error:
            if "readonly" not in str(error):
                raise
            # A hot journal: a writer was killed inside a transaction (SIGKILL, OOM, power). Not damage:
            # sqlite rolls it back on the next read-write open, which a read-only one may not do
            # ("attempt to write a readonly database"). mode=rw still never creates the file.
            rows = quick_check("rw")
    except sqlite3.DatabaseError as error:  # not a database at all, or a damaged header
        return str(error)
    return None if rows == ["ok"] else "; ".join(" ".join(row.split()) for row in rows)
