"""The `optimizer` and `lr_schedule` groups: Keras optimizers and schedules.

Schedules are configured in epochs and converted to optimizer steps here; the peak or
initial rate is always `optimizer.lr`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cifar_exp.errors import ConfigError


@dataclass(frozen=True)
class OptimizerSpec:
    """One `optimizer=` option. A Keras optimizer class (`keras_class`, with `fixed` keyword arguments
    and the config `fields` it takes), or its own `build(cfg, learning_rate, batch_size, total_steps)`;
    `check(cfg)` raises ConfigError for the fields only it has. Every option goes through the same two
    calls (check_optimizer, build_optimizer): none is asked for by name."""

    keras_class: str | None = None
    fixed: dict = field(default_factory=dict)
    fields: tuple[str, ...] = ()
    build: Callable | None = None
    check: Callable | None = None


def _check_airbench(cfg) -> None:
    every = cfg.get("lookahead_every")
    if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
        raise ConfigError("optimizer.lookahead_every", every, "a positive integer (steps)")
    for key in ("lookahead_decay", "lookahead_start"):
        if not (_is_number(cfg.get(key)) and 0 <= cfg.get(key) <= 1):
            raise ConfigError(f"optimizer.{key}", cfg.get(key), "a number in [0, 1]")
    _positive("optimizer.lookahead_pow", cfg.get("lookahead_pow"))


def _build_airbench(cfg, learning_rate, batch_size, total_steps):
    from cifar_exp.models.airbench import build_airbench_optimizer

    return build_airbench_optimizer(cfg, learning_rate, batch_size, total_steps)


OPTIMIZERS = {
    "sgd": OptimizerSpec("SGD", fields=("momentum",)),
    "momentum": OptimizerSpec("SGD", fields=("momentum",)),
    "nesterov": OptimizerSpec("SGD", {"nesterov": True}, ("momentum",)),
    "adam": OptimizerSpec("Adam"),
    "adamw": OptimizerSpec("AdamW"),
    "adadelta": OptimizerSpec("Adadelta"),
    "adagrad": OptimizerSpec("Adagrad"),
    "rmsprop": OptimizerSpec("RMSprop", fields=("momentum",)),
    "nadam": OptimizerSpec("Nadam"),
    # airbench.AirbenchSGD: Nesterov SGD, rate and decay per 1,024 examples (batch_size, total_steps), Lookahead.
    "airbench": OptimizerSpec(build=_build_airbench, check=_check_airbench),
}
SCHEDULES = ("constant", "piecewise", "onecycle", "cosine", "exponential", "triangle")


def check_optimizer(cfg) -> None:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError("optimizer.name", cfg.name, ", ".join(OPTIMIZERS))
    _positive("optimizer.lr", cfg.get("lr"))
    if "momentum" in cfg and not (_is_number(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise ConfigError("optimizer.momentum", cfg.momentum, "a number in [0, 1)")
    for key in ("weight_decay", "clipnorm"):
        if cfg.get(key) is not None:
            _positive(f"optimizer.{key}", cfg[key], "null or a positive number")
    if OPTIMIZERS[cfg.name].check is not None:
        OPTIMIZERS[cfg.name].check(cfg)


def check_schedule(cfg, epochs: int) -> None:
    if cfg.name not in SCHEDULES:
        raise ConfigError("lr_schedule.name", cfg.name, ", ".join(SCHEDULES))
    if cfg.name == "piecewise":
        ms = list(cfg.milestones)
        if not all(isinstance(m, int) and m >= 1 for m in ms) or ms != sorted(ms):
            raise ConfigError("lr_schedule.milestones", ms, "increasing 1-based epoch numbers")
        _positive("lr_schedule.factor", cfg.factor)
    if cfg.name == "onecycle" and cfg.peak_epoch is not None and not (
            _is_number(cfg.peak_epoch) and 0 <= cfg.peak_epoch < epochs):
        raise ConfigError("lr_schedule.peak_epoch", cfg.peak_epoch, f"null or a number in [0, trainer.epochs={epochs})")
    if cfg.name == "cosine":
        if not (_is_number(cfg.warmup_epochs) and 0 <= cfg.warmup_epochs < epochs):
            raise ConfigError("lr_schedule.warmup_epochs", cfg.warmup_epochs, f"a number in [0, trainer.epochs={epochs})")
        if not (_is_number(cfg.alpha) and 0 <= cfg.alpha <= 1):
            raise ConfigError("lr_schedule.alpha", cfg.alpha, "a number in [0, 1]")
    if cfg.name == "exponential":
        _positive("lr_schedule.decay_rate", cfg.decay_rate)
        _positive("lr_schedule.decay_epochs", cfg.decay_epochs)
    if cfg.name == "triangle":
        for key in ("start", "end"):
            if not (_is_number(cfg.get(key)) and 0 <= cfg.get(key) <= 1):
                raise ConfigError(f"lr_schedule.{key}", cfg.get(key), "a factor of the peak rate in [0, 1]")
        if not (_is_number(cfg.get("peak_fraction")) and 0 < cfg.get("peak_fraction") < 1):
            raise ConfigError("lr_schedule.peak_fraction", cfg.get("peak_fraction"),
                              "a fraction of the training steps in (0, 1)")


def default_peak_epoch(epochs: int) -> float:
    """One-cycle's peak (in epochs) when `lr_schedule.peak_epoch` is null: seed 003's rule
    (epochs + 1) // 5 (5 of 24), or 5/24 of the run where that rule gives 0 (under 4 epochs),
    so that a short run still warms up instead of starting at the peak rate."""
    return (epochs + 1) // 5 or epochs * 5 / 24


def build_lr_schedule(cfg, lr: float, steps_per_epoch: int, epochs: int):
    """A float (constant: Keras keeps it in the optimizer's `learning_rate` variable) or a Keras
    LearningRateSchedule indexed by optimizer step, wrapped in `OptimizerVariables`, whose numbers
    `build_optimizer` turns into optimizer variables (one compiled step for a sweep over them)."""
    from cifar_exp.training.schedules import OptimizerVariables

    if cfg.name == "constant":
        return float(lr)
    return OptimizerVariables(_keras_schedule(cfg, lr, steps_per_epoch, epochs))


def _keras_schedule(cfg, lr: float, steps_per_epoch: int, epochs: int):
    import keras

    schedules = keras.optimizers.schedules
    if cfg.name == "piecewise":
        # The optimizer's step counts finished updates, so 1-based epoch m begins at
        # step (m - 1) * steps_per_epoch; PiecewiseConstantDecay switches after a boundary.
        boundaries = [(m - 1) * steps_per_epoch - 1 for m in cfg.milestones]
        values = [float(lr) * cfg.factor ** i for i in range(len(boundaries) + 1)]
        return schedules.PiecewiseConstantDecay(boundaries, values)
    if cfg.name == "onecycle":
        from cifar_exp.training.schedules import OneCycle

        peak_epoch = default_peak_epoch(epochs) if cfg.peak_epoch is None else cfg.peak_epoch
        return OneCycle(float(lr), round(peak_epoch * steps_per_epoch), epochs * steps_per_epoch)
    if cfg.name == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        total = epochs * steps_per_epoch
        # Always the warm-up form (0 steps of it: plain cosine decay from lr): CosineDecay picks its
        # formula by `warmup_target is None`, a Python branch, so one form keeps one compiled step.
        return schedules.CosineDecay(0.0, total - warmup, alpha=cfg.alpha, warmup_target=float(lr), warmup_steps=warmup)
    if cfg.name == "exponential":
        return schedules.ExponentialDecay(float(lr), cfg.decay_epochs * steps_per_epoch, cfg.decay_rate)
    if cfg.name == "triangle":
        from cifar_exp.training.schedules import Triangle

        return Triangle(float(lr), epochs * steps_per_epoch, cfg.start, cfg.peak_fraction, cfg.end)
    raise ConfigError("lr_schedule.name", cfg.name, ", ".join(SCHEDULES))


def build_optimizer(cfg, learning_rate, batch_size: int | None = None, total_steps: int | None = None):
    """The Keras optimizer for `cfg` (the `optimizer` group, OPTIMIZERS) and a rate or schedule;
    `batch_size` and `total_steps` are for the options that build their own (airbench: its rates are
    per 1,024 examples)."""
    import keras

    from cifar_exp.training.schedules import OptimizerVariables

    spec = OPTIMIZERS[cfg.name]
    if spec.build is not None:
        return spec.build(cfg, learning_rate, batch_size, total_steps)
    kwargs = dict(spec.fixed, learning_rate=learning_rate)
    kwargs.update({k: cfg[k] for k in spec.fields if k in cfg})
    for key in ("weight_decay", "clipnorm"):
        if cfg.get(key) is not None:
            kwargs[key] = cfg[key]
    optimizer = getattr(keras.optimizers, spec.keras_class)(**kwargs)
    if isinstance(learning_rate, OptimizerVariables):
        learning_rate.track(optimizer)
    return optimizer


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(key, value, allowed="a positive number"):
    if not (_is_number(value) and value > 0 and value == value and value != float("inf")):
        raise ConfigError(key, value, allowed)
