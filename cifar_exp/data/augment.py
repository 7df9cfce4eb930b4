"""Preprocessing and augmentation as Keras layers, so they run inside the compiled step.

Both take the uint8 batch as fed (and cast it to float32 themselves); augmentation is active only in
training, preprocessing always. Test-time augmentation (`with_flip_tta`) wraps the model and acts
only outside training. Only `keras.ops`/`keras.random`, so any Keras backend runs them.
"""
from __future__ import annotations

import functools

import numpy as np

PREPROCESSING = ("scale", "per_image_standardization", "mean_std")
AUGMENTATIONS = ("none", "flip", "crop_flip", "crop_flip_cutout", "flip_translate", "alternating_flip",
                 "alternating_flip_translate")
# trainer.tta: false | true (= flip) | flip | flip_translate
TTA_LEVELS = (False, True, "flip", "flip_translate")

# seed 003's recipe on 32-pixel images: reflect-pad 4 then crop 32, cutout 8x8. Scaled with the
# image side so STL-10 (96 px) and MNIST (28 px) get the same relative jitter.
CROP_PAD_PER_SIDE = 1 / 8
CUTOUT_PER_SIDE = 1 / 4
# airbench's translation: reflect-pad 2 then crop 32 (a shift of up to 2 pixels each way).
TRANSLATE_PER_SIDE = 1 / 16
# Alternating flip's per-image bit: the parity of this many pixel comparisons (see Augment._image_bits).
IMAGE_BIT_COMPARISONS = 16


def build_preprocessing(name: str, x_train: np.ndarray, data_key=None):
    """A layer mapping uint8 pixels to the network's float32 inputs; `mean_std` reads x_train's statistics
    (computed once per `data_key` in a process: see `channel_stats`)."""
    import keras

    # float32 even under mixed precision: sums of raw pixel values overflow float16.
    if name == "scale":
        return keras.layers.Rescaling(1.0 / 255, dtype="float32", name="scale")
    if name == "per_image_standardization":
        return _layers().PerImageStandardization(dtype="float32", name="per_image_standardization")
    if name == "mean_std":
        mean, std = channel_stats(x_train, key=data_key)
        return keras.layers.Normalization(mean=mean.tolist(), variance=np.square(std).tolist(),
                                          dtype="float32", name="mean_std")
    raise ValueError(f"dataset.preprocess={name!r}: expected one of {', '.join(PREPROCESSING)}")


def build_augmentation(name: str, image_shape):
    """A training-only random layer for the named recipe, or None for `none`.

    `alternating_*` flip as airbench94: each image in the first epoch by a fixed per-image bit
    (about half of them), then exactly when it was not flipped the epoch before; the layer's
    epoch parity is set by `training_callbacks`, which `model.fit` must be given.
    """
    if name == "none":
        return None
    if name not in AUGMENTATIONS:
        raise ValueError(f"dataset.augment={name!r}: expected one of {', '.join(AUGMENTATIONS)}")
    side = min(image_shape[:2])
    flip = "alternating" if name.startswith("alternating_") else True
    if name == "alternating_flip":
        return _layers().Augment(flip=flip, name=name)
    if name.endswith("flip_translate"):  # airbench94's flip and 2-pixel translation
        return _layers().Augment(pad=max(1, round(side * TRANSLATE_PER_SIDE)), flip=flip, name=name)
    crop = "crop" in name
    return _layers().Augment(
        pad=max(1, round(side * CROP_PAD_PER_SIDE)) if crop else 0,
        cutout=max(1, round(side * CUTOUT_PER_SIDE)) if "cutout" in name else 0,
        flip=True, name=name)


def training_callbacks(classifier) -> list:
    """The callback that sets each alternating-flip layer of `classifier` (its top-level layers) to
    the parity of the epoch about to start; none when it has no such layer. A resumed job gets its
    parity from the epoch number, as an uninterrupted one."""
    layers = [layer for layer in classifier.layers
              if isinstance(layer, _layers().Augment) and layer.flip == "alternating"]
    return [_layers().AlternatingFlipEpoch(layers)] if layers else []


def with_flip_tta(core):
    """`core` with flip test-time augmentation: at inference the mean of the logits for each image and
    its mirror image (one call on the batch of 2N), in training `core` alone."""
    return _layers().FlipTTA(core, name="flip_tta")


def with_tta(core, level):
    """`core` under the `trainer.tta` level: itself (false), flip TTA (true, flip), or airbench's flip +
    translate TTA (flip_translate: half the weight on the image and its mirror, a quarter each on both
    shifted by one pixel up-left and down-right, each with its mirror: one batch of 6N)."""
    if level is False:
        return core
    if level == "flip_translate":
        return _layers().FlipTranslateTTA(core, name="flip_translate_tta")
    return with_flip_tta(core)


# {data identity: (mean, std)}: the jobs of a multirun process train on the same images (2.2 s a job on
# the H200 host for CIFAR-10's 50,000, issue 24). A few entries: a sweep over datasets or subsets.
_CHANNEL_STATS: dict = {}
CHANNEL_STATS_KEPT = 4


