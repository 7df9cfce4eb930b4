"""A Hydra callback for every multirun: at its start, the sweep's id (from its definition); at
its end, one line saying how many jobs finished, failed or were stopped and how many of the
finished did not learn (outcome.py), a line per such job, and a non-zero exit when any did not
finish (each job wrote job_status.json); then the answer: the jobs best first, the best run's
link and the report command for this sweep. The sweep folder is locked for the sweep's life: a
second sweep given the same folder is refused in one line before anything trains."""
from __future__ import annotations

import hashlib
import json
import math
import os
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


def definition_id(overrides, rerun: bool, sweep_dir: str, experiment: str | None = None) -> str:
    """The sweep's id: a short hash of its command-line overrides (sorted), folders and launcher
    left out, so re-running a stopped sweep gives the same id and `report --sweep-id latest`
    shows all its jobs. With sweep.rerun=true every sweep is new work: the folder joins the hash.
    `experiment` (mlflow.experiment_name) joins it too: the same sweep recorded in another experiment
    is other runs, which a report of one sweep must not pool with these (a new user's report counted
    two seeds run in three experiments as six samples)."""
    keys = sorted(o for o in map(str, overrides) if not is_inert(o) or o.lstrip("+~").startswith(KEPT_HYDRA))
    if experiment is not None:
        keys.append(f"experiment:{experiment}")
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
        print(f"  {record['status']}: {' '.join(shown_overrides(record['overrides']))}: {record['error']}", flush=True)
        if record.get("hint"):
            print(f"    hint: {record['hint']}", flush=True)
    for record in idle:
        print(f"  did not learn: {' '.join(shown_overrides(record['overrides']))}: test accuracy at chance level",
              flush=True)
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
        experiment = str(config.get("mlflow", {}).get("experiment_name", "")) or None
        (sweep_dir / SWEEP_ID_FILE).write_text(definition_id(config.hydra.overrides.task, rerun, str(sweep_dir),
                                                             experiment))

    def on_multirun_end(self, config, **kwargs) -> None:
        all_finished = summarize(config.hydra.sweep.dir)
        print_answer(config)
        if getattr(self, "_lock", None):
            self._lock.release()
        if not all_finished:
            raise SystemExit(1)


# ------------------------------------------------------------------ the sweep's answer
# After the counts: the jobs best first, the best run's link, the report command.

INTERNAL_KEYS = ("optuna_trial",)  # overrides a sweeper adds for itself: never shown
TABLE_ROWS = 15  # a longer sweep shows its best jobs; the report lists all


def _key_value(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def shown_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides as a person gave them: the sweepers' internal ones left out."""
    return [o for o in overrides if not _key_value(o)[0].startswith(INTERNAL_KEYS)]


def swept_columns(records: list[dict], swept_keys: list[str]) -> list[str]:
    """The keys the sweep varied (`swept_keys`, from the command line), then any other key whose
    value differs between the jobs (an Optuna sweep's suggestions), internal ones left out."""
    values: dict[str, set] = {}
    for record in records:
        for key, value in map(_key_value, shown_overrides(record["overrides"])):
            values.setdefault(key, set()).add(value)
    differing = [k for k, v in values.items() if len(v) > 1 or len(records) == 1 and k in swept_keys]
    return list(dict.fromkeys([k for k in swept_keys if k in values] + differing))


def lower_is_better(metric: str, direction: str | None = None) -> bool:
    """The direction a metric is ranked in: the sweeper's `direction` where it has one (Optuna),
    else as the report and the UI's sweep view rank it (a loss or MSE lowest first)."""
    if direction in ("minimize", "maximize"):
        return direction == "minimize"
    return metric.endswith(("loss", "mse"))


def ranked(records: list[dict], metric: str, direction: str | None = None) -> list[dict]:
    """Jobs with a value best first, then the others (failed, stopped, running) in sweep order."""
    valued = [r for r in records if isinstance(r.get("value"), (int, float)) and math.isfinite(r["value"])
              and r["status"] == "FINISHED"]
    valued.sort(key=lambda r: r["value"], reverse=not lower_is_better(metric, direction))
    return valued + [r for r in records if r not in valued]


def job_table(records: list[dict], metric: str, swept_keys: list[str], direction: str | None = None) -> list[str]:
    """Lines of a text table: one column per swept key, the status, the metric; best first."""
    columns = swept_columns(records, swept_keys)
    rows = []
    for record in ranked(records, metric, direction)[:TABLE_ROWS]:
        values = dict(map(_key_value, record["overrides"]))
        status = record["status"] + (" (did not learn)" if record.get("outcome") == "did_not_learn" else "") \
            + (" (skipped)" if record.get("skipped") else "")
        value = record.get("value")
        shown = f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
        rows.append([values.get(k, "") for k in columns] + [status, shown])
    header = columns + ["status", metric]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    if len(records) > TABLE_ROWS:
        lines.append(f"... and {len(records) - TABLE_ROWS} more jobs (the report lists them all)")
    return lines


def report_command(sweep_dir: str, tracking_uri: str) -> str:
    """The `cifar-exp report` command for this sweep's runs (its files go to <sweep dir>/report/)."""
    from cifar_exp.console import store_uri
    from cifar_exp.tracking.runs import mask_secrets

    saved = Path(sweep_dir) / SWEEP_ID_FILE
    selection = f"--sweep-id {saved.read_text().strip()}" if saved.is_file() else "--sweep-id latest"
    return mask_secrets(f"cifar-exp report {selection} --tracking-uri {store_uri(tracking_uri)}")


def print_answer(config) -> None:
    """The jobs' table, the best run's link and the report command (nothing without jobs). Never
    raises: the counts above it are the summary a sweep must end with, whatever this cannot read."""
    try:
        _print_answer(config)
    except Exception as error:  # a missing key, an unreadable status file: the answer is a convenience
        print(f"(no table of the jobs: {type(error).__name__}: {error})", flush=True)


def _print_answer(config) -> None:
    from omegaconf import OmegaConf

    from cifar_exp.overrides import SWEPT_KEYS_ENV

    sweep_dir = config.hydra.sweep.dir
    records = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob("**/job_status.json"))]
    if not records:
        return
    metric = str(OmegaConf.select(config, "optimized_metric", default="test_accuracy"))
    swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k]
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    direction = direction if isinstance(direction, str) else None  # Optuna's may be a list (multi-objective)
    print("\n".join(job_table(records, metric, swept, direction)), flush=True)
    best = ranked(records, metric, direction)[0]
    uri = OmegaConf.select(config, "mlflow.tracking_uri", default=None)
    if uri is None:
        return
    if best["status"] == "FINISHED" and best.get("run_id"):
        from cifar_exp.console import run_link

        print(f"Best: {metric}={best['value']:.4g} ({' '.join(shown_overrides(best['overrides'])) or 'defaults'}); "
              f"{run_link(str(uri), best['run_id'])}", flush=True)
    print(f"Compare the settings (means, 95% intervals, curves): {report_command(sweep_dir, str(uri))}", flush=True)
