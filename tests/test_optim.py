"""Schedules have the seeds' values at the seeds' milestones; optimizers are Keras'."""
import pytest

from conftest import compose

STEPS_PER_EPOCH = 100


def lr_at(schedule, epoch_1_based, step_in_epoch=0):
    return float(schedule((epoch_1_based - 1) * STEPS_PER_EPOCH + step_in_epoch))


def build(name, lr, epochs, *overrides):
    from cifar_exp.training.optim import build_lr_schedule

    cfg = compose([f"lr_schedule={name}", *overrides]).lr_schedule
    return build_lr_schedule(cfg, lr, STEPS_PER_EPOCH, epochs)


def test_piecewise_is_seed_001():
    schedule = build("piecewise", 0.021, 150)
    assert lr_at(schedule, 14, STEPS_PER_EPOCH - 1) == pytest.approx(0.021)
    assert lr_at(schedule, 15) == pytest.approx(0.021 * 0.7)
    assert lr_at(schedule, 39, STEPS_PER_EPOCH - 1) == pytest.approx(0.021 * 0.7)
    assert lr_at(schedule, 40) == pytest.approx(0.021 * 0.7 ** 2)
    assert lr_at(schedule, 140) == pytest.approx(0.021 * 0.7 ** 6)
    assert lr_at(schedule, 150) == pytest.approx(0.021 * 0.7 ** 6)


def test_onecycle_is_seed_003():
    schedule = build("onecycle", 0.4, 24)
    assert lr_at(schedule, 1) == 0.0
    assert lr_at(schedule, 3, 50) == pytest.approx(0.4 * 2.5 / 5)  # halfway up, per step
    assert lr_at(schedule, 6) == pytest.approx(0.4)  # epoch 5 finished: the peak
    assert lr_at(schedule, 15, 50) == pytest.approx(0.4 * (24 - 14.5) / 19)
    assert float(schedule(24 * STEPS_PER_EPOCH)) == pytest.approx(0.0, abs=1e-7)


def test_cosine_with_warmup_and_exponential():
    cosine = build("cosine", 0.1, 10, "lr_schedule.warmup_epochs=2")
    assert lr_at(cosine, 1) == pytest.approx(0.0)
    assert lr_at(cosine, 2) == pytest.approx(0.05)
    assert lr_at(cosine, 3) == pytest.approx(0.1)
    assert float(cosine(10 * STEPS_PER_EPOCH)) == pytest.approx(0.0, abs=1e-7)
    exponential = build("exponential", 0.1, 10, "lr_schedule.decay_rate=0.5")
    assert lr_at(exponential, 3) == pytest.approx(0.025)


def test_constant_is_a_plain_rate():
    assert build("constant", 0.01, 5) == 0.01


@pytest.mark.parametrize("name,keras_class,extra", [
    ("sgd", "SGD", {}), ("momentum", "SGD", {"momentum": 0.9}), ("nesterov", "SGD", {"nesterov": True}),
    ("adam", "Adam", {}), ("adamw", "AdamW", {"weight_decay": 0.004}), ("adadelta", "Adadelta", {}),
    ("adagrad", "Adagrad", {}), ("rmsprop", "RMSprop", {}), ("nadam", "Nadam", {}),
])
def test_optimizers_are_keras_classes_with_config_fields(name, keras_class, extra):
    from cifar_exp.training.optim import build_optimizer

    cfg = compose([f"optimizer={name}"]).optimizer
    optimizer = build_optimizer(cfg, cfg.lr)
    assert type(optimizer).__name__ == keras_class
    assert float(optimizer.learning_rate) == pytest.approx(cfg.lr)
    for key, value in extra.items():
        assert getattr(optimizer, key) == pytest.approx(value)


def test_onecycle_shorter_than_four_epochs_still_warms_up():
    # The seed's (epochs + 1) // 5 is 0 here; starting at 0.4 left ResNet-9 at chance on a short
    # run (issue 12), so the peak falls at 5/24 of the run, as 5 of the seed's 24 epochs.
    schedule = build("onecycle", 0.4, 3)
    peak_step = round(3 * 5 / 24 * STEPS_PER_EPOCH)  # 62 of 300 steps
    assert lr_at(schedule, 1) == 0.0
    assert lr_at(schedule, 1, peak_step // 2) == pytest.approx(0.4 * (peak_step // 2) / peak_step)
    assert lr_at(schedule, 1, peak_step) == pytest.approx(0.4)
    assert float(schedule(3 * STEPS_PER_EPOCH)) == pytest.approx(0.0, abs=1e-7)
    pinned = build("onecycle", 0.4, 1, "lr_schedule.peak_epoch=0")  # chosen: start at the peak
    assert lr_at(pinned, 1) == pytest.approx(0.4)
    assert lr_at(pinned, 1, 50) == pytest.approx(0.2)
