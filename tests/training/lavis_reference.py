"""A direct implementation of LAVIS' LinearWarmupCosineLRScheduler (lavis/common/optims.py),
driven the way the original's Lightning loop drives it, for the schedule tests."""
from __future__ import annotations

import math

import numpy as np


class LavisLinearWarmupCosine:
    """lavis/common/optims.py LinearWarmupCosineLRScheduler, written out: epoch 0 warms up
    linearly (capped at the peak), later epochs follow a per-epoch cosine."""

    def __init__(self, max_epoch, min_lr, init_lr, warmup_steps, warmup_start_lr):
        self.max_epoch, self.min_lr, self.init_lr = max_epoch, min_lr, init_lr
        self.warmup_steps, self.warmup_start_lr = warmup_steps, warmup_start_lr
        self.lr = None

    def step(self, cur_epoch, cur_step):
        if cur_epoch == 0:
            self.lr = min(self.init_lr, self.warmup_start_lr
                          + (self.init_lr - self.warmup_start_lr) * cur_step / max(self.warmup_steps, 1))
        else:
            self.lr = (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * cur_epoch / self.max_epoch)) \
                + self.min_lr


def original_update_rates(micro_per_epoch, accumulate, epochs):
    """The learning rate of every optimizer update of the original's loop (model/run.py 50,
    53, 185; Lightning 1.9): the scheduler is stepped before every micro-batch with
    (current_epoch, global_step = updates done), the update after the last micro-batch of an
    accumulation (or of the epoch) uses the rate set then."""
    sched = LavisLinearWarmupCosine(epochs, 1e-5, 1e-4, min(micro_per_epoch, 1000), 1e-6)
    rates, global_step = [], 0
    for epoch in range(epochs):
        for i in range(micro_per_epoch):
            sched.step(epoch, global_step)
            if (i + 1) % accumulate == 0 or i + 1 == micro_per_epoch:
                rates.append(sched.lr)
                global_step += 1
    return np.asarray(rates)
