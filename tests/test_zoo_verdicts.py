"""Every built-in gives its documented verdict, across seeds."""

from __future__ import annotations

import pytest

from gradcheck_cli import scan
from gradcheck_cli.report.gate import STATUS_FAMILY
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.target.zoo import BUILTINS

# What each broken built-in must be told to change (docs/fixes/: the fix for its cause).
EXPECTED_FIX = {
    "deep-sigmoid": RecommendationId.SWAP_ACTIVATION,
    "relu-normal-init": RecommendationId.HE_INIT,
    "tanh-tiny-init": RecommendationId.XAVIER_INIT,
    "rnn-long": RecommendationId.GATED_RNN,
    "cnn-plain-deep": RecommendationId.SWAP_ACTIVATION,
    "nan-log": RecommendationId.GUARD_NONFINITE,
}


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda b: b.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_builtin_verdict(builtin, seed: int) -> None:  # type: ignore[no-untyped-def]
    report = scan(f"builtin:{builtin.name}", seed=seed)
    assert report.verdict.value == builtin.verdict
    if builtin.verdict == "healthy":
        assert report.findings == ()
        assert report.recommendations == ()
    else:
        # The verdict's family: rnn-long's finding is vanishing-through-time (gate.STATUS_FAMILY).
        assert any(f.kind in STATUS_FAMILY[builtin.verdict] for f in report.findings)
        assert builtin.name in EXPECTED_FIX, "document the fix this built-in demonstrates"
        assert EXPECTED_FIX[builtin.name] in [r.id for r in report.recommendations]
