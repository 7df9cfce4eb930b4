"""A logged model reloads compiled (`saved.load_model(path, compile=True)`) in a fresh process, whatever
this package put in it: every registered layer, loss, metric and learning-rate schedule."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import CONF


def _registered_names(path) -> set[str]:
    """The `registered_name`s of this package found anywhere in a .keras file's config."""
    with zipfile.ZipFile(path) as archive:
        text = archive.read("config.json").decode()
    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if str(node.get("registered_name", "")).startswith("cifar_exp>"):
                names.add(node["registered_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(text))
    return names


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_every_registered_class_reloads_compiled_in_a_fresh_process(tmp_path):
    import keras

    from cifar_exp.data import augment
    from cifar_exp.models import airbench
    from cifar_exp.spl import callback as spl
    from cifar_exp.tasks import transfer
    from cifar_exp.tracking import saved
    from cifar_exp.training.losses import LossSettings, VariableL2, build_loss
    from cifar_exp.training.metrics import ConfusionAccuracy
    from cifar_exp.training.optim import SCHEDULES, build_lr_schedule, build_optimizer

    registry = saved.register_all()
    x = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1), dtype="uint8")
    y = np.arange(8) % 4

    def classifier():
        inputs = keras.Input((8, 8, 1), dtype="uint8")
        h = augment._layers().PerImageStandardization(dtype="float32")(inputs)
        h = augment._layers().Augment(pad=1, cutout=2, seed=0)(h)
        h = transfer._layers()(6, 6, 3)(h)
        # As build_classifier: the loss's numbers in a LossSettings layer, the L2 factor read from it.
        settings = LossSettings(0.1, 1e-4, 0.0, name="loss_settings")
        dense = keras.layers.Dense(4, kernel_regularizer=VariableL2(1e-4, settings.kernel_l2))
        core = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten(), dense])
        return keras.Model(inputs, settings(augment.with_flip_tta(core)(h)))

    files, seen = [], set()
    # Each schedule, alternately with and without label smoothing (the two loss classes).
    for i, name in enumerate(SCHEDULES):
        schedule_cfg = OmegaConf.load(CONF / "lr_schedule" / f"{name}.yaml")
        schedule = build_lr_schedule(schedule_cfg, 0.1, steps_per_epoch=1, epochs=2)
        model = classifier()
        # build_optimizer: the schedule's numbers become optimizer variables (OptimizerVariables).
        optimizer = build_optimizer(OmegaConf.load(CONF / "optimizer" / "sgd.yaml"), schedule)
        smoothing = model.get_layer("loss_settings").label_smoothing if i % 2 else None
        model.compile(optimizer=optimizer, loss=build_loss(0.1 * (i % 2), smoothing),
                      metrics=[ConfusionAccuracy(4),
                               keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="cross_entropy")])
        model.fit(x, y, epochs=1, batch_size=4, verbose=0)
        files.append(tmp_path / f"{name}.keras")
        model.save(files[-1])
        seen |= _registered_names(files[-1])
    # ...then self-paced learning's train_pass wrappers, whose targets are (label, index).
    model = classifier()
    loss = spl.LabelColumnLoss(build_loss(0.1))
    metrics = [spl.LabelColumnMetric(ConfusionAccuracy(4)), spl.PerSampleLossRecorder(len(y))]
    model.compile(optimizer="adam", loss=loss, metrics=metrics)
    model.fit(x, np.stack([y, np.arange(8)], axis=1), epochs=1, batch_size=4, verbose=0)
    files.append(tmp_path / "spl.keras")
    model.save(files[-1])
    seen |= _registered_names(files[-1])
    # ...then airbench: its layers, initializer and optimizer, under its flip+translate TTA.
    images = np.random.default_rng(1).random((8, 16, 16, 1), dtype="float32")  # 16 px: 3 poolings after a 2x2 valid conv
    core = airbench.airbench(images.shape[1:], 4, widths=(4, 4, 4))
    airbench.fit_whitening(core, images)
    inputs = keras.Input(images.shape[1:])
    model = keras.Model(inputs, augment.with_tta(core, "flip_translate")(inputs))
    optimizer_cfg = OmegaConf.load(CONF / "optimizer" / "airbench.yaml")
    model.compile(optimizer=airbench.build_airbench_optimizer(optimizer_cfg, optimizer_cfg.lr, 4, total_steps=2),
                  loss=build_loss(0.2), metrics=[ConfusionAccuracy(4)])
    model.fit(images, y, epochs=1, batch_size=4, verbose=0)
    files.append(tmp_path / "airbench.keras")
    model.save(files[-1])
    seen |= _registered_names(files[-1])

    assert seen == set(registry), f"not exercised: {set(registry) - seen}"
    script = ("import sys, numpy as np; from cifar_exp.tracking.saved import load_model\n"
              "for path in sys.argv[1:]:\n"
              "    m = load_model(path, compile=True)\n"
              "    assert m.compiled and m.optimizer is not None, path\n"
              "    x = np.zeros((2, 16, 16, 1), 'float32') if 'airbench' in path else np.zeros((2, 8, 8, 1), 'uint8')\n"
              "    print('OK', path, m.predict(x, verbose=0).shape)\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("OK") == len(files) and "(2, 4)" in done.stdout
