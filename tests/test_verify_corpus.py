"""--verify on every built-in with a problem and every broken corpus model (issue 12, part 5).

With the real appliers: the top recommendation is verified and the verified fixes together make the
verdict healthy, or the report says why not (every recommendation carries a verification with a
summary, and none is presented as verified while a finding it answers remains). Where the
mechanism makes the outcome certain, the exact status is asserted. Healthy models get no
verification. The labels of these models come from plain-autograd reference measurements
(tests/corpus/MANIFEST.md, the zoo's docstrings), not from gradcheck.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gradcheck_cli import scan
from gradcheck_cli.report.records import Report, Severity
from gradcheck_cli.report.verification import VerificationStatus
from gradcheck_cli.target.zoo import BUILTINS

S = VerificationStatus
CORPUS = sorted(p for p in (Path(__file__).parent / "corpus").glob("*_*.py") if p.name != "reference.py")
BROKEN = [f"builtin:{b.name}" for b in BUILTINS if b.verdict != "healthy"] + [
    str(p) for p in CORPUS if not p.name.startswith("healthy_")]
HEALTHY = [f"builtin:{b.name}" for b in BUILTINS if b.verdict == "healthy"] + [
    str(p) for p in CORPUS if p.name.startswith("healthy_")]

CERTAIN = {
    # He's std for a ReLU stack that N(0, 1) weights overscale 4x per layer (He et al. 2015)
    "builtin:relu-normal-init": ("he-init", S.VERIFIED),
    "exploding_relu_mlp_normal_init.py": ("he-init", S.VERIFIED),
    "vanishing_relu_lecun_deep.py": ("he-init", S.VERIFIED),
    # ReLU's derivative is 1 where sigmoid's is <= 0.25 at every layer
    "builtin:deep-sigmoid": ("swap-activation", S.VERIFIED),
    "builtin:cnn-plain-deep": ("swap-activation", S.VERIFIED),
    # Xavier's std for tanh layers that 0.01 * N(0, 1) shrinks at every layer
    "builtin:tanh-tiny-init": ("xavier-init", S.VERIFIED),
    # a GRU's update gate carries the gradient where W_hh's radius 0.5 shrinks it every step
    "builtin:rnn-long": ("gated-rnn", S.VERIFIED),
    "vanishing_rnn_long_tanh.py": ("gated-rnn", S.VERIFIED),
    # the NaN is born in log(negative): a clamp at the op removes it
    "builtin:nan-log": ("guard-nonfinite", S.VERIFIED),
    # NaN in the batch reaches any patched copy: never claimed
    "nonfinite_nan_input.py": ("check-inputs", S.NOT_APPLICABLE),
}
"""Exact outcomes the mechanism makes certain (model -> recommendation, status)."""


def _name(target: str) -> str:
    return target if target.startswith("builtin:") else Path(target).name


def _check_consistent(report: Report) -> None:
    """Every recommendation says what --verify found; none is called verified while a finding it
    answers remains or a new error appeared."""
    assert report.recommendations
    for rec in report.recommendations:
        v = rec.verification
        assert v is not None and v.summary.strip(), rec.id
        if v.steps == report.config["steps"]:  # else its before is a probe with the fix's steps
            assert v.verdict_before == report.verdict.value
        if v.status == S.VERIFIED:
            assert v.remaining == () and not v.introduced, v
            assert v.resolved or rec.id.value in ("clip-gradients", "lower-lr"), v  # those: by their steps
        if v.status == S.NOT_APPLICABLE:
            assert v.verdict_after is None or v.summary.startswith("applied, but"), v
    combined = report.verification
    assert combined is not None and combined.summary.strip()
    verified = [r.id.value for r in report.recommendations
                if r.verification is not None and r.verification.status == S.VERIFIED]
    assert set(combined.applied) <= set(verified)
    assert (combined.verdict_after is None) == (not verified)


@pytest.mark.slow  # every broken model scanned with --verify: about a minute on a quiet 2-core machine
@pytest.mark.parametrize("target", BROKEN, ids=_name)
def test_the_top_verified_fix_makes_the_model_healthy_or_the_report_says_why_not(target: str) -> None:
    report = scan(target, verify=True)
    _check_consistent(report)
    top = report.recommendations[0].verification
    assert top is not None
    combined = report.verification
    assert combined is not None
    if top.status != S.VERIFIED or combined.verdict_after != "healthy":
        # why not: each recommendation's summary and the combined line (checked above) say it
        assert combined.verdict_after is None or combined.applied
    expected = CERTAIN.get(_name(target))
    if expected is not None:
        statuses = {r.id.value: r.verification.status for r in report.recommendations if r.verification}
        assert statuses[expected[0]] == expected[1], statuses
        if expected[1] == S.VERIFIED:
            assert report.recommendations[0].verification is not None
            assert report.recommendations[0].verification.status == S.VERIFIED
            assert combined.verdict_after == "healthy", combined


def test_every_broken_model_is_covered_and_the_certain_cases_exist() -> None:
    names = {_name(t) for t in BROKEN}
    assert set(CERTAIN) <= names
    assert len([t for t in BROKEN if t.startswith("builtin:")]) >= 6


@pytest.mark.parametrize("target", HEALTHY, ids=_name)
def test_verify_adds_nothing_to_a_healthy_model(target: str) -> None:
    report = scan(target, verify=True)
    assert report.verdict.value == "healthy" and report.recommendations == ()
    assert report.verification is None and "verification" not in report.to_dict()
    assert report.config["verify"] is True
    assert not any(f.severity == Severity.ERROR for f in report.findings)
