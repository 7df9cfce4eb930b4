"""A throwaway single-node Slurm 22.05 with accounting, for the tests marked `cluster`.

submitit reads job states through `sacct`, so the cluster keeps accounting: munged (own key and
socket), MariaDB (own data folder, a loopback port) behind slurmdbd, then slurmctld and slurmd
with this host as the one node (`slurmd -C`). Everything lives in one folder (default
`$TMPDIR/cifar_exp_slurm`, or CIFAR_EXP_SLURM_DIR) and uses free loopback ports; the client
commands (sbatch, sacct, scancel, which submitit calls) find it through SLURM_CONF.

A cluster that already answers is used as it is: the one SLURM_CONF (or /etc/slurm) names, or
one this module left running in its folder (`python tests/slurm_cluster.py start` starts one
and leaves it up; `... stop` stops it). Needs root (slurmd runs jobs as their user).
Run standalone to debug: `python tests/slurm_cluster.py start`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PROGRAMS = ("munged", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld", "slurmd",
            "sinfo", "sbatch", "sacct", "scancel")
CLUSTER_NAME = "cifarexp"
DB_PASSWORD = "cifar_exp_test"
CPUS_PER_NODE = 8  # a loopback-only throwaway database


def missing() -> str | None:
    """Why this machine cannot start the cluster (None: it can)."""
    absent = [name for name in PROGRAMS if not shutil.which(name) and not Path("/usr/sbin", name).exists()]
    if absent:
        return ("Slurm test cluster: missing " + ", ".join(absent)
                + " (apt-get install slurm-wlm slurmdbd munge mariadb-server)")
    if os.geteuid() != 0:
        return "Slurm test cluster: starting slurmd/munged needs root"
    return None


def default_dir() -> Path:
    return Path(os.environ.get("CIFAR_EXP_SLURM_DIR") or Path(tempfile.gettempdir()) / "cifar_exp_slurm")


def answers(env: dict[str, str]) -> bool:
    """Whether the cluster `env` points at has a node ready for jobs (sinfo, within 10 s)."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = out.stdout.split()
    return out.returncode == 0 and any(state.rstrip("*") in ("idle", "mix", "alloc") for state in states)


def client_env(root: Path) -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))


def existing() -> dict[str, str] | None:
    """The environment for a cluster that is already up, if any."""
    if os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists():
        if answers(dict(os.environ)):
            return dict(os.environ)
    root = default_dir()
    if (root / "slurm.conf").exists() and answers(client_env(root)):
        return client_env(root)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"Slurm test cluster: {what} not ready after {timeout:.0f} s\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _node_line(cpus: int) -> str:
    """This host as `slurmd -C` describes it, with `cpus` CPUs (one core each)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    words = out.splitlines()[0].split()  # NodeName=... CPUs=... Boards=... CoresPerSocket=... RealMemory=...
    keep = [w for w in words if w.split("=")[0] in ("NodeName", "RealMemory")]
    return " ".join(keep + [f"CPUs={cpus}", "Boards=1", "SocketsPerBoard=1", f"CoresPerSocket={cpus}", "ThreadsPerCore=1"])


def start(root: Path | None = None) -> dict[str, str]:
    """Start munged, MariaDB, slurmdbd, slurmctld and slurmd in `root`; return the client environment.
    Raises RuntimeError with the failing daemon's log tail."""
    root = Path(root or default_dir())
    stop(root)
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("munge", "db", "state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, mode=0o700)
    root.chmod(0o755)
    ports = {name: _free_port() for name in ("ctld", "slurmd", "dbd", "mysql")}
    munge_socket = root / "munge" / "munge.socket.2"
    host = socket.gethostname()

    # munged: its own key and socket; Slurm names the socket in AuthInfo / AccountingStoragePass.
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    subprocess.run(["munged", f"--socket={munge_socket}", f"--key-file={key}", f"--pid-file={root}/run/munged.pid",
                    f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed", "--force"],
                   check=True, capture_output=True, timeout=30)
    _wait("munged", munge_socket.exists, 15, root / "log" / "munged.log")

    # MariaDB on a loopback port, its data in root/db.
    db_sock = root / "run" / "mysqld.sock"
    subprocess.run(["mariadb-install-db", f"--datadir={root}/db", "--user=root", "--auth-root-authentication-method=socket",
                    "--skip-test-db"], check=True, capture_output=True, timeout=120)
    with open(root / "log" / "mariadb.log", "ab") as log:
        subprocess.Popen(["mariadbd", "--no-defaults", f"--datadir={root}/db", "--user=root", f"--socket={db_sock}",
                          f"--port={ports['mysql']}", "--bind-address=127.0.0.1", f"--pid-file={root}/run/mariadb.pid",
                          "--innodb-buffer-pool-size=32M", "--skip-log-bin", "--innodb-flush-log-at-trx-commit=0"],
                         stdout=log, stderr=log, start_new_session=True)
    _wait("MariaDB", lambda: db_sock.exists() and _port_open(ports["mysql"]), 60, root / "log" / "mariadb.log")
    sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}';"
           f"CREATE USER 'slurm'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
           "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';")
    subprocess.run(["mariadb", f"--socket={db_sock}", "-uroot", "-e", sql], check=True, capture_output=True, timeout=30)

    auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
    dbd_conf = root / "slurmdbd.conf"
    dbd_conf.write_text(
        f"{auth}DbdHost=localhost\nDbdPort={ports['dbd']}\nSlurmUser=root\n"
        f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={ports['mysql']}\n"
        f"StorageUser=slurm\nStoragePass={DB_PASSWORD}\nStorageLoc=slurm_acct_db\n"
        f"PidFile={root}/run/slurmdbd.pid\nLogFile={root}/log/slurmdbd.log\nDebugLevel=info\n")
    dbd_conf.chmod(0o600)
    (root / "slurm.conf").write_text(
        f"ClusterName={CLUSTER_NAME}\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n"
        f"SlurmctldPort={ports['ctld']}\nSlurmdPort={ports['slurmd']}\n"
        # cred_expire: how long a requeued job waits before it may start again (default 120 s)
        f"AuthType=auth/munge\nAuthInfo=socket={munge_socket},cred_expire=10\nCredType=cred/munge\n"
        f"StateSaveLocation={root}/state\nSlurmdSpoolDir={root}/spool\n"
        f"SlurmctldPidFile={root}/run/slurmctld.pid\nSlurmdPidFile={root}/run/slurmd.pid\n"
        f"SlurmctldLogFile={root}/log/slurmctld.log\nSlurmdLogFile={root}/log/slurmd.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSchedulerType=sched/backfill\n"
        "ReturnToService=2\nJobAcctGatherType=jobacct_gather/none\n"
        "KillWait=10\nMinJobAge=3600\nSchedulerParameters=sched_interval=2\n"  # SIGTERM..SIGKILL: 10 s
        f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
        f"AccountingStoragePort={ports['dbd']}\nAccountingStoragePass={munge_socket}\n"
        # A test sweep's jobs run side by side whatever this machine's core count (they are small):
        # config_overrides lets the node claim CPUS_PER_NODE without being drained for it.
        f"SlurmdParameters=config_overrides\nJobCompType=jobcomp/none\n{_node_line(CPUS_PER_NODE)} State=UNKNOWN\n"
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n")
    env = client_env(root)
    daemon_env = dict(env)
    subprocess.run(["slurmdbd"], env=daemon_env, check=True, capture_output=True, timeout=60)
    _wait("slurmdbd", lambda: _port_open(ports["dbd"]), 120, root / "log" / "slurmdbd.log")
    subprocess.run(["slurmctld", "-i"], env=daemon_env, check=True, capture_output=True, timeout=60)
    _wait("slurmctld", lambda: _port_open(ports["ctld"]), 60, root / "log" / "slurmctld.log")
    subprocess.run(["slurmd"], env=daemon_env, check=True, capture_output=True, timeout=60)
    _wait("slurmd (node idle)", lambda: answers(env), 90, root / "log" / "slurmd.log")
    return env


def stop(root: Path | None = None) -> None:
    """Cancel the jobs still in the queue (a stopped slurmd would leave their processes running, holding
    CPUs and ports), then stop every daemon `start` left in `root` (by the pid files it wrote), newest first."""
    root = Path(root or default_dir())
    _cancel_all_jobs(root)
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb", "munged"):
        pid_file = root / "run" / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)


