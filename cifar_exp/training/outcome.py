"""What a run's numbers say: a diverged run fails, a run at chance level is tagged "did not learn".

Diverged: a loss or metric that is NaN/inf on any split, at a training batch read every
DIVERGENCE_CHECK_S, at an epoch end or in the final evaluation, or a training cross-entropy above EXPLOSION_FACTOR x ln(classes). Did not
learn: the final test accuracy is below the chance level plus CHANCE_SIGMAS binomial standard deviations. Importing
this module does not import Keras (job.py and main.py use it); `divergence_callback` does.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

# A cross-entropy (nats) above 10 x ln(classes) means the true class got a geometric-mean
# probability below classes^-10 (1e-10 for CIFAR-10): 23 nats, 10 times what a model that
# guesses uniformly scores. Healthy runs stay far below: every run starts near ln(classes)
# (2.3 nats), and the healthy runs measured peaked at a few nats of training cross-entropy (the
# figures: benchmarks/README.md, "The divergence bound against healthy runs"); diverged ones reach
# 1e9 and more within a few steps.
EXPLOSION_FACTOR = 10
# Accuracy below chance + 3 standard deviations of a binomial proportion on the test set: a
# classifier at chance level passes it with probability 0.13% (one-sided normal tail).
CHANCE_SIGMAS = 3
# Per-epoch keys that are the pace's bookkeeping under self-paced learning, not model metrics.
NOT_CHECKED_PREFIXES = ("spl_",)
# Metrics that are a plain (unweighted, unsmoothed, penalty-free) cross-entropy in nats.
CROSS_ENTROPY_KEYS = ("cross_entropy", "unweighted_loss")
LEARNED, DID_NOT_LEARN = "learned", "did_not_learn"
# Wall seconds between two reads of a training batch's logs by the divergence check. Each read waits
# for its step (the host stops queueing steps), so not every batch: a diverged run is stopped within
# this many seconds of training, or at the epoch's end (always checked) when that comes first.
DIVERGENCE_CHECK_S = 5.0


class TrainingDiverged(FloatingPointError):
    """A loss or metric became NaN/inf or exploded past the bound; the run fails (job.py's hint
    names optimizer.lr). A FloatingPointError, as NumPy raises for invalid arithmetic."""


def explosion_bound(num_classes: int) -> float:
    """The highest mean cross-entropy (nats) a run may report: EXPLOSION_FACTOR x ln(num_classes)."""
    return EXPLOSION_FACTOR * math.log(num_classes)


def check_metrics(metrics: Mapping[str, float], num_classes: int, where: str, eval_split: str = "val") -> None:
    """Raise TrainingDiverged when a value in `metrics` is NaN/inf, or a training cross-entropy
    exceeds `explosion_bound(num_classes)`.

    `metrics`: Keras logs or final metrics ({"loss": 2.3, "val_cross_entropy": ...}); keys starting
    with `val_` are reported as `eval_split`'s; `spl_*` keys are not checked. `where` says when, for
    the message ("epoch 3", "epoch 1, batch 7", "the final evaluation"). The bound applies to the
    cross-entropy metrics, not to `loss`: `loss` also holds the L2 penalties (model.kernel_l2,
    bias_l2), which a strongly regularised but healthy model may keep above it, and under
    self-paced learning or label smoothing it is weighted or smoothed.
    """
    bound = explosion_bound(num_classes)
    for key, value in metrics.items():
        if key.startswith(NOT_CHECKED_PREFIXES) or not isinstance(value, (int, float)):
            continue
        shown = f"{eval_split}_{key[4:]}" if key.startswith("val_") else key
        base = shown.split("_", 1)[1] if shown.startswith(("val_", "test_")) else shown
        if not math.isfinite(value):
            raise TrainingDiverged(f"{shown} became {value} in {where}")
        # The bound applies to what the optimizer sees. An evaluated split (val_*, test_*) fails on
        # NaN/inf only: BatchNorm's moving statistics lag the weights early in training, so an
        # evaluation can score far above the bound while training is healthy (measured: ResNet-9's
        # recipe, 10 steps an epoch, test cross-entropy 143 nats after epoch 1 at a training 2.7;
        # AlexNet on 2,000 images, 21 after epoch 1 at 2.0). A model that only fails on the test
        # split ends at chance level: the did-not-learn rule reports it.
        if base in CROSS_ENTROPY_KEYS and value > bound and base == shown:
            raise TrainingDiverged(f"{shown} reached {value:.4g} nats in {where}, above {bound:.3g} "
                                   f"({EXPLOSION_FACTOR} x ln {num_classes}, the bound for an exploding loss)")


def divergence_callback(num_classes: int, eval_split: str, every_s: float = DIVERGENCE_CHECK_S):
    """A Keras callback that stops training with TrainingDiverged as soon as a logged value fails
    `check_metrics`: at a training batch (Keras' running means of the epoch) at most every `every_s`
    wall seconds (0: every batch), and at every epoch's end (the evaluated split too).

    Its `wants_batch` (batch_reads.ReadOnDemand) says when a batch's logs are worth reading, from
    the clock alone; under Keras' own callback list every batch is checked.
    Not keras.callbacks.TerminateOnNaN: that one looks at the training `loss` only, catches no
    finite explosion, and (raise_error=False) ends fit as if training had finished.
    """
    import time

    import keras

    class StopOnDivergence(keras.callbacks.Callback):
        # It only reads the logs and raises, so Keras may run it on its callback thread; the
        # error then surfaces within a batch or two, and at the latest when the epoch ends.
        async_safe = True

        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.last_read = -math.inf

        def wants_batch(self, batch) -> bool:
            now = time.monotonic()
            if now - self.last_read < every_s:
                return False
            self.last_read = now
            return True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            check_metrics(logs or {}, num_classes, f"epoch {self.epoch + 1}, batch {batch + 1}", eval_split)

        def on_epoch_end(self, epoch, logs=None):
            check_metrics(logs or {}, num_classes, f"epoch {epoch + 1}", eval_split)

    return StopOnDivergence()


def chance_accuracy(labels) -> float:
    """The accuracy of always answering the most frequent class of `labels` (int, shape (N,)):
    1/classes on a balanced test set, more on one that dataset.limit_test left unbalanced."""
    import numpy as np

    return float(np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1)).max() / len(labels))


def chance_bound(chance: float, n: int) -> float:
    """chance + CHANCE_SIGMAS x sqrt(chance (1 - chance) / n): the accuracy on `n` test images
    that a classifier at chance level stays under with probability 99.87%."""
    return chance + CHANCE_SIGMAS * math.sqrt(chance * (1.0 - chance) / n)


def record_learning_outcome(tracker, final: dict[str, float], labels, step: int) -> None:
    """Judge the final `test_accuracy` in `final` against the chance level of the test labels
    `labels` (int, shape (N,): the images really evaluated). Adds `chance_accuracy_bound` to
    `final` and logs it at `step`; tags the run `outcome` (learned | did_not_learn) and
    `outcome_detail` (the numbers behind it)."""
    chance = chance_accuracy(labels)
    bound = chance_bound(chance, len(labels))
    final["chance_accuracy_bound"] = bound
    tracker.log_metrics({"chance_accuracy_bound": bound}, step=step)
    outcome, detail = verdict(final)
    tracker.set_tags({"outcome": outcome,
                      "outcome_detail": f"{detail}; chance level {chance:.4f} on {len(labels)} test images"})


def verdict(metrics: Mapping[str, float]) -> tuple[str, str] | None:
    """(LEARNED or DID_NOT_LEARN, a sentence with the numbers) from a task's final metrics, or
    None for a task that reports no test accuracy (kfold_poly)."""
    if "test_accuracy" not in metrics or "chance_accuracy_bound" not in metrics:
        return None
    accuracy, bound = float(metrics["test_accuracy"]), float(metrics["chance_accuracy_bound"])
    if accuracy < bound:
        return DID_NOT_LEARN, (f"test_accuracy {accuracy:.4f} is below {bound:.4f}, within "
                               f"{CHANCE_SIGMAS} binomial standard deviations of chance level")
    return LEARNED, f"test_accuracy {accuracy:.4f} is at or above {bound:.4f}, the chance-level bound"
