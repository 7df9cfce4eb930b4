"""The training loss: sparse categorical cross-entropy on logits, with optional label smoothing, and
`LossSettings`, the layer whose variables hold the loss's numbers during training.

Keras 3.15's SparseCategoricalCrossentropy has no `label_smoothing` (only the one-hot losses do),
so with smoothing the integer labels are one-hot encoded inside the loss and smoothed as Keras'
`categorical_crossentropy(label_smoothing=...)` does; the data keep their sparse labels.
"""
from __future__ import annotations

import keras
from keras import ops

register = keras.saving.register_keras_serializable(package="cifar_exp")


def build_loss(label_smoothing: float, variable=None) -> keras.losses.Loss:
    """Cross-entropy on logits; with smoothing ε the target is (1 − ε)·onehot + ε/classes.

    `variable`: a float32 scalar holding ε during training (`LossSettings.label_smoothing`), so any
    ε, 0 included, is an input of the compiled steps rather than a constant; without one, ε = 0 is
    Keras' SparseCategoricalCrossentropy.
    """
    if variable is None and not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SmoothedSparseCrossentropy(float(label_smoothing), variable=variable)


@register
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Integer labels (N,) or (N, 1), float logits (N, classes), label smoothing ε: per-sample
    cross-entropy in nats against (1 − ε)·onehot + ε/classes (Keras' formula for one-hot labels).

    ε is the float `label_smoothing` (saved in the config), or, while training, the value of
    `variable` (not saved: a reloaded loss uses the float, the same number).
    """

    def __init__(self, label_smoothing: float, name="sparse_categorical_crossentropy", variable=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing
        self.variable = variable

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        classes = y_pred.shape[-1]
        epsilon = ops.cast(self.label_smoothing if self.variable is None else self.variable, y_pred.dtype)
        # Smoothed here, not by categorical_crossentropy(label_smoothing=ε): it branches on ε in Python.
        target = ops.one_hot(labels, classes, dtype=y_pred.dtype) * (1 - epsilon) + epsilon / classes
        return keras.losses.categorical_crossentropy(target, y_pred, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@register
class VariableL2(keras.regularizers.Regularizer):
    """Keras' L2 penalty, factor · sum(x²), whose factor is read from `variable` while training
    (a `LossSettings` variable: an input of the compiled step, not a constant); the float `l2` is
    saved in the config and used after reloading."""

    def __init__(self, l2: float, variable=None):
        self.l2, self.variable = float(l2), variable

    def __call__(self, x):
        factor = self.l2 if self.variable is None else self.variable
        return ops.cast(factor, x.dtype) * ops.sum(ops.square(x))

    @property
    def config_step_inputs(self) -> tuple[str, ...]:
        """With `variable`, the config's l2 is only its first value (shared_steps.program_key)."""
        return ("l2",) if self.variable is not None else ()

    def get_config(self):
        return {"l2": self.l2}


@register
class LossSettings(keras.layers.Layer):
    """The identity on the logits, holding the loss's numbers as non-trainable float32 scalars:
    `label_smoothing` (ε), `kernel_l2` and `bias_l2` (the L2 factors of conv/dense weights).

    Why a layer: a loss's or regularizer's Python numbers are constants of the compiled train and
    test steps, so the jobs of a sweep over them would each compile their own; a model's
    non-trainable variables are inputs of both steps (under JAX and TensorFlow alike), so one
    compiled program serves every value. Keras' losses and regularizers hold no variables, hence
    this holder. Its variables are left out of saved weights and checkpoints: their values are the
    layer's config, which a reloaded model or a resumed job (same config) rebuilds.
    """

    FIELDS = ("label_smoothing", "kernel_l2", "bias_l2")
    # Config entries that are only its variables' first values, not constants of the steps: jobs
    # differing in them run one program (shared_steps.program_key leaves them out).
    config_step_inputs = FIELDS

    def __init__(self, label_smoothing=0.0, kernel_l2=0.0, bias_l2=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.values = {"label_smoothing": float(label_smoothing), "kernel_l2": float(kernel_l2),
                       "bias_l2": float(bias_l2)}
        for field, value in self.values.items():
            setattr(self, field, self.add_weight(shape=(), initializer=keras.initializers.Constant(value),
                                                 trainable=False, name=field))

    def call(self, logits):
        return logits

    def compute_output_shape(self, input_shape):
        return input_shape

    def save_own_variables(self, store):
        pass

    def load_own_variables(self, store):
        pass

    def get_config(self):
        return {**super().get_config(), **self.values}
