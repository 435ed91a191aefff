"""The learning-rate schedule and the planned length of a run, by arithmetic alone."""
from __future__ import annotations

import math


def lr_at(step: int, sched, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine or constant."""
    if step < sched.warmup_steps:
        return sched.peak_lr * (step + 1) / sched.warmup_steps
    if sched.decay == "constant":
        return sched.peak_lr
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total_steps - sched.warmup_steps))
    floor = sched.min_lr_ratio * sched.peak_lr
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (sched.peak_lr - floor)


def planned_steps(max_steps: int | None, max_tokens: int | None, tokens_per_step: int) -> int:
    """Steps until the first limit: max_steps, or max_tokens at full rows (the cosine horizon)."""
    limits = [max_steps] if max_steps else []
    if max_tokens:
        limits.append(math.ceil(max_tokens / tokens_per_step))
    return min(limits)


def warmup_warning(sched, total_steps: int) -> str | None:
    """A warmup longer than half the planned steps, what it does to the LR, and the fix; None when
    shorter. The default schedule's 2000 steps would otherwise leave a short run's LR low, silently."""
    warmup = sched.warmup_steps
    if warmup <= total_steps / 2:
        return None
    reach = f"only {100 * total_steps / warmup:.3g}% of" if total_steps < warmup else "all of"
    decay = f", leaving {max(0, total_steps - warmup)} steps to decay" if sched.decay == "cosine" else ""
    return (f"schedule.warmup_steps={warmup} is more than half of this run's {total_steps} planned steps: the LR "
            f"reaches {reach} schedule.peak_lr{decay}; set schedule.warmup_steps={max(1, total_steps // 10)} "
            "(a tenth of the run) or schedule=none (a constant LR)")
