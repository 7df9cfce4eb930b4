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


@pytest.mark.parametrize("name", ["onecycle", "piecewise", "cosine", "exponential", "triangle"])
def test_a_schedule_is_computed_from_optimizer_variables(name):
    """What differs between the jobs of a sweep over optimizer.lr and trainer.epochs is held in
    optimizer variables, inputs of the compiled step: one job's optimizer, given another job's
    variable values, computes the other job's rates (so a sweep reuses one compiled program)."""
    from cifar_exp.training.optim import build_optimizer

    optimizer_cfg = compose(["optimizer=nesterov"]).optimizer
    other_job = ["lr_schedule.warmup_epochs=2"] if name == "cosine" else []  # cosine: with a warm-up too
    first = build_optimizer(optimizer_cfg, build(name, 0.4, 10))
    other = build_optimizer(optimizer_cfg, build(name, 0.05, 7, *other_job))
    reference = build(name, 0.05, 7, *other_job)
    numbers = [v for v in first.variables if v.name.startswith("lr_schedule_")]
    assert numbers, [v.name for v in first.variables]
    for mine, theirs in zip(numbers, [v for v in other.variables if v.name.startswith("lr_schedule_")]):
        mine.assign(theirs)
    for step in (0, 37, 150, 420, 699, 700, 800):
        first.iterations.assign(step)
        assert float(first.learning_rate) == pytest.approx(float(reference(step)), rel=1e-5, abs=1e-9), step


def test_cosine_without_warmup_is_keras_cosine_decay():
    import keras

    cosine = build("cosine", 0.1, 10, "lr_schedule.warmup_epochs=0", "lr_schedule.alpha=0.1")
    keras_cosine = keras.optimizers.schedules.CosineDecay(0.1, 10 * STEPS_PER_EPOCH, alpha=0.1)
    for step in (0, 1, 500, 999, 1000, 1200):
        assert float(cosine(step)) == pytest.approx(float(keras_cosine(step)), rel=1e-6, abs=1e-9)
