"""loss-spike: a step's loss far above the trailing window of the losses before it (training watch).

The rule is the one OLMo 2 uses to score loss spikes (Team OLMo 2024, arXiv:2501.00656, section
3.1): a value at least `loss_spike_sigmas` (7) standard deviations above the rolling average of
the previous values. The window holds the last `loss_spike_window` finite losses; until it is full
(warm-up, where the loss falls fastest) nothing is a spike. A spike enters the window like any
loss, so a loss that stays high becomes the new normal instead of a spike at every step.
Bounded: the window, the first spike and a count, whatever the number of steps
(docs/findings/loss-spike.md). Pure: no torch.

Cost: the watch folds every step of every layer in here (grad_spike.py), so re-summing the window
at each step (two exact passes of `window` values) was most of the watch's analysis time at
every=1 (~3 ms a step for 150 layers). Running sums of the window, shifted by a recent mean
against cancellation and re-summed exactly once per window, rule out the clear non-spikes; a
step that may be a spike (or whose running sums have lost their precision) is decided by the
exact sums, as before, so the findings are the same.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gradcheck_cli.report.evidence import LossSpikeEvidence


@dataclass(frozen=True)
class Spike:
    step: int
    loss: float
    mean: float
    std: float


class LossSpikes:
    """Folds each step's loss into the trailing window; keeps the first spike and counts them."""

    def __init__(self, sigmas: float, window: int) -> None:
        self.sigmas = sigmas
        self.window: deque[float] = deque(maxlen=window)
        self.first: Spike | None = None
        self.count = 0
        self._shift = 0.0
        """The running sums are of (x - shift): a recent mean, so that no digit cancels."""
        self._sum = 0.0
        self._sum_sq = 0.0
        self._pushed = 0

    def add(self, first_step: int, losses: Iterable[float]) -> None:
        for step, loss in enumerate(losses, start=first_step):
            if not math.isfinite(loss):
                continue  # a non-finite loss is the nonfinite finding's, not a spike
            if len(self.window) == self.window.maxlen and not self._clearly_normal(loss):
                self._judge(step, loss)
            self._push(loss)

    def _push(self, loss: float) -> None:
        if len(self.window) == self.window.maxlen:
            old = self.window[0] - self._shift  # the value append() drops
            self._sum -= old
            self._sum_sq -= old * old
        self.window.append(loss)
        new = loss - self._shift
        self._sum += new
        self._sum_sq += new * new
        self._pushed += 1
        if self._pushed % len(self.window) == 0:  # rounding never builds up past one window
            self._resum()

    def _resum(self) -> None:
        self._shift = math.fsum(self.window) / len(self.window)
        self._sum = math.fsum(x - self._shift for x in self.window)
        self._sum_sq = math.fsum((x - self._shift) ** 2 for x in self.window)

    def _clearly_normal(self, loss: float) -> bool:
        """From the running sums: the loss is below half the spike threshold, and the sums are
        well conditioned (the variance not lost in cancellation), so the exact rule would agree."""
        n = len(self.window)
        mean_dev, mean_sq = self._sum / n, self._sum_sq / n
        variance = mean_sq - mean_dev * mean_dev
        if not variance > 1e-6 * mean_sq:
            self._resum()  # ill-conditioned (or a window of equal values): decide exactly
            return False
        return loss - (self._shift + mean_dev) < 0.5 * self.sigmas * math.sqrt(variance)

    def _judge(self, step: int, loss: float) -> None:
        n = len(self.window)
        mean = math.fsum(self.window) / n
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in self.window) / n)
        # A window of equal losses (std 0) has no noise to measure a spike against.
        if std > 0 and loss - mean >= self.sigmas * std:
            self.count += 1
            if self.first is None:
                self.first = Spike(step, loss, mean, std)

    def evidence(self) -> LossSpikeEvidence | None:
        spike = self.first
        if spike is None:
            return None
        sigmas = (spike.loss - spike.mean) / spike.std
        return LossSpikeEvidence(spike.step, spike.loss, spike.mean, spike.std, sigmas,
                                 self.window.maxlen or 0, self.count)
