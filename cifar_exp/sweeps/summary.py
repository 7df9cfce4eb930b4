"""A Hydra callback for every multirun: at its start, the sweep's id (from its definition); at
its end, one line saying how many jobs finished, failed or were stopped and how many of the
finished did not learn (outcome.py), a line per such job, and a non-zero exit when any did not
finish (each job wrote job_status.json). The sweep folder is locked for the sweep's life: a
second sweep given the same folder is refused in one line before anything trains."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from cifar_exp.errors import ConfigError
from cifar_exp.overrides import is_inert
from cifar_exp.tracking import lifecycle

SWEEP_ID_FILE = "sweep_id"  # in the sweep folder; job.sweep_id reads it into the `sweep_id` tag
# Overrides that compute nothing (overrides.INERT_KEYS: folders, launcher, tags, ...) are left out
# of a sweep's id, except the sweeper's: the search space and sampler are the definition.
KEPT_HYDRA = ("hydra.sweeper.", "hydra/sweeper")


def definition_id(overrides, rerun: bool, sweep_dir: str) -> str:
    """The sweep's id: a short hash of its command-line overrides (sorted), folders and launcher
    left out, so re-running a stopped sweep gives the same id and `report --sweep-id latest`
    shows all its jobs. With sweep.rerun=true every sweep is new work: the folder joins the hash."""
    keys = sorted(o for o in map(str, overrides) if not is_inert(o) or o.lstrip("+~").startswith(KEPT_HYDRA))
    if rerun:
        keys.append(str(Path(sweep_dir).resolve()))
    return hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:12]


def summarize(sweep_dir: str) -> bool:
    """Print the summary line and the jobs that did not finish; True when all finished."""
    records = [settled(json.loads(p.read_text())) for p in sorted(Path(sweep_dir).glob("**/job_status.json"))]
    failed = [r for r in records if r["status"] not in ("FINISHED", "KILLED")]
    killed = [r for r in records if r["status"] == "KILLED"]
    # Finished at chance level (outcome.py): a result, but not one to compare settings by.
    idle = [r for r in records if r["status"] == "FINISHED" and r.get("outcome") == "did_not_learn"]
    skipped = [r for r in records if r.get("skipped")]
    stopped = f", {len(killed)} stopped" if killed else ""
    idle_count = f", {len(idle)} did not learn" if idle else ""
    # Skipped jobs count as finished (their config has a FINISHED run) but are named: nothing ran.
    skipped_count = (f" ({len(skipped)} skipped: finished before in this MLflow experiment; "
                     f"sweep.rerun=true runs them again)") if skipped else ""
    print(f"Sweep summary: {len(records) - len(failed) - len(killed)} finished{skipped_count}, {len(failed)} failed"
          f"{stopped}{idle_count} ({sweep_dir})", flush=True)
    for record in failed + killed:
        print(f"  {record['status']}: {' '.join(record['overrides'])}: {record['error']}", flush=True)
        if record.get("hint"):
            print(f"    hint: {record['hint']}", flush=True)
    for record in idle:
        print(f"  did not learn: {' '.join(record['overrides'])}: test accuracy at chance level", flush=True)
    return not (failed or killed)


def settled(record: dict) -> dict:
    """A job record as it stands: one still RUNNING whose process is gone (SIGKILL, the OOM killer)
    counts as KILLED, saying so."""
    if record.get("status") == "RUNNING" and lifecycle.owner_alive(record.get("owner") or {}) is False:
        return dict(record, status="KILLED",
                    error="its process ended without closing the job (SIGKILL, out of memory?)")
    return record


def lock_sweep_folder(sweep_dir: Path):
    """The sweep folder's lock (lifecycle.FolderLock), or one line on stderr and exit 2 when another
    live sweep holds it (its summary would count this sweep's jobs, and their folders collide)."""
    try:
        return lifecycle.FolderLock(str(sweep_dir), "hydra.sweep.dir")
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


class SweepSummary(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self._lock = lock_sweep_folder(sweep_dir)  # held until the process ends or the sweep does
        for stale in sweep_dir.glob("**/job_status.json"):
            stale.unlink()  # a re-used sweep folder must not count earlier sweeps' jobs
        sweep_dir.mkdir(parents=True, exist_ok=True)
        rerun = bool(config.get("sweep", {}).get("rerun", False))
        (sweep_dir / SWEEP_ID_FILE).write_text(definition_id(config.hydra.overrides.task, rerun, str(sweep_dir)))

    def on_multirun_end(self, config, **kwargs) -> None:
        finished = summarize(config.hydra.sweep.dir)
        if getattr(self, "_lock", None):
            self._lock.release()
        if not finished:
            raise SystemExit(1)
