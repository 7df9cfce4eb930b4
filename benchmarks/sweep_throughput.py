"""Figure 4: sweep throughput, trials per hour for a 10-trial multirun of a small model
(LeNet on synthetic data), Hydra's basic launcher vs the joblib launcher.

    python benchmarks/sweep_throughput.py [--trials 10] [--n-jobs 2]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    seeds = ",".join(str(s) for s in range(args.trials))
    base = ["dataset=synthetic", "dataset.image_shape=[28,28,1]", "dataset.train_size=2048", "model=lenet",
            "optimizer=adam", "lr_schedule=constant", "trainer.epochs=3", "trainer.batch_size=64",
            "trainer.verbose=0", f"seed={seeds}"]
    launchers = {"basic": [], "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"]}
    rows = {}
    for name, extra in launchers.items():
        folder = tempfile.mkdtemp()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cifar_exp", *base, *extra, f"mlflow.tracking_uri=sqlite:///{folder}/m.db",
                        f"hydra.sweep.dir={folder}/sweep", "--multirun"], cwd=folder, check=True, capture_output=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
        seconds = time.perf_counter() - started
        rows[name] = {"seconds": seconds, "trials_per_hour": args.trials * 3600 / seconds}
        print(f"{name:7} {seconds:7.1f} s  {rows[name]['trials_per_hour']:7.0f} trials/h")
    out = ROOT / "benchmarks" / "results" / "sweep_throughput.json"
    out.write_text(json.dumps({"figure": "sweep_throughput", "date": str(date.today()), "machine": platform.node(),
                               "cpus": os.cpu_count(), "args": vars(args), "launchers": rows}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
