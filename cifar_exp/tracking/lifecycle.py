"""A run's life beyond one process. RunTracker (runs.py) opens, logs and closes a run, and tags it
with its owner (owner.py: host, pid, process start); here: the lock that keeps a job folder or a
sweep folder to one process at a time, and the reaping of runs whose owner is gone (closed KILLED,
tagged `ended_by`), by the next job on the store, by a launcher that saw a worker die, or by
`cifar-exp reap`.

Alive or dead is decided on the owner's host only (pid and process start time, so a re-used pid
is not mistaken for the owner); a run owned by another host is left alone unless that host is
declared lost (`cifar-exp reap --store URI --lost-host NAME`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from cifar_exp.errors import ConfigError
from cifar_exp.tracking.owner import (  # noqa: F401 (owner: re-exported for job.py)
    ENDED_BY, OWNER_HOST, OWNER_PID, owner, owner_alive)
from cifar_exp.tracking.runs import connect, mask_secrets

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"  # in a job folder or a sweep folder: held (flock) while a process works there
STATUS_FILE = "job_status.json"  # the job folder's record of its run (job.py writes it, summary.py reads it)


# ------------------------------------------------------------------------------- locks

class FolderLock:
    """An exclusive flock on `<folder>/.lock`: the kernel drops it when its process dies, however it
    dies, so a dead process never holds a folder. The file says who holds it (for the refusal)."""

    def __init__(self, folder: str, key: str):
        import fcntl

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / LOCK_FILE
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "another process"
            self.handle.close()
            raise ConfigError(key, str(folder), f"a folder no other process is using ({holder} is working in it): "
                                                f"wait for it to end, or choose another {key}") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        self.handle.flush()

    def release(self) -> None:
        import fcntl

        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def check_free(folder: str, key: str) -> None:
    """Raise the same ConfigError as FolderLock when a live process holds `folder`'s lock; create
    nothing (no folder, no lock file) and hold nothing. For the command line, before Hydra writes
    `.hydra/` into a folder another job works in."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise ConfigError(key, str(folder), f"a folder no other process is using ({holder} is working in "
                                                f"it): wait for it to end, or choose another {key}") from None
        fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def folder_lock(folder: str | None, key: str):
    """Hold `folder`'s lock for the block (nothing when folder is None); ConfigError naming `key`
    and the folder when another live process holds it."""
    if not folder:
        yield
        return
    lock = FolderLock(folder, key)
    try:
        yield
    finally:
        lock.release()


# ------------------------------------------------------------------------------- reaping

def close_dead_run(client, run_id: str, why: str, here: str | None = None, status: str = "KILLED") -> str:
    """Close a run that its own job can no longer close: `status` (KILLED, or FAILED where whoever
    watched the job saw it fail), tagged `ended_by` (why) and `error`; its job folder's
    job_status.json (if it still says RUNNING) says the same."""
    from mlflow.entities import RunTag

    run = client.get_run(run_id)
    client.log_batch(run_id, tags=[RunTag(ENDED_BY, why[:5000]), RunTag("error", why[:5000])])
    client.set_terminated(run_id, status)
    folder = run.data.tags.get("output_dir")
    if folder:
        mark_job_killed(folder, why, run_id=run_id, status=status)
    told = f"run {run_id} closed {status}: {why}{resume_hint(run, here)}"
    log.warning("%s", told)
    return told


def resume_hint(run, here: str | None = None) -> str:
    """'; it resumes from its checkpoint with resume=<id> (or hydra.run.dir=<folder>)' when the run's
    job folder holds a checkpoint of its config, else ''. A new command in a new folder starts a
    new run from epoch 1: only these two continue this one. '' when the job reaping it works in
    that folder (`here`): that job resumes it itself."""
    folder, digest = run.data.tags.get("output_dir"), run.data.tags.get("config_hash")
    if here and folder == str(here):
        return ""
    if not folder or not digest or not (Path(folder) / "checkpoint" / digest / "training_metadata.json").is_file():
        return ""
    return (f"; to resume it from its checkpoint, re-run the same command with resume={run.info.run_id} "
            f"(or hydra.run.dir={folder})")


def mark_job_killed(job_dir: str, why: str, run_id: str | None = None, overrides=(), status: str = "KILLED") -> None:
    """job_status.json of a job whose process is gone: `status` (KILLED; FAILED where it was seen to
    fail) with `why` as its error (what the sweep summary lists). A record already final (FINISHED,
    FAILED, KILLED) is left as it is."""
    path = Path(job_dir) / STATUS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"status": None, "run_id": run_id, "value": None, "skipped": False,
                  "overrides": list(overrides), "hint": None, "outcome": None}
    if record.get("status") not in (None, "RUNNING") or (run_id and record.get("run_id") not in (None, run_id)):
        return
    record.update(status=status, error=why, run_id=record.get("run_id") or run_id)
    if Path(job_dir).is_dir():
        path.write_text(json.dumps(record, indent=1))


