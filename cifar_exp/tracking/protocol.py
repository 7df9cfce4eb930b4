"""The Tracker protocol: what a task may ask of the run it logs to. RunTracker (an MLflow run) and
NullTracker (the non-chief workers of a multi-worker job: they log nothing) both honour all of it,
so a task never needs to know which one it holds."""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None  # None for NullTracker
    phase_step: int  # the step of this process's time/* and memory/rss_mb figures (0, +1 per resume)

    def set_tags(self, tags: dict) -> None: ...

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...

    def logged_epochs(self) -> int: ...

    def logged_history(self) -> list[dict[str, float]]: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def log_figure(self, figure, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def finish(self, status: str = "FINISHED", error: BaseException | None = None) -> None: ...

    def find_runs(self, experiment_name: str, filter_string: str, max_results: int = 5) -> list:
        """Runs of the named experiment matching an MLflow filter, newest first ([] if none)."""

    def has_artifact(self, run_id: str, path: str) -> bool: ...

    def download_artifact(self, run_id: str, path: str, folder: str) -> str:
        """The local path of the artifact `path` of run `run_id`, downloaded into `folder`."""

    def open_run(self, experiment_name: str, run_name: str, tags: dict[str, str]) -> "Tracker":
        """Another run in the same store (a pretraining the task needs), of the same kind of tracker."""
