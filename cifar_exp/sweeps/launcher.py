"""Hydra's joblib launcher, made to lose only the job whose worker dies.

loky runs all jobs in one pool: a worker killed (SIGKILL, the kernel's OOM killer) breaks the
pool, every job in flight is killed with it (TerminatedWorkerError), the jobs not yet started
never run and the sweep ends in a traceback without its summary. Here each of the `n_jobs` slots
has its own one-worker loky executor: a dead worker costs its own job only, which is closed
KILLED (lifecycle.close_lost_job: the run, tagged `ended_by`, and job_status.json), returns NaN
like any failed job of a sweep, and the slot starts a fresh worker for its next job.
The class is hydra_plugins.cifar_exp_joblib_launcher.JoblibLauncher (Hydra instantiates only
classes of `hydra_plugins` modules); its work is here. `register` makes `hydra/launcher=joblib`
(with all its settings) run it; main.cli calls it.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)


def register() -> None:
    """Store this launcher as `hydra/launcher=joblib`, replacing the plugin's entry of that name (its
    settings kept). Called after Hydra's plugin scan, which imports the plugin's config module and
    so would put its own entry back if this ran before."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf

    Plugins.instance()  # the scan, if it has not run yet

    @dataclass
    class JoblibLauncherConf(JobLibLauncherConf):
        _target_: str = "hydra_plugins.cifar_exp_joblib_launcher.joblib_launcher.JoblibLauncher"

    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=JoblibLauncherConf,
                                 provider="cifar_exp")


def lost_job(launcher, idx: int, overrides: list[str], error: BaseException) -> JobReturn:
    """Close the run of a job whose worker died (lifecycle.close_lost_job) and return what a failed
    job of a sweep returns (NaN), so the sweep goes on and its summary lists the job KILLED."""
    from omegaconf import open_dict

    from cifar_exp.tracking import lifecycle

    why = worker_death(error)
    config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.num = idx
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
    job_dir = str(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir))
    run_id = lifecycle.close_lost_job(job_dir, str(config.mlflow.tracking_uri), why, overrides)
    log.error("job %d lost: %s%s; the sweep goes on", idx, why, f" (run {run_id} KILLED)" if run_id else "")
    ret = JobReturn(overrides=overrides, cfg=config, hydra_cfg=None, working_dir=job_dir,
                    task_name=str(config.hydra.job.name), status=JobStatus.COMPLETED)
    ret.return_value = math.nan
    return ret


def stop_jobs(todo, executors: list, threads: list, wait_s: float = 120.0) -> None:
    """A stop signal reached the sweep: no job starts any more, and each job in flight gets SIGINT
    (a KeyboardInterrupt in its worker, so it closes its run KILLED, as a Ctrl-C at a terminal
    does); waits up to `wait_s` for them. A second signal ends the sweep at once (signals.py)."""
    import os
    import queue
    import signal
    import time

    while True:
        try:
            todo.get_nowait()
        except queue.Empty:
            break
    for executor in executors:
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            try:
                os.kill(process.pid, signal.SIGINT)
            except (ProcessLookupError, AttributeError):
                pass
    deadline = time.monotonic() + wait_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def worker_death(error: BaseException) -> str:
    """'worker process killed by SIGKILL (exit code -9): out of memory (the kernel's OOM killer) or kill -9'."""
    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(error))
    if codes is None:
        return f"worker process lost ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    text = codes.group(1)
    signal_name = re.search(r"(SIG[A-Z]+)\((-?\d+)\)", text)
    if signal_name:
        name, code = signal_name.groups()
        cause = ": out of memory (the kernel's OOM killer) or kill -9" if name == "SIGKILL" else ""
        return f"worker process killed by {name} (exit code {code}){cause}"
    return f"worker process exited with code {text}"


def worker_env(slots: int) -> dict[str, str]:
    """The thread limits joblib gives its workers (cores / jobs each), so parallel jobs do not
    oversubscribe the CPU's BLAS/OpenMP threads as they would under loky's defaults."""
    try:
        from joblib._parallel_backends import LokyBackend

        return LokyBackend()._prepare_worker_env(n_jobs=slots)
    except Exception:  # a private helper of joblib's: without it the workers keep the defaults
        return {}
