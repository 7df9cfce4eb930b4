"""Figure 3: time-to-accuracy. For each recipe (`experiment=resnet9`, seed 003's 24 epochs, and
`experiment=airbench`, airbench94 rebuilt) and seed, the seconds of training until the test accuracy measured after an
epoch first reaches each threshold (93%, 94%), and the final test accuracy.

Training seconds run from the start of `model.fit` (the first step's tracing and XLA compilation
included) to the end of each epoch, minus the per-epoch evaluation (on_test_begin..on_test_end,
as Page's and airbench's timers leave the per-epoch test pass out); the device is synchronised
before each evaluation so no training step spills into it. No evaluation is counted, so the
extra inference of flip TTA is not either (airbench counts its final TTA pass). Data loading and
model building come before fit and are not counted. "excl. compile" subtracts an estimate of
compilation: the first epoch's seconds minus the median later epoch's. Each job runs
`train.run` in this process, as `python -m cifar_exp` would, without MLflow.

    KERAS_BACKEND=jax python benchmarks/time_to_accuracy.py /path/to/cifar10 \
        [--recipes resnet9 airbench] [--seeds 0 1 2] [--thresholds 0.93 0.94] [-- hydra overrides ...]

With --process each job runs as its own `python -m cifar_exp` with MLflow (a sqlite store in a
temporary folder), and the row adds what a user waits for: `process_s`, process start to exit, and
`run_s`, MLflow's run start to run closed; per-epoch accuracy and seconds come from the run's metrics
(evaluation included), and the table's columns from those.

A CPU dry run (tiny, synthetic; writes elsewhere than the GPU result):

    python benchmarks/time_to_accuracy.py - --seeds 0 --out /tmp/tta.json -- dataset=synthetic \
        model=lenet 'dataset.image_shape=[28,28,1]' trainer.epochs=2 trainer.batch_size=64 \
        trainer.precision=float32 lr_schedule.peak_epoch=null
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"


def compose(recipe: str, seed: int, data_path: str, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "cifar_exp" / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={recipe}", f"seed={seed}", "trainer.verbose=0",
                                                 "trainer.validation_freq=1", *overrides])
    if data_path != "-":
        if "path" not in cfg.dataset:
            sys.exit(f"dataset={cfg.dataset.name} reads no path: pass '-' instead of {data_path}")
        cfg.dataset.path = data_path
    return cfg


def epoch_clock():
    """A callback recording, per epoch, cumulative training seconds (evaluation excluded) and the
    evaluated split's accuracy."""
    import keras
    from keras import ops

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[dict] = []

        def _sync(self):
            # Reading a value the last step wrote waits for the device to finish that step.
            ops.convert_to_numpy(self.model.optimizer.iterations)

        def on_train_begin(self, logs=None):
            self.started, self.eval_s, self.test_started = time.perf_counter(), 0.0, None

        def on_test_begin(self, logs=None):
            self._sync()
            self.test_started = time.perf_counter()

        def on_test_end(self, logs=None):
            self.eval_s += time.perf_counter() - self.test_started

        def on_epoch_end(self, epoch, logs=None):
            self._sync()
            train_s = time.perf_counter() - self.started - self.eval_s
            previous = self.epochs[-1]["train_s"] if self.epochs else 0.0
            self.epochs.append({"epoch": epoch + 1, "train_s": train_s, "epoch_train_s": train_s - previous,
                                "eval_s_cumulative": self.eval_s, "accuracy": float((logs or {})["val_accuracy"])})

    return EpochClock()


def summarise(epochs: list[dict], thresholds: list[float]) -> dict:
    later = [e["epoch_train_s"] for e in epochs[1:]]
    compile_s = max(0.0, epochs[0]["epoch_train_s"] - statistics.median(later)) if later else 0.0
    reached = {}
    for t in thresholds:
        first = next((e for e in epochs if e["accuracy"] >= t), None)
        reached[f"{t:g}"] = None if first is None else {
            "epoch": first["epoch"], "train_s": first["train_s"], "train_s_excl_compile": first["train_s"] - compile_s}
    return {"final_accuracy": epochs[-1]["accuracy"], "best_accuracy": max(e["accuracy"] for e in epochs),
            "total_train_s": epochs[-1]["train_s"], "compile_estimate_s": compile_s, "reached": reached}


