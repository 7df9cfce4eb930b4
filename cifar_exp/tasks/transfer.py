"""Seed 002's transfer question: does LeNet pretrained on MNIST help on STL-10 (96x96x3)?

`run(cfg, tracker)` trains on `cfg.dataset` through train.run, with LeNet's layers taken from a
pretraining run on `transfer.pretrain.dataset` (`transfer.pretrained=true`) or freshly initialised
(`false`), behind an adapter that bridges the two image shapes (`transfer.adapter`):

- `seed_convs`: the seed's trainable 5x5 convolutions shrinking 96x96x3 to LeNet's 28x28x1;
- `resize_grey`: STL images turned grey and resized to 28x28 (no weights: the pretrained filters see
  images like those they learnt on);
- `upsample_mnist`: the seed's own suggestion, the other way round: LeNet is pretrained on MNIST
  resized to 96x96 and repeated over 3 channels, so every layer fits STL-10 as it is.

Pretraining is its own MLflow run (tag `transfer.role=pretrain`) whose checkpoint is reused by any
later job with the same pretraining config (same `transfer.pretrain_hash`); the fine-tuned run links
to it with the tag `transfer.pretrain_run_id`. Keras is imported only inside functions.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cifar_exp.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adapter:
    lenet_input: str            # "pretrain": LeNet keeps the pretraining image shape; "target": it takes the target's
    pretrain_front: str | None  # layer put in front of LeNet while pretraining
    target_front: str | None    # layer put in front of LeNet on the target dataset


ADAPTERS = {
    "seed_convs": Adapter("pretrain", None, "seed_convs"),
    "resize_grey": Adapter("pretrain", None, "resize"),
    "upsample_mnist": Adapter("target", "resize", None),
}
CHECKPOINT = "lenet_weights.npz"  # the pretrained LeNet's weights, artifact `checkpoint/lenet_weights.npz`
# Bump when pretraining changes in a way its config does not show, so old checkpoints are not reused.
PRETRAIN_VERSION = 1
# What identifies the pretraining data: not where the copy lives on this machine.
DATASET_LOCATION_KEYS = ("path", "cache_dir", "source")


def seed_convs_output_side(side: int) -> int:
    """Image side after the seed's stack: conv5, avg-pool 2, four conv5, conv3 (all 'valid')."""
    return (side - 4) // 2 - 4 * 4 - 2


def check(cfg) -> None:
    """The transfer block, and what it asks of model and dataset; the target is a classifier, so
    classify's checks apply too. Raises ConfigError."""
    from cifar_exp.data.dataset import check_dataset
    from cifar_exp.tasks import classify

    classify.check(cfg)

    t = cfg.get("transfer")
    if t is None:
        raise ConfigError("transfer", None, "a transfer block (use experiment=transfer_lenet)")
    if t.adapter not in ADAPTERS:
        raise ConfigError("transfer.adapter", t.adapter, ", ".join(ADAPTERS))
    for key in ("pretrained", "freeze", "keep_head"):
        if not isinstance(t[key], bool):
            raise ConfigError(f"transfer.{key}", t[key], "true or false")
    if cfg.model.name != "lenet":
        raise ConfigError("model", cfg.model.name, "lenet (the network transferred from MNIST)")
    p = t.pretrain
    for key in ("epochs", "batch_size"):
        if not (isinstance(p[key], int) and not isinstance(p[key], bool) and p[key] > 0):
            raise ConfigError(f"transfer.pretrain.{key}", p[key], "a positive integer")
    if not (isinstance(p.seed, int) and not isinstance(p.seed, bool) and p.seed >= 0):
        raise ConfigError("transfer.pretrain.seed", p.seed, "an integer >= 0")
    try:
        check_dataset(p.dataset)
    except ConfigError as error:
        raise ConfigError(f"transfer.pretrain.{error.key}", error.value, error.allowed) from None
    source, target = tuple(p.dataset.image_shape), tuple(cfg.dataset.image_shape)
    if t.adapter == "seed_convs":
        side = seed_convs_output_side(target[0])
        if target[0] != target[1] or (side, side) != source[:2] or source[2] != 1:
            raise ConfigError("transfer.adapter", t.adapter,
                              f"resize_grey or upsample_mnist for {list(target)} images: the seed's convolutions "
                              f"turn {target[0]}x{target[0]} images into {side}x{side}x1, not {list(source)}")
    if t.keep_head and p.dataset.num_classes != cfg.dataset.num_classes:
        raise ConfigError("transfer.keep_head", True, f"false: the pretraining head has {p.dataset.num_classes} "
                          f"classes, the target {cfg.dataset.num_classes}")
    if t.freeze and t.keep_head and ADAPTERS[t.adapter].target_front != "seed_convs":
        raise ConfigError("transfer.freeze", True, f"false with transfer.keep_head=true and adapter={t.adapter}: "
                          "nothing would be left to train")


