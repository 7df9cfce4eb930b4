"""The `trainer.strategy` choice: which devices train together.

TensorFlow: a tf.distribute strategy. JAX: keras.distribution.DataParallel across local
devices; its "scope" is a no-op because the distribution is global. `multi_worker` joins the
processes named by TF_CONFIG (or, where it is unset, the tasks of a SLURM step); the chief alone
logs to MLflow (`is_chief`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from contextlib import nullcontext

from cifar_exp.errors import ConfigError

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
log = logging.getLogger(__name__)


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

    if name == "multi_worker":  # before listing devices: that starts the TF runtime it must configure
        return _multi_worker_strategy()
    devices = _tensorflow_devices(name)
    if name == "auto":
        return tf.distribute.MirroredStrategy(devices) if len(devices) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(devices[0])


def _tensorflow_devices(name: str) -> list[str]:
    """The devices a single-process TensorFlow strategy trains on."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "mirrored":
        # Without GPUs, mirror across the logical CPU devices (tests configure two).
        return gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if name == "auto":
        return gpus
    return gpus[:1] or ["/cpu:0"]


def replicas_in_sync(name: str) -> int:
    """How many replicas `trainer.strategy=name` will split each global batch across, counted without
    building the strategy (so before an MLflow run is opened). multi_worker: workers x each worker's GPUs
    (at least 1), assuming every worker has this one's; counted from physical devices, which leaves
    TensorFlow's runtime unstarted for the strategy to configure."""
    import keras

    if name == "one_device":
        return 1
    if keras.backend.backend() != "tensorflow":
        devices = len(keras.distribution.list_devices())
        return devices if name in ("auto", "mirrored") and devices > 1 else 1
    if name == "multi_worker":
        import tensorflow as tf

        return worker_count() * max(1, len(tf.config.list_physical_devices("GPU")))
    return max(1, len(_tensorflow_devices(name)))


