"""Keras' callback list, with a device-to-host read of a batch's logs only where a callback asks for it.

Keras' own list converts every batch's logs to Python floats before calling any batch hook: a read
that waits for the step to finish, so the host cannot queue the next one (issue 24: 0.51 s against
0.37 s an airbench epoch on an H200). Here a callback with a batch hook may say which batches it
needs (`wants_batch(batch) -> bool`, from the batch number or the clock, never from the logs); the
logs are read only when one of them does. Callbacks without `wants_batch` get every batch, as in
Keras; callbacks without a batch hook (most) cost no read at all. Epoch ends are Keras' own.
Keras' progress bar is one of them (ProgressBar): it read every batch too (issue 24's H200 profile,
2026-12-04: 960 reads in 2 airbench jobs at trainer.verbose=2, whose bar prints only at epoch ends).
"""
from __future__ import annotations

import time

import keras
from keras import ops

PROGRESS_BAR_EVERY_S = 0.5  # a terminal's bar is redrawn from a batch's logs at most this often


def python_logs(logs) -> dict:
    """{name: float} from a step's logs (device tensors, nested dicts flattened); values that are
    not numbers (predict's outputs) are passed as they are. This is the read: it waits for the step."""
    flat = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            flat.update(python_logs(value))
            continue
        try:
            flat[key] = float(ops.convert_to_numpy(value))
        except (TypeError, ValueError):
            flat[key] = value
    return flat


def _overrides(callback, hook: str) -> bool:
    return not getattr(getattr(callback, hook), "_is_default", False)


class ProgressBar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar (ProgbarLogger), reading a batch's logs only when it shows them: at most every
    PROGRESS_BAR_EVERY_S on a terminal (verbose=1), never under verbose=2 (one line per epoch, made from
    the epoch's logs). Its count of steps comes from the batch number, so skipped batches lose nothing."""

    def __init__(self):
        super().__init__()
        self.last_read, self.testing = -float("inf"), False

    def on_test_begin(self, logs=None):
        super().on_test_begin(logs)
        self.testing = True

    def on_test_end(self, logs=None):
        super().on_test_end(logs)
        self.testing = False

    def wants_batch(self, batch) -> bool:
        if self.verbose != 1 or (self.testing and self._called_in_fit):  # fit's evaluation shows no bar
            return False
        now = time.monotonic()
        if now - self.last_read < PROGRESS_BAR_EVERY_S:
            return False
        self.last_read = now
        return True


class ReadOnDemand(keras.callbacks.CallbackList):
    """A CallbackList for `model.fit(callbacks=...)`: training, test and predict batch ends reach only
    the callbacks that override that hook and, when they define it, whose `wants_batch(batch)` is
    true; the logs are read once for them, in the calling thread, and not at all when none wants them.
    Built as Keras builds its own (History, a progress bar for verbose != 0, `params` steps/epochs)."""

    def __init__(self, callbacks, model, verbose: int, epochs: int, steps: int):
        callbacks = list(callbacks) + ([ProgressBar()] if verbose != 0 else [])
        super().__init__(callbacks, add_history=True, add_progbar=False, model=model,
                         verbose=verbose, epochs=epochs, steps=steps)
        # Nothing goes to Keras' thread pool: the rare reads are made where they are asked for.
        self._async_train = self._async_test = self._async_predict = False

    def _dispatch(self, hook: str, batch, logs, also: str | None = None) -> None:
        wanting = [callback for callback in self.callbacks
                   if (_overrides(callback, hook) or (also and _overrides(callback, also)))
                   and getattr(callback, "wants_batch", lambda b: True)(batch)]
        if not wanting:
            return
        logs = python_logs(logs)
        for callback in wanting:
            getattr(callback, hook)(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        # Keras' default on_train_batch_end calls on_batch_end: a callback overriding either is served.
        self._dispatch("on_train_batch_end", batch, logs, also="on_batch_end")

    def on_test_batch_end(self, batch, logs=None):
        self._dispatch("on_test_batch_end", batch, logs)

    def on_predict_batch_end(self, batch, logs=None):
        self._dispatch("on_predict_batch_end", batch, logs)
