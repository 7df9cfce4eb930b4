"""A deliberate stop (Ctrl-C, SLURM's scancel or time limit, `timeout`, `docker stop`) as one
exception, `Stopped`, whatever signal it came as: the job closes its MLflow run KILLED and the
command ends with one line and the shell's exit code for that signal (128 + its number).
In a job submitit runs on Slurm (`install_slurm`), SIGTERM and the warning signal before the time
limit stop it the same way; the warning also says whether submitit requeues the job.
"""
from __future__ import annotations

import os
import signal
import sys

# SIGINT: Ctrl-C; SIGTERM: scancel, timeout, docker stop, kill; SIGHUP: the terminal went away.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread when a stop signal arrives.

    A KeyboardInterrupt, so Keras, Hydra and Optuna treat every stop signal as they treat
    Ctrl-C (not as a failure of the job). `summary` is the console line the job filled in
    (run id, epochs done) and `sweep_dir` the multirun it stopped, if any.
    """

    def __init__(self, signum: int, reason: str | None = None, requeue: bool = False):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.reason = reason  # e.g. "Slurm time limit: not requeued (...)"; str(self) carries it
        self.requeue = requeue  # submitit requeues the job once its run is closed
        self.summary: str | None = None
        self.sweep_dir: str | None = None
        super().__init__(f"{self.name} ({reason})" if reason else self.name)

    def cannot_resume(self, why: str) -> None:
        """A job that would restart from scratch (no checkpoint) is not requeued: its run would log
        its epochs twice."""
        if self.requeue:
            self.requeue = False
            self.reason = f"{(self.reason or '').split(':')[0]}: not requeued ({why})"
            self.args = (f"{self.name} ({self.reason})",)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise_stopped(signum, frame):
    # A second signal while the first is being handled (the run is being closed) ends the
    # process at once, as a second Ctrl-C is meant to.
    for each in STOP_SIGNALS:
        signal.signal(each, _die)
    raise Stopped(signum)


def _die(signum, frame):
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install() -> None:
    """Turn every stop signal into `Stopped` (main thread only, as Python requires)."""
    for each in STOP_SIGNALS:
        if signal.getsignal(each) is not signal.SIG_IGN:  # nohup'ed: keep ignoring SIGHUP
            signal.signal(each, _raise_stopped)


def install_slurm() -> None:
    """In a job submitit runs on Slurm, after submitit set its handlers (which ignore SIGTERM and
    requeue at once on the warning signal, SIGUSR2 by default): SIGTERM (scancel, the time limit,
    preemption) raises `Stopped`; so does the warning signal, with the reason (time limit or
    preemption) and whether submitit will requeue the job. Whoever catches it closes the run
    first, then calls `requeue`. Later stop signals are ignored: Slurm's SIGKILL follows anyway,
    and the run must be closed whole."""
    warning_signal = _submitit_warning_signal()
    submitit_handler = signal.getsignal(warning_signal)

    def on_stop(signum, frame):
        for each in (*STOP_SIGNALS, warning_signal):
            signal.signal(each, _ignore)
        if signum != warning_signal:
            raise Stopped(signum)
        requeue, reason = _requeue_decision(submitit_handler)
        stopped = Stopped(signum, reason, requeue)
        stopped.requeue_with = submitit_handler
        raise stopped

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(warning_signal, on_stop)


def requeue(stopped: Stopped) -> None:
    """Let submitit requeue the job (checkpoint the call, `scontrol requeue`, exit) where the
    stop said so; returns when it does not."""
    handler = getattr(stopped, "requeue_with", None)
    if stopped.requeue and callable(handler):
        try:
            handler(stopped.signum, None)  # exits (SystemExit) once requeued
        except Exception as error:  # submitit's UncompletedJobError: it decided otherwise
            print(f"not requeued: {error}", file=sys.stderr, flush=True)


def _submitit_warning_signal() -> int:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")  # submitit's own setting
    return getattr(signal, "SIG" + name, signal.SIGUSR2)


def _requeue_decision(handler) -> tuple[bool, str]:
    """(requeue, reason) as submitit's SignalHandler will decide: a timed-out job is requeued while
    its countdown (hydra.launcher.max_num_timeout) lasts, a preempted one always."""
    owner = getattr(handler, "__self__", None)
    delayed = getattr(owner, "_delayed", None)
    if delayed is None or not hasattr(owner, "has_timed_out"):
        return False, "Slurm's warning signal before the time limit"
    timed_out = owner.has_timed_out()
    what = "Slurm time limit" if timed_out else "preempted by Slurm"
    if delayed._timeout_countdown - timed_out < 0:
        return False, f"{what}: not requeued (hydra.launcher.max_num_timeout requeues used up)"
    return True, f"{what}: requeued, resumes from its checkpoint in this run"


def _ignore(signum, frame):
    print(f"{signal.Signals(signum).name} ignored: the run is being closed", file=sys.stderr, flush=True)


def as_stopped(error: KeyboardInterrupt) -> Stopped:
    """A plain KeyboardInterrupt (raised without our handler) as a SIGINT stop."""
    return error if isinstance(error, Stopped) else Stopped(signal.SIGINT)


def report(error: Stopped) -> None:
    """The one line a stopped command prints, on stderr."""
    print(error.summary or f"Stopped by {error.name}.", file=sys.stderr, flush=True)
