"""Stable verdicts: every corpus model and every built-in gives the same verdict and the same set
of failing findings for --seed 0..4 (each seed draws other probe batches; a model file that does
not seed its own build is also initialised differently).

"Failing" is what a gate on the three verdict families would fail on (--fail-on vanishing,
exploding, nonfinite: vanishing/exploding, their through-time kinds, nonfinite, nonfinite-input),
by (kind, layer). A borderline number says so in its finding's `margin` (tests/test_signal_depth.py)
instead of flipping the call from one batch to the next.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcheck_cli import scan
from gradcheck_cli.report.gate import matches
from gradcheck_cli.target.zoo import names

SEEDS = range(5)
FAMILIES = ("vanishing", "exploding", "nonfinite")
CORPUS = sorted(p for p in (Path(__file__).parent / "corpus").glob("*_*.py") if p.name != "reference.py")
TARGETS = [str(p) for p in CORPUS] + [f"builtin:{name}" for name in names()]


def _outcome(target: str, seed: int) -> tuple[str, frozenset[tuple[str, str]]]:
    report = scan(target, seed=seed)
    failing = frozenset((f.kind.value, f.layer or "-") for f in report.findings if matches(f, FAMILIES))
    return report.verdict.value, failing


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: Path(t).stem if t.endswith(".py") else t)
def test_verdict_and_failing_findings_are_the_same_for_seeds_0_to_4(target: str) -> None:
    outcomes = {seed: _outcome(target, seed) for seed in SEEDS}
    first = outcomes[0]
    differing = {seed: outcome for seed, outcome in outcomes.items() if outcome != first}
    assert not differing, (f"seed 0: {first[0]} {sorted(first[1])}; "
                           + "; ".join(f"seed {s}: {v} {sorted(f ^ first[1])} differ"
                                       for s, (v, f) in differing.items()))