def pretrain_config(cfg):
    """The job's config as seen by the pretraining run: its dataset, epochs, batch size and seed."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    pre = tree["transfer"]["pretrain"]
    tree["dataset"] = pre["dataset"]
    # The target's training tricks are not the pretraining's: flipped digits are other digits
    # (no TTA), and the pretraining hash, which says when a checkpoint is reused, leaves them out.
    tree["trainer"].update(epochs=pre["epochs"], batch_size=pre["batch_size"], tta=False, label_smoothing=0.0)
    tree["seed"] = pre["seed"]
    tree["weighting"] = {"name": "none"}
    tree["optuna_trial"] = None  # a trial is pruned on the target's epochs, never on pretraining's
    return OmegaConf.create(tree)


def pretrain_hash(cfg) -> str:
    """Identifies a pretraining: same hash, same checkpoint (up to nondeterminism of the hardware)."""
    from omegaconf import OmegaConf

    from cifar_exp.data.resident import precision_policy

    tree = OmegaConf.to_container(cfg, resolve=True)
    pre = tree["transfer"]["pretrain"]
    adapter = ADAPTERS[cfg.transfer.adapter]
    identity = {
        "version": PRETRAIN_VERSION,
        "dataset": {k: v for k, v in pre["dataset"].items() if k not in DATASET_LOCATION_KEYS},
        "epochs": pre["epochs"], "batch_size": pre["batch_size"], "seed": pre["seed"],
        "model": tree["model"], "init": tree["init"], "optimizer": tree["optimizer"],
        "lr_schedule": tree["lr_schedule"],
        "precision": precision_policy(tree["trainer"]["precision"]),  # auto: what it trains in here
        "lenet_input": list(lenet_input_shape(cfg)), "front": adapter.pretrain_front,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def lenet_input_shape(cfg) -> tuple[int, ...]:
    source = cfg.transfer.pretrain.dataset.image_shape
    return tuple(source if ADAPTERS[cfg.transfer.adapter].lenet_input == "pretrain" else cfg.dataset.image_shape)


# ------------------------------------------------------------------------------------------------
# Layers and models

def register_layers() -> None:
    """Make ResizeImages known to Keras' loader (saved.py); defining it registers it."""
    _layers()


@functools.cache
def _layers():
    """The layer class, defined on first use so that importing this module does not import Keras."""
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="cifar_exp")
    class ResizeImages(keras.layers.Layer):
        """Resize (antialiased bilinear) and map channels: grey -> RGB repeats, RGB -> grey is luminance."""

        def __init__(self, height, width, channels, **kwargs):
            super().__init__(**kwargs)
            self.height, self.width, self.channels = height, width, channels

        def call(self, x):
            x = ops.cast(x, self.compute_dtype)
            c = x.shape[-1]
            if c == 3 and self.channels == 1:
                x = ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=x.dtype), axis=-1, keepdims=True)
            elif c != self.channels:
                x = ops.repeat(ops.mean(x, axis=-1, keepdims=True), self.channels, axis=-1)
            if tuple(x.shape[1:3]) != (self.height, self.width):
                x = ops.image.resize(x, (self.height, self.width), antialias=True)
            return x

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.height, self.width, self.channels)

        def get_config(self):
            return {**super().get_config(), "height": self.height, "width": self.width, "channels": self.channels}

    return ResizeImages


