"""model=airbench and its pieces: the whitening layer, the translate augmentation and TTA, the
BatchNorm-bias rate multiplier, AirbenchSGD's schedule/decay/Lookahead, and a tiny run."""
import functools
import math

import numpy as np
import pytest

from cifar_exp.data.augment import build_augmentation, with_tta
from cifar_exp.errors import ConfigError
from cifar_exp.validate import validate
from conftest import compose, lazy

keras, ops, airbench = lazy("keras"), lazy("keras.ops"), lazy("cifar_exp.models.airbench")

TINY = ["experiment=airbench", "dataset=synthetic", "dataset.train_size=256", "dataset.test_size=64",
        "model.widths=[8,16,16]", "trainer.epochs=2", "trainer.batch_size=64", "trainer.verbose=0"]


def numpy(x):
    return ops.convert_to_numpy(x)


@functools.cache
def _FlipParities_class():
    # Built at first use, not at import: collecting the tests imports no Keras.
    class FlipParities(keras.callbacks.Callback):
        """The alternating flip's epoch parity as each epoch starts (after fit.py's callback set it)."""

        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append(int(numpy(self.model.get_layer("alternating_flip_translate").epoch_parity)))
    return FlipParities


def FlipParities(*args, **kwargs):
    return _FlipParities_class()(*args, **kwargs)


@pytest.fixture
def images():
    # Correlated channels and neighbouring pixels, like photographs: far from white.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 17, 17, 1)).cumsum(axis=1).cumsum(axis=2)
    return (np.concatenate([base, 0.8 * base + 0.2 * rng.normal(size=base.shape), base ** 2 / 10], -1)
            .astype("float32"))


def test_whitening_layer_makes_the_patch_covariance_about_identity(images):
    layer = airbench.PatchWhitening(2)
    layer.build(images.shape)
    layer.kernel.assign(airbench.whitening_weights(images, 2, eps=1e-8))
    out = numpy(layer(images))
    assert out.shape == (64, 16, 16, 24)
    first = out[..., :12].reshape(-1, 12).astype(np.float64)  # the other 12 filters are the negatives
    covariance = first.T @ first / len(first)
    np.testing.assert_allclose(covariance, np.eye(12), atol=1e-3)
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], atol=1e-5)


def test_the_whitening_from_pixels_is_kept_per_pixels_and_preprocessing(monkeypatch):
    """A later job on the same pixels and preprocessing gets the kernel fit_whitening computes, without
    recomputing it; other pixels or another preprocessing compute their own."""
    from cifar_exp.data.augment import build_preprocessing
    from cifar_exp.models import airbench as module

    monkeypatch.setattr(module, "_WHITENING", {})
    computed = []
    original = module.whitening_weights
    monkeypatch.setattr(module, "whitening_weights", lambda *a, **k: computed.append(1) or original(*a, **k))
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    scale = build_preprocessing("scale", pixels)

    def kernel(model_pixels, preprocessing):
        model = airbench.airbench((32, 32, 3), 10, widths=(8, 8, 8))
        airbench.fit_whitening_from_pixels(model, preprocessing, model_pixels)
        return numpy(airbench.whitening_layer(model).kernel)

    first = kernel(pixels, scale)
    reference = airbench.airbench((32, 32, 3), 10, widths=(8, 8, 8))
    airbench.fit_whitening(reference, numpy(scale(pixels)))
    np.testing.assert_array_equal(first, numpy(airbench.whitening_layer(reference).kernel))
    computed.clear()
    np.testing.assert_array_equal(kernel(pixels.copy(), build_preprocessing("scale", pixels)), first)
    assert computed == []
    other = pixels.copy()
    other[0, 0, 0, 0] ^= 1
    assert not np.array_equal(kernel(other, scale), first) and computed == [1]
    kernel(pixels, build_preprocessing("mean_std", pixels))
    assert computed == [1, 1]


