"""rank-mismatch: under DDP, a rank whose gradients after the all-reduce differ from rank 0's.

DDP averages the ranks' gradients with an all-reduce, after which every rank holds the same
gradients: they are replicas, and every rank's optimizer applies the same update (PyTorch, "Distributed
Data Parallel" design notes: "the gradients on every replica are the same after the all-reduce").
The watch compares each step's per-layer gradient norms of every rank with rank 0's, read at the
end of the backward, and the layers' weight norms at each flush (every `every` steps), which also
catches a gradient changed on one rank after the backward (measure/distributed.py ->
series.ReplicaSpread); a relative difference above
`rank_mismatch_relative` means the replicas drifted apart: a rank skipped the all-reduce (a
`no_sync` on one rank, an unused parameter without find_unused_parameters, a different graph on one
rank), its gradients were changed after it (a hook or a manual edit on one rank), or buffers that
are not synchronised made the ranks compute different things (docs/findings/rank-mismatch.md).
The finding is the first such step (its rank and layer) and the number of steps that had one.
Bounded state, pure: no torch.
"""

from __future__ import annotations

from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.evidence import RankMismatchEvidence


class RankMismatches:
    """The first step whose replicas differed, and how many steps did."""

    def __init__(self, layers: list[str], relative: float) -> None:
        self.layers = layers
        self.relative = relative
        self.first: tuple[int, int, int, float, str] | None = None
        """(step, rank, layer index, relative difference, seen in) of the first mismatch."""
        self.steps = 0

    def add(self, block: StepBlock) -> None:
        spread = block.replicas
        if spread is None:
            return
        for row, value in enumerate(spread.relative):
            if value > self.relative:
                self.steps += 1
                if self.first is None:
                    self.first = (block.first_step + row, spread.rank[row], spread.layer[row], value, "gradients")
        value, rank, layer = spread.weights
        if value > self.relative and self.first is None:  # seen at the flush: by the block's last step
            self.first = (block.first_step + len(block.loss) - 1, rank, layer, value, "weights")

    def evidence(self) -> tuple[str, RankMismatchEvidence] | None:
        if self.first is None:
            return None
        step, rank, layer, value, seen_in = self.first
        return self.layers[layer], RankMismatchEvidence(step=step, rank=rank, relative_difference=value,
                                                        seen_in=seen_in, tolerance=self.relative,
                                                        steps=self.steps)


def message(layer: str, evidence: RankMismatchEvidence) -> str:
    more = f"; the gradients differed at {evidence.steps} steps" if evidence.steps else ""
    when = (f"at step {evidence.step}" if evidence.seen_in == "gradients" else
            f"by step {evidence.step} (the weights, compared every `every` steps)")
    return (f"rank {evidence.rank}'s {evidence.seen_in} differ from rank 0's {when} although DDP keeps "
            f"replicas: {layer}'s norm by {evidence.relative_difference:.3g} (relative; replicas agree "
            f"within {evidence.tolerance:.0e}){more}")
