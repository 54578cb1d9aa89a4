"""Learning-rate schedule: linear warmup, then cosine, linear or polynomial decay."""

import math

import keras
from keras import ops

from tflm.config import DECAYS


@keras.saving.register_keras_serializable(package="tflm")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`peak * (step + 1) / warmup_steps` during warmup, then a decay to `peak * end_ratio`.

    With `p` the fraction of the decay phase done (0 at the end of warmup, 1 at
    `total_steps`) and `end = peak * end_ratio`:

    - cosine: `end + (peak - end) * (1 + cos(pi * p)) / 2`
    - linear: `peak + (end - peak) * p`
    - polynomial: `end + (peak - end) * (1 - p) ** power`
    - constant: `peak`

    `step` counts optimizer updates (the trainer accumulates micro-batches
    itself, so one update is one step).

    Example:
    >>> schedule = WarmupDecay(peak=1e-3, total_steps=1000, warmup_steps=100)
    >>> optimizer = keras.optimizers.AdamW(learning_rate=schedule)
    """

    def __init__(self, peak, total_steps, warmup_steps=0, decay="cosine", end_ratio=0.1, power=2.0):
        if decay not in DECAYS:
            raise ValueError(f"Unknown decay {decay!r}; expected one of {DECAYS}.")
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.end_ratio = float(end_ratio)
        self.power = float(power)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, end = self.peak, self.peak * self.end_ratio
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "linear":
            decayed = peak + (end - peak) * progress
        elif self.decay == "polynomial":
            decayed = end + (peak - end) * ops.power(1.0 - progress, self.power)
        else:
            decayed = ops.convert_to_tensor(peak, "float32") + 0.0 * step
        if self.warmup_steps <= 0:
            return decayed
        warm = peak * (step + 1.0) / self.warmup_steps
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "end_ratio": self.end_ratio,
            "power": self.power,
        }
