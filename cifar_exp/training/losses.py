"""The training loss: sparse categorical cross-entropy on logits, with optional label smoothing.

Keras 3.15's SparseCategoricalCrossentropy has no `label_smoothing` (only the one-hot losses do),
so with smoothing the integer labels are one-hot encoded inside the loss and Keras' own
`categorical_crossentropy(label_smoothing=...)` smooths them; the data keep their sparse labels.
"""
from __future__ import annotations

import keras
from keras import ops


def build_loss(label_smoothing: float) -> keras.losses.Loss:
    """Cross-entropy on logits; with `label_smoothing` = ε > 0 the target is (1 − ε)·onehot + ε/classes."""
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SmoothedSparseCrossentropy(float(label_smoothing))


@keras.saving.register_keras_serializable(package="cifar_exp")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Integer labels, logits, label smoothing ε: Keras' smoothed categorical cross-entropy (nats)."""

    def __init__(self, label_smoothing: float, name="sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")  # (N,) or (N, 1) labels; logits are (N, classes)
        one_hot = ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=True,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
