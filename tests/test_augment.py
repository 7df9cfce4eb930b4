"""Preprocessing maps uint8 batches to the documented values; augmentation keeps shapes, changes
pixels only in training, does what its recipe says, and runs inside a compiled (XLA) training step."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from conftest import lazy

keras = lazy("keras")

from cifar_exp.data.augment import AUGMENTATIONS, build_augmentation, build_preprocessing, channel_stats  # noqa: E402


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)


def run(layer, x, training):
    return keras.ops.convert_to_numpy(layer(x, training=training))


# ---------------------------------------------------------------------------------------------
# Preprocessing

def test_scale_divides_by_255(batch):
    np.testing.assert_allclose(run(build_preprocessing("scale", batch), batch, False), batch / 255, rtol=1e-6)


def test_per_image_standardization_matches_its_definition(batch):
    x = np.concatenate([batch, np.full((1, 32, 32, 3), 7, np.uint8)])  # plus a flat image
    out = run(build_preprocessing("per_image_standardization", batch), x, False)
    xf = x.astype(np.float64)
    mean = xf.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(xf.std(axis=(1, 2, 3), keepdims=True), 1 / np.sqrt(32 * 32 * 3))
    np.testing.assert_allclose(out, (xf - mean) / std, atol=1e-4)
    assert np.all(out[-1] == 0)  # the flat image stays finite


def test_mean_std_uses_the_training_split_channel_statistics(batch):
    out = run(build_preprocessing("mean_std", batch), batch, False)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_channel_stats_match_numpy_in_chunks(batch):
    mean, std = channel_stats(batch, chunk=5)
    np.testing.assert_allclose(mean, batch.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, batch.std(axis=(0, 1, 2)), rtol=1e-5)


def test_preprocessing_outputs_float32_even_under_mixed_precision(batch):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for name in ("scale", "per_image_standardization", "mean_std"):
            layer = build_preprocessing(name, batch)
            assert keras.backend.standardize_dtype(layer(batch).dtype) == "float32", name
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_unknown_names_are_rejected(batch):
    with pytest.raises(ValueError, match="dataset.preprocess='zscore'"):
        build_preprocessing("zscore", batch)
    with pytest.raises(ValueError, match="dataset.augment='mixup'"):
        build_augmentation("mixup", (32, 32, 3))


# ---------------------------------------------------------------------------------------------
# Augmentation

def test_none_is_no_layer():
    assert build_augmentation("none", (32, 32, 3)) is None


@pytest.mark.parametrize("name", [a for a in AUGMENTATIONS if a != "none"])
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (96, 96, 3)])
def test_augmentation_keeps_shape_and_changes_pixels_only_in_training(name, shape):
    x = np.random.default_rng(1).integers(0, 256, size=(8, *shape), dtype=np.uint8)
    layer = build_augmentation(name, shape)
    trained, evaluated = run(layer, x, True), run(layer, x, False)
    assert trained.shape == evaluated.shape == x.shape
    np.testing.assert_array_equal(evaluated, x.astype(np.float32))
    assert not np.array_equal(trained, x.astype(np.float32))


def windows(image, pad):
    """Every crop of the reflect-padded image, and its mirror: what crop+flip may return."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = image.shape[:2]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            yield (dy, dx, True), crop[:, ::-1]


def test_crop_flip_returns_a_window_of_the_reflect_padded_image_per_image(batch):
    out = run(build_augmentation("crop_flip", (32, 32, 3)), batch, True)
    chosen = []
    for image, result in zip(batch, out):
        matches = [where for where, crop in windows(image, 4) if np.array_equal(crop, result)]
        assert matches, "not a 32x32 window of the 4-pixel reflect padding, flipped or not"
        chosen.append(matches[0])
    assert len(set(chosen)) > 1  # each image draws its own offset and flip


def test_cutout_blanks_at_most_an_8x8_square_with_the_image_mean():
    x = np.random.default_rng(2).integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8)
    out = run(build_augmentation("crop_flip_cutout", (32, 32, 3)), x, True)
    blanked = 0
    for image, result in zip(x, out):
        # The window that explains the most pixels; what it does not explain is the cutout.
        diffs = [((crop != result).any(-1), crop) for _, crop in windows(image, 4)]
        mask, crop = min(diffs, key=lambda d: d[0].sum())
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert np.ptp(rows) < 8 and np.ptp(cols) < 8
            np.testing.assert_allclose(result[mask], np.broadcast_to(crop.mean((0, 1)), result[mask].shape), atol=1e-3)
            blanked += 1
    assert blanked > len(x) // 2  # squares may fall mostly outside the image, but not usually


def test_two_training_calls_draw_different_augmentations(batch):
    layer = build_augmentation("crop_flip", (32, 32, 3))
    assert not np.array_equal(run(layer, batch, True), run(layer, batch, True))


def tiny_model(x_train, augment="crop_flip_cutout", preprocess="mean_std"):
    inputs = keras.Input(x_train.shape[1:], dtype="uint8")
    h = inputs
    aug = build_augmentation(augment, x_train.shape[1:])
    if aug is not None:
        h = aug(h)
    h = build_preprocessing(preprocess, x_train)(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(h))
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def test_augmentation_trains_inside_a_compiled_step_and_is_off_at_evaluation(batch, tmp_path):
    y = np.arange(len(batch)) % 10
    model = tiny_model(batch)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    history = model.fit(batch, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    first, second = model.predict(batch, verbose=0), model.predict(batch, verbose=0)
    np.testing.assert_array_equal(first, second)  # evaluation is deterministic: no augmentation
    # The saved model round-trips with its augmentation and preprocessing layers.
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), first, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Alternating flip (airbench94): each image flipped by a fixed bit in epoch 0, then every other epoch

