"""`model=airbench`: Keller Jordan's airbench94 recipe (arXiv 2404.00498, 2024) in Keras 3 layers.

Built from the paper's method, not its code: a frozen 2x2 patch-whitening first convolution set
from the training images before fit (`fit_whitening`), three conv-pool-BN-GELU groups whose
BatchNorm has a frozen scale of 1 and a bias learning `bias_lr_scale` times faster, max-pool,
a bias-free linear head and logits x `logit_scale`. The optimizer (Nesterov SGD, rate and
decay per 1,024 examples, Lookahead) is `AirbenchSGD` below; `experiment=airbench` pins the rest.
Imported lazily (it imports Keras); only `keras.ops`, so every backend runs it.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


register = keras.saving.register_keras_serializable(package="cifar_exp")


@register
class PatchWhitening(keras.layers.Layer):
    """A `kernel` x `kernel` valid convolution with a frozen kernel that whitens image patches.

    Its 2·c·k² filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue + eps)
    and their negatives (so the GELU after it loses no sign), set by `fit_whitening` from training
    images before fit. The bias trains while the non-trainable `bias_gate` is 1 (the first
    `model.whiten_bias_epochs` epochs: `WhiteningBiasFreeze`), with a gradient of 0 afterwards.
    Input: float (N, H, W, c); output (N, H-k+1, W-k+1, 2·c·k²).
    """

    def __init__(self, kernel_size=2, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        k, c = self.kernel_size, input_shape[-1]
        self.filters = 2 * c * k * k
        self.kernel = self.add_weight(shape=(k, k, c, self.filters), initializer="zeros", trainable=False,
                                      name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        self.bias_gate = self.add_weight(shape=(), initializer="ones", trainable=False, name="bias_gate")

    def call(self, x):
        y = ops.conv(x, ops.cast(self.kernel, x.dtype), padding="valid")
        gate = ops.cast(self.bias_gate, x.dtype)
        # A variable gate rather than `trainable=False`: changing trainability mid-fit needs a recompile.
        bias = gate * self.bias + (1 - gate) * ops.stop_gradient(self.bias)
        return y + ops.cast(bias, x.dtype)

    def compute_output_shape(self, input_shape):
        k = self.kernel_size
        return (input_shape[0], input_shape[1] - k + 1, input_shape[2] - k + 1, 2 * input_shape[-1] * k * k)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@register
class ScaledBias(keras.layers.Layer):
    """x + sqrt(lr_scale)·b, the BatchNorm bias that learns `lr_scale` times faster.

    Keras optimizers take one learning rate for all variables. Storing b/sqrt(s) and multiplying by
    sqrt(s) scales b's gradient by sqrt(s) and its step by sqrt(s) again: under SGD (with momentum,
    linear in the gradient) b moves s times as fast, while decoupled weight decay, multiplicative,
    shrinks it exactly as any other weight (as airbench's per-group decay does). No optimizer
    wrapper, and checkpoints hold ordinary variables.
    """

    def __init__(self, lr_scale=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_scale = float(lr_scale)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x):
        return x + ops.cast(self.bias * math.sqrt(self.lr_scale), x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "lr_scale": self.lr_scale}


@register
class PartialIdentity(keras.initializers.Initializer):
    """3x3 conv kernels whose first `in` filters pass their input channel through (an implicit
    residual, as airbench's identity init), the rest PyTorch's U(+-1/sqrt(fan_in))."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        bound = 1 / math.sqrt(kh * kw * cin)
        kernel = keras.random.uniform(shape, -bound, bound, dtype=dtype, seed=self.seed)
        n = min(cin, cout)
        identity = np.zeros(shape, dtype="float32")
        identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        keep = np.ones(shape, dtype="float32")
        keep[..., :n] = 0.0
        return kernel * ops.cast(keep, kernel.dtype) + ops.cast(identity, kernel.dtype)

    def get_config(self):
        return {"seed": self.seed}


def airbench(input_shape, num_classes, widths=(64, 256, 256), whiten_kernel=2, batchnorm_momentum=0.6,
             bias_lr_scale=64.0, logit_scale=1 / 9, whiten_bias_epochs=3):
    """The airbench94 network: float (N, 32, 32, 3) normalised images -> (N, num_classes) logits.

    `whiten_bias_epochs` is read by `training_callbacks`, not here.
    """
    from keras import Model, layers

    def group(x, filters, name):
        # conv -> pool -> BN -> GELU, twice the conv/BN; pooling before BN as airbench does.
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=PartialIdentity(),
                              name=f"{name}_conv{i}")(x)
            if i == 1:
                x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
            # Scale frozen at 1 (scale=False), bias through ScaledBias; eps 1e-12 as airbench.
            x = layers.BatchNormalization(momentum=batchnorm_momentum, epsilon=1e-12, center=False, scale=False,
                                          name=f"{name}_bn{i}")(x)
            x = ScaledBias(bias_lr_scale, name=f"{name}_bias{i}")(x)
            x = layers.Activation("gelu", name=f"{name}_gelu{i}")(x)
        return x

    inputs = layers.Input(input_shape)
    x = PatchWhitening(whiten_kernel, name="whiten")(inputs)
    x = layers.Activation("gelu", name="whiten_gelu")(x)
    for i, filters in enumerate(widths, 1):
        x = group(x, int(filters), f"group{i}")
    x = layers.GlobalMaxPooling2D(name="pool")(x)  # airbench: MaxPool(3) of the 3x3 map, i.e. global
    x = layers.Dense(num_classes, use_bias=False, name="head")(x)
    return Model(inputs, layers.Rescaling(logit_scale, name="logit_scale")(x), name="airbench")


def whitening_weights(images: np.ndarray, kernel_size: int, eps: float = 5e-4, chunk: int = 500) -> np.ndarray:
    """The whitening kernel for float images (N, H, W, c): (k, k, c, 2·c·k²) float32.

    Every k x k patch (flattened in (row, column, channel) order, as Keras lays out kernels) is a
    sample; the kernel's first c·k² filters are the covariance's eigenvectors over
    sqrt(eigenvalue + eps), largest first, the others their negatives. Computed in float64, `chunk`
    images at a time.
    """
    n, h, w, c = images.shape
    k = kernel_size
    covariance, count = np.zeros((k * k * c, k * k * c)), 0
    for start in range(0, n, chunk):  # 5,000 CIFAR images are 4.8 million patches: 460 MB at once in float64
        windows = np.lib.stride_tricks.sliding_window_view(images[start:start + chunk], (k, k), axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, k * k * c).astype(np.float64)  # N', H', W', k, k, c
        covariance += patches.T @ patches
        count += len(patches)
    covariance /= count  # uncentred, as airbench
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)  # columns: filters
    kernel = np.concatenate([scaled, -scaled], axis=1)
    return kernel.reshape(k, k, c, 2 * k * k * c).astype(np.float32)


