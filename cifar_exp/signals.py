"""A deliberate stop (Ctrl-C, SLURM's scancel or time limit, `timeout`, `docker stop`) as one
exception, `Stopped`, whatever signal it came as: the job closes its MLflow run KILLED and the
command ends with one line and the shell's exit code for that signal (128 + its number).
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

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.summary: str | None = None
        self.sweep_dir: str | None = None
        super().__init__(self.name)

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


def as_stopped(error: KeyboardInterrupt) -> Stopped:
    """A plain KeyboardInterrupt (raised without our handler) as a SIGINT stop."""
    return error if isinstance(error, Stopped) else Stopped(signal.SIGINT)


def report(error: Stopped) -> None:
    """The one line a stopped command prints, on stderr."""
    print(error.summary or f"Stopped by {error.name}.", file=sys.stderr, flush=True)
