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
