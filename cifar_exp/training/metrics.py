"""Accuracy that keeps its confusion matrix, so the final figure needs no extra pass.

Keras evaluates the test (or validation) split at the end of every epoch; a metric's state
after that evaluation holds what the figure needs. Hand-written because Keras' accuracy keeps
only totals and no Keras metric yields the (true, predicted) counts of integer labels.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="cifar_exp")
class ConfusionAccuracy(keras.metrics.Metric):
    """Sparse categorical accuracy (logged as `accuracy`), from a num_classes² count table.

    The same value as SparseCategoricalAccuracy (both count argmax == label); like it, it is
    unweighted when given under compile's `metrics`. Keras resets metrics when an evaluation
    starts, so after `evaluate` (or fit's last validation) `matrix()` holds that split's counts.
    """

    def __init__(self, num_classes: int, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.counts = self.add_variable((num_classes * num_classes,), "zeros", dtype="float32", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        cells = ops.expand_dims(labels * self.num_classes + predicted, -1)
        self.counts.assign_add(ops.scatter(cells, ops.ones_like(labels, "float32"), (self.num_classes ** 2,)))

    def result(self):
        table = ops.reshape(self.counts, (self.num_classes, self.num_classes))
        return ops.trace(table) / ops.maximum(ops.sum(self.counts), 1.0)

    def reset_state(self):
        self.counts.assign(ops.zeros((self.num_classes ** 2,)))

    def matrix(self) -> np.ndarray:
        """Counts, rows = true class, columns = predicted class, of the data seen since the last reset."""
        table = ops.convert_to_numpy(self.counts).reshape(self.num_classes, self.num_classes)
        return np.rint(table).astype(np.int64)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
