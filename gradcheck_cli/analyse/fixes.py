"""The recommendation catalogue: stable ids, candidates from findings, one ranking function.

Every recommendation is justified by at least one finding and quotes the measured numbers; its
parameters (report/parameters.py) are what a program needs to apply it, and its snippet is
rendered from them. The mapping from cause to fix is documented per recommendation in docs/fixes.

Three explicit steps, each a pure function of its input:
1. `candidates`: every source (SOURCES) proposes fixes from the findings' typed evidence
   (cause_fixes.py, fix_gradients.py, fix_nonfinite.py, fix_precision.py).
2. `resolve`: one fix per id, the candidate of the most specific source (the latest in SOURCES):
   a fix measured on the run itself (divergence) beats one inferred from a layer's gradient, a
   recurrence's own clip beats the generic one, the init that findings name beats the init of
   every dense layer an overflow implicates.
3. `rank`: the order of `precedence(findings)`, see there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gradcheck_cli.analyse.cause_fixes import Fix, activation_fix, init_fixes, structure_fixes
from gradcheck_cli.analyse.fix_gradients import explosion_fixes, through_time_fixes
from gradcheck_cli.analyse.fix_nonfinite import check_inputs_fix, divergence_fixes, nonfinite_fixes
from gradcheck_cli.analyse.fix_precision import precision_fixes
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.report.evidence import DivergenceEvidence, NonfiniteEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Recommendation, RecommendationId

R = RecommendationId

# Most urgent first: data and NaN sources, then what stops a diverging run, then root causes.
RANK = (R.CHECK_INPUTS, R.SYNC_RANKS, R.GUARD_NONFINITE, R.USE_BF16, R.KEEP_FP32, R.LOSS_SCALING, R.FP32_MASTER_WEIGHTS,
        R.CLIP_GRADIENTS, R.LOWER_LR, R.HE_INIT, R.XAVIER_INIT, R.SWAP_ACTIVATION, R.GATED_RNN,
        R.ADD_NORMALIZATION, R.ADD_SKIP, R.WEIGHT_DECAY)

SOURCES = ("nonfinite", "precision", "explosion", "init", "activation", "through-time", "structure", "divergence")
"""The sources of candidates, least specific first (see `resolve`)."""

TITLES = {
    R.SWAP_ACTIVATION: "Use a non-saturating activation (ReLU/GELU) in hidden layers",
    R.HE_INIT: "Re-initialise ReLU-family layers with He (Kaiming) init",
    R.XAVIER_INIT: "Re-initialise tanh/sigmoid/linear layers with Xavier (Glorot) init",
    R.ADD_NORMALIZATION: "Add normalization layers (BatchNorm / LayerNorm)",
    R.ADD_SKIP: "Add residual (skip) connections",
    R.GATED_RNN: "Use a gated recurrent layer (LSTM or GRU)",
    R.CLIP_GRADIENTS: "Clip the gradient norm",
    R.LOWER_LR: "Lower the learning rate",
    R.WEIGHT_DECAY: "Add weight decay",
    R.GUARD_NONFINITE: "Guard the operation that produces NaN/Inf",
    R.CHECK_INPUTS: "Clean the input data: the batch already holds NaN/Inf",
    R.LOSS_SCALING: "Scale the loss for fp16 training",
    R.USE_BF16: "Autocast in bfloat16 instead of float16",
    R.KEEP_FP32: "Run the overflowing layers in float32",
    R.FP32_MASTER_WEIGHTS: "Keep float32 master weights for bf16 training",
    R.SYNC_RANKS: "Keep the DDP replicas in step",
}


def recommend(findings: Sequence[Finding], layers: Sequence[LayerStats],
              has_normalization: bool, thresholds: Thresholds = DEFAULTS) -> list[Recommendation]:
    """The recommendations the findings justify, ranked; their parameters derive from `thresholds`
    (healthy_update, clip_*, horizon_fraction, swap_saturated_fraction: analyse/thresholds.py)."""
    chosen = resolve(candidates(findings, layers, has_normalization, thresholds))
    return list(rank([to_recommendation(fix) for fix in chosen], findings))


def candidates(findings: Sequence[Finding], layers: Sequence[LayerStats], has_normalization: bool,
               t: Thresholds = DEFAULTS) -> list[tuple[str, Fix]]:
    """Every source's fixes for `findings`, each tagged with its source (one of SOURCES)."""
    by_name = {layer.name: layer for layer in layers}
    kinds: dict[FindingKind, list[LayerStats]] = {}
    for f in findings:
        kinds.setdefault(f.kind, [])
        if f.layer in by_name:
            kinds[f.kind].append(by_name[f.layer])
    exploding = kinds.get(FindingKind.EXPLODING, [])
    vanishing = kinds.get(FindingKind.VANISHING, [])
    found: list[tuple[str, Fix]] = []

    def add(source: str, fixes: Iterable[Fix | None]) -> None:
        found.extend((source, fix) for fix in fixes if fix is not None)

    if FindingKind.NONFINITE_INPUT in kinds:
        add("nonfinite", [check_inputs_fix()])
    elif FindingKind.NONFINITE in kinds:
        evidence = next(f.evidence for f in findings if f.kind == FindingKind.NONFINITE)
        add("nonfinite", nonfinite_fixes(evidence if isinstance(evidence, NonfiniteEvidence) else None,
                                         kinds[FindingKind.NONFINITE], layers, t))
    add("precision", precision_fixes(findings, layers, t))
    if exploding:
        add("explosion", explosion_fixes(exploding, layers, t))
    add("init", init_fixes(findings, exploding + vanishing, layers))
    add("activation", [activation_fix(findings, vanishing, layers, t)])
    add("through-time", through_time_fixes(kinds.get(FindingKind.VANISHING_THROUGH_TIME, []),
                                           kinds.get(FindingKind.EXPLODING_THROUGH_TIME, []),
                                           exploding, layers, t))
    add("structure", structure_fixes(findings, layers, has_normalization))
    divergence = next((f.evidence for f in findings if f.kind == FindingKind.DIVERGENCE), None)
    if isinstance(divergence, DivergenceEvidence):
        add("divergence", divergence_fixes(divergence, t))
    return found


