"""What a person sees of a job: where it is logged, progress with an ETA, how it ended.

Plain log lines (they land on the console and in the job's log file alike); the progress
callback is a Keras callback, so it works on every Keras backend.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)
# A job on a CPU estimated (after its first epoch) to run longer than this gets the quicker options.
EARLY_ESTIMATE_S = 30  # after the first batch: long enough to time the pace, short enough to be early
LONG_CPU_JOB_S = 30 * 60
# Where the printed `mlflow ui` command serves the UI: the command and the link name both.
UI_HOST, UI_PORT = "127.0.0.1", 5000


def duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 7.4 -> '7s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def store_uri(tracking_uri: str) -> str:
    """The tracking URI with a sqlite file or a folder made absolute, so that it names the same
    store from any folder (`sqlite:///mlflow.db` is relative to where the job ran)."""
    if tracking_uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())
    if "://" not in tracking_uri:
        return Path(tracking_uri).resolve().as_uri()
    return tracking_uri


def ui_hint(tracking_uri: str, page: str) -> str:
    """How to look at `page` (a path of the UI): the `mlflow ui` command for a local store, the
    server's address otherwise. `workflowType=machine_learning` opens MLflow 3's UI on runs
    (it otherwise opens an experiment on its GenAI pages, and remembers the choice)."""
    uri = store_uri(tracking_uri)
    separator = "&" if "?" in page else "?"
    page = f"{page}{separator}workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{page}"
    return (f"see it with: mlflow ui --backend-store-uri {uri} --host {UI_HOST} --port {UI_PORT} "
            f"(then http://{UI_HOST}:{UI_PORT}/{page})")


def run_link(tracking_uri: str, run_id: str) -> str:
    """`ui_hint` for a run's own page (its experiment read from the store); where the store does
    not answer, the run id alone."""
    from cifar_exp.tracking.runs import _retry, connect

    try:
        experiment = _retry(lambda: connect(tracking_uri).get_run(run_id)).info.experiment_id
    except Exception as error:  # a link is a convenience: the summary goes on without it
        log.warning("could not read run %s back from the store (%s)", run_id, error)
        return f"run {run_id}"
    return ui_hint(tracking_uri, f"#/experiments/{experiment}/runs/{run_id}")


def start_line(run_id: str, experiment_name: str, tracking_uri: str, output_dir: str | None, page: str,
               resumed: bool = False) -> str:
    from cifar_exp.tracking.runs import mask_secrets

    folder = os.path.abspath(output_dir) if output_dir else "none"
    verb = "resuming" if resumed else "logging to"
    return mask_secrets(f"MLflow run {run_id}: {verb} experiment {experiment_name!r} in {store_uri(tracking_uri)}; "
                        f"job folder {folder}; {ui_hint(tracking_uri, page)}")


def share_runs_view(client, experiment_id: str, run_id: str, optimized_metric: str, sweep_id: str | None,
                    swept_keys: list[str]) -> str:
    """The UI page to point at: a run's own page, or for a multirun its runs table as a view
    shared through an experiment tag (MLflow's "share view": `mlflow.sharedViewState.<key>`,
    opened by `?viewStateShareKey=<key>`) that shows only the sweep's runs, with the metrics
    and the swept keys as columns, best first. Written by every job of the sweep alike."""
    import json

    from cifar_exp.tracking.runs import _retry

    if not sweep_id:
        return f"#/experiments/{experiment_id}/runs/{run_id}"
    metrics = list(dict.fromkeys([optimized_metric, "test_accuracy", "test_loss"]))
    state = {"selectedColumns": [f"metrics.`{m}`" for m in metrics] + [f"tags.`swept.{k}`" for k in swept_keys],
             "orderByKey": f"metrics.`{optimized_metric}`", "orderByAsc": optimized_metric.endswith(("loss", "mse")),
             "searchFilter": f"tags.sweep_id = '{sweep_id}'"}
    try:
        _retry(lambda: client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.sweep_{sweep_id}",
                                                 json.dumps(state)))
    except Exception as error:  # a view is a convenience: the run goes on without it
        log.warning("could not save the sweep's view of the runs table in MLflow (%s)", error)
        return f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey=sweep_{sweep_id}"


def closing_line(run_id: str, metrics: dict[str, float], optimized_metric: str, wall_s: float) -> str:
    """The optimised metric first, then the other final test/validation metrics."""
    shown = [optimized_metric] + sorted(k for k in metrics if k != optimized_metric
                                        and k.startswith(("test_", "val_")))
    values = ", ".join(f"{k}={metrics[k]:.4g}" for k in shown if k in metrics)
    return f"run {run_id} FINISHED in {duration(wall_s)}: {values}"


def epoch_line(epoch: int, epochs: int, logs: dict, elapsed_s: float, eta_s: float, eval_split: str = "val") -> str:
    """'Epoch 3/24: loss=1.23, accuracy=0.561, test_loss=... | 1m02s elapsed, ETA 7m10s'; Keras'
    val_* metrics are named after the split really evaluated, as in MLflow."""
    values = ", ".join(f"{eval_split + k[3:] if k.startswith('val_') else k}={float(v):.4g}"
                       for k, v in logs.items() if k != "learning_rate")
    return f"Epoch {epoch}/{epochs}: {values} | {duration(elapsed_s)} elapsed, ETA {duration(eta_s)}"


def remaining_s(epoch_times: list[float], remaining_epochs: int) -> float:
    """Seconds left: the mean epoch time times the epochs left. The first epoch of a job also
    compiles the model, so it counts only until a second one has been timed."""
    timed = epoch_times[1:] or epoch_times
    return remaining_epochs * sum(timed) / len(timed) if timed else 0.0


def slow_cpu_warning(total_s: float, first_epoch_s: float | None) -> str:
    """The warning for a CPU job estimated to run longer than LONG_CPU_JOB_S; `first_epoch_s`
    None when the estimate comes from the first batches."""
    basis = (f"its first epoch took {duration(first_epoch_s)}" if first_epoch_s is not None
             else "from its first batches, training alone")
    return (f"on this CPU the job is estimated to take {duration(total_s)} in all ({basis}). For a quicker "
            "try: fewer epochs (trainer.epochs=3), a subset (dataset.limit_train=5000), a smaller model "
            "(model=simple_cnn), or a GPU")


def progress_callback(epochs: int, eval_split: str = "val", on_cpu: bool = False, print_epochs: bool = True):
    """A Keras callback that logs one line per epoch (with `print_epochs`) carrying epoch k/N,
    the metrics, the time elapsed and the ETA, and one early estimate EARLY_ESTIMATE_S into the
    first epoch; on a CPU, a warning (from that estimate, else after the first epoch) when the
    whole job would take longer than LONG_CPU_JOB_S."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = self.last = time.perf_counter()
            self.epoch_times: list[float] = []
            self.first_batch_end = None  # the first batch also compiles: the pace is timed after it
            self.estimated = self.warned = False

        def wants_batch(self, batch) -> bool:
            # A batch's end is read (batch_reads.ReadOnDemand: the read waits for the step, so the
            # time is the device's, not how far ahead the host queued) only for the first batch and
            # once the estimate is due: the clock decides, not the logs.
            if self.estimated or self.epoch_times:
                return False
            return self.first_batch_end is None or time.perf_counter() - self.first_batch_end >= EARLY_ESTIMATE_S

        def on_train_batch_end(self, batch, logs=None):
            # One early estimate, EARLY_ESTIMATE_S after the first batch, so a long first epoch is
            # not silent (off a terminal nothing else prints before it ends) and a CPU job that
            # would run for hours says so within a minute, not after its first epoch.
            if self.estimated or self.epoch_times:
                return
            now = time.perf_counter()
            if self.first_batch_end is None:
                self.first_batch_end = now
                return
            steps = (self.params or {}).get("steps")
            if not steps or now - self.first_batch_end < EARLY_ESTIMATE_S:
                return
            self.estimated = True
            per_batch = (now - self.first_batch_end) / batch
            epoch_s = now - self.started + per_batch * (steps - batch - 1)
            total_s = epoch_s + per_batch * steps * (epochs - 1)
            if print_epochs:
                log.info("Epoch 1/%d: batch %d/%d after %s; training alone will take about %s for this epoch, "
                         "%s in all", epochs, batch + 1, steps, duration(now - self.started), duration(epoch_s),
                         duration(total_s))
            if on_cpu and total_s > LONG_CPU_JOB_S:
                self.warned = True
                log.warning("%s", slow_cpu_warning(total_s, None))

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.epoch_times.append(now - self.last)
            self.last = now
            eta = remaining_s(self.epoch_times, epochs - epoch - 1)
            if print_epochs:
                log.info("%s", epoch_line(epoch + 1, epochs, logs or {}, now - self.started, eta, eval_split))
            if on_cpu and len(self.epoch_times) == 1 and now - self.started + eta > LONG_CPU_JOB_S \
                    and not self.warned:
                log.warning("%s", slow_cpu_warning(now - self.started + eta, self.epoch_times[0]))

    return Progress()
