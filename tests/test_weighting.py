"""Self-paced weighting schemes and their pace, in pure numpy (no Keras)."""
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf

from cifar_exp.errors import ConfigError
from cifar_exp.spl.weighting import (SCHEMES, Pace, age_for_fraction, check_weighting, normalise_losses,
                                 weights)

CONF = Path(__file__).resolve().parents[1] / "cifar_exp" / "conf" / "weighting"
SOFT_SCHEMES = [s for s in SCHEMES if s != "none"]


def regulariser(scheme, v, lam, gamma=None, t=None):
    """f(v; λ) of each scheme: the specification the closed forms must minimise l·v + f over."""
    if scheme == "hard":
        return -lam * v
    if scheme == "linear":
        return lam * (v ** 2 / 2 - v)
    if scheme == "polynomial":
        return lam * (v ** t / t - v)
    if scheme == "cubic":
        return lam * (v ** 3 / 6 - v)
    if scheme == "logarithmic":
        zeta = 1 - lam
        return zeta * v - zeta ** v / np.log(zeta)
    if scheme == "mixture":
        return gamma ** 2 / (v + gamma / lam)
    raise AssertionError(scheme)


def config(scheme, **changes):
    cfg = OmegaConf.load(CONF / f"{scheme}.yaml")
    for key, value in changes.items():
        cfg[key] = value
    return cfg


GRID = np.linspace(0.0, 1.0, 20_001)


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(SOFT_SCHEMES), lam=st.floats(0.05, 0.95), loss_fraction=st.floats(0.0, 1.3),
       gamma=st.floats(0.05, 2.0), t=st.floats(1.2, 6.0))
def test_each_scheme_is_the_exact_minimiser_of_its_objective(scheme, lam, loss_fraction, gamma, t):
    # The log scheme lives on [0, 1) with λ < 1; the others take any λ > 0 (here up to 4).
    lam = lam if scheme == "logarithmic" else 4 * lam
    upper = lam ** 2 if scheme == "mixture" else lam
    loss = min(loss_fraction * upper, 0.999) if scheme == "logarithmic" else loss_fraction * upper
    v = weights(scheme, np.array([loss]), lam, gamma, t)[0]
    objective = loss * GRID + regulariser(scheme, GRID, lam, gamma, t)
    at_v = loss * v + regulariser(scheme, v, lam, gamma, t)
    assert 0.0 <= v <= 1.0
    assert at_v <= objective.min() + 1e-9
    if scheme != "hard":  # strictly convex: the minimiser is unique
        assert v == pytest.approx(GRID[objective.argmin()], abs=2e-3)


@pytest.mark.parametrize("scheme, loss, lam, extra, expected", [
    ("linear", 0.5, 2.0, {}, 0.75),
    ("mixture", 0.5, 1.0, {"gamma": 0.5}, 0.2071),
    ("cubic", 1.5, 2.0, {}, 0.7071),
    ("logarithmic", 0.1, 0.5, {}, 0.7370),
    ("polynomial", 1.0, 2.0, {"t": 3}, 0.7071),
    ("hard", 1.9, 2.0, {}, 1.0),
    ("hard", 2.0, 2.0, {}, 0.0),
    ("cubic", 0.9, 2.0, {}, 1.0),
    ("mixture", 0.1, 1.0, {"gamma": 0.5}, 1.0),   # below (λγ/(λ+γ))² = 1/9
    ("mixture", 1.0, 1.0, {"gamma": 0.5}, 0.0),   # at λ² = 1
    ("linear", 3.0, 2.0, {}, 0.0),
])
def test_hand_computed_values(scheme, loss, lam, extra, expected):
    assert weights(scheme, np.array([loss]), lam, **extra)[0] == pytest.approx(expected, abs=1e-4)


def test_weights_are_vectorised_and_non_increasing_in_the_loss():
    losses = np.linspace(0, 5, 1001)
    for scheme in SOFT_SCHEMES:
        lam = 0.6 if scheme == "logarithmic" else 2.0
        l = normalise_losses(scheme, losses)
        v = weights(scheme, l, lam, gamma=0.5, t=3)
        assert v.shape == losses.shape
        assert np.all(np.diff(v) <= 1e-12), scheme
        assert v[0] == pytest.approx(1.0) and v[-1] == 0.0, scheme


def test_log_scheme_reads_losses_normalised_into_unit_interval():
    l = normalise_losses("logarithmic", [0.0, 1.0, np.log(10), 1e9, np.inf, np.nan, -1e-7])
    assert np.all((l >= 0) & (l < 1) | (l == 1.0))
    assert l[1] == pytest.approx(0.5)
    assert l[4] == l[5] == 1.0  # non-finite losses: never below any λ < 1, so v = 0
    assert np.all(weights("logarithmic", l, 0.95)[4:6] == 0)


