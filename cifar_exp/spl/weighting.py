"""Self-paced learning in pure numpy: the closed-form v-step of each scheme and the pace of λ.

Each scheme's weight is the exact minimiser of l·v + f(v; λ[, γ, t]) over v in [0, 1];
`Pace` decides λ each epoch (warm-up, λ₀ from a quantile, geometric or target-fraction
growth) and guards against the collapse of seed 000, where every weight became 0.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from cifar_exp.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMES = ("none", "hard", "linear", "logarithmic", "mixture", "polynomial", "cubic")
PACES = ("geometric", "target_fraction")
LOSS_SOURCES = ("eval_pass", "train_pass")
# Fields every scheme carries, then each scheme's own. `none` may carry any of them (an
# experiment sets them for all schemes of a sweep) and ignores them.
PACING_FIELDS = ("age", "age_quantile", "mu", "pace", "final_fraction", "final_epoch",
                 "warmup_epochs", "losses_from", "min_active_fraction")
SCHEME_FIELDS = {"mixture": ("gamma",), "polynomial": ("t",), "logarithmic": ("max_age",)}


def normalise_losses(scheme: str, losses) -> np.ndarray:
    """Per-sample losses (nats) as the scheme reads them: finite, ≥ 0, in [0, 1) for the log scheme.

    Non-finite losses become +inf (v = 0: a diverged sample is the hardest there is).
    The log scheme is only defined on [0, 1); l/(1+l) maps nats there monotonically and
    without reference to the other samples, so λ keeps its meaning from epoch to epoch
    (λ = 0.5 admits l < 1 nat, λ = 0.7 admits l < 2.33 nats ≈ ln 10).
    """
    l = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(l)
    l = np.where(finite, np.maximum(l, 0.0), np.inf)
    if scheme == "logarithmic":
        l = np.where(finite, l / (1.0 + np.where(finite, l, 0.0)), 1.0)
    return l


def weights(scheme: str, losses, lam: float, gamma: float | None = None, t: float | None = None) -> np.ndarray:
    """v* = argmin over v in [0, 1] of l·v + f(v; λ), for every loss at once (float64)."""
    l = np.asarray(losses, dtype=np.float64)
    if scheme == "none":
        return np.ones_like(l)
    if scheme == "hard":  # f = -λv
        return (l < lam).astype(np.float64)
    if scheme == "linear":  # f = λ(v²/2 - v)
        return np.clip(1.0 - l / lam, 0.0, 1.0)
    if scheme == "polynomial":  # f = λ(v^t/t - v)
        return np.clip(1.0 - l / lam, 0.0, 1.0) ** (1.0 / (t - 1.0))
    if scheme == "cubic":  # f = λ(v³/6 - v), the seed's "simple" scheme
        soft = np.sqrt(np.clip(2.0 - 2.0 * l / lam, 0.0, None))
        return np.where(l <= lam / 2, 1.0, np.where(l < lam, soft, 0.0))
    if scheme == "logarithmic":  # f = ζv - ζ^v / ln ζ, ζ = 1 - λ, l in [0, 1)
        zeta = 1.0 - lam
        inside = l < lam
        return np.where(inside, np.log(np.where(inside, l + zeta, 1.0)) / np.log(zeta), 0.0)
    if scheme == "mixture":  # f = γ² / (v + γ/λ)
        lower, upper = (lam * gamma / (lam + gamma)) ** 2, lam ** 2
        with np.errstate(divide="ignore"):
            soft = gamma * (1.0 / np.sqrt(l) - 1.0 / lam)
        return np.where(l <= lower, 1.0, np.where(l >= upper, 0.0, soft))
    raise ConfigError("weighting.name", scheme, ", ".join(SCHEMES))


def age_for_threshold(scheme: str, threshold: float) -> float:
    """The λ whose active set (v > 0) is exactly l < threshold (the mixture scheme cuts at λ²)."""
    return math.sqrt(threshold) if scheme == "mixture" else threshold


def age_for_fraction(scheme: str, losses, fraction: float) -> float:
    """The smallest convenient λ that makes at least ceil(fraction·n) samples active (v > 0).

    `losses` are normalised (see `normalise_losses`). The threshold falls halfway to the
    next larger loss, so that tiny changes of the losses do not flip the last sample.
    """
    finite = np.sort(np.asarray(losses, dtype=np.float64)[np.isfinite(losses)])
    if finite.size == 0:
        raise FloatingPointError("every per-sample loss is non-finite: training diverged")
    k = min(max(1, math.ceil(fraction * len(losses) - 1e-9)), finite.size)
    last = finite[k - 1]
    if k < finite.size and finite[k] > last:
        threshold = last + (finite[k] - last) / 2
    else:
        threshold = last * (1 + 1e-6) + 1e-12
    if scheme == "logarithmic":  # λ must stay below 1; normalised losses do
        threshold = min(threshold, (last + 1.0) / 2)
    return age_for_threshold(scheme, threshold)


@dataclass
class VStep:
    """The outcome of one v-step: the weights and how they were chosen."""

    v: np.ndarray            # float32, one weight per training sample
    lam: float | None        # λ used; None during warm-up
    guard_raised: bool       # λ was raised because too few samples were active
    target_fraction: float | None  # the fraction the target_fraction pace aimed at

    @property
    def active_fraction(self) -> float:
        return float(np.mean(self.v > 0))


class Pace:
    """λ from epoch to epoch, and the weights it implies.

    Epochs are 0-based here (Keras callbacks' `epoch`); `final_epoch` in the config is
    1-based like the rest of the config. The first weighted epoch is `warmup_epochs`.
    """

    def __init__(self, cfg):
        check_weighting(cfg)
        self.scheme = cfg.name
        self.gamma, self.t = cfg.get("gamma"), cfg.get("t")
        self.max_age = cfg.get("max_age")
        self.age, self.age_quantile, self.mu = cfg.age, cfg.age_quantile, cfg.mu
        self.pace, self.final_fraction, self.final_epoch = cfg.pace, cfg.final_fraction, cfg.final_epoch
        self.warmup_epochs, self.min_active_fraction = cfg.warmup_epochs, cfg.min_active_fraction
        self.lam: float | None = None
        self.start_fraction: float | None = None

    def needs_losses(self, epoch: int) -> bool:
        return self.scheme != "none" and epoch >= self.warmup_epochs

    def v_step(self, epoch: int, losses, total_epochs: int) -> VStep:
        """Weights for `epoch` from the current per-sample losses (nats; None during warm-up)."""
        if not self.needs_losses(epoch):
            n = 0 if losses is None else len(losses)
            return VStep(np.ones(n, np.float32), None, False, None)
        l = normalise_losses(self.scheme, losses)
        target = None
        if self.lam is None:
            # The first weighted epoch (a resumed job restores λ from its checkpoint; one
            # whose saved pace is missing re-anchors it here on the current losses).
            if self.age_quantile is not None:
                self.start_fraction = self.age_quantile
                lam = age_for_fraction(self.scheme, l, self.age_quantile)
            else:
                self.start_fraction = float(np.mean(self._weights(l, self.age) > 0))
                lam = self.age * self.mu ** (epoch - self.warmup_epochs) if self.pace == "geometric" else self.age
        else:
            lam = self.lam * self.mu
        if self.pace == "target_fraction":
            target = self.fraction_at(epoch, total_epochs)
            lam = age_for_fraction(self.scheme, l, target)
        if self.scheme == "logarithmic":
            lam = min(lam, self.max_age)
        v = self._weights(l, lam)
        active = float(np.mean(v > 0))
        guard_raised = active < self.min_active_fraction
        if guard_raised:
            old = lam
            lam = age_for_fraction(self.scheme, l, self.min_active_fraction)
            v = self._weights(l, lam)
            log.warning("self-paced learning: in epoch %d only %.1f%% of the samples were active at "
                        "lambda=%.4g; raised lambda to %.4g so that %.1f%% are (weighting.min_active_fraction=%g)",
                        epoch + 1, 100 * active, old, lam, 100 * np.mean(v > 0), self.min_active_fraction)
        self.lam = lam
        return VStep(v, lam, guard_raised, target)

    def fraction_at(self, epoch: int, total_epochs: int) -> float:
        """The target_fraction pace: linear from the start fraction to final_fraction at final_epoch."""
        final_index = (self.final_epoch or total_epochs) - 1
        span = final_index - self.warmup_epochs
        progress = 1.0 if span <= 0 else min(1.0, (epoch - self.warmup_epochs) / span)
        return self.start_fraction + (self.final_fraction - self.start_fraction) * progress

    def _weights(self, normalised_losses, lam) -> np.ndarray:
        return weights(self.scheme, normalised_losses, lam, self.gamma, self.t).astype(np.float32)


def check_weighting(cfg, epochs: int | None = None) -> None:
    """Raise ConfigError for a field or combination that cannot work (before any training)."""
    name = cfg.get("name")
    if name not in SCHEMES:
        raise ConfigError("weighting.name", name, ", ".join(SCHEMES))
    own = sum(SCHEME_FIELDS.values(), ()) if name == "none" else SCHEME_FIELDS.get(name, ())
    allowed_fields = ("name",) + PACING_FIELDS + own
    for key in cfg.keys():
        if key not in allowed_fields:
            raise ConfigError(f"weighting.{key}", cfg[key], f"the fields of weighting={name}: {', '.join(allowed_fields)}")
    if name == "none":
        return
    for key in allowed_fields:
        if key not in cfg:
            raise ConfigError(f"weighting.{key}", "<missing>", f"a value (see cifar_exp/conf/weighting/{name}.yaml)")

    if cfg.pace not in PACES:
        raise ConfigError("weighting.pace", cfg.pace, ", ".join(PACES))
    if cfg.losses_from not in LOSS_SOURCES:
        raise ConfigError("weighting.losses_from", cfg.losses_from, ", ".join(LOSS_SOURCES))
    if not (_is_int(cfg.warmup_epochs) and cfg.warmup_epochs >= 0):
        raise ConfigError("weighting.warmup_epochs", cfg.warmup_epochs, "an integer ≥ 0")
    if epochs is not None and cfg.warmup_epochs >= epochs:
        raise ConfigError("weighting.warmup_epochs", cfg.warmup_epochs, f"fewer than trainer.epochs={epochs}")
    _fraction("weighting.min_active_fraction", cfg.min_active_fraction)
    _fraction("weighting.final_fraction", cfg.final_fraction)
    if cfg.age_quantile is not None:
        _fraction("weighting.age_quantile", cfg.age_quantile, "null or a number in (0, 1]")
    elif not (_is_number(cfg.age) and cfg.age > 0):
        raise ConfigError("weighting.age", cfg.age, "a positive number (or set weighting.age_quantile)")
    if cfg.final_epoch is not None:
        last = f" ≤ trainer.epochs={epochs}" if epochs is not None else ""
        if not (_is_int(cfg.final_epoch) and cfg.warmup_epochs < cfg.final_epoch and (epochs is None or cfg.final_epoch <= epochs)):
            raise ConfigError("weighting.final_epoch", cfg.final_epoch,
                              f"null (the last epoch) or a 1-based epoch > weighting.warmup_epochs{last}")
    if cfg.pace == "geometric" and not (_is_number(cfg.mu) and cfg.mu > 1):
        raise ConfigError("weighting.mu", cfg.mu, "a number > 1 with pace=geometric (λ grows by μ each epoch)")
    if cfg.pace == "target_fraction" and not (_is_number(cfg.mu) and cfg.mu > 0):
        raise ConfigError("weighting.mu", cfg.mu, "a positive number (unused with pace=target_fraction)")

    if name == "mixture" and not (_is_number(cfg.gamma) and cfg.gamma > 0):
        raise ConfigError("weighting.gamma", cfg.gamma, "a number > 0")
    if name == "polynomial" and not (_is_number(cfg.t) and cfg.t > 1):
        raise ConfigError("weighting.t", cfg.t, "a number > 1")
    if name == "logarithmic":
        if cfg.age_quantile is None and not cfg.age < 1:
            raise ConfigError("weighting.age", cfg.age, "a number in (0, 1) for the logarithmic scheme (ζ = 1 - λ > 0)")
        low = cfg.age if cfg.age_quantile is None else 0
        if not (_is_number(cfg.max_age) and low < cfg.max_age < 1):
            raise ConfigError("weighting.max_age", cfg.max_age, f"a number in ({low}, 1): λ must stay below 1")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction(key, value, allowed="a number in (0, 1]"):
    if not (_is_number(value) and 0 < value <= 1):
        raise ConfigError(key, value, allowed)