def flip_states(feed, images, epochs, initial_epoch=0, preprocess="mean_std"):
    """Train a tiny model with `alternating_flip` for `epochs`, one full batch per epoch, and return
    (per epoch, per image: was it fed mirrored?, how many times the training step was traced).
    feed="resident": the model takes indices into the images held in a variable (data/resident.py)."""
    from cifar_exp.data import augment, resident

    inputs = keras.Input(images.shape[1:], dtype="uint8")
    plain = build_preprocessing(preprocess, images)(inputs)
    flip = build_augmentation("alternating_flip", images.shape[1:])
    recorder = FlipRecorder(len(images))
    h = recorder([plain, flip(plain)])
    classifier = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    model, x = classifier, images
    if feed == "resident":
        indices = keras.Input((), dtype="int32")
        model = keras.Model(indices, classifier(resident._layers().ResidentImages(images)(indices)))
        x = np.arange(len(images), dtype="int32")
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    states = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: states.append(keras.ops.convert_to_numpy(recorder.flipped).copy()))
    model.fit(x, np.zeros(len(images)), batch_size=len(images), epochs=initial_epoch + epochs,
              initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=augment.training_callbacks(classifier) + [record])
    return np.array(states), recorder.traces


@functools.cache
def _FlipRecorder_class():
    # Built at first use, not at import: collecting the tests imports no Keras.
    @keras.saving.register_keras_serializable("test_augment")
    class FlipRecorder(keras.layers.Layer):
        """Passes the augmented batch on; in training keeps, per image, whether it is the mirror of the
        plain one, and counts its own traces (a Python side effect: once per compiled program)."""

        def __init__(self, n, **kwargs):
            super().__init__(**kwargs)
            self.flipped = self.add_weight(shape=(n,), dtype="int32", initializer="zeros", trainable=False)
            self.traces = 0

        def call(self, inputs, training=None):
            plain, augmented = inputs
            if training:
                self.traces += 1
                mirrored = keras.ops.all(keras.ops.equal(augmented, keras.ops.flip(plain, axis=2)), axis=(1, 2, 3))
                self.flipped.assign(keras.ops.cast(mirrored, "int32"))
            return augmented
    return FlipRecorder


def FlipRecorder(*args, **kwargs):
    return _FlipRecorder_class()(*args, **kwargs)


@pytest.fixture(scope="module")
def distinct():
    # 32 distinct images, none its own mirror; pixel 0..255 as fed.
    return np.random.default_rng(3).integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)


# Epoch 0's flips of `distinct`, as TensorFlow computed them when the bit was defined: the same on
# every backend (CI runs this file under JAX too), since the bit compares uint8-exact pixels.
FIRST_EPOCH_FLIPS = "10001010100111010111111111000100"


def test_alternating_flip_alternates_every_image_every_epoch_in_one_compiled_step(distinct):
    states, traces = flip_states("host", distinct, epochs=5)
    assert 0.3 < states[0].mean() < 0.7  # about half the images flipped in the first epoch
    for before, after in zip(states[:-1], states[1:]):
        np.testing.assert_array_equal(after, 1 - before)  # each image flipped exactly every other epoch
    assert "".join(map(str, states[0])) == FIRST_EPOCH_FLIPS
    # The epoch parity is a variable read by the step, not a constant of it: 5 epochs, one trace.
    assert traces == 1


def test_alternating_flip_is_the_same_from_resident_images_after_any_preprocessing_and_on_resume(distinct):
    host, _ = flip_states("host", distinct, epochs=4)
    np.testing.assert_array_equal(flip_states("resident", distinct, epochs=4)[0], host)
    # The bit depends on the image, not on its preprocessing (each is increasing within a channel).
    for preprocess in ("scale", "per_image_standardization"):
        np.testing.assert_array_equal(flip_states("host", distinct, epochs=1, preprocess=preprocess)[0], host[:1])
    # A job resumed at epoch 3 flips as the uninterrupted one did in epoch 3: parity from the epoch.
    np.testing.assert_array_equal(flip_states("host", distinct, epochs=1, initial_epoch=3)[0], host[3:])


def test_alternating_flip_translate_is_a_translated_window_flipped_by_the_epoch(distinct):
    from cifar_exp.data.augment import training_callbacks

    layer = build_augmentation("alternating_flip_translate", (8, 8, 3))
    inputs = keras.Input((8, 8, 3), dtype="uint8")
    callback, = training_callbacks(keras.Model(inputs, layer(inputs)))
    flips = []
    for epoch in (0, 1):
        callback.on_epoch_begin(epoch)
        out = run(layer, distinct, True)
        where = [next(w for w, crop in windows(image, 1) if np.array_equal(crop, result))
                 for image, result in zip(distinct, out)]
        flips.append(np.array([flipped for _, _, flipped in where]))
        assert len({(dy, dx) for dy, dx, _ in where}) > 1  # random 1-pixel translations (8 px: pad 1)
    np.testing.assert_array_equal(flips[1], ~flips[0])
    np.testing.assert_array_equal(run(layer, distinct, False), distinct.astype(np.float32))
