"""The training watch's steps, folded into bounded state (measure/series.py -> findings over time).

The watch (cli/watch.py) hands over a StepBlock every `every` steps and a NonfiniteEvent on the
first NaN/Inf. It keeps only constant-size state: the number of steps seen, the earliest
non-finite event (by step, then rank), which becomes a `nonfinite` finding naming the step, the
rank and where a replay of that step's batch found the first NaN/Inf, and the loss's trailing
window (analyse/loss_spike.py), whose first spike becomes a `loss-spike` finding
(docs/findings/loss-spike.md), and each layer's window of log gradient norms
(analyse/grad_spike.py, docs/findings/grad-spike.md), each layer's geometric gradient-norm trend
(analyse/grad_trend.py, docs/findings/grad-trend.md) and weights growing with their gradients
(analyse/weight_growth.py, docs/findings/weight-growth.md). Every finding carries `step` (where it started) and `rank`.

Steps are numbered from 0: step k is the (k+1)-th `w.step` call, the index of the optimizer step,
as StepBlock.first_step counts them; findings, evidence and the time series use the same numbers.
The time series of the report (`series()`, report/series.py) is sampled into a bounded number of
points by analyse/series_sampler.py. Pure: no torch.
"""

from __future__ import annotations

from gradcheck_cli.analyse.grad_spike import GradSpikes
from gradcheck_cli.analyse.grad_trend import GradTrends
from gradcheck_cli.analyse.loss_spike import LossSpikes
from gradcheck_cli.analyse.rank_mismatch import RankMismatches
from gradcheck_cli.analyse.rank_mismatch import message as rank_mismatch_message
from gradcheck_cli.analyse.series_sampler import SeriesSampler
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.analyse.weight_growth import WeightGrowths
from gradcheck_cli.measure.series import NonfiniteEvent, StepBlock
from gradcheck_cli.report.evidence import GradSpikeEvidence, LossSpikeEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Number, Severity
from gradcheck_cli.report.series import WatchSeries

TIMELINE_KINDS: list[FindingKind] = [FindingKind.NONFINITE, FindingKind.LOSS_SPIKE, FindingKind.GRAD_SPIKE,
                                     FindingKind.RANK_MISMATCH, FindingKind.GRAD_TREND, FindingKind.WEIGHT_GROWTH]
"""The finding kinds the training watch emits over time (a detector that lands here appends its
kind): `gradcheck explain` and `gradcheck list checks` count them as measured (cli/app.py)."""

REPORT_RANK = 0
"""The rank of a finding judged on the blocks: rank 0's, which under torch.distributed are reduced
across ranks before they reach the timeline (measure/series.py); only rank 0 writes the report."""


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
        self.sampler = SeriesSampler()
        self.rank_mismatches = RankMismatches(self.layers, thresholds.rank_mismatch_relative)
        self.grad_trends = GradTrends(self.layers, thresholds)  # analyse/grad_trend.py
        self.weight_growths = WeightGrowths(self.layers, thresholds)  # analyse/weight_growth.py

    def add(self, block: StepBlock) -> None:
        """Blocks come in step order (the watch flushes them as the run goes)."""
        self.steps = max(self.steps, block.first_step + len(block.loss))
        self.loss_spikes.add(block.first_step, block.loss)
        self.grad_spikes.add(block)
        self.sampler.add(block)
        self.rank_mismatches.add(block)  # DDP only (analyse/rank_mismatch.py)
        self.grad_trends.add(block)
        self.weight_growths.add(block)
        self._pin_finding_steps()

    def nonfinite(self, event: NonfiniteEvent) -> None:
        """Keep the earliest event: the lowest step, then the lowest rank."""
        first = self.first_nonfinite
        if first is None or (event.step, event.rank) < (first.step, first.rank):
            self.first_nonfinite = event
            self.sampler.pin(event.step)

    def findings(self) -> list[Finding]:
        found: list[Finding] = []
        event = self.first_nonfinite
        if event is not None:
            found.append(Finding(FindingKind.NONFINITE, event.layer, Severity.ERROR, _message(event),
                                 _evidence(event), step=event.step, rank=event.rank))
        spike = self.loss_spikes.evidence()
        if spike is not None:
            found.append(Finding(FindingKind.LOSS_SPIKE, None, Severity.WARNING, _spike_message(spike), spike,
                                 step=spike.step, rank=REPORT_RANK))
        grad = self.grad_spikes.first()
        if grad is not None:
            layer, evidence = grad
            found.append(Finding(FindingKind.GRAD_SPIKE, layer, Severity.WARNING,
                                 _grad_spike_message(layer, evidence), evidence, step=evidence.step,
                                 rank=REPORT_RANK))
        mismatch = self.rank_mismatches.evidence()
        if mismatch is not None:
            layer, ranks = mismatch
            found.append(Finding(FindingKind.RANK_MISMATCH, layer, Severity.ERROR,
                                 rank_mismatch_message(layer, ranks), ranks, step=ranks.step, rank=ranks.rank))
        found += self.grad_trends.findings()
        found += self.weight_growths.findings(event.step if event is not None else None)
        return found

    def series(self) -> WatchSeries:
        """The report's per-layer time series: a bounded sample of the steps (series_sampler.py)."""
        return self.sampler.series(self.layers)

    def _pin_finding_steps(self) -> None:
        """Keep the steps where a spike or a rank mismatch was first seen in the series (cheap: run
        after every block, while that block is at hand). A trend's start lies in blocks gone by."""
        if self.loss_spikes.first is not None:
            self.sampler.pin(self.loss_spikes.first.step)
        grad = self.grad_spikes.first()
        if grad is not None:
            self.sampler.pin(grad[1].step)
        if self.rank_mismatches.first is not None:
            self.sampler.pin(self.rank_mismatches.first[0])


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
