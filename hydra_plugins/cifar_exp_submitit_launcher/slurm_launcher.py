"""Hydra's submitit Slurm launcher, made to keep a sweep's record whatever Slurm does to one job.

- In the job: SIGTERM (`scancel`, the time limit, preemption) and submitit's warning signal before
  the time limit stop it as Ctrl-C does (cifar_exp.signals.install_slurm): its run is closed
  KILLED naming the signal (and "time limit"), then submitit requeues it where
  `max_num_timeout` allows and the job has a checkpoint; otherwise the job returns NaN, as a failed
  job of a sweep does. (Submitit alone ignores SIGTERM, so the job trained on until SIGKILL.)
- In the sweep: every job is waited for; one that ended without a result (cancelled while
  pending, killed before its handlers ran) counts as NaN with a job_status.json saying so, a run it
  left RUNNING is closed KILLED (FAILED for a failed job) naming the Slurm state, and the sweep goes
  on to its summary. (Hydra's launcher raised at the first such job and left the others running.)
  A stopped sweep cancels the jobs it leaves behind.
- A multi-worker job one of whose tasks fails is killed whole: the others would wait for it until
  the time limit.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

log = logging.getLogger(__name__)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state) -> JobReturn:
        import submitit

        from cifar_exp import signals

        signals.install_slurm()  # submitit set its handlers before calling this
        try:
            result = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
            _end_waiting_workers(result)
            return result
        except signals.Stopped as stopped:  # its run is closed KILLED (job.run_job), if it had one
            signals.report(stopped)
            if submitit.JobEnvironment().global_rank == 0:  # the other tasks of a multi-worker job log nothing
                self._record(list(sweep_overrides), job_num, "KILLED", stopped)
            signals.requeue(stopped)  # exits here when requeued
            return JobReturn(overrides=list(sweep_overrides), status=JobStatus.COMPLETED, _return_value=math.nan)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs as Hydra's launcher does, then wait for all of them (see the module's docstring)."""
        import submitit

        submitted: list = []
        original = submitit.AutoExecutor.map_array

        def map_array(executor, *args: Any, **kwargs: Any):  # the jobs Hydra's launch submits
            submitted.extend(original(executor, *args, **kwargs))
            return [_Done()] * len(submitted)

        submitit.AutoExecutor.map_array = map_array
        try:
            super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = original
        try:
            return [self._outcome(job, list(overrides), initial_job_idx + index)
                    for index, (job, overrides) in enumerate(zip(submitted, job_overrides))]
        except KeyboardInterrupt:
            for job in submitted:
                if not job.done():
                    job.cancel(check=False)
            log.warning("cancelled the sweep's unfinished Slurm jobs")
            raise

    def _outcome(self, job, overrides: list[str], job_num: int) -> JobReturn:
        try:
            return job.results()[0]
        except Exception as error:  # submitit's UncompletedJobError / FailedJobError
            state = job.state
            log.error("job %d (Slurm job %s) ended %s without a result (%s); the sweep goes on",
                      job_num, job.job_id, state, type(error).__name__)
            cancelled = state.startswith(("CANCELLED", "PREEMPTED", "TIMEOUT"))
            self._record(overrides, job_num, "KILLED" if cancelled else "FAILED",
                         RuntimeError(f"Slurm job {job.job_id} ended {state} without a result "
                                      f"(see {job.paths.stderr})"))
            return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=math.nan)

    def _record(self, overrides: list[str], job_num: int, status: str, error: BaseException) -> None:
        """The end of a job that wrote none of its own (cancelled before it started or before its
        run opened, killed before its handlers ran: the tasks of a multi-worker job are SIGKILLed
        after `scancel` when they outlive Slurm's KillWait): a run it left RUNNING is closed `status`
        (KILLED for a cancelled, preempted or timed-out job; FAILED for a failed one: OUT_OF_MEMORY,
        NODE_FAIL, ...) naming the Slurm state (lifecycle.close_lost_job), and its job_status.json says it,
        so the sweep summary counts it."""
        from cifar_exp.job import JobContext, _write_status
        from cifar_exp.tracking import lifecycle

        try:
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            config.hydra.job.num = job_num
            folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        except Exception:  # the summary misses it; the log line said what happened
            return
        status_file = folder / "job_status.json"
        if status_file.exists() and '"RUNNING"' not in status_file.read_text():
            return  # the job recorded its own end
        if lifecycle.close_lost_job(str(folder), str(config.mlflow.tracking_uri), str(error), overrides, status):
            return  # its run and job_status.json now say `status`
        _write_status(JobContext(overrides=overrides, output_dir=str(folder)), status, error)


def _end_waiting_workers(result: JobReturn) -> None:
    """In a task of a multi-worker job (several tasks) whose job failed (the chief: a refused start or a
    crash, its run and job_status.json already FAILED; another worker: a crash): the other tasks would
    wait for it inside their next collective step until the time limit, holding the allocation, so
    every task of the job is killed now. The sweep then finds the job ended without a result: it keeps
    the chief's FAILED record, or closes the chief's run FAILED from the Slurm state."""
    import subprocess

    import submitit

    env = submitit.JobEnvironment()
    value = result._return_value if result.status == JobStatus.COMPLETED else math.nan
    if env.num_tasks < 2 or not (isinstance(value, float) and math.isnan(value)):
        return
    log.error("task %d of Slurm job %s failed: killing the job's %d tasks, which would wait for it until "
              "the time limit", env.global_rank, env.job_id, env.num_tasks)
    subprocess.run(["scancel", "--signal=KILL", str(env.job_id)], check=False)


class _Done:
    """What Hydra's launch reads from each job before this launcher waits for them itself."""

    def results(self):
        return [None]