def front(kind: str | None, to_shape):
    """The adapter's layers in front of LeNet, or None."""
    import keras
    from keras import layers

    if kind is None:
        return None
    if kind == "resize":
        return _layers()(*to_shape, name="resize_to_lenet")
    # Seed 002's stack, as it was: 96x96x3 -> 28x28x1.
    return keras.Sequential([
        layers.Conv2D(6, 5, activation="relu"),
        layers.AveragePooling2D(pool_size=2, strides=2),
        *[layers.Conv2D(6, 5, activation="relu") for _ in range(4)],
        layers.Conv2D(1, 3, activation="relu"),
    ], name="seed_convs")


def lenet_weight_layers(lenet):
    """LeNet's conv/dense layers in order; the last is the classification head."""
    import keras

    return [layer for layer in lenet.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def save_lenet(lenet, path) -> None:
    """LeNet's conv/dense weights as `layer{i}_{j}` arrays (layer i in order, j: kernel 0, bias 1)."""
    import numpy as np

    arrays = {f"layer{i}_{j}": value for i, layer in enumerate(lenet_weight_layers(lenet))
              for j, value in enumerate(layer.get_weights())}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_lenet(lenet, path, keep_head: bool) -> list:
    """Copy the checkpoint into `lenet`: every conv/dense layer, the head only with keep_head. Returns
    the layers copied."""
    import numpy as np

    targets = lenet_weight_layers(lenet)
    if not keep_head:
        targets = targets[:-1]
    with np.load(path) as saved:
        for i, layer in enumerate(targets):
            values = [saved[f"layer{i}_{j}"] for j in range(len(layer.weights))]
            expected = [tuple(w.shape) for w in layer.weights]
            if [v.shape for v in values] != expected:
                raise ValueError(f"checkpoint {path}: layer {i} ({layer.name}) has shapes "
                                 f"{[v.shape for v in values]}, the model {expected}")
            layer.set_weights(values)
    return targets


class CoreBuilder:
    """train.run's `build_core` for either side: front + LeNet, initialised by `init`, and on the target
    side loaded from the checkpoint and frozen as configured. Keeps the LeNet it built in `self.lenet`.
    `lenet_shape` comes from the job's config: the pretraining config no longer knows the target's."""

    def __init__(self, role: str, lenet_shape, checkpoint=None):
        self.role, self.lenet_shape, self.checkpoint = role, tuple(lenet_shape), checkpoint
        self.lenet, self.tags = None, {}

    def __call__(self, cfg, data):
        import keras

        from cifar_exp.models.registry import build_model
        from cifar_exp.models.initializers import apply_init, apply_l2

        t, adapter = cfg.transfer, ADAPTERS[cfg.transfer.adapter]
        shape = self.lenet_shape
        kind = adapter.target_front if self.role == "target" else adapter.pretrain_front
        inputs = keras.Input(data.image_shape)
        adapt = front(kind, shape)
        self.lenet = build_model(cfg.model, shape, data.num_classes)
        core = keras.Model(inputs, self.lenet(adapt(inputs) if adapt is not None else inputs),
                           name=f"{t.adapter}_lenet_{self.role}")
        apply_init(core, cfg.init)
        apply_l2(core, cfg.model.get("kernel_l2", 0.0), cfg.model.get("bias_l2", 0.0))
        if self.role == "pretrain":
            return core
        transferred = lenet_weight_layers(self.lenet)
        transferred = transferred if t.keep_head else transferred[:-1]
        if self.checkpoint is not None:
            load_lenet(self.lenet, self.checkpoint, t.keep_head)
        if t.freeze:
            for layer in transferred:
                layer.trainable = False
        self.tags = {
            "transfer.transferred_layers": ",".join(layer.name for layer in transferred) if self.checkpoint else "",
            "transfer.frozen_layers": ",".join(layer.name for layer in transferred) if t.freeze else "",
            "transfer.trainable_params": sum(math.prod(w.shape) for w in core.trainable_weights),
        }
        return core


def _save_callback(builder: CoreBuilder, path):
    import keras

    class SaveLenet(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            save_lenet(builder.lenet, path)

    return SaveLenet()


# ------------------------------------------------------------------------------------------------
# The task

def find_pretraining(tracker, experiment_name: str, digest: str):
    """The newest FINISHED pretraining run with this hash that holds a checkpoint, or None."""
    runs = tracker.find_runs(experiment_name,
                             f"tags.`transfer.pretrain_hash` = '{digest}' "
                             "and tags.`transfer.role` = 'pretrain' and attributes.status = 'FINISHED'")
    for run in runs:
        if tracker.has_artifact(run.info.run_id, f"checkpoint/{CHECKPOINT}"):
            return run
    return None


def pretrained_checkpoint(cfg, tracker, folder: Path) -> tuple[Path, str, bool]:
    """(checkpoint file, pretraining run id, reused?): an earlier run's checkpoint, or a new pretraining run."""
    from cifar_exp.tracking import runs as tracking
    from cifar_exp.tracking.run_info import git_state
    from cifar_exp.training import fit as train

    digest = pretrain_hash(cfg)
    experiment = cfg.mlflow.experiment_name
    found = find_pretraining(tracker, experiment, digest)
    if found is not None:
        path = tracker.download_artifact(found.info.run_id, f"checkpoint/{CHECKPOINT}", str(folder))
        log.info("Reusing the checkpoint of pretraining run %s (pretrain hash %s): not retrained",
                 found.info.run_id, digest)
        return Path(path), found.info.run_id, True

    pre_cfg = pretrain_config(cfg)
    tags = {"task": "transfer_pretrain", "transfer.role": "pretrain", "transfer.pretrain_hash": digest,
            "transfer.adapter": cfg.transfer.adapter,
            "transfer.lenet_input": "x".join(map(str, lenet_input_shape(cfg))),
            "transfer.requested_by": tracker.run_id, **git_state()}
    pre_tracker = tracker.open_run(experiment, f"pretrain lenet on {pre_cfg.dataset.name} ({digest[:8]})", tags)
    log.info("Pretraining LeNet on %s (pretrain hash %s, MLflow run %s)", pre_cfg.dataset.name, digest,
             pre_tracker.run_id)
    path = folder / CHECKPOINT
    builder = CoreBuilder("pretrain", lenet_input_shape(cfg))
    try:
        pre_tracker.log_params(tracking.flatten(_container(pre_cfg)))
        train.run(pre_cfg, pre_tracker, extra_callbacks=[_save_callback(builder, path)], build_core=builder)
        pre_tracker.log_artifact(str(path), "checkpoint")
    except KeyboardInterrupt as error:
        pre_tracker.finish("KILLED", error)
        raise
    except Exception as error:
        pre_tracker.finish("FAILED", error)
        raise
    pre_tracker.finish("FINISHED")
    return path, pre_tracker.run_id, False


def _container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def run(cfg, tracker, checkpoint_dir: str | None = None) -> dict[str, float]:
    """Pretraining (or its reuse), then training on the target; `checkpoint_dir` is the target run's
    per-epoch backup (the pretraining keeps none: an interrupted pretraining starts again)."""
    from cifar_exp.training import fit as train

    t = cfg.transfer
    tracker.set_tags({"transfer.role": "target", "transfer.adapter": t.adapter,
                      "transfer.pretrained": str(t.pretrained).lower(), "transfer.freeze": str(t.freeze).lower()})
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if t.pretrained:
            checkpoint, run_id, reused = pretrained_checkpoint(cfg, tracker, Path(folder))
            tracker.set_tags({"transfer.pretrain_run_id": run_id, "transfer.pretrain_hash": pretrain_hash(cfg),
                              "transfer.pretrain_reused": str(reused).lower()})
        builder = CoreBuilder("target", lenet_input_shape(cfg), checkpoint)
        metrics = train.run(cfg, tracker, checkpoint_dir=checkpoint_dir, build_core=builder)
    tracker.set_tags(builder.tags)
    return metrics
