"""grad-spike: a layer's gradient norm far above the trailing window of its norms (training watch).

The same rule as loss-spike (analyse/loss_spike.py, OLMo 2's spike score: at least
`grad_spike_sigmas` standard deviations above the rolling average of the previous values), on the
log of each layer's gradient norm: gradient norms vary by factors, so a spike is a factor far
outside the layer's usual spread. Zero and non-finite norms are skipped (a frozen or unused layer
has none; NaN/Inf is the nonfinite finding's). Bounded: one window per layer
(docs/findings/grad-spike.md). Pure: no torch.
"""

from __future__ import annotations

import math

from gradcheck_cli.analyse.loss_spike import LossSpikes
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.evidence import GradSpikeEvidence


class GradSpikes:
    """One trailing window of log gradient norms per layer; the earliest spike over all layers."""

    def __init__(self, layers: list[str], sigmas: float, window: int) -> None:
        self.layers = list(layers)
        self.windows = [LossSpikes(sigmas, window) for _ in self.layers]

    def add(self, block: StepBlock) -> None:
        for column, spikes in enumerate(self.windows):
            logs = (0.5 * math.log(row[column]) if row[column] > 0 else math.nan for row in block.grad_sq)
            spikes.add(block.first_step, logs)

    def first(self) -> tuple[str, GradSpikeEvidence] | None:
        """The layer whose first spike came earliest (the lowest step, then the layer order)."""
        candidates = [(spikes.first.step, index) for index, spikes in enumerate(self.windows)
                      if spikes.first is not None]
        if not candidates:
            return None
        _, index = min(candidates)
        spikes, spike = self.windows[index], self.windows[index].first
        assert spike is not None
        layers = sum(1 for s in self.windows if s.first is not None)
        return self.layers[index], GradSpikeEvidence(
            spike.step, math.exp(spike.loss), math.exp(spike.mean), (spike.loss - spike.mean) / spike.std,
            spikes.window.maxlen or 0, spikes.count, layers)
