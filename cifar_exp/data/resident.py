"""Where the training step reads its images from: host memory, or the accelerator itself.

`build_feed(setting, data)` returns a feed whose `train` / `eval` / `test` are what `model.fit`,
`evaluate` and `predict` take, and whose `training_model(classifier)` is the model they run:

- `HostFeed`: the uint8 image arrays; each batch is copied to the device when it is used.
- `DeviceFeed`: every split's uint8 images live in one non-trainable variable on the
  accelerator (CIFAR-10 is 180 MB), and the model takes sample *indices*: the compiled step
  gathers its batch there, then augments and normalises it (augment.py). Only the indices,
  labels and sample weights of a batch (a few KB) cross from the host; shuffling stays a
  permutation of indices made on the host by TrainBatches, so resumed jobs keep their order.

Hand-written because Keras has no such layer: its input pipelines (PyDataset, tf.data, grain)
all produce batches on the host.

What the device is decides both the feed and the precision: `has_accelerator()`,
`computes_bfloat16()` and `precision_policy(setting)` (`trainer.precision=auto`) answer it.
"""
from __future__ import annotations

import functools

import numpy as np

DATA_ON_DEVICE = ("auto", True, False)


def build_feed(setting, data):
    """The feed for `trainer.data_on_device` (auto: on the device when it is an accelerator).

    Call it inside the distribution strategy's scope: the resident images are then a
    variable of that strategy (mirrored: one copy per GPU).
    """
    on_device = has_accelerator() if setting == "auto" else bool(setting)
    return DeviceFeed(data) if on_device else HostFeed(data)


def has_accelerator() -> bool:
    """Whether Keras' backend sees a GPU or TPU (on a CPU-only machine the host is the device)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Physical devices: listing logical ones would start TensorFlow's runtime, after which a
        # multi-worker strategy can no longer configure its collective ops.
        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    return False


def computes_bfloat16() -> bool:
    """Whether the accelerator has bfloat16 matrix units: an NVIDIA GPU of compute capability 8.0 or
    later (Ampere, Hopper, ...) or a TPU. False on a CPU or an older GPU, or when it cannot tell."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "tpu":
            return True
        capability = getattr(device, "compute_capability", None)  # "9.0" on an H100/H200
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if tf.config.list_physical_devices("TPU"):
            return True
        details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
        capability = ".".join(map(str, details.get("compute_capability") or ())) or None
    else:
        return False
    return bfloat16_capability(capability)


def bfloat16_capability(capability) -> bool:
    """Whether a CUDA compute capability ("9.0", "8.6", or None; ROCm's "gfx942" counts as unknown)
    has bfloat16 matrix units: 8.0 (Ampere) or later."""
    try:
        return capability is not None and int(str(capability).split(".")[0]) >= 8
    except ValueError:
        return False


def precision_policy(setting: str) -> str:
    """Keras' dtype policy for `trainer.precision`: itself, or for `auto` mixed_bfloat16 where the
    accelerator computes bfloat16 natively (computes_bfloat16) and float32 elsewhere (a CPU
    emulates it). On an H200 under JAX, airbench's steady epoch went from 0.425 s to 0.31 s at the
    same accuracy (benchmarks/README.md, 2026-12-04)."""
    if setting != "auto":
        return setting
    return "mixed_bfloat16" if computes_bfloat16() else "float32"


class HostFeed:
    """The image arrays themselves: the classifier takes uint8 images."""

    on_device = False

    def __init__(self, data):
        self.train, self.test, self.val = data.x_train, data.x_test, data.x_val

    def training_model(self, classifier):
        return classifier


class DeviceFeed:
    """Indices into one resident array of [train | test | val] images."""

    on_device = True

    def __init__(self, data):
        parts = [data.x_train, data.x_test] + ([data.x_val] if data.x_val is not None else [])
        self.images = np.concatenate(parts)
        bounds = np.cumsum([0] + [len(part) for part in parts])
        ranges = [np.arange(lo, hi, dtype=np.int32) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self.train, self.test = ranges[0], ranges[1]
        self.val = ranges[2] if data.x_val is not None else None

    def training_model(self, classifier):
        """indices -> resident images -> `classifier`: the model fit, evaluate and predict run."""
        import keras

        indices = keras.Input((), dtype="int32", name="image_indices")
        images = _layers().ResidentImages(self.images, name="resident_images")(indices)
        return keras.Model(indices, classifier(images), name=f"{classifier.name}_on_device")


@functools.cache
def _layers():
    """The layer class, defined on first use so that importing this module does not import Keras."""
    import keras
    from keras import ops

    class ResidentImages(keras.layers.Layer):
        """Holds uint8 images as a non-trainable variable; maps a batch of indices to its images.

        The images are data, not state: they are left out of saved weights and checkpoints
        (a resumed job reloads them from the dataset), so a checkpoint stays the model's size.
        """

        def __init__(self, images: np.ndarray, **kwargs):
            super().__init__(**kwargs)
            self.image_shape = tuple(images.shape[1:])
            # uint8 where the backend gathers it on GPUs (XLA); TensorFlow registers no GPU
            # gather kernel for uint8 and would silently keep the variable on the host, so it
            # gets float16, which holds 0..255 exactly, and the batch is cast back to uint8.
            storage = "uint8" if keras.backend.backend() == "jax" else "float16"
            self.images = self.add_weight(shape=images.shape, dtype=storage, trainable=False,
                                          initializer=lambda shape, dtype: images.astype(dtype),
                                          name="images")

        def call(self, indices):
            return ops.cast(ops.take(self.images, ops.cast(indices, "int32"), axis=0), "uint8")

        def compute_output_shape(self, input_shape):
            return (*input_shape, *self.image_shape)

        def compute_output_spec(self, indices):
            return keras.KerasTensor((*indices.shape, *self.image_shape), dtype="uint8")

        def save_own_variables(self, store):
            pass

        def load_own_variables(self, store):
            pass

    class Namespace:
        pass

    ns = Namespace()
    ns.ResidentImages = ResidentImages
    return ns