def across_seeds(runs: list[dict], thresholds: list[float]) -> dict:
    finals = [r["final_accuracy"] for r in runs]
    stats = {"seeds": len(runs), "final_accuracy_mean": statistics.fmean(finals),
             "final_accuracy_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
             "median_train_s": {}, "median_train_s_excl_compile": {}, "reached_by": {}}
    for t in thresholds:
        hits = [r["reached"][f"{t:g}"] for r in runs if r["reached"][f"{t:g}"] is not None]
        stats["reached_by"][f"{t:g}"] = f"{len(hits)}/{len(runs)} seeds"
        stats["median_train_s"][f"{t:g}"] = statistics.median(h["train_s"] for h in hits) if hits else None
        stats["median_train_s_excl_compile"][f"{t:g}"] = (
            statistics.median(h["train_s_excl_compile"] for h in hits) if hits else None)
    return stats


def device_info() -> dict:
    import keras

    backend = keras.backend.backend()
    info = {"backend": backend, "keras": keras.__version__, "python": platform.python_version(),
            "machine": platform.node(), "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        info["devices"] = [f"gpu:{tf.config.experimental.get_device_details(g).get('device_name', g.name)}"
                           for g in gpus] or ["cpu"]
    else:
        info["devices"] = [str(d) for d in keras.distribution.list_devices()]
    info["gpu"] = any(not d.startswith("cpu") for d in info["devices"])
    return info


def tag_keeper():
    """train.run's tracker without MLflow; it keeps the tags (they say which split was evaluated)."""
    from cifar_exp.tracking.runs import NullTracker

    class TagKeeper(NullTracker):
        def __init__(self):
            self.tags = {}

        def set_tags(self, tags):
            self.tags.update(tags)

    return TagKeeper()


def run_process(recipe: str, seed: int, data_path: str, overrides: list[str]) -> tuple[list[dict], dict]:
    """One job as `python -m cifar_exp` with MLflow: (per-epoch rows as EpochClock's, with epoch seconds
    including evaluation), {process_s: start to exit, run_s: MLflow run start to close}."""
    import subprocess
    import tempfile

    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        args = [sys.executable, "-m", "cifar_exp", f"experiment={recipe}", f"seed={seed}", "trainer.verbose=0",
                "trainer.validation_freq=1",
                "trainer.checkpoint=false", f"mlflow.tracking_uri=sqlite:///{folder}/m.db", f"hydra.run.dir={folder}/run",
                *([f"dataset.path={data_path}"] if data_path != "-" else []), *overrides]
        started = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, cwd=folder)
        process_s = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
        client = MlflowClient(f"sqlite:///{folder}/m.db")
        run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]

        def history(key):
            return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

        epochs, total = [], 0.0
        for i, (accuracy, spent) in enumerate(zip(history("test_accuracy"), history("epoch_time")), 1):
            total += spent
            epochs.append({"epoch": i, "train_s": total, "epoch_train_s": spent, "accuracy": accuracy})
        return epochs, {"process_s": process_s, "run_s": (run.info.end_time - run.info.start_time) / 1000}


def seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_path", help="the CIFAR-10 copy (dataset.path); '-' for a dataset without a path")
    parser.add_argument("--recipes", nargs="+", default=["resnet9", "airbench"], help="cifar_exp/conf/experiment/ names")
    parser.add_argument("--process", action="store_true",
                        help="each job as its own `python -m cifar_exp` process with MLflow (process and run seconds)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.93, 0.94])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (after --)")
    args = parser.parse_intermixed_args()

    from omegaconf import OmegaConf

    from cifar_exp.training import fit as train
    from cifar_exp.validate import validate

    device = device_info()
    label = device["devices"][0] if device["gpu"] else "cpu"
    if not device["gpu"]:
        print("note: no GPU found; these are not figure 3's GPU numbers", file=sys.stderr)
    heads = [f"s to {t:.0%}" for t in args.thresholds]
    print(f"{'recipe':10} {'seed':>4} " + " ".join(f"{h:>10} {'excl. compile':>13}" for h in heads)
          + f" {'final acc':>9} {'epochs':>6}  device")
    rows = []
    for recipe in args.recipes:
        for seed in args.seeds:
            cfg = compose(recipe, seed, args.data_path, args.overrides)
            validate(cfg)
            if cfg.dataset.get("val_fraction"):
                sys.exit("dataset.val_fraction must be 0: the accuracy timed is the test split's")
            row = {"recipe": recipe, "seed": seed, "model": cfg.model.name,
                   "trainer": OmegaConf.to_container(cfg.trainer), "optimizer": OmegaConf.to_container(cfg.optimizer)}
            clock, tracker = epoch_clock(), tag_keeper()
            try:
                if args.process:
                    clock.epochs, timing = run_process(recipe, seed, args.data_path, args.overrides)
                    row.update(timing)
                    tracker.tags["data.eval_split"] = "test"
                else:
                    train.run(cfg, tracker, checkpoint_dir=None, extra_callbacks=[clock])
            except Exception as error:  # e.g. a diverged loss: recorded, and the other jobs still run
                rows.append({**row, "error": f"{type(error).__name__}: {error}", "per_epoch": clock.epochs})
                print(f"{recipe:10} {seed:>4} failed: {type(error).__name__}: {error}", flush=True)
                save(args, device, rows)
                continue
            assert tracker.tags.get("data.eval_split") == "test", tracker.tags
            summary = summarise(clock.epochs, args.thresholds)
            rows.append({**row, **summary, "per_epoch": clock.epochs})
            save(args, device, rows)  # after every job: a run cut short keeps what it measured
            cells = []
            for t in args.thresholds:
                hit = summary["reached"][f"{t:g}"]
                cells.append(f"{seconds(hit and hit['train_s']):>10} {seconds(hit and hit['train_s_excl_compile']):>13}")
            print(f"{recipe:10} {seed:>4} " + " ".join(cells)
                  + f" {summary['final_accuracy']:9.4f} {cfg.trainer.epochs:>6}  {label}", flush=True)
    print("\nover seeds: median s (with compile) among the seeds that reached it; final accuracy mean ± sd")
    for recipe, stats in save(args, device, rows)["summary"].items():
        if stats is None:
            print(f"{recipe:10} every job failed")
            continue
        cells = [f"{t:.0%}: {seconds(stats['median_train_s'][f'{t:g}'])} s ({stats['reached_by'][f'{t:g}']})"
                 for t in args.thresholds]
        print(f"{recipe:10} " + "   ".join(cells)
              + f"   final {stats['final_accuracy_mean']:.4f} ± {stats['final_accuracy_sd']:.4f}")
    print("wrote", args.out)


def save(args, device: dict, rows: list[dict]) -> dict:
    finished = [r for r in rows if "error" not in r]
    summary = {}
    for recipe in args.recipes:
        runs = [r for r in finished if r["recipe"] == recipe]
        summary[recipe] = across_seeds(runs, args.thresholds) if runs else None
    result = {
        "figure": "time_to_accuracy",
        "what": "training seconds (fit start to epoch end, per-epoch evaluation excluded, compilation included; "
                "'excl_compile' subtracts first epoch minus median later epoch) until the test accuracy after "
                "an epoch first reaches each threshold; null: never reached",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": ("process: per-epoch seconds from MLflow's epoch_time (evaluation included); process_s and run_s "
                 "per job" if args.process else "in-process, no MLflow"),
        "data_path": args.data_path, "recipes": args.recipes, "seeds": args.seeds,
        "thresholds": args.thresholds, "overrides": args.overrides, "device": device,
        "failed": len(rows) - len(finished), "summary": summary, "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
