"""Flip test-time augmentation and label smoothing: what they compute, where they act (TTA only
outside training, smoothing only in the loss), how bad values are refused, and that they combine with
bfloat16 and XLA."""
import math

import numpy as np
import pytest

from cifar_exp.data.augment import with_flip_tta
from cifar_exp.errors import ConfigError
from cifar_exp.validate import validate
from conftest import SMOKE, compose, lazy

keras, ops, losses = lazy("keras"), lazy("keras.ops"), lazy("cifar_exp.training.losses")


def numpy(x):
    return ops.convert_to_numpy(x)


def batch_sizes(seen: list):
    """The identity layer, appending the batch size of every call to `seen` (None while Keras
    builds a model symbolically). A closure: Keras would copy a list stored on the layer."""

    class BatchSizes(keras.layers.Layer):
        def call(self, x):
            seen.append(x.shape[0])
            return x

    return BatchSizes()


def small_core(seen=None):
    # BatchNormalization makes training and inference differ (batch vs moving statistics), so
    # which path ran is visible in the output; the input is not left-right symmetric.
    layers = [keras.Input((6, 6, 3))] + ([batch_sizes(seen)] if seen is not None else [])
    layers += [keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(), keras.layers.Flatten(),
               keras.layers.Dense(10)]
    return keras.Sequential(layers)


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(5, 6, 6, 3)).astype("float32")


# ---------------------------------------------------------------------------------------------
# Flip TTA

def test_inference_is_the_mean_of_the_logits_of_x_and_its_mirror_from_one_call(images):
    seen = []
    core = small_core(seen)
    tta = with_flip_tta(core)
    seen.clear()
    out = numpy(tta(images, training=False))
    assert seen == [2 * len(images)]  # one batch of 2N through the model, not two calls
    expected = (numpy(core(images, training=False)) + numpy(core(images[:, :, ::-1], training=False))) / 2
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert not np.allclose(out, numpy(core(images, training=False)), atol=1e-3)  # the mirror did count


def test_training_is_the_model_alone(images):
    seen = []
    core = small_core(seen)
    tta = with_flip_tta(core)
    trained = numpy(tta(images, training=True))
    assert seen[-1] == len(images)
    np.testing.assert_allclose(trained, numpy(core(images, training=True)), atol=1e-5)


def test_tta_is_mirror_invariant(images):
    tta = with_flip_tta(small_core())
    np.testing.assert_allclose(numpy(tta(images[:, :, ::-1])), numpy(tta(images)), atol=1e-5)


@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_the_classifier_predicts_the_mean_of_both_views_and_trains_compiled(fake_tracker):
    from cifar_exp.data.dataset import load_dataset
    from cifar_exp.training.fit import build_classifier

    cfg_plain = compose(SMOKE)
    cfg_tta = compose([*SMOKE, "trainer.tta=true"])
    data = load_dataset(cfg_tta.dataset, 0)
    with_tta, plain = build_classifier(cfg_tta, data), build_classifier(cfg_plain, data)
    assert [w.shape for w in plain.weights] == [w.shape for w in with_tta.weights]
    plain.set_weights(with_tta.get_weights())
    x = data.x_test[:16]
    mirrored = x[:, :, ::-1]
    expected = (plain.predict(x, verbose=0) + plain.predict(mirrored, verbose=0)) / 2
    np.testing.assert_allclose(with_tta.predict(x, verbose=0), expected, atol=1e-5)
    # Inside a compiled training step the model trains; evaluate() then uses TTA as predict() does.
    with_tta.compile(optimizer="adam", loss=losses.build_loss(0.1), metrics=["accuracy"], jit_compile="auto")
    history = with_tta.fit(data.x_train[:64], data.y_train[:64], batch_size=32, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    logits = with_tta.predict(x, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, 1) == data.y_test[:16]))
    assert with_tta.evaluate(x, data.y_test[:16], verbose=0)[1] == pytest.approx(accuracy)


def test_a_saved_tta_model_reloads_with_its_wrapper(tmp_path, images):
    inputs = keras.Input(images.shape[1:])
    model = keras.Model(inputs, with_flip_tta(small_core())(inputs))
    model.compile(optimizer="sgd", loss=losses.build_loss(0.2))
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)
    assert isinstance(reloaded.loss, losses.SmoothedSparseCrossentropy) and reloaded.loss.label_smoothing == 0.2


# ---------------------------------------------------------------------------------------------
# Label smoothing

def test_zero_smoothing_is_keras_sparse_cross_entropy():
    assert type(losses.build_loss(0.0)) is keras.losses.SparseCategoricalCrossentropy


@pytest.mark.parametrize("epsilon", [0.1, 0.2])
def test_smoothing_matches_its_definition_and_keras_one_hot_smoothing(epsilon):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 10)).astype("float32") * 3
    labels = rng.integers(0, 10, size=8)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    per_sample = -(1 - epsilon) * log_p[np.arange(8), labels] - epsilon * log_p.mean(1)
    loss = losses.build_loss(epsilon)
    assert float(loss(labels, logits)) == pytest.approx(per_sample.mean(), rel=1e-5)
    assert float(loss(labels[:, None], logits)) == pytest.approx(per_sample.mean(), rel=1e-5)  # (N, 1) labels
    keras_one_hot = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=epsilon)
    assert float(loss(labels, logits)) == pytest.approx(float(keras_one_hot(np.eye(10)[labels], logits)), rel=1e-5)
    weights = np.array([1, 0, 1, 0, 1, 0, 1, 0], "float32")  # what self-paced learning feeds
    assert float(loss(labels, logits, sample_weight=weights)) == pytest.approx(
        (per_sample * weights).sum() / 8, rel=1e-5)


