"""Issue 20.12 (hydra#2042's kind): does a basic-launcher multirun process grow from job to job?

Runs `python -m cifar_exp --multirun` of N tiny synthetic jobs (seed=0..N-1, LeNet, one epoch) in one
process; a Hydra callback of this benchmark (RssProbe, on PYTHONPATH) writes the process's resident
set size (VmRSS of /proc/self/status, MB) after each job, so any version of the code can be measured,
before or after a change. Prints RSS per job and the growth per job after the warm-up (least-squares
slope over the jobs after the first `--warmup`), and writes results/memory_across_jobs[_<label>].json.

    python benchmarks/memory_across_jobs.py [--jobs 30] [--warmup 5] [--label before] [-- overrides]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dataset=synthetic", "dataset.image_shape=[28,28,1]", "dataset.train_size=256", "dataset.test_size=64",
        "model=lenet", "optimizer=adam", "lr_schedule=constant", "init=he_normal", "trainer.epochs=1",
        "trainer.batch_size=64", "trainer.verbose=0"]


class RssProbe:
    """Hydra callback: after each job, the process's VmRSS (MB) appended to $RSS_PROBE_FILE."""

    def on_job_end(self, config, job_return, **kwargs):
        with open("/proc/self/status") as status:
            kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        with open(os.environ["RSS_PROBE_FILE"], "a") as out:
            out.write(f"{kb / 1024:.1f}\n")


def slope(values: list[float]) -> float:
    """Least-squares growth per job (MB/job)."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    return sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--label", default="")
    parser.add_argument("extra", nargs="*", help="Hydra overrides after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "rss.txt"
        env = dict(os.environ, RSS_PROBE_FILE=str(probe), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", str(ROOT))]))
        command = [sys.executable, "-m", "cifar_exp", "--multirun", *TINY, f"seed=range(0,{args.jobs})",
                   f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db", f"hydra.sweep.dir={folder}/sweep",
                   "+hydra.callbacks.rss._target_=memory_across_jobs.RssProbe", *args.extra]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(f"the multirun failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rss = [float(line) for line in probe.read_text().split()]

    steady = rss[args.warmup:]
    growth = slope(steady) if len(steady) > 1 else float("nan")
    print("job  RSS MB")
    for i, value in enumerate(rss):
        print(f"{i:3d}  {value:7.1f}")
    print(f"growth after {args.warmup} jobs: {growth:.2f} MB/job; {wall:.0f} s for {len(rss)} jobs")
    versions = {}
    for package in ("keras", "tensorflow", "jax", "mlflow", "hydra-core"):
        try:
            from importlib import metadata

            versions[package] = metadata.version(package)
        except Exception:
            pass
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "versions": versions,
              "jobs": len(rss), "warmup": args.warmup, "rss_mb": rss, "growth_mb_per_job": growth,
              "wall_s": wall, "overrides": TINY + args.extra}
    name = "memory_across_jobs" + (f"_{args.label}" if args.label else "")
    (ROOT / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
