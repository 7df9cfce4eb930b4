"""Hydra's joblib launcher, made to lose only the job whose worker dies.

loky runs all jobs in one pool: a worker killed (SIGKILL, the kernel's OOM killer) breaks the
pool, every job in flight is killed with it (TerminatedWorkerError), the jobs not yet started
never run and the sweep ends in a traceback without its summary. Here each of the `n_jobs` slots
has its own one-worker loky executor: a dead worker costs its own job only, which is closed
KILLED (lifecycle.close_lost_job: the run, tagged `ended_by`, and job_status.json), returns NaN
like any failed job of a sweep, and the slot starts a fresh worker for its next job.
`register` makes `hydra/launcher=joblib` (with all its settings) run it; main.cli calls it.
"""
from __future__ import annotations

import logging
import math
import queue
import re
import threading
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as HydraJoblibLauncher

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
        _target_: str = f"{__name__}.JoblibLauncher"

    ConfigStore.instance().store(group="hydra/launcher", name="joblib", node=JoblibLauncherConf,
                                 provider="cifar_exp")


class JoblibLauncher(HydraJoblibLauncher):
    """Takes the hydra-joblib-launcher's settings; `n_jobs` is the number of jobs run at once
    (-1: one per CPU), the other settings (batching, memmapping) have no effect on whole jobs."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from joblib import effective_n_jobs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        slots = max(1, min(effective_n_jobs(self.joblib.get("n_jobs", -1)), len(job_overrides)))
        log.info("Joblib (one worker per slot) is launching %d jobs, %d at a time", len(job_overrides), slots)
        log.info("Launching jobs, sweep output dir : %s", sweep_dir)
        todo: queue.Queue = queue.Queue()
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
            todo.put((initial_job_idx + idx, list(overrides)))
        state, results = Singleton.get_state(), {}
        threads = [threading.Thread(target=self._slot, args=(todo, results, state, slots), daemon=True)
                   for _ in range(slots)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # a timed join: a stop signal still reaches the main thread
        return [results[initial_job_idx + idx] for idx in range(len(job_overrides))]

    def _slot(self, todo: queue.Queue, results: dict, state: dict, slots: int) -> None:
        from hydra_plugins.hydra_joblib_launcher._core import execute_job
        from joblib.externals.loky import ProcessPoolExecutor
        from joblib.externals.loky.process_executor import BrokenProcessPool

        executor = None
        while True:
            try:
                idx, overrides = todo.get_nowait()
            except queue.Empty:
                break
            if executor is None:
                executor = ProcessPoolExecutor(max_workers=1, env=_worker_env(slots))
            future = executor.submit(execute_job, idx, overrides, self.hydra_context, self.config,
                                     self.task_function, state)
            try:
                results[idx] = future.result()
            except BrokenProcessPool as error:  # its worker died: this job alone is lost
                executor.shutdown(wait=False, kill_workers=True)
                executor = None
                results[idx] = self._lost(idx, overrides, error)
            except BaseException as error:  # raised outside the job (pickling, the launcher itself)
                log.exception("job %d could not run", idx)
                results[idx] = self._lost(idx, overrides, error)
        if executor is not None:
            executor.shutdown(wait=True)

    def _lost(self, idx: int, overrides: list[str], error: BaseException) -> JobReturn:
        """Close the run of a job whose worker died and return what a failed job returns (NaN)."""
        from omegaconf import open_dict

        from cifar_exp.tracking import lifecycle

        why = worker_death(error)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
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


def _worker_env(slots: int) -> dict[str, str]:
    """The thread limits joblib gives its workers (cores / jobs each), so parallel jobs do not
    oversubscribe the CPU's BLAS/OpenMP threads as they would under loky's defaults."""
    try:
        from joblib._parallel_backends import LokyBackend

        return LokyBackend()._prepare_worker_env(n_jobs=slots)
    except Exception:  # a private helper of joblib's: without it the workers keep the defaults
        return {}