def test_smoothing_through_self_paced_learnings_label_column():
    from cifar_exp.spl.callback import LabelColumnLoss

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 10)).astype("float32")
    labels = rng.integers(0, 10, size=6)
    targets = np.stack([labels, np.arange(6)], axis=1)  # (label, index), as train_pass feeds them
    assert float(LabelColumnLoss(losses.build_loss(0.2))(targets, logits)) == pytest.approx(
        float(losses.build_loss(0.2)(labels, logits)), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Configuration

@pytest.mark.parametrize("override,key,allowed", [
    ("trainer.tta=mirror", "trainer.tta", "false, true (= flip), flip or flip_translate"),
    ("trainer.tta=1", "trainer.tta", "false, true (= flip), flip or flip_translate"),
    ("trainer.label_smoothing=1", "trainer.label_smoothing", "[0, 1)"),
    ("trainer.label_smoothing=-0.1", "trainer.label_smoothing", "[0, 1)"),
    ("trainer.label_smoothing=nan", "trainer.label_smoothing", "[0, 1)"),
    ("trainer.label_smoothing=true", "trainer.label_smoothing", "[0, 1)"),
    ("trainer.label_smoothing=abc", "trainer.label_smoothing", "[0, 1)"),
])
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate(compose([override]))
    assert error.value.key == key
    assert str(error.value).startswith(f"Invalid config: {key}={error.value.value!r}.")
    assert allowed in error.value.allowed


@pytest.mark.parametrize("override", ["trainer.tta=true", "trainer.label_smoothing=0", "trainer.label_smoothing=0.999"])
def test_good_values_pass(override):
    validate(compose([override]))


def test_both_tricks_combine_with_bfloat16_and_xla_on_resnet9():
    """What experiment=fast set (dropped once measured: experiment=airbench is the fast recipe) still validates."""
    cfg = compose(["experiment=resnet9", "trainer.tta=true", "trainer.label_smoothing=0.2",
                   "trainer.precision=mixed_bfloat16", "trainer.jit_compile=true"])
    validate(cfg)
    assert cfg.trainer.tta is True and cfg.trainer.label_smoothing == 0.2


def test_defaults_leave_both_off():
    cfg = compose()
    assert cfg.trainer.tta is False and cfg.trainer.label_smoothing == 0


# ---------------------------------------------------------------------------------------------
# End to end

@pytest.mark.parametrize("extra", [[], ["weighting=linear", "weighting.losses_from=train_pass"]],
                         ids=["plain", "self_paced_train_pass"])
@pytest.mark.slow  # trains (issue 23: the fast tier in minutes)
def test_a_tiny_job_trains_with_tta_and_label_smoothing(fake_tracker, extra):
    from cifar_exp.training import fit as train

    cfg = compose([*SMOKE, "trainer.tta=true", "trainer.label_smoothing=0.1", "optimizer.lr=0.003", *extra])
    validate(cfg)
    final = train.run(cfg, fake_tracker)
    assert 0 <= final["test_accuracy"] <= 1 and math.isfinite(final["test_loss"])
    epochs = [metrics for step, metrics in fake_tracker.metrics if "loss" in metrics]
    assert len(epochs) == 2 and all(math.isfinite(m["loss"]) for m in epochs)
    # The plain cross-entropy, comparable with unsmoothed runs, is logged beside the smoothed loss;
    # on the evaluated split too, where the smoothed one is larger.
    assert all({"cross_entropy", "test_cross_entropy"} <= set(m) for m in epochs)
    assert epochs[-1]["test_cross_entropy"] < epochs[-1]["test_loss"]
    if extra:  # self-paced learning computed its weights from the (unsmoothed) losses
        assert "spl_lambda" in epochs[-1] and 0 < epochs[-1]["spl_mean_v"] < 1
    else:
        assert final["test_accuracy"] > 0.2  # synthetic classes are learnable: chance is 0.1


def test_smoothing_and_l2_read_from_loss_settings_variables():
    """build_classifier's LossSettings holds ε and the L2 factors as variables (inputs of the compiled
    steps, one program for a sweep over them): the loss and penalties follow the variables' values,
    and the variables are not saved with the weights (their values are the layer's config)."""
    from cifar_exp.training.losses import LossSettings, VariableL2

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 10)).astype("float32")
    labels = rng.integers(0, 10, size=8)
    settings = LossSettings(0.0, 1e-3, 0.0)
    loss = losses.build_loss(0.0, settings.label_smoothing)
    assert float(loss(labels, logits)) == pytest.approx(float(losses.build_loss(0.0)(labels, logits)), rel=1e-5)
    settings.label_smoothing.assign(0.2)
    assert float(loss(labels, logits)) == pytest.approx(float(losses.build_loss(0.2)(labels, logits)), rel=1e-5)
    weights = keras.Variable(rng.normal(size=(3, 4)).astype("float32"))
    penalty = VariableL2(1e-3, settings.kernel_l2)
    assert float(penalty(weights)) == pytest.approx(1e-3 * float(np.sum(weights.numpy() ** 2)), rel=1e-5)
    settings.kernel_l2.assign(0.0)
    assert float(penalty(weights)) == 0.0
    store = {}
    settings.save_own_variables(store)
    assert store == {}
    assert LossSettings.from_config(settings.get_config()).get_config()["label_smoothing"] == 0.0