def test_every_weighting_config_is_valid_and_complete():
    for path in sorted(CONF.glob("*.yaml")):
        cfg = OmegaConf.load(path)
        check_weighting(cfg, epochs=10)
        assert cfg.name == path.stem


@pytest.mark.parametrize("scheme, changes, key", [
    ("logarithmic", {"age": 1.0, "age_quantile": None}, "weighting.age"),
    ("logarithmic", {"age": 1.5, "age_quantile": None}, "weighting.age"),
    ("logarithmic", {"max_age": 1.0}, "weighting.max_age"),
    ("linear", {"mu": 1.0}, "weighting.mu"),
    ("hard", {"mu": 0.8}, "weighting.mu"),
    ("mixture", {"gamma": 0.0}, "weighting.gamma"),
    ("mixture", {"gamma": -0.5}, "weighting.gamma"),
    ("polynomial", {"t": 1.0}, "weighting.t"),
    ("polynomial", {"t": 0.5}, "weighting.t"),
    ("linear", {"age": 0.0, "age_quantile": None}, "weighting.age"),
    ("linear", {"age_quantile": 1.5}, "weighting.age_quantile"),
    ("linear", {"pace": "exponential"}, "weighting.pace"),
    ("linear", {"losses_from": "test_pass"}, "weighting.losses_from"),
    ("linear", {"min_active_fraction": 0.0}, "weighting.min_active_fraction"),
    ("linear", {"final_fraction": 0.0}, "weighting.final_fraction"),
    ("linear", {"warmup_epochs": -1}, "weighting.warmup_epochs"),
    ("linear", {"warmup_epochs": 2, "final_epoch": 2}, "weighting.final_epoch"),
    ("linear", {"gamma": 0.5}, "weighting.gamma"),     # a field linear does not have
])
def test_invalid_fields_and_combinations_fail_before_training(scheme, changes, key):
    with pytest.raises(ConfigError) as error:
        check_weighting(config(scheme, **changes))
    assert error.value.key == key


def test_mu_at_most_one_is_fine_when_the_pace_ignores_it():
    check_weighting(config("linear", mu=1.0, pace="target_fraction"))


def test_warmup_and_final_epoch_must_fit_the_training_length():
    with pytest.raises(ConfigError, match="weighting.warmup_epochs"):
        check_weighting(config("hard", warmup_epochs=10), epochs=10)
    with pytest.raises(ConfigError, match="weighting.final_epoch"):
        check_weighting(config("hard", final_epoch=12), epochs=10)


def test_unknown_scheme_and_pacing_fields_on_none():
    with pytest.raises(ConfigError, match="weighting.name"):
        check_weighting(OmegaConf.create({"name": "focal"}))
    # An experiment may set pacing for every scheme of a sweep, `none` included.
    check_weighting(OmegaConf.create({"name": "none", "warmup_epochs": 2, "final_fraction": 0.6, "gamma": 0.5}))
    with pytest.raises(ConfigError, match="weighting.gama"):
        check_weighting(OmegaConf.create({"name": "none", "gama": 0.5}))


def chance_losses(n=1000, seed=0):
    """Cross-entropies of an untrained 10-class model: about ln 10 = 2.30 nats each."""
    return np.log(10) + np.random.default_rng(seed).normal(0, 0.05, n)


def test_seed_000_mixture_setting_zeroes_every_weight():
    # The failure to guard against: λ₀ = 1 admits l < λ² = 1 nat, below chance.
    assert np.all(weights("mixture", chance_losses(), 1.0, gamma=0.5) == 0)


def test_collapse_guard_raises_lambda_and_warns(caplog):
    pace = Pace(config("mixture", age=1.0, age_quantile=None, warmup_epochs=0, min_active_fraction=0.05))
    with caplog.at_level(logging.WARNING, logger="cifar_exp.spl.weighting"):
        step = pace.v_step(0, chance_losses(), total_epochs=10)
    assert step.guard_raised
    assert step.active_fraction >= 0.05
    assert step.lam > 1.0 and pace.lam == step.lam
    assert "raised lambda" in caplog.text


def test_guard_never_lets_all_weights_vanish():
    losses = chance_losses(200)
    for scheme in SOFT_SCHEMES:
        age = 0.01
        pace = Pace(config(scheme, age=age, age_quantile=None, warmup_epochs=0, min_active_fraction=0.01))
        step = pace.v_step(0, losses, total_epochs=5)
        assert step.v.dtype == np.float32
        assert step.active_fraction >= 0.01 and step.v.max() > 0, scheme


