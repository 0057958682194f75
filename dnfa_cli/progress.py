"""Progress and ETAs, for one run (`Progress`, reported by train.py's loop) and for a
sweep (`sweep_eta`); plain numbers, no JAX.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def call_sizes(cks: list[int], spe: int, chunk: int | None = None) -> list[int]:
    """The steps of each training call a run makes: epochs cut at the checkpoints, and
    into calls of at most `chunk` steps (train.chunk_steps; None: whole epochs)."""
    out, step, chunk = [], 0, chunk or spe
    for target in cks[1:]:
        while step < target:
            n = min(spe - step % spe, target - step, chunk)
            out.append(n)
            step += n
    return out


@dataclass
class Progress:
    """Where a run stands, for progress displays: `phase` is "training" or "measuring"
    (checkpoint `checkpoint` of `checkpoints`, 1-based), with the seconds each call of the
    epoch function and each checkpoint took so far, and the steps of every call to come."""

    step: int
    total: int
    checkpoints: int
    calls: list  # steps of every epoch-function call of the run (call_sizes)
    phase: str = "training"
    checkpoint: int = 0
    measured: int = 0  # the step of the checkpoint measured last (a held one trails the training)
    train_calls: list = field(default_factory=list)  # (steps, seconds) of the calls made
    checkpoint_seconds: list = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return sum(t for _, t in self.train_calls) + sum(self.checkpoint_seconds)

    def eta(self) -> float | None:
        """Seconds left: the calls to come at a cost a + b * steps fitted to the calls made,
        plus the checkpoints to come at the median cost of those measured. The first call
        and the first checkpoint carry one-time costs (compiling, drawing the random
        factors), so each estimate leaves its first out: None until a second call and a
        second checkpoint were seen (or no more are to come)."""
        left = self.calls[len(self.train_calls):]
        cks_left = max(0, self.checkpoints - len(self.checkpoint_seconds))
        if (left and len(self.train_calls) < 2) or (cks_left and len(self.checkpoint_seconds) < 2):
            return None  # only first (compiling) costs seen where more are to come
        calls = self.train_calls[1:] if len(self.train_calls) > 1 else self.train_calls
        n = np.array([c for c, _ in calls], float)
        t = np.array([s for _, s in calls], float)
        if not calls:
            a = b = 0.0
        elif len(set(n)) > 1:  # a per-call overhead and a per-step cost
            b, a = np.polyfit(n, t, 1)
            a, b = max(a, 0.0), max(b, 0.0)
        elif not left or n[0] >= np.median(left):  # calls this long: their cost scales down
            a, b = 0.0, t.sum() / n.sum()
        else:  # only shorter calls seen: all overhead and all compute bound the truth; take
            # their geometric mean
            per = t.mean()
            lo, hi = len(left) * per, sum(left) * per / n[0]
            a, b = 0.0, float(np.sqrt(lo * hi)) / max(sum(left), 1)
        cks = self.checkpoint_seconds[1:] if len(self.checkpoint_seconds) > 1 else self.checkpoint_seconds
        per_ck = float(np.median(cks)) if cks else 0.0
        return len(left) * a + b * sum(left) + cks_left * per_ck


def sweep_eta(finished: list[float], n: int, workers: int) -> float:
    """Seconds left in a sweep of `n` runs, given when each finished run finished (seconds
    since the start, in order). Once every worker has finished a run since the first one
    did, the rate since then, which leaves out start-up and compiling (the runs still to
    come mostly do not pay them again); before that, the average so far."""
    done = len(finished)
    since = done - 1
    rate = (finished[-1] - finished[0]) / since if since >= workers else finished[-1] / done
    return rate * (n - done)
