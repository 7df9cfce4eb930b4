"""A throwaway PostgreSQL server for the tests marked `cluster`: `initdb` + `pg_ctl` in a temporary
folder, listening on a free loopback port (as the `postgres` user when the tests run as root), one per
test session, stopped at its end. Where the server programs are absent, the tests that use it skip
and say why. tests/conftest.py imports the fixture, so any test module can ask for `postgres_server`.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROLE, PASSWORD = "lab", "s3cret-lab-pw"  # the role the tests connect as, by password, like a lab's users


def server_programs() -> Path | None:
    """The folder holding initdb, pg_ctl and psql: initdb's on PATH (links followed), else Debian's
    /usr/lib/postgresql/<version>/bin (the newest version there), else None."""
    found = shutil.which("initdb")
    if found and all((Path(found).resolve().parent / p).is_file() for p in ("pg_ctl", "psql")):
        return Path(found).resolve().parent
    folders = [Path(f) for f in glob.glob("/usr/lib/postgresql/*/bin") if (Path(f) / "initdb").is_file()
               and (Path(f) / "psql").is_file()]
    folders.sort(key=lambda f: [int(p) if p.isdigit() else 0 for p in f.parent.name.split(".")])
    return folders[-1] if folders else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    folder: Path  # data/, the log and the unix socket
    port: int
    as_user: list[str]  # the command prefix that runs a program as the server's owner

    def run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_user, str(self.bindir / program), *args], capture_output=True,
                              text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the unix socket; its output (unaligned, no headers)."""
        done = self.run("psql", "-h", str(self.folder), "-p", str(self.port), "-U", "postgres", "-d", database,
                        "-v", "ON_ERROR_STOP=1", "-At", "-c", statement)
        return done.stdout.strip()

    def url(self, database: str) -> str:
        """postgresql://lab:<password>@127.0.0.1:<port>/<database>, the form the docs give."""
        return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database owned by the `lab` role; its URL."""
        self.sql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)


def absent(reason: str):
    """Skip the test that needs the engine, saying why; where CI promised the engines
    (CIFAR_EXP_CLUSTER_TESTS=required, .ci/run), fail it instead: a skip there would hide them."""
    if os.environ.get("CIFAR_EXP_CLUSTER_TESTS") == "required":
        pytest.fail(f"CIFAR_EXP_CLUSTER_TESTS=required, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server():
    bindir = server_programs()
    if bindir is None:
        absent("PostgreSQL's server programs (initdb, pg_ctl, psql) are not installed "
               "(Debian: apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        absent('psycopg, the PostgreSQL driver, is not installed (pip install -e ".[postgres]")')
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cifar_exp_postgres_"))
    if os.geteuid() == 0:  # initdb and the server refuse to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if owner is None or runuser is None:
            shutil.rmtree(folder)
            absent("running as root, PostgreSQL needs a `postgres` user and runuser to start as")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    server = PostgresServer(bindir, folder, free_port(), as_user)
    data = str(folder / "data")
    options = (f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # a throwaway: no durability
    try:
        # Local (socket) connections trusted, TCP ones by password, as a lab's server takes them.
        server.run("initdb", "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
                   "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
        started = server.run("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", str(folder / "server.log"),
                             "-o", options, check=False)
        if started.returncode != 0:
            log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
            pytest.fail(f"PostgreSQL did not start: {started.stderr}{log}")
        server.sql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        yield server
    finally:
        server.run("pg_ctl", "stop", "-D", data, "-m", "immediate", check=False)
        shutil.rmtree(folder, ignore_errors=True)