def test_warmup_gives_every_sample_weight_one_without_losses():
    pace = Pace(config("hard", warmup_epochs=2))
    assert not pace.needs_losses(0) and not pace.needs_losses(1) and pace.needs_losses(2)
    step = pace.v_step(1, np.full(7, 9.0), total_epochs=5)
    assert step.lam is None and np.all(step.v == 1)


@pytest.mark.parametrize("scheme", SOFT_SCHEMES)
def test_age_quantile_sets_the_initial_active_fraction(scheme):
    losses = np.random.default_rng(1).gamma(2.0, 1.0, 1000)
    pace = Pace(config(scheme, age_quantile=0.3, warmup_epochs=1))
    step = pace.v_step(1, losses, total_epochs=10)
    assert step.active_fraction == pytest.approx(0.3)


def test_age_for_fraction_includes_everyone_at_fraction_one():
    losses = np.random.default_rng(2).gamma(2.0, 1.0, 500)
    for scheme in SOFT_SCHEMES:
        l = normalise_losses(scheme, losses)
        lam = age_for_fraction(scheme, l, 1.0)
        assert np.all(weights(scheme, l, lam, gamma=0.5, t=3) > 0), scheme
        assert scheme != "logarithmic" or lam < 1


def test_geometric_pace_multiplies_lambda_by_mu_every_epoch():
    losses = chance_losses()
    pace = Pace(config("linear", age=3.0, age_quantile=None, mu=1.3, warmup_epochs=0))
    lams = [pace.v_step(epoch, losses, total_epochs=5).lam for epoch in range(4)]
    assert lams == pytest.approx([3.0, 3.9, 5.07, 6.591])


def test_geometric_pace_for_the_log_scheme_stops_below_one():
    losses = chance_losses()
    pace = Pace(config("logarithmic", age=0.8, age_quantile=None, mu=1.3, max_age=0.95, warmup_epochs=0))
    lams = [pace.v_step(epoch, losses, total_epochs=5).lam for epoch in range(3)]
    assert lams == pytest.approx([0.8, 0.95, 0.95])


def test_target_fraction_pace_grows_the_active_fraction_linearly():
    losses = np.random.default_rng(3).gamma(2.0, 1.0, 1000)
    pace = Pace(config("hard", pace="target_fraction", age_quantile=0.2, final_fraction=1.0,
                       final_epoch=5, warmup_epochs=1))
    fractions = [pace.v_step(epoch, losses, total_epochs=8).active_fraction for epoch in range(1, 8)]
    # 1-based epochs 2..8: from 0.2 at epoch 2 to 1.0 at epoch 5, then held.
    assert fractions == pytest.approx([0.2, 0.2 + 0.8 / 3, 0.2 + 1.6 / 3, 1.0, 1.0, 1.0, 1.0], abs=1e-3)


def test_target_fraction_can_stop_short_of_every_sample():
    losses = np.random.default_rng(4).gamma(2.0, 1.0, 1000)
    pace = Pace(config("linear", pace="target_fraction", age_quantile=0.5, final_fraction=0.6,
                       final_epoch=None, warmup_epochs=0))
    fractions = [pace.v_step(epoch, losses, total_epochs=3).active_fraction for epoch in range(3)]
    assert fractions == pytest.approx([0.5, 0.55, 0.6], abs=1e-3)


def test_mixture_active_set_is_cut_at_lambda_squared():
    losses = np.random.default_rng(5).gamma(2.0, 1.0, 1000)
    lam = age_for_fraction("mixture", losses, 0.4)
    assert np.mean(weights("mixture", losses, lam, gamma=0.5) > 0) == pytest.approx(0.4)
    assert np.all((weights("mixture", losses, lam, gamma=0.5) > 0) == (losses < lam ** 2))


def test_a_resumed_job_continues_the_pace_where_it_left_off():
    losses = np.random.default_rng(6).gamma(2.0, 1.0, 1000)
    geometric = Pace(config("linear", age=2.0, age_quantile=None, mu=1.5, warmup_epochs=1))
    assert geometric.v_step(3, losses, total_epochs=10).lam == pytest.approx(2.0 * 1.5 ** 2)

    def target_pace():
        return Pace(config("hard", pace="target_fraction", age_quantile=0.2, final_fraction=1.0,
                           final_epoch=9, warmup_epochs=1))

    uninterrupted = target_pace()
    fractions = [uninterrupted.v_step(epoch, losses, total_epochs=10).active_fraction for epoch in range(1, 6)]
    assert target_pace().v_step(5, losses, total_epochs=10).active_fraction == pytest.approx(fractions[-1])