def worker_count() -> int:
    """How many processes train this job's model: TF_CONFIG's chief and workers, else SLURM's tasks (1
    outside a multi-worker job)."""
    raw = os.environ.get("TF_CONFIG")
    if raw:
        try:
            cluster = json.loads(raw).get("cluster") or {}
            return max(1, sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")))
        except (ValueError, AttributeError, TypeError):
            return 1  # _task() reports a malformed TF_CONFIG
    return max(1, int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")))


def check_batch_size(key: str, batch_size: int, replicas: int, strategy: str) -> None:
    """A global batch the replicas share evenly. tf.distribute splits an uneven batch unevenly, and Keras'
    first step then fails adding the replicas' differently shaped inputs (AddN [2,...] != [1,...]).
    Raises ConfigError naming `key`, the replica count and the nearest multiples of it."""
    if replicas > 1 and batch_size % replicas:
        lower = batch_size // replicas * replicas
        nearest = [size for size in (lower, lower + replicas) if size > 0]
        raise ConfigError(key, batch_size, f"a multiple of the {replicas} replicas that trainer.strategy={strategy} "
                          f"splits each batch across: {' or '.join(map(str, nearest))}")


def last_batch_fits(n: int, batch_size: int, replicas: int) -> bool:
    """Whether `n` samples in batches of `batch_size` end with a batch every replica gets a share of:
    a last batch smaller than the replica count leaves a replica an empty batch, which TensorFlow's
    convolutions reject (`input depth must be evenly divisible by filter depth`)."""
    rest = n % batch_size
    return rest == 0 or rest >= replicas


def inference_batch_size(n: int, batch_size: int, replicas: int) -> int:
    """The batch size to evaluate or predict `n` samples with:
    - the largest size in (batch_size / 2, batch_size] that divides `n` into equal batches (and is a
      multiple of `replicas`), so every batch has one shape: XLA compiles a step per input shape, and a
      last batch of another size costs a second compiled test/predict step (10,000 test images in
      batches of 512 end with 272: batches of 500 instead);
    - else `batch_size`, or when its last batch would leave a replica empty, the nearest multiple of
      `replicas` (smaller first) whose last batch does not.
    The result of an evaluation does not depend on its batch size (up to float summation order).
    Raises ConfigError for n < replicas."""
    for size in range(batch_size - batch_size % replicas, batch_size // 2, -max(replicas, 1)):
        if n % size == 0:
            return size
    if replicas <= 1 or last_batch_fits(n, batch_size, replicas):
        return batch_size
    if n < replicas:
        raise ConfigError("trainer.batch_size", batch_size, f"any: {n} samples cannot be split across {replicas} "
                          "replicas (use fewer devices or more samples)")
    start = max(replicas, batch_size - batch_size % replicas)
    for step in range(0, n + replicas, replicas):  # by size n + replicas one batch holds them all
        for size in (start - step, start + step):
            if size >= replicas and last_batch_fits(n, size, replicas):
                return size
    raise AssertionError("unreachable: one batch of all n samples fits")


@functools.cache
def _multi_worker_strategy():
    """Created once per process (TensorFlow allows no second one), before the job's first TF op."""
    strategy = _keras_compatible_multi_worker()(cluster_resolver=cluster_resolver())
    log.info("multi-worker training: %d replicas in sync", strategy.num_replicas_in_sync)
    return strategy


def cluster_resolver():
    """None (TensorFlow reads TF_CONFIG), or, in a SLURM step of several tasks without TF_CONFIG, the
    cluster SLURM describes: one worker per task, ports from 8888, task 0 first."""
    if "TF_CONFIG" in os.environ or int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) < 2:
        return None
    import tensorflow as tf

    # TensorFlow counts a node's GPUs with nvidia-smi, which CPU nodes lack; CUDA_VISIBLE_DEVICES=""
    # means none (TensorFlow would count one).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([device for device in visible.split(",") if device.strip()])
    else:
        gpus = None if shutil.which("nvidia-smi") else 0
    if gpus == 0:
        # The resolver hands each task its GPUs and fails with none: give every task a slot and let it
        # leave CUDA_VISIBLE_DEVICES alone.
        tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
        return tf.distribute.cluster_resolver.SlurmClusterResolver(gpus_per_node=tasks, gpus_per_task=1,
                                                                   auto_set_gpu=False)
    return tf.distribute.cluster_resolver.SlurmClusterResolver(gpus_per_node=gpus)


def _keras_compatible_multi_worker():
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3's `fit` passes it across workers.

    Keras reduces (1) the first batch, a tuple that holds uint8 images, to build the model, and (2) each
    step's scalar metrics with axis=0. TensorFlow's cross-worker reduce takes one tensor at a time, of
    float/int32/int64 only, and rejects axis=0 on a scalar, so `fit` fails on two or more workers
    (keras-team/keras#20585). Here each leaf is reduced alone, narrow dtypes are widened for the
    collective and cast back, and a scalar is averaged across replicas, as Keras does on one worker.
    """
    import tensorflow as tf

    reducible = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)

    class KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            return tf.nest.map_structure(lambda leaf: self._reduce_leaf(reduce_op, leaf, axis), value)

        def _reduce_leaf(self, reduce_op, value, axis):
            local = self.experimental_local_results(value)[0]
            if axis is not None and getattr(local, "shape", None) is not None and local.shape.rank == 0:
                axis = None
            dtype = getattr(local, "dtype", None)
            if dtype is None or dtype in reducible:
                return super().reduce(reduce_op, value, axis)
            wide = tf.int64 if dtype.is_integer else tf.float32
            widened = tf.function(lambda v: self.run(lambda t: tf.cast(t, wide), args=(v,)))(value)
            return tf.cast(super().reduce(reduce_op, widened, axis), dtype)

    return KerasMultiWorkerStrategy


def _task() -> tuple[str, int, bool]:
    """(task type, index, whether the cluster names a chief) from TF_CONFIG, else from SLURM."""
    raw = os.environ.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
            task = config.get("task") or {}
            return str(task.get("type", "worker")), int(task.get("index", 0)), "chief" in config.get("cluster", {})
        except (ValueError, AttributeError, TypeError):
            raise ConfigError("TF_CONFIG (environment)", raw, 'JSON such as {"cluster": {"worker": '
                              '["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}') from None
    return "worker", int(os.environ.get("SLURM_PROCID", "0")), False


def worker_name() -> str:
    """This process's task in a multi-worker job, as `worker1` or `chief0` (TF_CONFIG, else SLURM)."""
    task_type, index, _ = _task()
    return f"{task_type}{index}"


def is_chief(strategy_name: str) -> bool:
    """Whether this process logs to MLflow and saves the model: always, except on a multi-worker job's
    other workers (the chief is task `chief`, or worker 0 when the cluster names none)."""
    if strategy_name != "multi_worker":
        return True
    task_type, index, has_chief = _task()
    return task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief)


def weights_digest(model) -> str:
    """sha256 of the model's weights: equal on every worker of a multi-worker job that stayed in sync."""
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(value.tobytes())
    return digest.hexdigest()


def sync_check_callbacks(strategy_name: str, tracker) -> list:
    """With multi_worker: a callback that logs the final weights' digest on every worker (and tags it on
    the chief's run), so anyone can check that the workers ended with the same model."""
    if strategy_name != "multi_worker":
        return []
    import keras

    class WeightsDigest(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            digest = weights_digest(self.model)
            task_type, index, _ = _task()
            log.info("final weights sha256 %s (%s %d)", digest, task_type, index)
            tracker.set_tags({"weights_sha256": digest})

    return [WeightsDigest()]
