"""loss-spike: a step's loss far above the trailing window of the losses before it (training watch).

The rule is the one OLMo 2 uses to score loss spikes (Team OLMo 2024, arXiv:2501.00656, section
3.1): a value at least `loss_spike_sigmas` (7) standard deviations above the rolling average of
the previous values. The window holds the last `loss_spike_window` finite losses; until it is full
(warm-up, where the loss falls fastest) nothing is a spike. A spike enters the window like any
loss, so a loss that stays high becomes the new normal instead of a spike at every step.
Bounded: the window, the first spike and a count, whatever the number of steps
(docs/findings/loss-spike.md). Pure: no torch.
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

    def add(self, first_step: int, losses: Iterable[float]) -> None:
        for step, loss in enumerate(losses, start=first_step):
            if not math.isfinite(loss):
                continue  # a non-finite loss is the nonfinite finding's, not a spike
            if len(self.window) == self.window.maxlen:
                self._judge(step, loss)
            self.window.append(loss)

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
