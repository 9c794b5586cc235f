"""Paired statistics over seeds: the mean of paired differences with a Student-t 95% interval, and
how many seeds an effect needs at a measured noise level.

For n paired differences d_i: mean m, sample standard deviation s (ddof 1), interval
m +- t_{n-1, (1 + c) / 2} * s / sqrt(n).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def t_interval(values: list[float], confidence: float = 0.95) -> dict[str, float | int | None]:
    """Mean, sample std and the two-sided t interval of the mean (None bounds below 2 values)."""
    x = np.asarray(values, np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "low": None, "high": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def paired_interval(treated: dict[int, float], control: dict[int, float],
                    confidence: float = 0.95) -> dict[str, float | int | None] | None:
    """t interval of treated - control over the seeds both hold (None when they share none)."""
    seeds = sorted(set(treated) & set(control))
    if not seeds:
        return None
    return {**t_interval([treated[s] - control[s] for s in seeds], confidence), "seeds": seeds}


def seeds_needed(sd: float, effect: float = 0.03, confidence: float = 0.95, power: float = 0.8,
                 most: int = 1000) -> int:
    """Fewest seeds n for which a true paired effect `effect` has its lower t bound above 0 with
    probability `power`, at paired-difference std `sd`: (t_{n-1,c} + t_{n-1,power}) sd / sqrt(n) <= effect."""
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        need = (stats.t.ppf((1 + confidence) / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)
        if need <= effect:
            return n
    return most