def test_whitening_kernel_is_frozen_and_its_bias_trains_until_the_gate_closes():
    model = airbench.airbench((32, 32, 3), 10, widths=(8, 8, 8))
    layer = airbench.whitening_layer(model)
    trainable = {id(w) for w in model.trainable_weights}
    assert id(layer.kernel) not in trainable and id(layer.bias) in trainable
    x = np.random.default_rng(3).normal(size=(4, 32, 32, 3)).astype("float32")
    airbench.fit_whitening(model, x)

    def bias_gradient():
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = ops.sum(model(x, training=True) * np.arange(10, dtype="float32"))
        return tape.gradient(loss, layer.bias.value)

    if keras.backend.backend() != "tensorflow":
        pytest.skip("gradient read through tf.GradientTape")
    assert np.abs(numpy(bias_gradient())).sum() > 0
    freeze = airbench.WhiteningBiasFreeze(model, epochs=3)
    freeze.on_epoch_begin(3)
    assert float(numpy(layer.bias_gate)) == 0.0
    assert np.abs(numpy(bias_gradient())).sum() == 0
    freeze.on_epoch_begin(0)  # a resumed job re-opens it from the epoch number
    assert float(numpy(layer.bias_gate)) == 1.0


def test_flip_translate_shifts_each_image_by_at_most_two_pixels():
    augment = build_augmentation("flip_translate", (32, 32, 3))
    x = np.random.default_rng(1).integers(0, 255, (16, 32, 32, 3)).astype("float32")
    out = numpy(augment(x, training=True))
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    shifts = set()
    for i in range(len(x)):
        found = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                 if np.array_equal(out[i], (padded[i, dy:dy + 32, dx:dx + 32])[:, ::-1 if flip else 1])]
        assert found, f"image {i} is no flip/shift of up to 2 pixels of its input"
        shifts.add(found[0][:2])
    assert len(shifts) > 1  # random per image
    np.testing.assert_array_equal(numpy(augment(x, training=False)), x)


def test_flip_translate_tta_weights_six_views_as_airbench():
    core = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2)).astype("float32")
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="reflect")

    def mirrored(v):
        return (numpy(core(v)) + numpy(core(v[:, :, ::-1]))) / 2

    expected = 0.5 * mirrored(x) + 0.25 * mirrored(padded[:, :6, :6]) + 0.25 * mirrored(padded[:, 2:, 2:])
    tta = with_tta(core, "flip_translate")
    np.testing.assert_allclose(numpy(tta(x, training=False)), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(tta(x, training=True)), numpy(core(x)), atol=1e-6)


def test_batchnorm_bias_moves_bias_lr_scale_times_as_fast_with_the_same_weight_decay():
    """One SGD step with momentum and decoupled decay: the scaled bias moves 64x the plain one's
    gradient step, and both shrink by the same weight-decay factor."""
    x = np.zeros((4, 1, 1, 3), "float32")
    moves = {}
    for scale in (1.0, 64.0):
        layer = airbench.ScaledBias(scale)
        layer.build(x.shape)
        layer.bias.assign(np.full(3, 0.5 / math.sqrt(scale), "float32"))  # the same effective bias 0.5
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
        before = numpy(layer(x))[0, 0, 0]
        import tensorflow as tf

        if keras.backend.backend() != "tensorflow":
            pytest.skip("gradient read through tf.GradientTape")
        with tf.GradientTape() as tape:
            loss = ops.sum(layer(x)) / 4  # d loss / d effective bias = 1
        optimizer.apply([tape.gradient(loss, layer.bias.value)], [layer.bias])
        moves[scale] = before - numpy(layer(x))[0, 0, 0]
    np.testing.assert_allclose(moves[64.0], 64 * moves[1.0], rtol=1e-4)


def test_airbench_optimizer_converts_per_1024_rates_and_schedules_from_variables():
    cfg = compose(["experiment=airbench"])
    schedule_cfg = cfg.lr_schedule
    from cifar_exp.training.optim import build_lr_schedule, build_optimizer

    schedule = build_lr_schedule(schedule_cfg, cfg.optimizer.lr, steps_per_epoch=49, epochs=10)
    optimizer = build_optimizer(cfg.optimizer, schedule, batch_size=1024, total_steps=490)
    # 11.5 per 1,024 examples at momentum 0.85: 11.5 / (1 + 1/0.15) per mean loss of 1,024.
    peak = 11.5 / (1 + 1 / 0.15)
    assert float(numpy(optimizer.learning_rate)) == pytest.approx(0.2 * peak, rel=1e-5)
    optimizer.iterations.assign(int(0.23 * 490))
    assert float(numpy(optimizer.learning_rate)) == pytest.approx(peak, rel=1e-2)
    optimizer.iterations.assign(490)
    assert float(numpy(optimizer.learning_rate)) == pytest.approx(0.07 * peak, rel=1e-5)
    assert float(numpy(optimizer.decay)) == pytest.approx(0.0153 / 1.15, rel=1e-5)
    # Half the batch: half the rate per step (per 1,024 examples stays put).
    half = build_optimizer(cfg.optimizer, 11.5, batch_size=512, total_steps=980)
    assert float(numpy(half.learning_rate)) == pytest.approx(peak / 2, rel=1e-5)
    # What differs between sweep jobs is a variable of the optimizer, not a constant of the step.
    names = {v.name for v in optimizer.variables}
    assert {"learning_rate", "decay", "total_steps"} <= names
    # Any other schedule of optimizer.lr still works, its rates converted the same way.
    onecycle = build_lr_schedule(compose(["lr_schedule=onecycle"]).lr_schedule, 11.5, steps_per_epoch=10, epochs=10)
    other = build_optimizer(cfg.optimizer, onecycle, batch_size=1024, total_steps=100)
    other.iterations.assign(20)  # onecycle's peak (epoch (10 + 1) // 5 = 2)
    assert float(numpy(other.learning_rate)) == pytest.approx(peak, rel=1e-5)


