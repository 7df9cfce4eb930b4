"""Where a job's seconds went: wall time per phase, logged with the run as `time/<phase>` (seconds).

Phases nest (sending a figure to MLflow inside the `plots` phase); each second counts once, in
the innermost phase open at the time, so the phases add up to the time they cover. Also the
process's resident memory, `memory/rss_mb`, read from /proc/self/status (Linux) where it exists.
Importing this module imports nothing heavy.
"""
from __future__ import annotations

import functools
import time
from contextlib import contextmanager


class PhaseTimer:
    """Exclusive wall seconds per named phase (`with timer.phase("evaluate"): ...`)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # [name, started (perf_counter s), seconds of nested phases]

    @contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        self._open.append([name, started, 0.0])
        try:
            yield
        finally:
            _, _, nested = self._open.pop()
            spent = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + spent - nested
            if self._open:
                self._open[-1][2] += spent

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` measured elsewhere for `name`; they are taken out of the innermost phase
        open now (a callback timing the first step inside `train`)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self._open:
            self._open[-1][2] += seconds

    def metrics(self) -> dict[str, float]:
        """{"time/<phase>": seconds} and, where readable, {"memory/rss_mb": MB}."""
        figures = {f"time/{name}": round(seconds, 4) for name, seconds in self.seconds.items()}
        rss = rss_mb()
        if rss is not None:
            figures["memory/rss_mb"] = rss
        return figures

    def timed(self, target, name: str):
        """A proxy of `target` whose public methods run inside phase `name` (a tracker: time/tracking)."""
        return _Timed(target, self, name)


class _Timed:
    def __init__(self, target, timer: PhaseTimer, name: str):
        self._target, self._timer, self._name = target, timer, name

    def __getattr__(self, attribute):
        value = getattr(self._target, attribute)
        if attribute.startswith("_") or not callable(value):
            return value

        @functools.wraps(value)
        def call(*args, **kwargs):
            with self._timer.phase(self._name):
                return value(*args, **kwargs)

        return call


def rss_mb() -> float | None:
    """The process's resident set size now (MB, VmRSS), or None where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
