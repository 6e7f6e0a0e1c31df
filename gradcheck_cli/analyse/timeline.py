"""The training watch's steps, folded into bounded state (measure/series.py -> findings over time).

The watch (cli/watch.py) hands over a StepBlock every `every` steps and a NonfiniteEvent on the
first NaN/Inf. It keeps only constant-size state: the number of steps seen, the earliest
non-finite event (by step, then rank), which becomes a `nonfinite` finding naming the step, the
rank and where a replay of that step's batch found the first NaN/Inf, and the loss's trailing
window (analyse/loss_spike.py), whose first spike becomes a `loss-spike` finding
(docs/findings/loss-spike.md), and each layer's window of log gradient norms
(analyse/grad_spike.py, docs/findings/grad-spike.md). Not detected yet: gradient-norm trends and
weights growing towards an explosion. Pure: no torch.
"""

from __future__ import annotations

from gradcheck_cli.analyse.grad_spike import GradSpikes
from gradcheck_cli.analyse.loss_spike import LossSpikes
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.report.evidence import GradSpikeEvidence, LossSpikeEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Number, Severity


class Timeline:
    """Bounded state over a watched run: whatever the number of steps, a few numbers."""

    def __init__(self, layers: list[str], thresholds: Thresholds) -> None:
        self.layers = list(layers)
        self.thresholds = thresholds
        self.steps = 0
        """Steps seen (the end of the last block)."""
        self.first_nonfinite: NonfiniteEvent | None = None
        self.loss_spikes = LossSpikes(thresholds.loss_spike_sigmas, thresholds.loss_spike_window)
        self.grad_spikes = GradSpikes(self.layers, thresholds.grad_spike_sigmas, thresholds.loss_spike_window)

    def add(self, block: StepBlock) -> None:
        """Blocks come in step order (the watch flushes them as the run goes)."""
        self.steps = max(self.steps, block.first_step + len(block.loss))
        self.loss_spikes.add(block.first_step, block.loss)
        self.grad_spikes.add(block)

    def nonfinite(self, event: NonfiniteEvent) -> None:
        """Keep the earliest event: the lowest step, then the lowest rank."""
        first = self.first_nonfinite
        if first is None or (event.step, event.rank) < (first.step, first.rank):
            self.first_nonfinite = event

    def findings(self) -> list[Finding]:
        found: list[Finding] = []
        event = self.first_nonfinite
        if event is not None:
            found.append(Finding(FindingKind.NONFINITE, event.layer, Severity.ERROR, _message(event),
                                 _evidence(event)))
        spike = self.loss_spikes.evidence()
        if spike is not None:
            found.append(Finding(FindingKind.LOSS_SPIKE, None, Severity.WARNING, _spike_message(spike), spike))
        grad = self.grad_spikes.first()
        if grad is not None:
            layer, evidence = grad
            found.append(Finding(FindingKind.GRAD_SPIKE, layer, Severity.WARNING,
                                 _grad_spike_message(layer, evidence), evidence))
        return found

    def series(self) -> None:
        """The per-layer time series of the report: not kept yet (issue 13 part 2/3)."""
        return None


def _message(event: NonfiniteEvent) -> str:
    where = f"in {event.layer}'s gradients" if event.layer else "in the loss"
    text = f"the first NaN/Inf appeared at step {event.step} (rank {event.rank}) {where}"
    if event.origin_module is not None:
        op = f" op {event.origin_op}" if event.origin_op else ""
        text += f"; replaying that step's batch, it was born in {event.origin_module}{op} ({event.direction})"
    return text


def _spike_message(spike: LossSpikeEvidence) -> str:
    more = f"; {spike.spikes} spike steps in all" if spike.spikes > 1 else ""
    return (f"the loss spiked at step {spike.step}: {spike.loss:.4g}, {spike.sigmas:.1f} standard "
            f"deviations above the mean {spike.window_mean:.4g} of the {spike.window} steps before{more}")


def _grad_spike_message(layer: str, spike: GradSpikeEvidence) -> str:
    others = f"; {spike.layers} layers spiked" if spike.layers > 1 else ""
    return (f"{layer}'s gradient norm spiked at step {spike.step}: {spike.grad_norm:.3g}, "
            f"{spike.grad_norm / spike.window_geomean:.3g}x its usual {spike.window_geomean:.3g} "
            f"({spike.sigmas:.1f} standard deviations in log space){others}")


def _evidence(event: NonfiniteEvent) -> dict[str, Number]:
    evidence: dict[str, Number] = {"step": event.step, "rank": event.rank}
    if event.origin_module is not None:
        evidence.update(origin_module=event.origin_module, origin_op=event.origin_op,
                        direction=event.direction)
    return evidence
