"""One training job: data, model, optimizer, `model.fit`, final evaluation, figures.

`run(cfg, tracker)` is called by job.py with a validated config and an open MLflow run;
it returns the final metrics. Imported only when a job runs (it imports Keras).
"""
from __future__ import annotations

import gc
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops
from omegaconf import OmegaConf

from cifar_exp import console
from cifar_exp.data import augment
from cifar_exp.data.dataset import DataSplits, load_dataset
from cifar_exp.data.resident import build_feed, has_accelerator, precision_policy
from cifar_exp.errors import ConfigError
from cifar_exp.models.initializers import apply_init, apply_l2
from cifar_exp.models.registry import build_model, model_spec
from cifar_exp.spl.callback import build_spl_callback
from cifar_exp.tracking import plots
from cifar_exp.training import checkpoints, outcome, shared_steps
from cifar_exp.training.batch_reads import ReadOnDemand
from cifar_exp.training.distribute import build_strategy, inference_batch_size
from cifar_exp.training.losses import LossSettings, build_loss
from cifar_exp.training.metrics import ConfusionAccuracy
from cifar_exp.training.optim import build_lr_schedule, build_optimizer
from cifar_exp.training.phases import PhaseTimer

log = logging.getLogger(__name__)


class TrainBatches(keras.utils.PyDataset):
    """Shuffled mini-batches of (uint8 images, labels, per-sample weights).

    The weights are read from `sample_weights` when each batch is made, so self-paced
    learning can change them in place between epochs without rebuilding the pipeline.
    """

    def __init__(self, x, y, sample_weights, batch_size: int, seed: int, first_epoch: int = 0, replicas: int = 1,
                 drop_remainder: bool = False):
        super().__init__()
        self.x, self.y, self.sample_weights, self.batch_size = x, y, sample_weights, batch_size
        self.replicas, self.drop_remainder = replicas, drop_remainder
        self.seed, self.epoch = seed, first_epoch
        self.order = self._permutation()

    def _permutation(self):
        # A function of (seed, epoch), so a resumed job sees the same order as an uninterrupted one.
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self):
        return self.count(len(self.y), self.batch_size, self.replicas, self.drop_remainder)

    @staticmethod
    def count(n: int, batch_size: int, replicas: int = 1, drop_remainder: bool = False) -> int:
        """Batches per epoch. With `drop_remainder` (trainer.drop_remainder) only full batches: the last
        n mod batch_size samples of each epoch's order are skipped, different ones each epoch. Else a
        last batch smaller than the replica count would leave a replica empty (TensorFlow rejects
        that), so it is dropped: < `replicas` samples, different ones each epoch."""
        full, rest = divmod(n, batch_size)
        return full + (not drop_remainder and rest >= replicas)

    def __getitem__(self, index):
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[idx], self.y[idx], self.sample_weights[idx]

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._permutation()


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics, named after the split really evaluated, sent to MLflow.

    Keras calls the evaluated split `val_*`; when it is the test split we log `test_*`.
    Adds the learning rate, the epoch's wall time (`epoch_time`, s, training + evaluation) and its
    training alone (`epoch_train_time`, s: what airbench94 and most papers time per epoch).
    With a checkpoint folder, each epoch's metrics are written there *before* the
    checkpoint and sent to MLflow *after* it (by `sender()`), so a job killed at any
    moment and resumed logs every epoch exactly once. Epochs trained again (the checkpoint
    fell back to an older state) are not sent again: MLflow keeps each step's first values.
    """

    def __init__(self, tracker, eval_split: str, checkpoint_dir: str | None = None, first_epoch: int = 0):
        super().__init__()
        self.tracker, self.eval_split = tracker, eval_split
        self.record = Path(checkpoint_dir) / "epoch_metrics.json" if checkpoint_dir else None
        self.epochs: list[dict[str, float]] = []
        self.in_store = tracker.logged_epochs()  # steps 1..in_store are in the run already
        if first_epoch:
            self.epochs = self._recorded(first_epoch)
        self.sent = 0  # send() skips the steps already in the store

    def _recorded(self, first_epoch: int) -> list[dict[str, float]]:
        """The metrics of the epochs a resumed job does not train again: from the checkpoint's
        record, or from the MLflow run when the record is unreadable (a kill while it was written)."""
        try:
            epochs = json.loads(self.record.read_text())[:first_epoch]
            if len(epochs) == first_epoch:
                return epochs
        except (OSError, ValueError):
            pass
        epochs = self.tracker.logged_history()[:first_epoch]
        if len(epochs) < first_epoch:
            log.warning("metrics of epochs %d..%d are neither in %s nor in the MLflow run; their curves have a gap",
                        len(epochs) + 1, first_epoch, self.record)
            epochs += [{} for _ in range(first_epoch - len(epochs))]
        return epochs

    @property
    def history(self) -> dict[str, list[float]]:
        keys = dict.fromkeys(k for epoch in self.epochs for k in epoch)
        return {k: [epoch[k] for epoch in self.epochs if k in epoch] for k in keys}

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.evaluating_s = time.perf_counter(), 0.0

    def on_test_begin(self, logs=None):
        wait_for_queued_steps(self.model)
        self.test_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.evaluating_s += time.perf_counter() - self.test_started

    def on_epoch_end(self, epoch, logs=None):
        metrics = {}
        for key, value in (logs or {}).items():
            if key.startswith("val_"):
                key = f"{self.eval_split}_{key[4:]}"
            metrics[key] = float(value)
        metrics["lr"] = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics["epoch_time"] = time.perf_counter() - self.started
        metrics["epoch_train_time"] = metrics["epoch_time"] - self.evaluating_s
        self.epochs.append(metrics)
        if self.record:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            partial = self.record.with_suffix(".tmp")
            partial.write_text(json.dumps(self.epochs))
            partial.replace(self.record)

    def send(self) -> None:
        while self.sent < len(self.epochs):
            if self.sent + 1 > self.in_store:
                self.tracker.log_metrics(self.epochs[self.sent], step=self.sent + 1)
            self.sent += 1

    def sender(self):
        """The callback that sends recorded epochs; place it after the checkpoint."""
        logger = self

        class Send(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                logger.send()  # epochs a killed run recorded but never sent

            def on_epoch_end(self, epoch, logs=None):
                logger.send()

        return Send()


def build_classifier(cfg, data: DataSplits, build_core=None):
    """uint8 images -> preprocessing -> augmentation (training only) -> model -> float32 logits;
    with `trainer.tta`, inference averages the model's logits over the image's mirror (and shifted) views.

    `build_core(cfg, data)`, when given, returns the initialised model instead (transfer.py's adapters).
    """
    kernel_l2, bias_l2 = cfg.model.get("kernel_l2", 0.0), cfg.model.get("bias_l2", 0.0)
    # The loss's numbers as variables (compiled once for a sweep over them); fit() finds it by name.
    settings = LossSettings(cfg.trainer.label_smoothing, kernel_l2, bias_l2, name="loss_settings")
    if build_core is not None:
        core = build_core(cfg, data)
    else:
        core = build_model(cfg.model, data.image_shape, data.num_classes)
        apply_init(core, cfg.init)
        apply_l2(core, kernel_l2, bias_l2, settings)
    inputs = keras.Input(data.image_shape, dtype="uint8", name="images")
    preprocessing = augment.build_preprocessing(cfg.dataset.preprocess, data.x_train, data_identity(data))
    if build_core is None:  # what the model needs before fit (airbench: whitening from the training images)
        model_spec(cfg.model.name).prepare(core, preprocessing, data.x_train)
    x = preprocessing(inputs)
    augmentation = augment.build_augmentation(cfg.dataset.augment, data.image_shape)
    if augmentation is not None:
        x = augmentation(x)
    network = augment.with_tta(core, cfg.trainer.tta)
    # Under mixed precision the logits, softmax and loss stay float32.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(network(x))
    return keras.Model(inputs, settings(logits), name=f"{core.name}_classifier")


def data_identity(data: DataSplits):
    """A hashable identity of the training images (the source file's sha256, which of its images, their
    shape), for statistics kept across the jobs of a process; None when the source has no checksum
    (synthetic data: cheap to recompute)."""
    digest, index = data.info.get("sha256"), data.info.get("train_index")
    if not digest or index is None:
        return None
    import hashlib

    return data.name, digest, hashlib.sha1(np.ascontiguousarray(index).tobytes()).hexdigest(), data.x_train.shape


def progress_verbosity(setting) -> int:
    """Keras' verbosity: `auto` is its bar on a terminal and nothing otherwise, where
    console.progress_callback's line per epoch (with elapsed time and ETA) stands instead."""
    if setting == "auto":
        return 1 if sys.stdout.isatty() else 0
    return int(setting)


class Checkpoint(keras.callbacks.BackupAndRestore):
    """Keras' per-epoch backup (weights, optimizer state, epoch) in the job's checkpoint folder.

    Keeps the previous epoch's copy too, so a kill during a save falls back one epoch
    (checkpoints.restore_point picks the state to resume).
    """

    def __init__(self, folder: str, timer: PhaseTimer | None = None):
        super().__init__(folder, save_freq="epoch", double_checkpoint=True, delete_checkpoint=True)
        self.timer = timer or PhaseTimer()

    def wants_batch(self, batch) -> bool:
        return False  # it saves at epoch ends only: no batch's logs need reading for it (batch_reads.py)

    def on_epoch_end(self, epoch, logs=None):
        with self.timer.phase("checkpoint"):
            super().on_epoch_end(epoch, logs)


def wait_for_queued_steps(model) -> None:
    """Block until the training steps the host queued have run (one read of the optimizer's step
    counter). The host runs ahead of the device (JAX dispatches asynchronously: on a CPU a whole epoch
    can be queued), so an evaluation's clock started without this counts training time."""
    if model.optimizer is not None:
        ops.convert_to_numpy(model.optimizer.iterations)


class PhaseClock(keras.callbacks.Callback):
    """Times, inside `model.fit`, the first training step (`compile`: tracing, compiling and running
    it, up to the read of its logs) and the evaluations of the evaluated split (`validate`)."""

    def __init__(self, timer: PhaseTimer):
        super().__init__()
        self.timer, self.first_step_s = timer, None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def wants_batch(self, batch) -> bool:
        return self.first_step_s is None

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.started
            self.timer.add("compile", self.first_step_s)

    def on_test_begin(self, logs=None):
        wait_for_queued_steps(self.model)  # their seconds stay in `train`
        self.test_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.timer.add("validate", time.perf_counter() - self.test_started)


def run(cfg, tracker, checkpoint_dir: str | None = None, extra_callbacks=(), build_core=None,
        timer: PhaseTimer | None = None) -> dict[str, float]:
    """Train and evaluate one job; its phases' wall seconds (`timer`'s, PhaseTimer) go to the run as
    `time/*` metrics at the end, whether it finished or not, with `memory/rss_mb`."""
    timer = timer or PhaseTimer()
    tracker = timer.timed(tracker, "tracking")  # every call to MLflow counts as time/tracking
    with timer.phase("release"):  # Keras' global state: the previous job collected its garbage at its end
        keras.backend.clear_session(free_memory=False)
    earlier_gradients = set(_custom_gradient_registry())
    keras.utils.set_random_seed(cfg.seed)
    if cfg.trainer.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    precision = precision_policy(cfg.trainer.precision)
    if cfg.trainer.precision == "auto":
        tracker.set_tags({"precision": precision})
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _train_and_evaluate(cfg, tracker, checkpoint_dir, list(extra_callbacks), build_core, timer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        with timer.phase("release"):
            release_job_state(earlier_gradients)
        log_phases(tracker, timer)


def _custom_gradient_registry() -> dict:
    """TensorFlow's global gradient registry ({name: gradient function}), or {} under another backend
    or a TensorFlow without it (a private attribute: looked up defensively)."""
    if keras.backend.backend() != "tensorflow":
        return {}
    from tensorflow.python.framework import ops as tf_ops

    registry = getattr(getattr(tf_ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else {}


FULL_COLLECTION_EVERY = 10  # jobs: see release_job_state
_released_jobs = 0


def release_job_state(earlier_gradients=frozenset()) -> None:
    """Free what a finished job leaves in the process before the next job of a multirun allocates.

    Under TensorFlow, each traced step registers `CustomGradient-<n>` functions in TensorFlow's global
    gradient registry whose closures hold the step's whole graph, so no collection frees it
    (tensorflow#97697, keras-team/keras#20245): the entries this job added (not in
    `earlier_gradients`) are dropped; no later job uses them (each traces its own step). Then
    Keras' global state, a garbage collection, and any matplotlib figure left open. Measured with
    benchmarks/memory_across_jobs.py (30 tiny jobs, one process): 12.6 MB of growth per job before.
    JAX's compiled programs stay cached (a sweep compiles its step once)."""
    registry = _custom_gradient_registry()
    for name in [n for n in registry if str(n).startswith("CustomGradient-") and n not in earlier_gradients]:
        registry.pop(name, None)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    # What is still alive after a job mostly lives on (modules, caches, compiled programs): frozen, the
    # next job's collection does not walk it again (the collection took 0.47-0.55 s a job on the H200
    # host). A frozen object that later becomes cyclic garbage is collected only at every
    # FULL_COLLECTION_EVERY-th job, when everything is unfrozen first (30 tiny jobs: 0.47 MB/job of
    # growth with no such full collection, against 0.23 without freezing; benchmarks/README.md).
    global _released_jobs
    _released_jobs += 1
    if _released_jobs % FULL_COLLECTION_EVERY == 0:
        gc.unfreeze()
    keras.backend.clear_session(free_memory=True)  # includes gc.collect()
    if sys.exc_info()[1] is None:  # a failed job's traceback still holds its model: left collectable
        gc.freeze()


def log_phases(tracker, timer: PhaseTimer) -> None:
    """The `time/*` and `memory/rss_mb` figures, at the tracker's `phase_step` (0, one more per
    process that resumed the run: each step logged once); a store that refuses them costs the run
    nothing else (RunTracker keeps refused values for its next write)."""
    try:
        tracker.log_metrics(timer.metrics(), step=getattr(tracker, "phase_step", 0))
    except Exception as error:
        log.warning("could not log the job's phase times (%s)", error)


def _train_and_evaluate(cfg, tracker, checkpoint_dir, extra_callbacks, build_core, timer) -> dict[str, float]:
    with timer.phase("data"):
        data = load_dataset(cfg.dataset, cfg.seed)
    tracker.set_tags({"data.n_train": len(data.y_train), "data.n_test": len(data.y_test),
                      "data.n_val": 0 if data.y_val is None else len(data.y_val),
                      "data.eval_split": data.eval_split})
    epochs, batch_size = cfg.trainer.epochs, cfg.trainer.batch_size

    first_epoch = checkpoints.restore_point(checkpoint_dir)
    # First: a multi-worker strategy must configure TensorFlow before anything starts its runtime.
    strategy = build_strategy(cfg.trainer.strategy)
    replicas = strategy.num_replicas_in_sync
    drop_remainder = cfg.trainer.drop_remainder
    if drop_remainder and len(data.y_train) < batch_size:
        raise ConfigError("trainer.drop_remainder", "true", f"false, or a trainer.batch_size of at most "
                          f"{len(data.y_train)} (the training samples; no full batch of {batch_size} to train on)")
    steps_per_epoch = TrainBatches.count(len(data.y_train), batch_size, replicas, drop_remainder)
    if drop_remainder and len(data.y_train) % batch_size > 0.1 * len(data.y_train):
        log.warning("trainer.drop_remainder: each epoch skips %d of its %d training samples (%.0f%%); "
                    "a smaller trainer.batch_size (or drop_remainder=false) trains on more of them",
                    len(data.y_train) % batch_size, len(data.y_train), 100 * (len(data.y_train) % batch_size)
                    / len(data.y_train))
    # Images as arrays on the host, or as indices into a copy resident on the accelerator.
    with timer.phase("data"):
        feed = build_feed(cfg.trainer.data_on_device, data)
    # Self-paced learning rewrites these per-sample weights before each epoch (None: plain training).
    sample_weights = np.ones(len(data.y_train), dtype="float32")
    spl = build_spl_callback(cfg.weighting, x_train=feed.train, y_train=data.y_train,
                             sample_weights=sample_weights,
                             batch_size=inference_batch_size(len(data.y_train), batch_size, replicas),
                             class_names=data.class_names,
                             tracker=tracker, noisy_mask=data.info.get("noisy_mask"),
                             checkpoint_dir=checkpoint_dir, first_epoch=first_epoch)

    with strategy.scope(), timer.phase("build"):
        classifier = build_classifier(cfg, data, build_core)
        model = feed.training_model(classifier)  # the classifier itself, or indices -> resident images -> it
        schedule = build_lr_schedule(cfg.lr_schedule, cfg.optimizer.lr, steps_per_epoch, epochs)
        # `accuracy` that also counts (true, predicted) pairs: after the last evaluation it holds
        # the test split's confusion matrix, so the figure needs no extra pass over the test set.
        accuracy = ConfusionAccuracy(data.num_classes)
        # `loss` is what the optimizer minimises: smoothed (label smoothing), weighted (self-paced
        # learning: compiled `metrics` never see sample weights) and plus the L2 penalties;
        # `cross_entropy` is the plain one, comparable between runs and bounded by outcome.py.
        loss = build_loss(cfg.trainer.label_smoothing, classifier.get_layer("loss_settings").label_smoothing)
        metrics = [accuracy, keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="cross_entropy")]
        if spl is not None:  # train_pass: targets carry sample indices so losses are recorded by index
            loss, metrics = spl.adapt_compile(loss, metrics)
        optimizer = build_optimizer(cfg.optimizer, schedule, batch_size=batch_size, total_steps=epochs * steps_per_epoch)
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                      jit_compile=cfg.trainer.jit_compile)
        # Under JAX, a later job of the same program reuses this one's traced steps (shared_steps.py).
        sharing = shared_steps.share(model, shared_steps.program_key(cfg, classifier, model))

    targets = data.y_train if spl is None else spl.targets
    batches = TrainBatches(feed.train, targets, sample_weights, batch_size, seed=cfg.seed, first_epoch=first_epoch,
                           replicas=replicas, drop_remainder=drop_remainder)
    eval_x, eval_y = (feed.val, data.y_val) if data.eval_split == "val" else (feed.test, data.y_test)
    logger = EpochLogger(tracker, data.eval_split, checkpoint_dir, first_epoch)
    callbacks = [] if spl is None else [spl]
    # The divergence check runs before the checkpoint so a diverged epoch is never saved.
    callbacks += [logger, outcome.divergence_callback(data.num_classes, data.eval_split)]
    if checkpoint_dir:
        callbacks.append(Checkpoint(checkpoint_dir, timer))
    callbacks.append(logger.sender())
    if cfg.get("optuna_trial"):
        from cifar_exp.sweeps.pruning import build_trial_callback

        callbacks.append(build_trial_callback(cfg, tracker))
    if build_core is None:  # the model's own (airbench: the whitening bias frozen after its epochs)
        callbacks += model_spec(cfg.model.name).callbacks(cfg.model, classifier)
    callbacks += augment.training_callbacks(classifier)  # alternating flip's epoch parity
    callbacks += extra_callbacks
    # First, so an epoch's line is out before a later callback stops the job in it.
    callbacks.insert(0, console.progress_callback(epochs, data.eval_split, on_cpu=not has_accelerator(),
                                                  print_epochs=cfg.trainer.verbose == "auto"))
    callbacks.insert(0, PhaseClock(timer))

    # shuffle=False: TrainBatches shuffles by (seed, epoch); Keras' own shuffle of batch order
    # draws from Python's global RNG, which a resumed job could not reproduce.
    # ReadOnDemand: a batch's logs are read from the device only where a callback asks for them.
    verbose = progress_verbosity(cfg.trainer.verbose)
    with timer.phase("train"):
        model.fit(batches, epochs=epochs, validation_data=(eval_x, eval_y),
                  validation_batch_size=inference_batch_size(len(eval_y), batch_size, replicas),
                  validation_freq=evaluated_epochs(cfg.trainer.validation_freq, epochs),
                  callbacks=ReadOnDemand(callbacks, model, verbose, epochs, len(batches)), verbose=verbose,
                  shuffle=False)

    test_batch_size = inference_batch_size(len(data.y_test), batch_size, replicas)
    with timer.phase("evaluate"):
        final = _final_test_metrics(model, feed, data, logger, test_batch_size)
    outcome.check_metrics(final, data.num_classes, "the final evaluation")
    if data.eval_split != "test":  # otherwise the last epoch already logged these values
        tracker.log_metrics(final, step=len(logger.epochs))
    outcome.record_learning_outcome(tracker, final, data.y_test, step=len(logger.epochs))
    _log_artifacts(cfg, tracker, model, classifier, feed, data, logger, test_batch_size, accuracy.matrix(), timer)
    tag = shared_steps.run_tag(sharing)  # whether its steps were its own, final evaluation included (docs/tracking.md)
    if tag:
        tracker.set_tags({"shared_steps": tag})
    # Sweepers may optimise the last validation metrics (already logged per epoch).
    final.update({key: values[-1] for key, values in logger.history.items() if key.startswith("val_")})
    return final


FINAL_KEYS = ("loss", "accuracy", "cross_entropy")


def evaluated_epochs(every: int, epochs: int) -> list[int]:
    """Keras' `validation_freq` for `trainer.validation_freq`: the epochs (1-based) whose end evaluates
    the evaluated split: every `every`-th and always the last (the final metrics come from it)."""
    return sorted({*range(every, epochs + 1, every), epochs})


def _final_test_metrics(model, feed, data, logger, batch_size) -> dict[str, float]:
    """Test loss/accuracy/cross-entropy of the final model; the last epoch's when it evaluated test."""
    last = logger.epochs[-1] if logger.epochs else {}
    if data.eval_split == "test" and "test_loss" in last:
        return {f"test_{k}": last[f"test_{k}"] for k in FINAL_KEYS if f"test_{k}" in last}
    results = model.evaluate(feed.test, data.y_test, batch_size=batch_size, verbose=0, return_dict=True)
    return {f"test_{k}": float(results[k]) for k in FINAL_KEYS if k in results}


def _log_artifacts(cfg, tracker, model, classifier, feed, data, logger, batch_size, counts, timer) -> None:
    """Figures, the resolved config, the confusion matrix (`counts`: the last evaluation's) and the model."""
    with timer.phase("plots"):  # drawing; rendering and sending them is time/tracking
        tracker.log_figure(plots.learning_curves(logger.epochs, data.eval_split), "learning_curves.png")
    if counts.sum() != len(data.y_test):  # the last evaluation was not the test split's (a job resumed when done)
        with timer.phase("evaluate"):
            predicted = np.argmax(model.predict(feed.test, batch_size=batch_size, verbose=0), axis=1)
        k = data.num_classes
        counts = np.bincount(data.y_test * k + predicted, minlength=k * k).reshape(k, k)
    with timer.phase("plots"):
        tracker.log_figure(plots.confusion_matrix(counts, data.class_names), "confusion_matrix.png")
    tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    tracker.log_text(",".join(["true\\predicted", *data.class_names]) + "\n" + "\n".join(
        ",".join([name, *map(str, row)]) for name, row in zip(data.class_names, counts)), "confusion_matrix.csv")
    if cfg.mlflow.log_model:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.keras"
            with timer.phase("save_model"):
                classifier.save(path)  # takes images, wherever training read them from
            tracker.log_artifact(str(path))
