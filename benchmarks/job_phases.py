"""Issue 24.1: where each job's seconds went, from the runs of an MLflow store.

Every run logs `time/<phase>` (exclusive wall seconds: setup, data, build, compile, train, validate,
checkpoint, evaluate, plots, save_model, tracking, release) and `memory/rss_mb`; this prints one row per run,
its run time (MLflow's start -> end) and what the phases leave unexplained (`other`: closing the run,
the first metrics call). Without a store, it first runs a small sweep to have one (`--run`, CPU).

    python benchmarks/job_phases.py sqlite:///path/to/mlflow.db [--out results/job_phases_cpu.json]
    python benchmarks/job_phases.py --run [--jobs 3] [-- overrides]   (e.g. -- experiment=airbench model.widths=[16,32,32])
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("setup", "data", "build", "compile", "train", "validate", "checkpoint", "evaluate", "plots",
          "save_model", "tracking", "release")
# --run's sweep without overrides; overrides after `--` replace it (only trainer.verbose=0 stays).
SMALL = ["dataset=synthetic", "model=simple_cnn", "model.width=16", "dataset.train_size=2048",
         "dataset.test_size=512", "trainer.epochs=3", "trainer.batch_size=128", "trainer.verbose=0"]


def rows_of(uri: str, experiment: str | None = None) -> list[dict]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments() if experiment in (None, e.name)]
    rows = []
    for run in client.search_runs(experiments, max_results=1000) if experiments else []:
        metrics = run.data.metrics
        times = {p: metrics.get(f"time/{p}") for p in PHASES}
        run_s = None if run.info.end_time is None else (run.info.end_time - run.info.start_time) / 1000
        # time/setup also holds the seconds before the run opened, the others are inside it
        inside = sum(v for p, v in times.items() if v is not None and p != "setup")
        rows.append({"run": run.info.run_name, "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                     "status": run.info.status, "shared_steps": run.data.tags.get("shared_steps", "-"),
                     "start": run.info.start_time,
                     "run_s": run_s, **times, "other": None if run_s is None else round(run_s - inside, 3),
                     "rss_mb": metrics.get("memory/rss_mb"), "backend": run.data.tags.get("keras_backend")})
    return sorted(rows, key=lambda r: r["start"])


def print_table(rows: list[dict]) -> None:
    columns = ["run_s", *PHASES, "other", "rss_mb"]
    width = max([len("run"), *(len(row["run"]) for row in rows)]) + 1  # whole names: they differ at the end
    print(f"{'run':<{width}}{'status':<10}{'steps':<20}" + "".join(f"{c[:10]:>11}" for c in columns))
    for row in rows:
        cells = "".join(f"{row[c]:>11.2f}" if isinstance(row[c], (int, float)) else f"{'-':>11}" for c in columns)
        print(f"{row['run']:<{width}}{row['status'][:9]:<10}{row['shared_steps'][:19]:<20}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", nargs="?", help="tracking URI of the store to read")
    parser.add_argument("--run", action="store_true", help="run a small multirun first (CPU) and read its store")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--experiment", help="only this MLflow experiment's runs (default: every experiment)")
    parser.add_argument("--out", default=None, help="JSON file for the rows (default: benchmarks/results/job_phases.json in this repository)")
    argv = sys.argv[1:]
    # Overrides for --run follow `--` (argparse would take the first of them for the store's URI).
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    folder = tempfile.mkdtemp(prefix="job_phases_")
    uri = args.uri
    if args.run:
        uri = f"sqlite:///{folder}/mlflow.db"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)))
        small = ["trainer.verbose=0"] if args.extra else SMALL
        subprocess.run([sys.executable, "-m", "cifar_exp", "--multirun", *small, f"seed=range(0,{args.jobs})",
                        f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={folder}/sweep", *args.extra],
                       cwd=folder, env=env, check=True, capture_output=True)
    if not uri:
        parser.error("give a tracking URI or --run")
    rows = rows_of(uri, args.experiment)
    print_table(rows)
    versions = {}
    for package in ("keras", "tensorflow", "jax", "mlflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "job_phases.json"
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "machine": platform.machine(), "cpus": os.cpu_count(), "versions": versions,
                               "overrides": small + args.extra if args.run else None, "rows": rows}, indent=1))
    print(f"rows written to {out}")


if __name__ == "__main__":
    main()