def close_lost_job(job_dir: str, tracking_uri: str, why: str, overrides=(), status: str = "KILLED") -> str | None:
    """A job whose process was killed (SIGKILL, the OOM killer, a lost node), told by whoever
    watched it (a launcher, a sweeper): its run, found through job_status.json, closed `status`
    (KILLED; FAILED where the watcher saw it fail) and tagged `ended_by` = why; the job's record
    says the same. Returns the run id (None: no run was open).
    Launcher-agnostic: any launcher or sweeper that knows the job's folder can call it."""
    path = Path(job_dir) / STATUS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    run_id = record.get("run_id") if record.get("status") == "RUNNING" else None
    if run_id:
        try:
            close_dead_run(connect(tracking_uri), run_id, why, status=status)
        except Exception as error:  # the store is what failed: the next command's reaping closes it
            log.warning("could not close run %s (%s); the next command on this store closes it", run_id, error)
    mark_job_killed(job_dir, why, run_id=run_id, overrides=overrides, status=status)
    return run_id


def _gone(run, lost_hosts=()) -> str | None:
    """Why a RUNNING run's owner is gone, or None when it is alive or cannot be told."""
    tags = run.data.tags
    if tags.get(OWNER_HOST) in lost_hosts:
        return f"reaped: its host {tags[OWNER_HOST]} was declared lost (cifar-exp reap --lost-host)"
    if owner_alive(tags) is False:
        return (f"reaped: its process {tags.get(OWNER_PID)} on {tags.get(OWNER_HOST)} ended without closing it "
                "(killed by SIGKILL, the OOM killer or a crash)")
    return None


def reap(client, experiment_ids: list[str], where: str = "", lost_hosts=(), told: list[str] | None = None,
         here: str | None = None) -> list[str]:
    """Close KILLED every RUNNING run of the experiments (matching the MLflow filter `where`) whose
    owner process is gone; returns their ids. Runs of live processes, of other hosts and runs
    without an owner record (older versions) are left as they are. `told` gets each run's line."""
    query = "attributes.status = 'RUNNING'" + (f" and {where}" if where else "")
    closed = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=query, max_results=500, page_token=token)
        for run in page:
            why = _gone(run, lost_hosts)
            if why:
                line = close_dead_run(client, run.info.run_id, why, here)
                if told is not None:
                    told.append(line)
                closed.append(run.info.run_id)
        token = page.token
        if not token:
            return closed


def is_owned_by_live_process(run) -> bool:
    """A RUNNING run whose owner still runs (on this host): another process's job, never resumed."""
    return run.info.status == "RUNNING" and owner_alive(run.data.tags) is True


# ------------------------------------------------------------------------------- command

def main(argv: list[str]) -> int:
    """`cifar-exp reap --store URI [--experiment NAME] [--lost-host HOST ...]`: close KILLED every
    run of the store left RUNNING by a process that is gone."""
    import argparse

    parser = argparse.ArgumentParser(prog="cifar-exp reap", description=main.__doc__.split(":", 1)[1].strip())
    parser.add_argument("--store", required=True, help="the MLflow tracking URI (mlflow.tracking_uri)")
    parser.add_argument("--experiment", help="only this experiment (default: all)")
    parser.add_argument("--lost-host", action="append", default=[],
                        help="a host that is gone for good: its RUNNING runs are closed too (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # each run is told once, below
    try:
        client = connect(args.store)
    except ConfigError as error:
        print(f"Error: {mask_secrets(error)}", file=sys.stderr, flush=True)
        return 2
    experiments = client.search_experiments()
    if args.experiment:
        experiments = [e for e in experiments if e.name == args.experiment]
        if not experiments:
            print(f"Error: no experiment named {args.experiment!r} in {mask_secrets(args.store)}", file=sys.stderr,
                  flush=True)
            return 2
    log.setLevel(logging.ERROR)  # each closed run is told once, below, not also as a log warning
    told: list[str] = []
    closed = reap(client, [e.experiment_id for e in experiments], lost_hosts=tuple(args.lost_host), told=told) \
        if experiments else []
    for line in told:
        print(f"  {line}", flush=True)
    print(f"Reaped {len(closed)} run(s) left RUNNING by a process that is gone ({mask_secrets(args.store)})",
          flush=True)
    return 0
