"""A Hydra callback for every multirun: at its start, the sweep's id (from its definition); at
its end, one line saying how many jobs finished, failed or were stopped and how many of the
finished did not learn (outcome.py), a line per such job, and a non-zero exit when any did not
finish (each job wrote job_status.json)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.experimental.callback import Callback

SWEEP_ID_FILE = "sweep_id"  # in the sweep folder; job.sweep_id reads it into the `sweep_id` tag
# Overrides that say where and how a sweep runs, not what it computes: left out of its id.
NOT_DEFINITION = ("hydra.", "hydra/", "sweep.rerun")
KEPT_HYDRA = ("hydra.sweeper.", "hydra/sweeper")  # the search space and sampler are the definition


def definition_id(overrides, rerun: bool, sweep_dir: str) -> str:
    """The sweep's id: a short hash of its command-line overrides (sorted), folders and launcher
    left out, so re-running a stopped sweep gives the same id and `report --sweep-id latest`
    shows all its jobs. With sweep.rerun=true every sweep is new work: the folder joins the hash."""
    keys = sorted(o for o in map(str, overrides)
                  if not o.lstrip("+~").startswith(NOT_DEFINITION) or o.lstrip("+~").startswith(KEPT_HYDRA))
    if rerun:
        keys.append(str(Path(sweep_dir).resolve()))
    return hashlib.sha1(json.dumps(keys).encode()).hexdigest()[:12]


def summarize(sweep_dir: str) -> bool:
    """Print the summary line and the jobs that did not finish; True when all finished."""
    records = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("**/job_status.json"))]
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


class SweepSummary(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        for stale in sweep_dir.glob("**/job_status.json"):
            stale.unlink()  # a re-used sweep folder must not count earlier sweeps' jobs
        sweep_dir.mkdir(parents=True, exist_ok=True)
        rerun = bool(config.get("sweep", {}).get("rerun", False))
        (sweep_dir / SWEEP_ID_FILE).write_text(definition_id(config.hydra.overrides.task, rerun, str(sweep_dir)))

    def on_multirun_end(self, config, **kwargs) -> None:
        if not summarize(config.hydra.sweep.dir):
            raise SystemExit(1)
