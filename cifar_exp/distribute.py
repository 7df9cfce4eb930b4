"""The `trainer.strategy` choice: which devices train together.

TensorFlow: a tf.distribute strategy. JAX: keras.distribution.DataParallel across local
devices; its "scope" is a no-op because the distribution is global.
"""
from __future__ import annotations

from contextlib import nullcontext

from cifar_exp.errors import ConfigError

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


class _GlobalDistribution:
    """Stands in for a tf.distribute strategy where Keras distributes globally (JAX)."""

    def __init__(self, replicas: int):
        self.num_replicas_in_sync = replicas

    def scope(self):
        return nullcontext()


def build_strategy(name: str):
    import keras

    if name not in STRATEGIES:
        raise ConfigError("trainer.strategy", name, ", ".join(STRATEGIES))
    if keras.backend.backend() == "tensorflow":
        return _tensorflow_strategy(name)
    if name == "multi_worker":
        raise ConfigError("trainer.strategy", name, "auto, mirrored or one_device under KERAS_BACKEND="
                          f"{keras.backend.backend()} (multi_worker needs TensorFlow)")
    devices = keras.distribution.list_devices()
    if name in ("auto", "mirrored") and len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return _GlobalDistribution(len(devices))
    keras.distribution.set_distribution(None)
    return _GlobalDistribution(1)


def _tensorflow_strategy(name: str):
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        # Without GPUs, mirror across the logical CPU devices (tests configure two).
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(gpus or cpus)
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    return tf.distribute.MultiWorkerMirroredStrategy()
