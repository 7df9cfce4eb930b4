"""Issue 15's compile-once target: from the second job of an lr x seed sweep on, the first epoch
(compilation included) takes at most 2x a steady epoch.

Runs one `python -m cifar_exp --multirun` (the basic launcher: every job in one process) with a
fresh persistent compilation cache, then reads each job's per-epoch `epoch_time` from MLflow and
prints, per job in launch order: first epoch s, median later epoch s, their ratio, the job's run
seconds (MLflow start -> end) and test accuracy; the sweep's wall seconds from process start.
Writes results/sweep_warm_start_<backend>.json.

    KERAS_BACKEND=jax python benchmarks/sweep_warm_start.py [--data /path/to/cifar10] \
        [--sweep optimizer.lr=0.2,0.4 seed=0,1] [-- extra overrides]

Without --data it trains on dataset=synthetic. Needs at least 3 epochs per job (the steady epoch
is the median of epochs 2..n).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset.path (CIFAR-10); default: dataset=synthetic")
    parser.add_argument("--sweep", nargs="+", default=["optimizer.lr=0.2,0.4", "seed=0,1"])
    parser.add_argument("--cache", help="compile cache folder (default: a fresh temporary one)")
    parser.add_argument("extra", nargs="*", help="more overrides, after --")
    args = parser.parse_args()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    with tempfile.TemporaryDirectory() as work:
        cache = args.cache or f"{work}/cache"
        store = f"sqlite:///{work}/mlflow.db"
        data = [f"dataset.path={args.data}"] if args.data else ["dataset=synthetic"]
        command = [sys.executable, "-m", "cifar_exp", "--multirun", *data, *args.sweep, *args.extra,
                   f"trainer.compile_cache={cache}", "trainer.checkpoint=false", "trainer.verbose=0",
                   f"mlflow.tracking_uri={store}", f"hydra.sweep.dir={work}/multirun"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=work, text=True, capture_output=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"the sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        jobs = read_jobs(store)
    print(f"{backend}: {len(jobs)} jobs, sweep wall {wall:.1f} s (process start -> exit)")
    print("job  first epoch s  steady epoch s  ratio  run s  test accuracy")
    for i, job in enumerate(jobs):
        print(f"{i:>3}  {job['first_epoch_s']:>13.2f}  {job['steady_epoch_s']:>14.2f}  {job['ratio']:>5.2f}"
              f"  {job['run_s']:>5.1f}  {job['test_accuracy']:.4f}")
    result = {"date": datetime.date.today().isoformat(), "backend": backend, "machine": platform.platform(),
              "devices": devices(backend), "versions": versions(), "command": command[3:], "sweep_wall_s": wall,
              "jobs": jobs}
    out = ROOT / "benchmarks" / "results" / f"sweep_warm_start_{backend}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"written {out}")


def read_jobs(store: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = sorted(client.search_runs(experiments), key=lambda run: run.info.start_time)
    jobs = []
    for run in runs:
        epochs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "epoch_time"),
                                          key=lambda m: m.step)]
        if len(epochs) < 3:
            sys.exit(f"run {run.info.run_name}: {len(epochs)} epochs; the steady epoch needs 3 or more")
        steady = statistics.median(epochs[1:])
        jobs.append({"run_name": run.info.run_name, "status": run.info.status,
                     "first_epoch_s": epochs[0], "steady_epoch_s": steady, "ratio": epochs[0] / steady,
                     "run_s": (run.info.end_time - run.info.start_time) / 1000,
                     "test_accuracy": run.data.metrics.get("test_accuracy", float("nan"))})
    return jobs


def devices(backend: str) -> list[str]:
    code = ("import jax; print([f'{d.platform}:{d.device_kind}' for d in jax.devices()])" if backend == "jax" else
            "import tensorflow as tf; print([d.name for d in tf.config.list_physical_devices()])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return [done.stdout.strip() or done.stderr.strip()[-200:]]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("keras", "jax", "jaxlib", "tensorflow", "mlflow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    main()
