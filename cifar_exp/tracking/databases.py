"""Database servers (PostgreSQL) as MLflow's tracking store and Optuna's study storage: the driver
check, a create-once lock around their table creation, run names that fit MLflow's column, and the
line of a store's error a person should read. SQLAlchemy, which both libraries use, is imported only
for a database URL.
"""
from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager

from cifar_exp.errors import ConfigError

# URL schemes of database servers MLflow and Optuna reach through SQLAlchemy (sqlite is a file:
# Python's own driver, tracking/runs.py's file lock). `postgres` is no SQLAlchemy dialect: refused
# with the right spelling.
SERVER_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")
INSTALL_HINT = {"postgresql": 'pip install "cifar_exp[postgres]"'}  # psycopg 3, SQLAlchemy 2.1's driver
# pg_advisory_lock key, one per database, held while MLflow or Optuna creates its tables ("cifar_ex").
SCHEMA_LOCK_KEY = int.from_bytes(b"cifar_ex", "big")
EXPERIMENT_NAME_LENGTH = 256  # MLflow's experiments.name column: VARCHAR(256)
RUN_NAME_LENGTH = 250  # MLflow's runs.name column: VARCHAR(250) (sqlite ignores the limit, PostgreSQL does not)
FULL_RUN_NAME_TAG = "full_run_name"  # the whole name of a run whose name was shortened
TAG_VALUE_LENGTH = 8000  # MLflow's limit on a tag value
# Tables that tell whose a database is.
OWN_TABLES = {"mlflow": {"experiments", "runs"}, "optuna": {"studies", "trials"}}
NAMES = {"mlflow": "MLflow", "optuna": "Optuna"}
_SQLALCHEMY_NOISE = re.compile(r"^\((raised as a result of|Background on this error)")


def scheme(uri: str) -> str:
    """'postgresql' for postgresql+psycopg://..., '' for a path."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def is_server_url(uri: str) -> bool:
    return scheme(str(uri)) in SERVER_SCHEMES


def shown(uri: str) -> str:
    """The URL with its password hidden, as SQLAlchemy renders it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return f"{scheme(uri)}://..."


def check_driver(key: str, uri: str) -> None:
    """For a database server URL, check that SQLAlchemy knows its dialect and its driver imports.

    Raises ConfigError naming `key`, the URL (password hidden) and what to install, e.g.
    `pip install "cifar_exp[postgres]"` for postgresql:// (SQLAlchemy 2.1's driver for it: psycopg 3).
    Other URLs (sqlite:///, http://, a folder) pass unchecked.
    """
    uri = str(uri)
    if not is_server_url(uri):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
    except (ArgumentError, NoSuchModuleError):
        raise ConfigError(key, shown(uri), "a database URL SQLAlchemy knows, such as "
                          "postgresql://user:password@host:5432/database") from None
    try:
        dialect.import_dbapi()
    except ImportError as error:
        install = INSTALL_HINT.get(scheme(uri)) if dialect.driver == "psycopg" else None
        raise ConfigError(key, shown(uri), f"a database whose driver is installed; {dialect.driver} is not "
                          f"({error}): {install or f'pip install the {dialect.driver} driver'}") from None


class SharedDatabaseError(RuntimeError):
    """The database holds the other application's tables (MLflow's in Optuna's storage, or the reverse)."""


@contextmanager
def schema_lock(uri: str, app: str):
    """Around the opening of MLflow's store (`app="mlflow"`) or Optuna's storage (`"optuna"`) on `uri`.

    PostgreSQL: holds an advisory lock on the database for the duration, so that processes opening a
    fresh database at once (a sweep's workers, Slurm jobs on several hosts) create the tables one after
    the other, not all together (which fails with UniqueViolation on pg_type_typname_nsp_index). The
    lock goes with its connection: a killed holder never blocks the others. sqlite (tracking/runs.py's
    file lock serialises it): no lock. Other URLs: nothing.

    Raises SharedDatabaseError when the database holds the other application's tables: both keep their
    schema version in one `alembic_version` table, so each needs a database of its own (sharing one
    fails later with "Can't locate revision" or "no longer compatible with the table schema").
    Connection errors propagate (sqlalchemy.exc.OperationalError).
    """
    kind = scheme(str(uri))
    if kind not in ("postgresql", "sqlite"):
        yield
        return
    import sqlalchemy

    # sqlite: wait for a busy file as MLflow and Optuna do (not the driver's 5 s)
    connect_args = {"timeout": 60} if kind == "sqlite" else {}
    engine = sqlalchemy.create_engine(str(uri), poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            if kind == "postgresql":
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                _check_own_database(connection, app)
                connection.commit()  # the lock is the session's: it outlasts the transaction
                if kind == "sqlite":
                    connection.close()  # no reader left in the file while the tables are created
                yield
            finally:
                if kind == "postgresql":
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _check_own_database(connection, app: str) -> None:
    import sqlalchemy

    tables = set(sqlalchemy.inspect(connection).get_table_names())
    other = "optuna" if app == "mlflow" else "mlflow"
    if OWN_TABLES[other] <= tables and not OWN_TABLES[app] <= tables:
        raise SharedDatabaseError(
            f"this database holds {NAMES[other]}'s tables ({', '.join(sorted(OWN_TABLES[other]))}), and MLflow and "
            f"Optuna both keep their schema version in one alembic_version table: give {NAMES[app]} a database "
            "of its own")


@contextmanager
def opening_storage(uri: str, key: str):
    """Around the creation of an Optuna RDBStorage on `uri`: the driver check, the schema lock, and the
    database's refusals (unreachable, wrong password, no such database, MLflow's database) reported as
    one ConfigError naming `key` instead of a traceback."""
    check_driver(key, uri)
    from sqlalchemy.exc import OperationalError

    try:
        with schema_lock(uri, "optuna"):
            yield
    except SharedDatabaseError as error:
        raise ConfigError(key, shown(uri), f"another database; {error}") from None
    except OperationalError as error:
        raise ConfigError(key, shown(uri), f"a reachable database; it failed with: {error_line(error)}") from None


def fitting_run_name(name: str) -> tuple[str, dict[str, str]]:
    """(a run name that fits MLflow's runs.name column, extra tags). A longer name keeps its start and
    ends in `~` and 12 hex digits of its SHA-1 (so different long names stay different); the whole
    name goes into the `full_run_name` tag (at most MLflow's 8000 characters of a tag value)."""
    if len(name) <= RUN_NAME_LENGTH:
        return name, {}
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{name[:RUN_NAME_LENGTH - 13]}~{digest}", {FULL_RUN_NAME_TAG: name[:TAG_VALUE_LENGTH]}


def error_line(error: BaseException) -> str:
    """The line of a store's error that says what went wrong. SQLAlchemy puts its advice about
    autoflush first ('(raised as a result of Query-invoked autoflush; ...'), the database's own
    message (e.g. '(psycopg.errors.StringDataRightTruncation) value too long ...') after it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [line for line in lines if not _SQLALCHEMY_NOISE.match(line)]
    return (meaningful or lines or [type(error).__name__])[0]
