"""A Hydra callback that ends every multirun with one line: how many jobs finished and failed,
and how many of the finished did not learn (outcome.py), then a line per such job, and a
non-zero exit when any failed (each job wrote job_status.json)."""
from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback


class SweepSummary(Callback):
    def on_multirun_start(self, config, **kwargs) -> None:
        for stale in Path(config.hydra.sweep.dir).glob("**/job_status.json"):
            stale.unlink()  # a re-used sweep folder must not count earlier sweeps' jobs

    def on_multirun_end(self, config, **kwargs) -> None:
        records = [json.loads(p.read_text()) for p in sorted(Path(config.hydra.sweep.dir).glob("**/job_status.json"))]
        failed = [r for r in records if r["status"] != "FINISHED"]
        # Finished at chance level (outcome.py): a result, but not one to compare settings by.
        idle = [r for r in records if r["status"] == "FINISHED" and r.get("outcome") == "did_not_learn"]
        idle_count = f", {len(idle)} did not learn" if idle else ""
        print(f"Sweep summary: {len(records) - len(failed)} finished, {len(failed)} failed{idle_count} "
              f"({config.hydra.sweep.dir})", flush=True)
        for record in failed:
            print(f"  {record['status']}: {' '.join(record['overrides'])}: {record['error']}", flush=True)
            if record.get("hint"):
                print(f"    hint: {record['hint']}", flush=True)
        for record in idle:
            print(f"  did not learn: {' '.join(record['overrides'])}: test accuracy at chance level", flush=True)
        if failed:
            raise SystemExit(1)
