"""The `init` group: re-initialise every conv/dense kernel (and bias) of a built model,
and attach the model's L2 penalties, the same way for every architecture.

Doing it after building (rather than passing initializers to each layer) covers models
we do not write layer by layer, such as keras.applications.ResNet50.
"""
from __future__ import annotations

from cifar_exp.errors import ConfigError

# Keras class name and the config fields each initializer takes (its parameters).
INITIALIZERS = {
    "glorot_uniform": ("GlorotUniform", ()),
    "glorot_normal": ("GlorotNormal", ()),
    "he_uniform": ("HeUniform", ()),
    "he_normal": ("HeNormal", ()),
    "lecun_uniform": ("LecunUniform", ()),
    "lecun_normal": ("LecunNormal", ()),
    "random_normal": ("RandomNormal", ("mean", "stddev")),
    "random_uniform": ("RandomUniform", ("minval", "maxval")),
    "truncated_normal": ("TruncatedNormal", ("mean", "stddev")),
    "zeros": ("Zeros", ()),
    "ones": ("Ones", ()),
    "orthogonal": ("Orthogonal", ("gain",)),
    "torch_uniform": ("VarianceScaling", ()),
}
INIT_NAMES = ("default",) + tuple(INITIALIZERS)
BIAS_CHOICES = ("default", "same") + tuple(INITIALIZERS)


# Initializers Keras defines for matrices only (orthogonal: "only shapes of rank 2 or more").
MATRIX_ONLY = ("orthogonal",)


def check_init(cfg) -> None:
    if cfg.name not in INIT_NAMES:
        raise ConfigError("init.name", cfg.name, ", ".join(INIT_NAMES))
    bias = cfg.get("bias", "zeros")
    if bias not in BIAS_CHOICES:
        raise ConfigError("init.bias", bias, ", ".join(BIAS_CHOICES))
    if bias == "same" and cfg.name == "default":
        raise ConfigError("init.bias", bias, "'same' needs a kernel initializer other than 'default'")
    if (cfg.name if bias == "same" else bias) in MATRIX_ONLY:  # Keras raises on a 1-D bias, mid-build
        raise ConfigError("init.bias", bias, f"an initializer for 1-D biases (not {', '.join(MATRIX_ONLY)}, "
                          "which needs a matrix): zeros, default, or the name of another initializer")
    for key in INITIALIZERS.get(cfg.name, (None, ()))[1]:
        if not isinstance(cfg.get(key), (int, float)) or isinstance(cfg.get(key), bool):
            raise ConfigError(f"init.{key}", cfg.get(key), "a number")
    if cfg.name in ("random_normal", "truncated_normal") and cfg.stddev <= 0:
        raise ConfigError("init.stddev", cfg.stddev, "a positive number")
    if cfg.name == "random_uniform" and cfg.minval >= cfg.maxval:
        raise ConfigError("init.minval", cfg.minval, f"a number below init.maxval={cfg.maxval}")


def make_initializer(name: str, cfg):
    """A fresh Keras initializer instance for `name`, parameters read from cfg."""
    import keras

    class_name, fields = INITIALIZERS[name]
    if name == "torch_uniform":
        # U(+-sqrt(3 * scale / fan_in)) with scale 1/3 is PyTorch's U(+-1/sqrt(fan_in)).
        return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")
    kwargs = {k: float(cfg[k]) for k in fields if name == cfg.name}
    return getattr(keras.initializers, class_name)(**kwargs)


def weight_layers(model):
    """Every Conv/Dense layer, nested models included."""
    import keras

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            yield layer


def apply_init(model, cfg) -> None:
    """Overwrite kernels (and biases) with draws from the configured initializers."""
    bias_name = cfg.get("bias", "zeros")
    bias_name = cfg.name if bias_name == "same" else bias_name
    for layer in weight_layers(model):
        if cfg.name != "default":
            layer.kernel.assign(make_initializer(cfg.name, cfg)(layer.kernel.shape, layer.kernel.dtype))
        if getattr(layer, "bias", None) is not None and bias_name != "default":
            layer.bias.assign(make_initializer(bias_name, cfg)(layer.bias.shape, layer.bias.dtype))


def apply_l2(model, kernel_l2: float, bias_l2: float, settings=None) -> None:
    """Attach L2 penalties (factor * sum(w^2)) to conv/dense kernels and biases.

    With `settings` (a built `LossSettings`), every kernel and bias gets a penalty whose factor is
    its variable, zero included, so a sweep over the factors compiles one train step.
    """
    import keras

    from cifar_exp.training.losses import VariableL2

    for layer in weight_layers(model):
        has_bias = getattr(layer, "bias", None) is not None
        if settings is not None:
            layer.kernel.regularizer = VariableL2(kernel_l2, settings.kernel_l2)
            if has_bias:
                layer.bias.regularizer = VariableL2(bias_l2, settings.bias_l2)
            continue
        if kernel_l2:
            layer.kernel.regularizer = keras.regularizers.L2(kernel_l2)
        if bias_l2 and has_bias:
            layer.bias.regularizer = keras.regularizers.L2(bias_l2)
