"""`trainer.validation_freq`: the evaluated split every N-th epoch and after the last (Keras' validation_freq)."""
import pytest

from conftest import SMOKE, compose
from cifar_exp.errors import ConfigError
from cifar_exp.validate import validate


@pytest.mark.parametrize("every,epochs,expected", [(1, 3, [1, 2, 3]), (3, 10, [3, 6, 9, 10]), (10, 10, [10]),
                                                   (24, 10, [10])])
def test_every_nth_epoch_and_always_the_last_is_evaluated(every, epochs, expected):
    from cifar_exp.training.fit import evaluated_epochs

    assert evaluated_epochs(every, epochs) == expected


@pytest.mark.parametrize("value", [0, -1, 1.5, "two"])
def test_a_bad_validation_freq_is_refused_naming_key_value_and_what_is_allowed(value):
    with pytest.raises(ConfigError, match=r"trainer\.validation_freq"):
        validate(compose([*SMOKE, f"trainer.validation_freq={value}"]))


def test_the_airbench_preset_evaluates_after_its_last_epoch_only():
    cfg = compose(["experiment=airbench", "trainer.epochs=7"])
    assert cfg.trainer.validation_freq == 7


def test_unevaluated_epochs_log_training_metrics_only_and_the_final_metrics_are_the_last_epochs(fake_tracker):
    from cifar_exp.training import fit

    cfg = compose([*SMOKE, "trainer.epochs=3", "trainer.validation_freq=2"])
    validate(cfg)
    final = fit.run(cfg, fake_tracker)
    steps = lambda key: [step for step, metrics in fake_tracker.metrics if key in metrics and step]
    assert steps("loss") == [1, 2, 3]
    assert steps("test_accuracy") == [2, 3]  # epoch 2 (every 2nd) and the last
    last = [metrics for step, metrics in fake_tracker.metrics if step == 3 and "test_accuracy" in metrics][0]
    assert final["test_accuracy"] == last["test_accuracy"]
    assert "learning_curves.png" in fake_tracker.artifacts
