"""Learning-rate schedules Keras does not ship (imported lazily: it imports Keras)."""
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
        up = step / self.peak_step if self.peak_step > 0 else 1.0  # peak 0: start at the peak
        down = (self.total_steps - step) / (self.total_steps - self.peak_step)
        return self.peak_lr * ops.clip(ops.minimum(up, down), 0.0, 1.0)

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
        t = ops.minimum(ops.cast(step, "float32") / self.total_steps, 1.0)
        up = self.start + (1 - self.start) * t / self.peak_fraction
        down = 1 + (self.end - 1) * (t - self.peak_fraction) / (1 - self.peak_fraction)
        return self.peak_lr * ops.where(t < self.peak_fraction, up, down)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps, "start": self.start,
                "peak_fraction": self.peak_fraction, "end": self.end}