def _cancel_all_jobs(root: Path, wait_s: float = 30.0) -> None:
    """scancel every job of the cluster in `root` and wait (at most `wait_s`: KillWait is 10 s) until
    the queue is empty; nothing when the cluster does not answer."""
    env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))
    if not (root / "slurm.conf").exists() or not shutil.which("squeue"):
        return
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
        jobs = listed.stdout.split()
        if listed.returncode != 0 or not jobs:
            return
        subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30)
        time.sleep(1)


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:  # MariaDB is this process's child: reap it, or it lingers
            return False
    except ChildProcessError:  # the daemons that fork
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


STARTED_BY = "started_by_test_run"  # in the cluster's folder: the test run that started it (under xdist)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The environment (SLURM_CONF) of a single-node Slurm with accounting: one already up, else one
    started here and stopped after the session (CIFAR_EXP_SLURM_KEEP=1 leaves it up for the next).
    Under pytest-xdist the workers share one cluster: a file lock lets the first start it and the
    others re-use it, and the controller stops it once all workers are done (tests/conftest.py's
    pytest_sessionfinish calls `stop_if_started_by`)."""
    from filelock import FileLock

    root = default_dir()
    run = os.environ.get("CIFAR_EXP_TEST_RUN") if os.environ.get("PYTEST_XDIST_WORKER") else None
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock", timeout=600):
        found = existing()
        if not found:
            reason = missing()
            if reason:
                from postgres_engine import absent  # skips, or fails where CI promised the engines

                absent(reason)
            found = start(root)
            if run:
                (root / STARTED_BY).write_text(run)
            else:
                run = "stop at the end of this session"
        else:
            run = None  # not ours: leave it up
    yield found
    if run == "stop at the end of this session" and not os.environ.get("CIFAR_EXP_SLURM_KEEP"):
        stop(root)


def stop_if_started_by(run: str) -> None:
    """Stop the cluster in default_dir() if test run `run` started it (xdist: called by the controller
    after every worker finished), unless CIFAR_EXP_SLURM_KEEP is set."""
    marker = default_dir() / STARTED_BY
    try:
        if marker.read_text() != run:
            return
    except OSError:
        return
    marker.unlink(missing_ok=True)
    if not os.environ.get("CIFAR_EXP_SLURM_KEEP"):
        stop(default_dir())


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "start"
    if command == "stop":
        stop()
    else:
        reason = missing()
        if reason:
            sys.exit(reason)
        found = existing()
        env = found or start()
        print(("re-used: " if found else "started: ") + f"SLURM_CONF={env.get('SLURM_CONF', '/etc/slurm/slurm.conf')}")
