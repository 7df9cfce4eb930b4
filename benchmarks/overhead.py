"""Figure 1: framework overhead. Wall time of a whole `python -m cifar_exp` run vs a plain
Keras script (plain_keras.py) training the same model on the same arrays, same epochs and
batch size, alternated in one session. Target: ratio <= 1.05.

    python benchmarks/overhead.py /path/to/cifar10 [--repeats 3] [--limit 5000] [--epochs 2]
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
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command, env):
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    store = tempfile.mkdtemp()
    ours = [sys.executable, "-m", "cifar_exp", "model=simple_cnn", "init=default", "optimizer=adam",
            "lr_schedule=constant", f"dataset.path={args.data_path}", f"dataset.limit_train={args.limit}",
            "dataset.preprocess=scale", "dataset.augment=none", f"trainer.epochs={args.epochs}",
            f"trainer.batch_size={args.batch}", "trainer.verbose=0",
            f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"hydra.run.dir={store}/out"]
    plain = [sys.executable, "benchmarks/plain_keras.py", args.data_path, str(args.limit), str(args.epochs),
             str(args.batch)]
    timed(plain, env)  # warm the data cache and the OS file cache first
    times = {"cifar_exp": [], "plain_keras": []}
    for _ in range(args.repeats):
        times["plain_keras"].append(timed(plain, env))
        times["cifar_exp"].append(timed(ours, env))
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["cifar_exp"] / medians["plain_keras"]
    print(f"{'':12} {'median s':>9}  runs")
    for key, values in times.items():
        print(f"{key:12} {medians[key]:9.1f}  {', '.join(f'{v:.1f}' for v in values)}")
    print(f"ratio cifar_exp / plain keras: {ratio:.3f} (target <= 1.05)")
    result = {"figure": "overhead", "date": str(date.today()), "machine": platform.node(),
              "cpus": os.cpu_count(), "args": vars(args), "seconds": times, "ratio": ratio}
    out = ROOT / "benchmarks" / "results" / f"overhead_{args.epochs}_epochs.json"
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
