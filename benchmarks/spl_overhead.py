"""Epoch time of self-paced learning against plain training: same model, data and process.

Measures the wall time of whole epochs (the v-step at the epoch's start included) for
no weighting, the v-step from an extra inference pass (`eval_pass`), and the v-step from
losses recorded while training (`train_pass`); the first epoch (compilation) is dropped.
Targets: at most 1.35x with eval_pass and 1.05x with train_pass.

    python benchmarks/spl_overhead.py [--samples 8192 --batch-size 256 --epochs 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "spl_overhead.json"
SHAPE = (32, 32, 3)
CLASSES = tuple(f"class_{k}" for k in range(10))


class EpochClock:
    """Wall and CPU seconds of each epoch, the v-step at its start included: `start` goes
    first in the callback list, `stop` last."""

    def __init__(self):
        import keras

        clock = self

        class Start(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.started = time.perf_counter(), time.process_time()

        class Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                clock.wall.append(time.perf_counter() - clock.started[0])
                clock.cpu.append(time.process_time() - clock.started[1])

        self.start, self.stop, self.wall, self.cpu, self.started = Start(), Stop(), [], [], None


def batches(x, y, sample_weights, batch_size, seed):
    """The input contract of training/fit.py: (x[idx], y[idx], sample_weights[idx]), reshuffled per epoch."""
    import keras

    class ShuffledBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return -(-len(x) // batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size:(i + 1) * batch_size]
            return x[idx], y[idx], sample_weights[idx]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return ShuffledBatches()


def build_model(x_train):
    """Seed 000's simple_cnn behind the input pipeline training/fit.py uses (uint8 in, flip, scale)."""
    import keras

    from cifar_exp.data.augment import build_augmentation, build_preprocessing
    from cifar_exp.models.builders import simple_cnn

    inputs = keras.Input(SHAPE, dtype="uint8")
    x = build_augmentation("flip", SHAPE)(inputs)
    x = build_preprocessing("scale", x_train)(x)
    return keras.Model(inputs, simple_cnn(SHAPE, len(CLASSES))(x))


class NoTracker:
    def log_figure(self, figure, artifact_file):
        pass

    def log_artifact(self, local_path, artifact_path=None):
        pass


class Run:
    """One setting: its own model, weights, batches and callbacks, trained an epoch at a time."""

    def __init__(self, losses_from: str | None, x, y, batch_size: int, seed: int):
        import keras
        from omegaconf import OmegaConf

        from cifar_exp.spl.callback import build_spl_callback

        keras.utils.set_random_seed(seed)
        sample_weights = np.ones(len(x), np.float32)
        spl_callbacks, targets = [], y
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
        if losses_from is not None:
            # A v-step at every epoch: no warm-up, so every timed epoch pays for it.
            cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "cifar_exp" / "conf" / "weighting" / "linear.yaml")
            cfg.losses_from, cfg.warmup_epochs = losses_from, 0
            spl = build_spl_callback(cfg, x_train=x, y_train=y, sample_weights=sample_weights,
                                     batch_size=batch_size, class_names=CLASSES, tracker=NoTracker())
            loss, metrics = spl.adapt_compile(loss, metrics)
            spl_callbacks, targets = [spl], spl.targets
        self.model = build_model(x)
        self.model.compile(keras.optimizers.Adam(1e-3), loss=loss, metrics=metrics)
        self.batches = batches(x, targets, sample_weights, batch_size, seed)
        self.clock = EpochClock()
        self.callbacks = [self.clock.start, *spl_callbacks, self.clock.stop]

    def epoch(self, epoch: int):
        self.model.fit(self.batches, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=self.callbacks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=8, help="per setting; the first is not timed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import keras

    from cifar_exp.data.dataset import make_synthetic

    x, y = make_synthetic(len(CLASSES), SHAPE, args.samples, seed=0)
    settings = {"none": None, "eval_pass": "eval_pass", "train_pass": "train_pass"}
    runs = {name: Run(losses_from, x, y, args.batch_size, seed=0) for name, losses_from in settings.items()}
    # Round-robin, one epoch of each setting in turn: load from other processes on a
    # shared machine then falls on all three alike.
    for epoch in range(args.epochs):
        for run in runs.values():
            run.epoch(epoch)
    timings = {"wall": {name: run.clock.wall[1:] for name, run in runs.items()},  # the first epoch compiles
               "cpu": {name: run.clock.cpu[1:] for name, run in runs.items()}}
    targets = {"eval_pass": 1.35, "train_pass": 1.05}
    # The median epoch, and the fastest one (the least disturbed by other processes).
    summary = {}
    for kind, seconds in timings.items():
        for statistic, reduce in (("median", np.median), ("fastest", np.min)):
            value = {name: float(reduce(s)) for name, s in seconds.items()}
            summary[f"{kind}_{statistic}"] = {"seconds": value,
                                              "ratio_to_plain": {n: value[n] / value["none"] for n in settings}}

    print(f"{'setting':<12}" + "".join(f"{key + ' s':>16}{'x plain':>9}" for key in summary) + f"{'target':>8}")
    for name in settings:
        row = "".join(f"{s['seconds'][name]:>16.3f}{s['ratio_to_plain'][name]:>9.3f}" for s in summary.values())
        print(f"{name:<12}{row}{targets.get(name, ''):>8}")

    result = {
        "what": "seconds per training epoch (v-step included), epochs after the first; wall and process CPU time",
        "model": "simple_cnn (seed 000) behind flip + scale, Adam, sparse CE from logits",
        "data": f"synthetic {args.samples} x {SHAPE} uint8, 10 classes",
        "batch_size": args.batch_size, "epochs_per_setting": args.epochs,
        "scheme": "linear, warmup_epochs=0 (a v-step every epoch)",
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
        "targets": targets, "summary": summary, "seconds_per_epoch": timings,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
