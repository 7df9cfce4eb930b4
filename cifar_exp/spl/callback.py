"""Self-paced learning in a Keras fit: the v-step as a callback that rewrites the sample weights.

The θ-step is plain `model.fit` with per-sample weights; before each epoch the callback
computes every training sample's loss (one batched inference pass, or the losses recorded
while training), solves for v in closed form (weighting.py) and writes it in place.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import ops

from cifar_exp.spl.weighting import Pace

log = logging.getLogger(__name__)


def build_spl_callback(cfg_weighting, *, x_train, y_train, sample_weights, batch_size, class_names,
                       tracker, noisy_mask=None, checkpoint_dir=None, first_epoch=0):
    """The v-step callback for `cfg.weighting`, or None for `name: none`.

    `x_train` is what the training model takes for the training set (uint8 images, or their
    indices when the images are resident on the device: resident.py); `y_train` the labels.
    `sample_weights` (float32, one per training sample) is what the training PyDataset
    reads batch by batch; the callback overwrites it in place before every epoch.
    `noisy_mask` (bool, optional) marks the samples whose label was corrupted, to log
    how many of them stay active.
    With a `checkpoint_dir`, the pace's state is saved there at every epoch's end (before
    the model checkpoint), and a job resumed at `first_epoch` continues from it.
    With `losses_from: train_pass`, training/fit.py must also feed `callback.targets` instead of
    `y_train` and compile with `callback.adapt_compile(loss, metrics)` inside the strategy
    scope, so that each sample's training loss is recorded by its index.
    """
    if cfg_weighting.name == "none":
        return None
    if not (isinstance(sample_weights, np.ndarray) and sample_weights.dtype == np.float32
            and sample_weights.shape == (len(x_train),)):
        raise ValueError(f"sample_weights must be the float32 numpy array of shape ({len(x_train)},) "
                         f"that the training batches read, got {sample_weights!r:.80}")
    callback = SelfPacedLearning(Pace(cfg_weighting), cfg_weighting.losses_from, x_train=x_train, y_train=y_train,
                                 sample_weights=sample_weights, batch_size=batch_size, class_names=class_names,
                                 tracker=tracker, noisy_mask=noisy_mask, checkpoint_dir=checkpoint_dir)
    if first_epoch:
        callback.restore(first_epoch)
    return callback


class SelfPacedLearning(keras.callbacks.Callback):
    """At each epoch's start: per-sample losses -> v (in place); at its end: v's statistics into `logs`."""

    def __init__(self, pace: Pace, losses_from: str, *, x_train, y_train, sample_weights, batch_size,
                 class_names, tracker, noisy_mask=None, checkpoint_dir=None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.pace, self.losses_from = pace, losses_from
        self.x_train, self.y_train = x_train, np.asarray(y_train).reshape(-1).astype(np.int32)
        self.sample_weights, self.batch_size = sample_weights, batch_size
        self.class_names, self.tracker = tuple(class_names), tracker
        self.noisy_mask = None if noisy_mask is None else np.asarray(noisy_mask, bool)
        self.recorder: PerSampleLossRecorder | None = None
        self.train_losses: np.ndarray | None = None  # nats, the latest recorded in training (train_pass)
        self.losses: np.ndarray | None = None  # nats, the losses behind the current v
        self.step = None                       # the current weighting.VStep
        self.histogram_epochs: set[int] = set()
        self.last_epoch: int | None = None

    # --- wiring for losses_from: train_pass -------------------------------------------
    @property
    def targets(self) -> np.ndarray:
        """What to feed as y: the labels, or (label, index) pairs when training losses are recorded."""
        if self.losses_from != "train_pass":
            return self.y_train
        return np.stack([self.y_train, np.arange(len(self.y_train), dtype=np.int32)], axis=1)

    def adapt_compile(self, loss, metrics=()):
        """(loss, metrics) for model.compile; with train_pass they read the label column of
        (label, index) targets and a recorder metric keeps each sample's last training loss.
        Call it where the model is compiled (inside the distribution strategy's scope)."""
        if self.losses_from != "train_pass":
            return loss, list(metrics)
        self.recorder = PerSampleLossRecorder(len(self.y_train))
        return LabelColumnLoss(loss), [LabelColumnMetric(_as_metric(m)) for m in metrics] + [self.recorder]

    # --- the v-step -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.losses_from == "train_pass" and self.recorder is None:
            raise RuntimeError("weighting.losses_from=train_pass needs the model compiled with "
                               "callback.adapt_compile(...) and fed callback.targets")
        first, last = self.pace.warmup_epochs, self.params["epochs"] - 1
        self.histogram_epochs = {first, (first + last) // 2}

    def on_epoch_begin(self, epoch, logs=None):
        losses = self.current_losses() if self.pace.needs_losses(epoch) else None
        self.step = self.pace.v_step(epoch, losses, self.params["epochs"])
        if losses is None:
            self.sample_weights[:] = 1.0
        else:
            self.sample_weights[:] = self.step.v
            self.losses = losses
        log.info("self-paced learning, epoch %d: lambda=%s, active fraction %.3f, mean v %.3f", epoch + 1,
                 "warm-up" if self.step.lam is None else f"{self.step.lam:.4g}",
                 self.active_fraction(), float(self.sample_weights.mean()))

    def collect_train_losses(self):
        """Move the losses recorded since the last epoch began out of the recorder."""
        recorded, visited = self.recorder.take()
        if self.train_losses is None:
            self.train_losses = np.full(len(recorded), np.nan, np.float32)
        self.train_losses[visited] = recorded[visited]

    def current_losses(self) -> np.ndarray:
        """Every training sample's cross-entropy (nats) under the current model."""
        if self.losses_from == "train_pass" and self.train_losses is not None and not np.isnan(self.train_losses).any():
            return self.train_losses.copy()
        # eval_pass, or train_pass before an epoch has recorded every sample (no warm-up).
        return self.eval_losses()

    def eval_losses(self) -> np.ndarray:
        """One batched inference pass over the training set: no augmentation, no dropout."""
        # The training batch size: it fits, and larger batches measured slower on CPU.
        logits = self.model.predict(self.x_train, batch_size=self.batch_size, verbose=0)
        losses = keras.losses.sparse_categorical_crossentropy(
            self.y_train, ops.cast(logits, "float32"), from_logits=True)
        return ops.convert_to_numpy(losses).astype(np.float32)

    # --- what is logged ---------------------------------------------------------------
    def active_fraction(self, mask=None) -> float:
        active = self.sample_weights > 0
        return float(active.mean() if mask is None else active[mask].mean())

    def epoch_stats(self) -> dict:
        stats = {"spl_active_fraction": self.active_fraction(),
                 "spl_mean_v": float(self.sample_weights.mean()),
                 "spl_lambda_raised": float(self.step.guard_raised)}
        if self.step.lam is not None:
            stats["spl_lambda"] = float(self.step.lam)
        if self.step.target_fraction is not None:
            stats["spl_target_fraction"] = float(self.step.target_fraction)
        for k, name in enumerate(self.class_names):
            if np.any(self.y_train == k):
                stats[f"spl_active_fraction_class_{name}"] = self.active_fraction(self.y_train == k)
        if self.noisy_mask is not None and self.noisy_mask.any():
            stats["spl_active_fraction_noisy"] = self.active_fraction(self.noisy_mask)
            stats["spl_active_fraction_clean"] = self.active_fraction(~self.noisy_mask)
        return stats

    def on_epoch_end(self, epoch, logs=None):
        if self.recorder is not None:
            self.collect_train_losses()
        if logs is not None:
            logs.update(self.epoch_stats())
        if epoch in self.histogram_epochs:
            self.log_histogram(epoch)
        self.last_epoch = epoch
        if self.checkpoint_dir:
            self.save_state(epoch + 1)

    # --- surviving interruption -------------------------------------------------------
    # One file per finished epoch, the last two kept: the model checkpoint may fall back
    # one epoch (a kill while it saves), and the pace state must match the epoch it resumes.
    STATE_FILE = "spl_state_epoch_{:04d}.npz"

    def save_state(self, finished_epochs: int) -> None:
        """λ, the start fraction of the target pace and the losses behind v, as the job's
        checkpoint must hold them for a resumed run to weight exactly as an uninterrupted one."""
        folder = Path(self.checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        missing = np.full(len(self.y_train), np.nan, np.float32)
        partial = folder / "spl_state.tmp"
        with open(partial, "wb") as file:
            np.savez(file, lam=np.nan if self.pace.lam is None else self.pace.lam,
                     start_fraction=np.nan if self.pace.start_fraction is None else self.pace.start_fraction,
                     train_losses=missing if self.train_losses is None else self.train_losses,
                     losses=missing if self.losses is None else self.losses)
        partial.replace(folder / self.STATE_FILE.format(finished_epochs))
        for old in folder.glob("spl_state_epoch_*.npz"):
            if old.name < self.STATE_FILE.format(finished_epochs - 1):
                old.unlink(missing_ok=True)

    def restore(self, first_epoch: int) -> None:
        """Continue the pace of a job resumed after `first_epoch` finished epochs."""
        path = Path(self.checkpoint_dir or ".") / self.STATE_FILE.format(first_epoch)
        if not (self.checkpoint_dir and path.exists()):
            log.warning("self-paced learning: no saved state for epoch %d in %s; lambda is re-anchored "
                        "on the current losses", first_epoch, self.checkpoint_dir)
            return
        with np.load(path) as state:
            lam, start = float(state["lam"]), float(state["start_fraction"])
            train_losses, losses = state["train_losses"], state["losses"]
        self.pace.lam = None if math.isnan(lam) else lam
        self.pace.start_fraction = None if math.isnan(start) else start
        self.train_losses = None if np.isnan(train_losses).all() else train_losses
        self.losses = None if np.isnan(losses).all() else losses

    def on_train_end(self, logs=None):
        if self.last_epoch is None:
            return
        if self.last_epoch not in self.histogram_epochs:
            self.log_histogram(self.last_epoch)
        self.log_final_weights()

    def log_histogram(self, epoch: int):
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

        figure = Figure(figsize=(6, 4))
        axes = figure.add_subplot()
        bins = np.linspace(0, 1, 41)
        if self.noisy_mask is not None and self.noisy_mask.any():
            axes.hist([self.sample_weights[~self.noisy_mask], self.sample_weights[self.noisy_mask]],
                      bins=bins, stacked=True, label=["clean label", "noisy label"])
            axes.legend()
        else:
            axes.hist(self.sample_weights, bins=bins)
        lam = "warm-up" if self.step.lam is None else f"λ = {self.step.lam:.3g}"
        axes.set(xlabel="v (sample weight)", ylabel="training samples", yscale="log",
                 title=f"epoch {epoch + 1}: {lam}, active {self.active_fraction():.1%}")
        self.tracker.log_figure(figure, f"spl/v_histogram_epoch_{epoch + 1:03d}.png")

    def log_final_weights(self):
        """CSV artifact: the v of the last epoch per training index, with the loss that set it."""
        columns = [np.arange(len(self.y_train)), self.y_train,
                   np.full(len(self.y_train), np.nan) if self.losses is None else self.losses,
                   self.sample_weights]
        header = "index,label,loss,v"
        if self.noisy_mask is not None:
            columns.append(self.noisy_mask.astype(int))
            header += ",noisy_label"
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "final_v.csv")
            np.savetxt(path, np.column_stack(columns), delimiter=",", header=header, comments="",
                       fmt=["%d", "%d", "%.6g", "%.6g"] + (["%d"] if self.noisy_mask is not None else []))
            self.tracker.log_artifact(path, "spl")


# --- recording per-sample training losses (losses_from: train_pass) -------------------
def split_targets(y_true):
    """(labels, indices) from (label, index) targets; (y_true, None) for plain labels."""
    if len(y_true.shape) == 2 and y_true.shape[-1] == 2:
        return y_true[:, 0], ops.cast(y_true[:, 1], "int32")
    return y_true, None


@keras.saving.register_keras_serializable(package="cifar_exp")
class PerSampleLossRecorder(keras.metrics.Metric):
    """Each training sample's unweighted cross-entropy in training, by index, since the last take().

    A metric because metric state is what Keras threads through a compiled train step on
    every backend (JAX included) and sums over replicas under tf.distribute; the tables
    hold sums and visit counts, so a sample seen on several replicas or epochs between two
    takes gets the mean of its losses. `result()` is the unweighted mean loss of the epoch
    (of the validation data too, where targets are plain labels and nothing is recorded).
    """

    def __init__(self, num_samples: int, name="unweighted_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_samples = num_samples
        self.loss_sums = self.add_variable((num_samples,), "zeros", dtype="float32", name="loss_sums")
        self.visits = self.add_variable((num_samples,), "zeros", dtype="float32", name="visits")
        self.total = self.add_variable((), "zeros", dtype="float32", name="total")
        self.count = self.add_variable((), "zeros", dtype="float32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, indices = split_targets(y_true)
        per_sample = keras.losses.sparse_categorical_crossentropy(labels, ops.cast(y_pred, "float32"),
                                                                  from_logits=True)
        self.total.assign_add(ops.sum(per_sample))
        self.count.assign_add(ops.sum(ops.ones_like(per_sample)))
        if indices is not None:
            at = ops.expand_dims(indices, -1)
            self.loss_sums.assign_add(ops.scatter(at, per_sample, (self.num_samples,)))
            self.visits.assign_add(ops.scatter(at, ops.ones_like(per_sample), (self.num_samples,)))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        # Keras resets metrics at every epoch and every evaluate(); the tables must
        # survive until the next v-step takes them, so only the running mean resets.
        self.total.assign(0.0)
        self.count.assign(0.0)

    def take(self):
        """(mean loss per sample, visited) since the last take, as numpy; then clear the tables."""
        sums, visits = ops.convert_to_numpy(self.loss_sums), ops.convert_to_numpy(self.visits)
        self.loss_sums.assign(ops.zeros((self.num_samples,)))
        self.visits.assign(ops.zeros((self.num_samples,)))
        visited = visits > 0
        return np.where(visited, sums / np.maximum(visits, 1.0), np.nan).astype(np.float32), visited

    def get_config(self):
        return {**super().get_config(), "num_samples": self.num_samples}


@keras.saving.register_keras_serializable(package="cifar_exp")
class LabelColumnLoss(keras.losses.Loss):
    """The wrapped loss, on the label column of (label, index) targets."""

    def __init__(self, inner: keras.losses.Loss):
        super().__init__(name=inner.name, reduction=inner.reduction, dtype=inner.dtype)
        self.inner = inner

    def call(self, y_true, y_pred):
        return self.inner.call(split_targets(y_true)[0], y_pred)

    def get_config(self):
        return {"inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["inner"]))


@keras.saving.register_keras_serializable(package="cifar_exp")
class LabelColumnMetric(keras.metrics.Metric):
    """The wrapped metric, on the label column of (label, index) targets."""

    def __init__(self, inner: keras.metrics.Metric):
        super().__init__(name=inner.name, dtype=inner.dtype)
        self.inner = inner

    def update_state(self, y_true, y_pred, sample_weight=None):
        return self.inner.update_state(split_targets(y_true)[0], y_pred, sample_weight)

    def result(self):
        return self.inner.result()

    def reset_state(self):
        self.inner.reset_state()

    def get_config(self):
        return {"inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["inner"]))


def _as_metric(metric) -> keras.metrics.Metric:
    """A metric object for a compile() metric given by name; labels are sparse here."""
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if metric in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    found = keras.metrics.get(metric)
    return found if isinstance(found, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(found, name=metric)
