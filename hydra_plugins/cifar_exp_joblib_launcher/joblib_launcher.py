"""`hydra/launcher=joblib` as cifar_exp runs it: the hydra-joblib-launcher's settings, each of the
`n_jobs` slots with its own one-worker loky executor, so a worker killed (kill -9, the OOM killer)
loses only its own job, closed KILLED, while the others finish and the jobs not yet started run
(loky's shared pool kills every job in flight with it). The work is in cifar_exp.sweeps.launcher.
"""
from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher

from cifar_exp.sweeps import launcher

log = logging.getLogger(__name__)


class JoblibLauncher(Launcher):
    """Takes the hydra-joblib-launcher's settings; `n_jobs` is the number of jobs run at once
    (-1: one per CPU; 1: in this process, as joblib does), the other settings (batching,
    memmapping) have no effect on whole jobs.
    Needs the joblib extra (hydra-joblib-launcher), imported only when it launches."""

    def __init__(self, **kwargs) -> None:
        self.config = self.task_function = self.hydra_context = None
        self.joblib = kwargs

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

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
        if effective_n_jobs(self.joblib.get("n_jobs", -1)) == 1:  # as joblib does: in this process, in turn
            from hydra_plugins.hydra_joblib_launcher._core import execute_job

            return [execute_job(initial_job_idx + idx, overrides, self.hydra_context, self.config,
                                self.task_function, state) for idx, overrides in enumerate(job_overrides)]
        threads = [threading.Thread(target=self._slot, args=(todo, results, state, slots), daemon=True)
                   for _ in range(slots)]
        self._executors: list = []
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)  # a timed join: a stop signal still reaches the main thread
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM (signals.Stopped): the jobs in flight close KILLED
            launcher.stop_jobs(todo, self._executors, threads)
            stop.sweep_dir = getattr(stop, "sweep_dir", None) or str(sweep_dir)  # main prints its summary
            raise
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
                executor = ProcessPoolExecutor(max_workers=1, env=launcher.worker_env(slots))
                self._executors.append(executor)
            future = executor.submit(execute_job, idx, overrides, self.hydra_context, self.config,
                                     self.task_function, state)
            try:
                results[idx] = future.result()
            except KeyboardInterrupt:  # the job was stopped (stop_jobs) and closed its run KILLED itself
                break
            except BrokenProcessPool as error:  # its worker died: this job alone is lost
                executor.shutdown(wait=False, kill_workers=True)
                executor = None
                results[idx] = launcher.lost_job(self, idx, overrides, error)
            except BaseException as error:  # raised outside the job (pickling, the launcher itself)
                log.exception("job %d could not run", idx)
                results[idx] = launcher.lost_job(self, idx, overrides, error)
        if executor is not None:
            executor.shutdown(wait=True)