def channel_stats(x: np.ndarray, chunk: int = 4096, key=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation in pixel units (float32, shape (channels,)), without a
    float copy of all of x (uint8 (N, H, W, C); 50,000 CIFAR images would take 1.2 GB as float64).

    `key`: a hashable identity of exactly these images (fit.py: the source's sha256, the training
    indices, the shape); the result is then kept for the process, so later jobs on the same images
    skip the pass over them. None: always computed.
    """
    if key is not None and key in _CHANNEL_STATS:
        return _CHANNEL_STATS[key]
    s = np.zeros(x.shape[-1])
    ss = np.zeros(x.shape[-1])
    for i in range(0, len(x), chunk):
        part = x[i:i + chunk].reshape(-1, x.shape[-1]).astype(np.float64)
        s += part.sum(0)
        ss += np.square(part).sum(0)
    n = x.size // x.shape[-1]
    mean = s / n
    stats = mean.astype(np.float32), np.sqrt(np.maximum(ss / n - mean ** 2, 1e-12)).astype(np.float32)
    if key is not None:
        while len(_CHANNEL_STATS) >= CHANNEL_STATS_KEPT:
            _CHANNEL_STATS.pop(next(iter(_CHANNEL_STATS)))  # the oldest
        _CHANNEL_STATS[key] = stats
    return stats


def register_layers() -> None:
    """Make the layers known to Keras' loader (saved.py); defining them registers them."""
    _layers()


@functools.cache
def _layers():
    """The layer classes, defined on first use so that importing this module does not import Keras."""
    import keras
    from keras import ops

    register = keras.saving.register_keras_serializable(package="cifar_exp")

    @register
    class PerImageStandardization(keras.layers.Layer):
        """Each image to zero mean, unit variance, as tf.image.per_image_standardization: the
        standard deviation is floored at 1/sqrt(pixels x channels) so flat images stay finite."""

        def call(self, x):
            x = ops.cast(x, self.compute_dtype)
            n = int(np.prod(x.shape[1:]))
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            std = ops.std(x, axis=(1, 2, 3), keepdims=True)
            return (x - mean) / ops.maximum(std, float(1 / np.sqrt(n)))

    @register
    class Augment(keras.layers.Layer):
        """Random crop of a reflect-padded image, horizontal flip, and cutout, per image on the
        accelerator; the identity (after a cast to float) outside training.

        `flip`: False, True (random, per image and step) or "alternating" (airbench94's: image i is
        flipped in epoch e when bit(i) != e mod 2, with `epoch_parity` = e mod 2 a non-trainable
        int32 variable set before each epoch by AlternatingFlipEpoch; a variable, not a Python
        constant, so every epoch runs the same compiled step).
        """

        def __init__(self, pad=0, flip=True, cutout=0, seed=None, **kwargs):
            kwargs.setdefault("dtype", "float32")
            super().__init__(**kwargs)
            self.pad, self.flip, self.cutout, self.seed = pad, flip, cutout, seed
            self.generator = keras.random.SeedGenerator(seed)
            if flip == "alternating":
                self.epoch_parity = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                                    trainable=False, name="epoch_parity")

        def call(self, x, training=None):
            x = ops.cast(x, self.compute_dtype)
            if not training:
                return x
            if self.flip == "alternating":  # the bit of the image as fed, before crop or flip
                flipped = ops.not_equal(self._image_bits(x), self.epoch_parity)
            if self.pad:
                x = self._crop(x)
            if self.flip == "alternating":
                x = ops.where(ops.reshape(flipped, (-1, 1, 1, 1)), ops.flip(x, axis=2), x)
            elif self.flip:
                coin = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self.generator) < 0.5
                x = ops.where(coin, ops.flip(x, axis=2), x)
            if self.cutout:
                x = self._cutout(x)
            return x

        def _image_bits(self, x):
            """A fixed pseudo-random bit per image, (batch,) int32 in {0, 1}: the parity of how many
            of IMAGE_BIT_COMPARISONS fixed pixel pairs (same channel, positions drawn once from a
            fixed seed) have the first pixel brighter than the second.

            Why from the content: with host data the step sees images, not dataset indices, and a
            bit from the pixels is the same for an image whichever feed (host or resident) or
            batch it comes in, so both feeds train alike. Why comparisons, not a hash of values:
            the layer sees preprocessed floats, and every preprocessing (scale, mean_std,
            per-image standardisation) is increasing within a channel, so the order of two pixels,
            and the bit, is that of the uint8 pixels, on any backend, with no rounding to disagree
            on. The parity of 16 comparisons is near 1/2 even where single ones are biased (ties
            count as not brighter; a flat image gets 0, deterministically).
            """
            h, w, c = x.shape[1:]
            rng = np.random.default_rng(20240405)  # fixed: an image's bit must not change between jobs
            n = IMAGE_BIT_COMPARISONS
            first = rng.choice(h * w, n, replace=False)
            second = (first + rng.integers(1, h * w, n)) % (h * w)  # never the same pixel
            channel = rng.integers(0, c, n)
            flat = ops.reshape(x, (-1, h * w * c))
            brighter = ops.take(flat, (first * c + channel).astype("int32"), axis=1) > ops.take(
                flat, (second * c + channel).astype("int32"), axis=1)
            return ops.mod(ops.sum(ops.cast(brighter, "int32"), axis=1), 2)

        def _crop(self, x):
            # Gather each image's window from the padded batch flattened to rows of pixels: one
            # `take`, no Python loop over images, and every backend supports it.
            b, (h, w, c), p = ops.shape(x)[0], x.shape[1:], self.pad
            padded = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
            hp, wp = h + 2 * p, w + 2 * p
            dy = keras.random.randint((b, 1, 1), 0, 2 * p + 1, seed=self.generator)
            dx = keras.random.randint((b, 1, 1), 0, 2 * p + 1, seed=self.generator)
            rows = dy + ops.reshape(ops.arange(h), (1, h, 1))
            cols = dx + ops.reshape(ops.arange(w), (1, 1, w))
            image = ops.reshape(ops.arange(b), (-1, 1, 1))
            flat = ops.reshape(padded, (-1, c))
            return ops.take(flat, (image * hp + rows) * wp + cols, axis=0)

        def _cutout(self, x):
            # A square centred anywhere in the image (so possibly clipped), filled with the
            # image's own channel means: gray in raw pixels and ~0 after normalisation alike.
            b, (h, w, _), s = ops.shape(x)[0], x.shape[1:], self.cutout
            cy = keras.random.randint((b, 1, 1, 1), 0, h, seed=self.generator)
            cx = keras.random.randint((b, 1, 1, 1), 0, w, seed=self.generator)
            top, left = cy - s // 2, cx - s // 2
            ys = ops.reshape(ops.arange(h), (1, h, 1, 1))
            xs = ops.reshape(ops.arange(w), (1, 1, w, 1))
            inside = (ys >= top) & (ys < top + s) & (xs >= left) & (xs < left + s)
            return ops.where(inside, ops.mean(x, axis=(1, 2), keepdims=True), x)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "pad": self.pad, "flip": self.flip, "cutout": self.cutout,
                    "seed": self.seed}

    class AlternatingFlipEpoch(keras.callbacks.Callback):
        """Sets alternating-flip layers' `epoch_parity` to epoch mod 2 before each epoch."""

        def __init__(self, layers):
            super().__init__()
            self.layers = layers

        def on_epoch_begin(self, epoch, logs=None):
            for layer in self.layers:
                layer.epoch_parity.assign(epoch % 2)

    class ViewsTTA(keras.layers.Wrapper):
        """The part FlipTTA and FlipTranslateTTA share: outside training, `average_views(x)` (several
        views of x through the wrapped model as one batch, their logits averaged in float32); in
        training the model sees x alone, so training is unchanged."""

        def __init__(self, layer, **kwargs):
            # float32: the mean of half-precision logits is taken in full precision; the wrapped
            # model keeps its own (mixed) precision policy.
            kwargs.setdefault("dtype", "float32")
            super().__init__(layer, **kwargs)

        def call(self, x, training=None):
            if training:
                return ops.cast(self.layer(x, training=True), self.compute_dtype)
            return self.average_views(x)

        def views_logits(self, views):
            """The wrapped model's float logits for each of `views` (one call on their concatenation)."""
            batch = ops.concatenate(views, axis=0)
            return ops.split(ops.cast(self.layer(batch, training=False), self.compute_dtype), len(views), axis=0)

        def compute_output_shape(self, input_shape):
            return self.layer.compute_output_shape(input_shape)

    @register
    class FlipTTA(ViewsTTA):
        """Flip test-time augmentation around the wrapped model: outside training, x and its left-right
        mirror go through the model as one batch of 2N and the two halves' logits are averaged (in
        float32); in training the model sees x alone, so training is unchanged."""

        def average_views(self, x):
            original, mirrored = self.views_logits([x, ops.flip(x, axis=2)])
            return (original + mirrored) / 2

    @register
    class FlipTranslateTTA(ViewsTTA):
        """airbench94's tta_level 2 around the wrapped model, outside training: logits of
        0.5 x mirror-mean(x) + 0.25 x mirror-mean(x shifted 1 px up-left) + 0.25 x mirror-mean(x shifted
        1 px down-right), shifts by reflect padding; one call on a batch of 6N, averaged in float32.
        In training the model sees x alone."""

        def average_views(self, x):
            h, w = x.shape[1], x.shape[2]
            padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
            views = [x, padded[:, :h, :w], padded[:, 2:h + 2, 2:w + 2]]
            logits = self.views_logits(views + [ops.flip(v, axis=2) for v in views])
            plain, up_left, down_right = [(logits[i] + logits[i + 3]) / 2 for i in range(3)]
            return 0.5 * plain + 0.25 * up_left + 0.25 * down_right

    class Namespace:
        pass

    ns = Namespace()
    ns.PerImageStandardization, ns.Augment, ns.FlipTTA = PerImageStandardization, Augment, FlipTTA
    ns.FlipTranslateTTA, ns.AlternatingFlipEpoch = FlipTranslateTTA, AlternatingFlipEpoch
    return ns
