"""Learning-rate schedules Keras does not ship, and `OptimizerVariables`, which makes any schedule's
numbers inputs of the compiled train step (imported lazily: it imports Keras)."""
import copy
import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cifar_exp")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Seed 003's schedule: linear 0 -> `peak_lr` at `peak_step`, linear -> 0 at `total_steps`.

    Keras has no piecewise-linear schedule (PiecewiseConstantDecay holds values, it does
    not ramp), hence this one.
    """

    def __init__(self, peak_lr, peak_step, total_steps):
        self.peak_lr, self.peak_step, self.total_steps = float(peak_lr), float(peak_step), float(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak_step, total_steps = ops.cast(self.peak_step, "float32"), ops.cast(self.total_steps, "float32")
        # peak 0: start at the peak. ops.where, not `if`: the fields may be variables (OptimizerVariables).
        up = ops.where(peak_step > 0, step / ops.maximum(peak_step, 1.0), 1.0)
        down = (total_steps - step) / (total_steps - peak_step)
        return ops.cast(self.peak_lr, "float32") * ops.clip(ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "peak_step": self.peak_step, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package="cifar_exp")
class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """airbench's schedule: linear from `start` x `peak_lr` to `peak_lr` at `peak_fraction` of
    `total_steps`, then linear to `end` x `peak_lr` at the last step (factors of the peak rate).

    Keras has no piecewise-linear schedule, hence this one. `AirbenchSGD` reads its fields and
    computes the same rate from optimizer variables instead (compile reuse across sweeps).
    """

    def __init__(self, peak_lr, total_steps, start=0.2, peak_fraction=0.23, end=0.07):
        self.peak_lr, self.total_steps = float(peak_lr), float(total_steps)
        self.start, self.peak_fraction, self.end = float(start), float(peak_fraction), float(end)

    def __call__(self, step):
        start, peak, end = (ops.cast(v, "float32") for v in (self.start, self.peak_fraction, self.end))
        t = ops.minimum(ops.cast(step, "float32") / ops.cast(self.total_steps, "float32"), 1.0)
        up = start + (1 - start) * t / peak
        down = 1 + (end - 1) * (t - peak) / (1 - peak)
        return ops.cast(self.peak_lr, "float32") * ops.where(t < peak, up, down)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps, "start": self.start,
                "peak_fraction": self.peak_fraction, "end": self.end}


@keras.saving.register_keras_serializable(package="cifar_exp")
class OptimizerVariables(keras.optimizers.schedules.LearningRateSchedule):
    """A Keras schedule whose numbers (rates, step counts, factors) are variables of its optimizer.

    Why: a schedule's Python numbers are constants of the compiled train step, so the jobs of a
    sweep over `optimizer.lr`, `trainer.epochs` or a schedule's settings would each compile their
    own step (15 s of a 38 s ResNet-9 job on a GPU). As optimizer variables they are inputs of one
    program, which XLA's persistent cache (`trainer.compile_cache`) serves to every later job.
    Keras has no such option, hence this wrapper; the arithmetic stays the wrapped schedule's.

    `track(optimizer)` adds one float32 scalar optimizer variable, named `lr_schedule_<field>`
    (`_<i>` for list entries), per number in the schedule's `get_config()` (attribute names =
    config keys, as in Keras' schedules and ours); booleans, strings and None stay Python values.
    Untracked (e.g. reloaded from a saved model) it is the wrapped schedule. The step is the
    optimizer's `iterations`; the returned rate is a float32 scalar.
    """

    def __init__(self, schedule):
        if isinstance(schedule, dict):  # from get_config
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule
        self._tracked = None

    def track(self, optimizer) -> None:
        """Create the variables on `optimizer` (before it is built: they are checkpointed with it)."""
        tracked = copy.copy(self.schedule)

        def variable(name, value):
            return optimizer.add_variable((), keras.initializers.Constant(float(value)), "float32", name=name)

        for key, value in self.schedule.get_config().items():
            if _is_number(value):
                setattr(tracked, key, variable(f"lr_schedule_{key}", value))
            elif isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
                setattr(tracked, key, [variable(f"lr_schedule_{key}_{i}", v) for i, v in enumerate(value)])
        self._tracked = tracked

    def __call__(self, step):
        return ops.cast((self._tracked or self.schedule)(step), "float32")

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