def resolve(tagged: Iterable[tuple[str, Fix]]) -> list[Fix]:
    """One fix per recommendation id: the candidate of the latest source in SOURCES (no source
    proposes an id twice), whatever the order of `tagged`."""
    chosen: dict[RecommendationId, tuple[int, Fix]] = {}
    for source, fix in tagged:
        level = SOURCES.index(source)
        if fix.id not in chosen or level > chosen[fix.id][0]:
            chosen[fix.id] = (level, fix)
    return [fix for _, fix in chosen.values()]


def precedence(findings: Sequence[Finding]) -> tuple[RecommendationId, ...]:
    """RANK, except that an init-scale finding makes the init the cause: its fix (he-init /
    xavier-init) comes before clip-gradients and lower-lr, which only contain what a mis-scaled init
    sets off (a lower rate or a clip cannot give the layers the scale they need)."""
    if not any(f.kind == FindingKind.INIT_SCALE for f in findings):
        return RANK
    inits = (R.HE_INIT, R.XAVIER_INIT)
    rest = [rid for rid in RANK if rid not in inits]
    at = rest.index(R.CLIP_GRADIENTS)
    return (*rest[:at], *inits, *rest[at:])


def rank(recommendations: Iterable[Recommendation], findings: Sequence[Finding]) -> tuple[Recommendation, ...]:
    """The recommendations (one per id) most urgent first: ordered by their id's place in
    `precedence(findings)`, a pure function of the findings' kinds, never of the order in which
    the recommendations were made."""
    order = {rid: i for i, rid in enumerate(precedence(findings))}
    return tuple(sorted(recommendations, key=lambda r: order[r.id]))


def to_recommendation(fix: Fix) -> Recommendation:
    """The Recommendation of a fix: its catalogue title, and its snippet rendered from its parameters."""
    return Recommendation(fix.id, TITLES[fix.id], fix.layers, fix.why, fix.parameters.snippet(), fix.parameters)
