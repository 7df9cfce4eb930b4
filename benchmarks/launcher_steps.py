"""Issue 15's puzzle on a CPU: does a job under the joblib launcher (a loky worker process) train
slower per step than the same job run directly? Steps/s of one small job run (1) directly,
(2) as a 1-job joblib multirun (n_jobs=1) and (3) as two jobs with n_jobs=2, per Keras backend,
plus what each process saw: the thread-limiting variables loky sets, the backend's variables,
its OS threads, its devices.

    python benchmarks/launcher_steps.py [--backends tensorflow jax] [--images 2000] [--epochs 3]
        [--batch-size 32] [--modes direct joblib1 joblib2] [-- extra overrides]

Steps/s: steps per epoch / MLflow's `epoch_time` (training plus the test pass over the synthetic
dataset's 256 test images), median of the epochs after the first (the first traces and compiles).
Each process is watched by a probe (a sitecustomize.py on PYTHONPATH, this benchmark's only) that
records its environment at start and, every second, its OS thread count and threadpoolctl's view.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ENABLE_IPC", "KERAS_BACKEND",
           "CUDA_VISIBLE_DEVICES", "XLA_FLAGS", "TF_XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
           "XLA_PYTHON_CLIENT_MEM_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH", "JAX_PLATFORMS",
           "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")

PROBE = """
import json, os, sys, threading, time
_dir = os.environ.get("LAUNCHER_STEPS_PROBE_DIR")
if _dir:
    _state = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:3],
              "env": {k: os.environ.get(k) for k in %(watched)r}, "max_threads": 0}
    def _snapshot():
        _state["max_threads"] = max(_state["max_threads"], len(os.listdir("/proc/self/task")))
        _state["cpu_s"] = sum(os.times()[:2])
        _state["imported"] = [m for m in ("keras", "tensorflow", "jax", "mlflow") if m in sys.modules]
        _state["keras_backend"] = sys.modules["keras"].backend.backend() if "keras" in sys.modules and hasattr(
            sys.modules["keras"], "backend") else None
        bridge = sys.modules.get("jax._src.xla_bridge")
        if bridge is not None and getattr(bridge, "_backends", None):  # only once JAX started its backends
            _state["jax_devices"] = [str(d) for b in bridge._backends.values() for d in b.devices()]
        if "threadpoolctl" in sys.modules or "numpy" in sys.modules:
            try:
                import threadpoolctl
                _state["threadpools"] = [{k: p.get(k) for k in ("internal_api", "num_threads")}
                                         for p in threadpoolctl.threadpool_info()]
            except Exception as error:
                _state["threadpools"] = repr(error)
        path = os.path.join(_dir, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:  # then renamed: a reader never sees half a file
            json.dump(_state, f)
        os.replace(path + ".tmp", path)
    def _watch():
        while True:
            try:
                _snapshot()
            except Exception:
                pass
            time.sleep(1.0)
    threading.Thread(target=_watch, daemon=True).start()
""" % {"watched": WATCHED}


def launch(mode: str, backend: str, args, folder: Path) -> dict:
    probe_dir = folder / "probe"
    probe_dir.mkdir(parents=True)
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(PROBE)
    base = ["model=simple_cnn", "dataset=synthetic", f"dataset.train_size={args.images}",
            f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}", "trainer.verbose=0",
            "trainer.checkpoint=false", f"mlflow.tracking_uri=sqlite:///{folder}/m.db", *args.extra]
    if mode == "direct":
        command = [*base, "seed=0", f"hydra.run.dir={folder}/run"]
    else:
        jobs = 1 if mode == "joblib1" else 2
        command = [*base, "--multirun", "seed=" + ",".join(str(seed) for seed in range(jobs)),
                   "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={folder}/sweep"]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", LAUNCHER_STEPS_PROBE_DIR=str(probe_dir),
               PYTHONPATH=os.pathsep.join([str(folder / "site"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cifar_exp", *command], cwd=folder, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode}/{backend} failed:\n{done.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/m.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    steps = -(-args.images // args.batch_size)  # the last, partial batch is a step too
    runs = []
    for run in client.search_runs(experiments):
        history = sorted(client.get_metric_history(run.info.run_id, "epoch_time"), key=lambda m: m.step)
        epochs = [m.value for m in history]
        steady = statistics.median(epochs[1:] or epochs)
        runs.append({"run_name": run.info.run_name, "epoch_s": [round(e, 2) for e in epochs],
                     "steps_per_s": round(steps / steady, 1), "ms_per_step": round(1000 * steady / steps, 1)})
    probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("*.json"))]
    trained = [p for p in probes if p.get("keras_backend")]  # the processes that ran a job
    return {"mode": mode, "backend": backend, "wall_s": round(wall, 1), "runs": runs,
            "processes": [{k: p.get(k) for k in ("pid", "ppid", "env", "max_threads", "cpu_s", "jax_devices",
                                                 "threadpools")} for p in trained],
            # the others: the sweep's parent process (did it import a backend?), loky's helpers
            "other_processes": [{k: p.get(k) for k in ("pid", "argv", "imported", "max_threads")}
                                for p in probes if not p.get("keras_backend")]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--modes", nargs="+", default=["direct", "joblib1", "joblib2"])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "launcher_steps.json"))
    parser.add_argument("extra", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args()
    rows = []
    print(f"{'backend':10} {'mode':8} {'ms/step per run':>24} {'threads':>8} {'OMP_NUM_THREADS':>15}")
    for repeat in range(args.repeats):
        for backend in args.backends:
            for mode in args.modes:
                with tempfile.TemporaryDirectory() as folder:
                    row = launch(mode, backend, args, Path(folder))
                row["repeat"] = repeat
                rows.append(row)
                write(args, rows)  # after every row: an interrupted benchmark keeps what it measured
                ms = ", ".join(str(r["ms_per_step"]) for r in row["runs"])
                threads = ",".join(str(p["max_threads"]) for p in row["processes"])
                omp = ",".join(str(p["env"]["OMP_NUM_THREADS"]) for p in row["processes"])
                print(f"{backend:10} {mode:8} {ms:>24} {threads:>8} {omp:>15}", flush=True)
    print("wrote", args.out)


def write(args, rows):
    Path(args.out).write_text(json.dumps({
        "figure": "launcher_steps", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
