"""A Hydra callback that ends every multirun with one line: how many jobs finished and
failed, and a non-zero exit when any failed (each job wrote job_status.json)."""
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
        print(f"Sweep summary: {len(records) - len(failed)} finished, {len(failed)} failed "
              f"({config.hydra.sweep.dir})", flush=True)
        for record in failed:
            print(f"  {record['status']}: {' '.join(record['overrides'])}: {record['error']}", flush=True)
            if record.get("hint"):
                print(f"    hint: {record['hint']}", flush=True)
        if failed:
            raise SystemExit(1)
