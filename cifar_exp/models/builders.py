"""The seeds' architectures as plain functional builders.

Each builder returns a keras.Model from float images to logits; the input pipeline
(preprocessing, augmentation) is put in front by training/fit.py. Initializers and L2 are
applied afterwards to every conv/dense layer (initializers.py), the same way for all.
registry.py maps each `model=` option to its builder here (build_model, check_model).
"""
from __future__ import annotations

from cifar_exp.errors import ConfigError


def simple_cnn(input_shape, num_classes, width=32, dense_units=512, dropout_conv=0.25, dropout_dense=0.5):
    """Seed 000: (conv-conv-pool-dropout) x 2 with `width`, 2*`width` filters, then dense."""
    from keras import layers, Model

    inputs = layers.Input(input_shape)
    x = inputs
    for filters in (width, 2 * width):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout_conv)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout_dense)(x)
    return Model(inputs, layers.Dense(num_classes)(x), name="simple_cnn")


def allcnn_c(input_shape, num_classes, width=96, dropout=0.5):
    """Seed 001: Strided-CNN-C; batch norm on the first layer; logits = mean of the last 1x1 conv."""
    from keras import layers, Model

    wide = 2 * width
    inputs = layers.Input(input_shape)
    x = layers.Conv2D(width, 3, padding="same", name="l1_conv3x3")(inputs)
    x = layers.BatchNormalization(name="l1_batchnorm")(x)
    x = layers.Activation("relu", name="l1_relu")(x)
    x = layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="l2_conv3x3_stride2")(x)
    x = layers.Dropout(dropout, name="l2_dropout")(x)
    x = layers.Conv2D(wide, 3, padding="same", activation="relu", name="l3_conv3x3")(x)
    x = layers.Conv2D(wide, 3, strides=2, padding="same", activation="relu", name="l4_conv3x3_stride2")(x)
    x = layers.Dropout(dropout, name="l4_dropout")(x)
    x = layers.Conv2D(wide, 3, padding="same", activation="relu", name="l5_conv3x3")(x)
    x = layers.Conv2D(wide, 1, padding="same", activation="relu", name="l6_conv1x1")(x)
    x = layers.Conv2D(num_classes, 1, padding="same", activation="relu", name="l7_conv1x1")(x)
    return Model(inputs, layers.GlobalAveragePooling2D(name="l8_globalavg")(x), name="allcnn_c")


def alexnet(input_shape, num_classes, width=96, dense_units=4096, dropout=0.4):
    """Seed 002: AlexNet for 32x32, BN + ReLU after every layer, BN on the logits too."""
    from keras import layers, Model

    def scaled(k):  # the seed's filters 96/256/384/384/256 at width 96
        return int(round(width * k / 96))

    def conv_bn(x, filters, kernel, strides=1):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same")(x)
        return layers.Activation("relu")(layers.BatchNormalization()(x))

    def pool(x):
        return layers.MaxPooling2D(2, strides=2, padding="same")(x)

    inputs = layers.Input(input_shape)
    x = pool(conv_bn(inputs, scaled(96), 11, strides=4))
    x = pool(conv_bn(x, scaled(256), 5))
    x = conv_bn(x, scaled(384), 3)
    x = conv_bn(x, scaled(384), 3)
    x = pool(conv_bn(x, scaled(256), 3))
    x = layers.Flatten()(x)
    for units in (dense_units, dense_units, 1000):
        x = layers.Dense(units)(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.Dropout(dropout)(x)
    x = layers.BatchNormalization()(layers.Dense(num_classes)(x))
    return Model(inputs, x, name="alexnet")


def resnet50(input_shape, num_classes, dense_units=512):
    """Seed 002: keras.applications.ResNet50 without weights or top, plus a dense head."""
    import keras
    from keras import layers, Model

    inputs = layers.Input(input_shape)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=input_shape)
    x = layers.Flatten()(backbone(inputs))
    x = layers.Dense(dense_units, activation="relu")(x)
    return Model(inputs, layers.Dense(num_classes)(x), name="resnet50")


def lenet(input_shape, num_classes):
    """Seed 002: LeNet (conv6-avgpool-conv16-avgpool-120-84), for 28x28x1 MNIST."""
    from keras import layers, Model

    inputs = layers.Input(input_shape)
    x = layers.Conv2D(6, 3, activation="relu")(inputs)
    x = layers.AveragePooling2D(2)(x)
    x = layers.Conv2D(16, 3, activation="relu")(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation="relu")(x)
    x = layers.Dense(84, activation="relu")(x)
    return Model(inputs, layers.Dense(num_classes)(x), name="lenet")


def resnet9(input_shape, num_classes, width=64, dropout=0.05, logit_scale=0.125):
    """Seed 003: DavidNet. ConvBN = relu(bn(dropout(conv3x3))); residual blocks at 2x and 8x width."""
    from keras import layers, Model

    def conv_bn(x, filters):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.Dropout(dropout)(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return layers.Activation("relu")(x)

    def block(x, filters, residual):
        x = layers.MaxPooling2D(2)(conv_bn(x, filters))
        if residual:
            x = layers.Add()([x, conv_bn(conv_bn(x, filters), filters)])
        return x

    inputs = layers.Input(input_shape)
    x = conv_bn(inputs, width)
    x = block(x, 2 * width, residual=True)
    x = block(x, 4 * width, residual=False)
    x = block(x, 8 * width, residual=True)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False)(x)
    return Model(inputs, layers.Rescaling(logit_scale, name="logit_scale")(x), name="resnet9")


def airbench(input_shape, num_classes, **kwargs):
    """airbench94's network (airbench.py, which imports Keras)."""
    from cifar_exp.models import airbench as module

    return module.airbench(input_shape, num_classes, **kwargs)


def check_airbench(cfg) -> None:
    """Raise ConfigError for an airbench model config that cannot be built."""
    widths = cfg.get("widths")
    if isinstance(widths, str) or not hasattr(widths, "__len__") or len(widths) != 3 or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError("model.widths", widths, "three positive integers (the conv groups' channels)")
    for key in ("whiten_kernel", "whiten_bias_epochs"):
        value = cfg.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= (1 if key == "whiten_kernel" else 0)):
            raise ConfigError(f"model.{key}", value, "a positive integer" if key == "whiten_kernel" else
                              "an integer >= 0 (0: the whitening bias never trains)")
    momentum = cfg.get("batchnorm_momentum")
    if not (isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and 0 <= momentum < 1):
        raise ConfigError("model.batchnorm_momentum", momentum, "a number in [0, 1)")
    for key in ("bias_lr_scale", "logit_scale"):
        value = cfg.get(key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ConfigError(f"model.{key}", value, "a positive number")