def test_lookahead_copies_then_averages_the_weights_every_few_steps():
    w = keras.Variable(np.zeros(2, "float32"))
    opt = airbench.AirbenchSGD(learning_rate=1.0, momentum=0.0, total_steps=20, lookahead_every=2,
                               lookahead_start=0.0, lookahead_decay=0.9, lookahead_pow=1.0)
    opt.build([w])
    one = np.ones(2, "float32")
    opt.apply([-one], [w])  # step 1: w = 1, not due
    np.testing.assert_allclose(numpy(w), 1.0)
    opt.apply([-one], [w])  # step 2: first due step copies w (= 2) into the slow weights
    np.testing.assert_allclose(numpy(opt.slow[0]), 2.0)
    opt.apply([-one], [w])
    opt.apply([-one], [w])  # step 4: fast w = 4; slow moves by 1 - rho, rho = 0.9^2 * 4/20; w = slow
    rho = 0.81 * 4 / 20
    np.testing.assert_allclose(numpy(w), 2 + (1 - rho) * 2, rtol=1e-5)
    np.testing.assert_allclose(numpy(opt.slow[0]), numpy(w))


@pytest.mark.parametrize("override, key", [
    ("model.widths=[8,16]", "model.widths"),
    ("model.batchnorm_momentum=1.5", "model.batchnorm_momentum"),
    ("optimizer.lookahead_every=0", "optimizer.lookahead_every"),
    ("lr_schedule.start=2", "lr_schedule.start"),
    ("lr_schedule.peak_fraction=1.0", "lr_schedule.peak_fraction"),
    ("trainer.tta=translate", "trainer.tta"),
])
def test_bad_airbench_values_fail_before_training(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(["experiment=airbench", override]))


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_tiny_airbench_run_learns_synthetic_data(fake_tracker):
    from cifar_exp.training import fit as train

    cfg = compose(TINY + ["trainer.epochs=4", "trainer.jit_compile=false"])
    validate(cfg)
    parities = FlipParities()
    metrics = train.run(cfg, fake_tracker, extra_callbacks=[parities])
    assert parities.seen == [0, 1, 0, 1]  # airbench's alternating flip, driven by the epoch
    assert metrics["test_accuracy"] > 0.3  # 10 classes: chance is 0.1 (16 steps of a tiny network)
    lrs = [m["lr"] for _, m in fake_tracker.metrics if "lr" in m]
    assert lrs[0] != lrs[-1]  # the triangle schedule moved the rate


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_an_interrupted_airbench_job_resumes_with_its_optimizer_state(fake_tracker, tmp_path):
    """The checkpoint holds AirbenchSGD's extra variables (slow weights, decay, total steps)."""
    from cifar_exp.training import checkpoints, fit as train

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    cfg = compose(TINY + ["trainer.jit_compile=false", "optimizer.lookahead_start=0.0"])
    folder = str(tmp_path / "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, fake_tracker, checkpoint_dir=folder, extra_callbacks=[StopAfterFirstEpoch()])
    assert checkpoints.restore_point(folder) == 1
    parities = FlipParities()
    metrics = train.run(cfg, fake_tracker, checkpoint_dir=folder, extra_callbacks=[parities])
    assert parities.seen == [1]  # epoch 2 flips each image the other way than epoch 1 did
    assert math.isfinite(metrics["test_accuracy"])
    assert [step for step, m in fake_tracker.metrics if "loss" in m] == [1, 2]