def whitening_layer(model) -> PatchWhitening:
    """The PatchWhitening layer of `model`, nested models and TTA wrappers included."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, PatchWhitening):
            return layer
    raise ValueError(f"model {model.name} has no PatchWhitening layer")


def fit_whitening(model, images: np.ndarray) -> None:
    """Set the whitening layer of an airbench `model` from preprocessed float training images
    (N, H, W, c); airbench uses the first 5,000."""
    layer = whitening_layer(model)
    layer.kernel.assign(whitening_weights(np.asarray(images, dtype=np.float32), layer.kernel_size))


# {(sha1 of the raw images, their shape, the preprocessing's config, kernel size): kernel}: every job of a
# multirun computed the same kernel from the same images (0.31 of a 0.38-s airbench build on the 2-core VM,
# issue 24). A few entries: a sweep over datasets, subsets or preprocessings.
_WHITENING: dict = {}
WHITENING_KEPT = 4


def fit_whitening_from_pixels(model, preprocessing, pixels: np.ndarray) -> None:
    """`fit_whitening` from uint8 training images (N, H, W, c) through the model's `preprocessing` layer
    (pixels -> float inputs); the kernel is kept for the process, keyed by the pixels' sha1, so later
    jobs on the same images and preprocessing skip both passes."""
    import hashlib
    import json

    from keras import ops

    layer = whitening_layer(model)
    pixels = np.ascontiguousarray(pixels)
    key = (hashlib.sha1(pixels.data).hexdigest(), pixels.shape, str(pixels.dtype),
           json.dumps(preprocessing.get_config(), sort_keys=True, default=str), layer.kernel_size)
    if key not in _WHITENING:
        images = np.asarray(ops.convert_to_numpy(preprocessing(pixels)), dtype=np.float32)
        while len(_WHITENING) >= WHITENING_KEPT:
            _WHITENING.pop(next(iter(_WHITENING)))  # the oldest
        _WHITENING[key] = whitening_weights(images, layer.kernel_size)
    layer.kernel.assign(_WHITENING[key])


class WhiteningBiasFreeze(keras.callbacks.Callback):
    """Stops the whitening bias's training after `epochs` epochs (its gate to 0), as airbench's
    `whiten_bias_epochs`; per epoch, so resumed jobs set it again from the epoch number."""

    def __init__(self, model, epochs: int):
        super().__init__()
        self.gate, self.epochs = whitening_layer(model).bias_gate, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.gate.assign(1.0 if epoch < self.epochs else 0.0)


def training_callbacks(cfg_model, model) -> list:
    """The callbacks `model=airbench` trains with (training/fit.py adds them)."""
    return [WhiteningBiasFreeze(model, int(cfg_model.whiten_bias_epochs))]


WHITENING_IMAGES = 5000  # airbench fits the whitening on the first 5,000 training images


@register
class AirbenchSGD(keras.optimizers.SGD):
    """Nesterov SGD with airbench's decoupled hyperparameters and Lookahead weight averaging.

    The hyperparameters that differ between jobs of a sweep (peak rate, decay, total steps) are
    optimizer *variables*, so under JAX they are inputs of the compiled train step, not constants:
    jobs differing only in them reuse one compiled program (trainer.compile_cache, backend_setup.py).

    - rate: `learning_rate` (the peak, per mean loss) x the Triangle schedule's factor at
      iterations / total_steps, when `shape` gives one; x `schedule`'s rate over its peak for any
      other Keras schedule (whose values are then constants of the step); else constant;
    - decay: w <- w - decay·factor·w each step, outside the momentum (airbench's per-group torch
      decay through momentum equals this at steady state; see `build_airbench_optimizer`);
    - Lookahead (airbench's LookaheadState): from `lookahead_start` (fraction of total_steps), every
      `lookahead_every` steps the slow copy moves to the weights by 1 - rho, rho =
      lookahead_decay^every x (step / total_steps)^lookahead_pow, and the weights are set to it.
      Written here because Keras' `use_ema` averages with a fixed momentum every step: early in
      training that drags the weights back, where airbench's rho rises from 0.
    """

    # Config entries held in variables (the rate too, as Keras keeps it): jobs differing in them share
    # their steps (shared_steps.program_key); `shape` and `schedule` are constants of the step.
    config_step_inputs = ("decay", "total_steps")

    def __init__(self, learning_rate=0.01, momentum=0.85, decay=0.0, total_steps=1, shape=None, schedule=None,
                 lookahead_every=5, lookahead_decay=0.95, lookahead_pow=3.0, lookahead_start=0.3, **kwargs):
        kwargs.pop("nesterov", None)
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=True, **kwargs)
        # Any other Keras schedule, as (schedule, its peak): the rate is scaled by schedule(step) / peak.
        if isinstance(schedule, dict):
            schedule = (keras.saving.deserialize_keras_object(schedule["schedule"]), schedule["peak"])
        self.schedule = schedule
        self.decay_value, self.total_steps_value = float(decay), int(total_steps)
        self.shape = None if shape is None else [float(s) for s in shape]  # [start, peak fraction, end]
        self.lookahead_every, self.lookahead_decay = int(lookahead_every), float(lookahead_decay)
        self.lookahead_pow, self.lookahead_start = float(lookahead_pow), float(lookahead_start)
        constant = keras.initializers.Constant
        self.decay = self.add_variable((), constant(self.decay_value), "float32", name="decay")
        self.total_steps = self.add_variable((), constant(float(self.total_steps_value)), "float32",
                                             name="total_steps")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.slow = self.add_optimizer_variables(variables, "slow")

    def _progress(self, step):
        return ops.cast(step, "float32") / self.total_steps

    def _factor(self):
        """The schedule's factor of the peak rate at the current step (1 without a schedule)."""
        if self.schedule is not None:
            schedule, peak = self.schedule
            return ops.cast(schedule(self._iterations), "float32") / peak
        if self.shape is None:
            return 1.0
        start, peak, end = self.shape
        t = ops.minimum(self._progress(self._iterations), 1.0)
        up = start + (1 - start) * t / peak
        down = 1 + (end - 1) * (t - peak) / (1 - peak)
        return ops.where(t < peak, up, down)

    def _get_current_learning_rate(self):
        return self._learning_rate * self._factor()

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)
        # Decay here rather than in Keras' `weight_decay` (a Python float, so a constant of the
        # compiled step); per variable inside the update, so distribution strategies apply it once.
        self.assign(variable, variable - variable * ops.cast(self.decay * self._factor(), variable.dtype))
        slow = self.slow[self._get_variable_index(variable)]
        step = self._iterations + 1
        start = ops.cast(ops.ceil(self.lookahead_start * self.total_steps), "int32")
        step_i = ops.cast(step, "int32")
        due = ops.logical_and(step_i >= start, ops.equal(step_i % self.lookahead_every, 0))
        # The first due step copies the weights: the one before it (step - every) was not due.
        first = step_i - self.lookahead_every < ops.maximum(start, 1)
        rho = (self.lookahead_decay ** self.lookahead_every) * self._progress(step) ** self.lookahead_pow
        rho = ops.cast(ops.where(first, 0.0, rho), variable.dtype)
        fast, slow_value = ops.convert_to_tensor(variable), ops.convert_to_tensor(slow)
        averaged = slow_value + (1 - rho) * (fast - slow_value)
        self.assign(slow, ops.where(due, averaged, slow_value))
        self.assign(variable, ops.where(due, averaged, fast))

    def get_config(self):
        config = super().get_config()
        config.pop("nesterov", None)
        config.update(decay=self.decay_value, total_steps=self.total_steps_value, shape=self.shape,
                      schedule=None if self.schedule is None else {
                          "schedule": keras.saving.serialize_keras_object(self.schedule[0]), "peak": self.schedule[1]},
                      lookahead_every=self.lookahead_every, lookahead_decay=self.lookahead_decay,
                      lookahead_pow=self.lookahead_pow, lookahead_start=self.lookahead_start)
        return config


def build_airbench_optimizer(cfg, learning_rate, batch_size: int, total_steps: int):
    """AirbenchSGD from `optimizer=airbench`, whose `lr` and `weight_decay` are per 1,024 examples.

    airbench's conversion to PyTorch SGD on a summed loss divides the rate by 1024·(1 + 1/(1 - m)),
    the step size of Nesterov momentum m for constant gradients; on Keras' mean loss over a batch of
    B the rate is then lr·(B/1024)/(1 + 1/(1 - m)). Its decay (wd·B/1024 over the same factor, per
    group times the group's own rate, then through momentum: x 1/(1 - m)) shrinks each weight by
    wd·(B/1024)/(2 - m) per step at steady state, whatever the rate: `decay`.
    `learning_rate` is what `build_lr_schedule` made of `optimizer.lr` (a float or a schedule).
    """
    from cifar_exp.training.schedules import OptimizerVariables, Triangle

    if isinstance(learning_rate, OptimizerVariables):
        learning_rate = learning_rate.schedule  # the peak rate and step counts become AirbenchSGD's variables
    m = float(cfg.momentum)
    per_batch = batch_size / 1024
    scale = per_batch / (1 + 1 / (1 - m))
    shape = schedule = None
    if isinstance(learning_rate, Triangle):  # computed from optimizer variables: reused across sweeps
        shape, peak = [learning_rate.start, learning_rate.peak_fraction, learning_rate.end], learning_rate.peak_lr
    elif isinstance(learning_rate, (int, float)):
        peak = float(learning_rate)
    else:  # another Keras schedule of optimizer.lr: its rates are constants of the compiled step
        peak = float(cfg.lr)
        schedule = (learning_rate, peak)
    decay = float(cfg.weight_decay or 0.0) * per_batch / (2 - m)
    return AirbenchSGD(learning_rate=peak * scale, momentum=m, decay=decay, total_steps=total_steps, shape=shape,
                       schedule=schedule,
                       lookahead_every=cfg.lookahead_every, lookahead_decay=cfg.lookahead_decay,
                       lookahead_pow=cfg.lookahead_pow, lookahead_start=cfg.lookahead_start,
                       clipnorm=cfg.get("clipnorm"))
