"""Typed evidence and applicable fixes: the numbers a snippet shows are data a program can apply,
the evidence records write today's JSON keys, and the ranking is a pure function of its input."""

from __future__ import annotations

import json
import math
import random
from functools import cache
from typing import Any

import pytest

from gradcheck_cli import scan
from gradcheck_cli.analyse.cause_fixes import Fix
from gradcheck_cli.analyse.fixes import candidates, rank, recommend, resolve, to_recommendation
from gradcheck_cli.report.evidence import (
    RECORDS,
    DivergenceEvidence,
    InitScaleEvidence,
    LayerNumbers,
    Margin,
    NonfiniteEvidence,
    RecurrentWeightNumbers,
    StackRun,
    StatusEvidence,
    ThroughTimeEvidence,
)
from gradcheck_cli.report.parameters import (
    ClipParameters,
    GatedRnnParameters,
    GuardParameters,
    InitParameters,
    LayerInit,
    LowerLrParameters,
    NormalizationParameters,
    SwapActivationParameters,
)
from gradcheck_cli.report.records import Finding, FindingKind, RecommendationId, Report, Severity

R = RecommendationId
SCANS: dict[str, dict[str, Any]] = {
    "relu-normal-init": {"batches": 1}, "deep-sigmoid": {"batches": 1}, "tanh-tiny-init": {"batches": 1},
    "rnn-long": {"batches": 1}, "cnn-plain-deep": {"batches": 1}, "nan-log": {"batches": 1},
    "relu-he": {"batches": 2, "steps": 3, "lr": 10.0},
}


@cache
def _report(name: str) -> Report:
    return scan(f"builtin:{name}", **SCANS[name])


def _rec(report: Report, rid: RecommendationId) -> Any:
    return next(r for r in report.recommendations if r.id == rid)


@pytest.mark.parametrize("name", SCANS)
def test_every_recommendation_carries_parameters_its_snippet_is_rendered_from(name: str) -> None:
    report = _report(name)
    assert report.recommendations
    for rec in report.recommendations:
        assert rec.parameters is not None, rec.id
        assert rec.code == rec.parameters.snippet()
        json.dumps(rec.parameters.as_dict())  # plain data, ready for a JSON document


def test_init_parameters_are_the_init_scale_target_std_per_layer() -> None:
    report = _report("relu-normal-init")
    targets = {f.layer: f.evidence for f in report.findings if isinstance(f.evidence, InitScaleEvidence)}
    assert targets
    for rid in (R.HE_INIT, R.XAVIER_INIT):
        params = _rec(report, rid).parameters
        assert isinstance(params, InitParameters)
        assert tuple(c.layer for c in params.layers) == _rec(report, rid).layers
        for change in params.layers:
            assert change.scheme == targets[change.layer].scheme
            assert change.std == targets[change.layer].target_std
            assert f'"{change.layer}": {change.std:.4g},' in _rec(report, rid).code
    he = _rec(report, R.HE_INIT).parameters
    assert all(math.isclose(c.std, math.sqrt(2 / (targets[c.layer].fan_in or 0))) for c in he.layers)


def test_clip_and_lower_lr_parameters_are_the_numbers_of_the_snippet() -> None:
    report = _report("relu-normal-init")
    clip, lower = _rec(report, R.CLIP_GRADIENTS), _rec(report, R.LOWER_LR)
    assert isinstance(clip.parameters, ClipParameters) and clip.parameters.max_norm > 0
    shown = f"max_norm={clip.parameters.max_norm:g}"
    assert f"{shown})" in clip.code and f"{shown} " in clip.why
    assert isinstance(lower.parameters, LowerLrParameters) and lower.parameters.lr is not None
    assert f"lr={lower.parameters.lr:g})" in lower.code


def test_divergence_lower_lr_is_the_suggested_rate_with_the_optimizer() -> None:
    report = _report("relu-he")
    divergence = next(f.evidence for f in report.findings if f.kind == FindingKind.DIVERGENCE)
    assert isinstance(divergence, DivergenceEvidence)
    lower = _rec(report, R.LOWER_LR).parameters
    assert lower == LowerLrParameters(divergence.suggested_lr, optimizer="SGD")
    assert divergence.initial_grad_norm is not None
    assert _rec(report, R.CLIP_GRADIENTS).parameters == ClipParameters(float(f"{divergence.initial_grad_norm:.1g}"))


def test_activation_rnn_structure_and_guard_parameters() -> None:
    swap = _rec(_report("deep-sigmoid"), R.SWAP_ACTIVATION).parameters
    assert isinstance(swap, SwapActivationParameters) and swap.swaps
    assert {(s.replaces, s.use) for s in swap.swaps} == {("Sigmoid", "nn.ReLU()")}
    assert [s.layer for s in swap.swaps] == list(_rec(_report("deep-sigmoid"), R.SWAP_ACTIVATION).layers)
    gated = _rec(_report("rnn-long"), R.GATED_RNN).parameters
    assert gated == GatedRnnParameters(("rnn",), in_loop=False) and gated.use == "LSTM"
    norm = _rec(_report("cnn-plain-deep"), R.ADD_NORMALIZATION)
    assert norm.parameters == NormalizationParameters(norm.layers, "BatchNorm2d", "channels")
    guard = _rec(_report("nan-log"), R.GUARD_NONFINITE)
    assert isinstance(guard.parameters, GuardParameters)
    assert (guard.parameters.op, guard.parameters.guard, guard.parameters.bound) == ("log", "log", 1e-6)
    assert guard.parameters.module == guard.layers[0]
    assert "clamp_min(1e-6)" in guard.code


# ---------------------------------------------------------------------------------------- ranking

@pytest.mark.parametrize("name", ["relu-normal-init", "deep-sigmoid", "relu-he"])
def test_ranking_is_a_pure_function_of_its_input(name: str) -> None:
    report = _report(name)
    recs = list(report.recommendations)
    for seed in range(5):
        shuffled = recs[:]
        random.Random(seed).shuffle(shuffled)
        assert rank(shuffled, report.findings) == tuple(recs)
        findings = list(report.findings)
        random.Random(seed).shuffle(findings)
        assert rank(shuffled, findings) == tuple(recs)


def test_resolve_keeps_the_most_specific_source_whatever_the_order() -> None:
    generic = Fix(R.CLIP_GRADIENTS, ("a",), "generic", ClipParameters(8.0))
    measured = Fix(R.CLIP_GRADIENTS, (), "measured on the steps", ClipParameters(3.0))
    init = Fix(R.HE_INIT, ("a",), "init", InitParameters((LayerInit("a", "he", 0.17),)))
    tagged = [("explosion", generic), ("divergence", measured), ("init", init)]
    for seed in range(4):
        random.Random(seed).shuffle(tagged)
        assert {f.id: f for f in resolve(tagged)} == {R.CLIP_GRADIENTS: measured, R.HE_INIT: init}


def test_candidates_of_a_diverging_run_resolve_to_the_divergence_fixes() -> None:
    report = _report("relu-he")
    tagged = candidates(report.findings, [], has_normalization=False)
    assert {source for source, _ in tagged} == {"nonfinite", "divergence"}  # the loss ends NaN
    chosen = resolve(tagged)
    assert {fix.id for fix in chosen} == {R.CLIP_GRADIENTS, R.LOWER_LR}
    assert all(any(source == "divergence" and fix is f for source, fix in tagged) for f in chosen)
    assert [to_recommendation(f) for f in rank_ids(resolve(tagged), report)] == list(report.recommendations)


def rank_ids(fixes: list[Fix], report: Report) -> list[Fix]:
    order = [r.id for r in rank([to_recommendation(f) for f in fixes], report.findings)]
    return sorted(fixes, key=lambda f: order.index(f.id))


def test_init_scale_puts_the_init_fix_before_clip_and_lower_lr() -> None:
    ids = [r.id for r in _report("relu-normal-init").recommendations]
    assert ids.index(R.HE_INIT) < ids.index(R.CLIP_GRADIENTS) < ids.index(R.LOWER_LR)
    no_init = [f for f in _report("relu-normal-init").findings if f.kind != FindingKind.INIT_SCALE]
    reranked = [r.id for r in rank(_report("relu-normal-init").recommendations, no_init)]
    assert reranked.index(R.CLIP_GRADIENTS) < reranked.index(R.HE_INIT)


def test_recommend_without_findings_is_empty() -> None:
    assert recommend([], [], has_normalization=False) == []


# ------------------------------------------------------------------------------- typed evidence

def test_every_finding_of_a_scan_has_a_typed_record_whose_dict_is_its_json() -> None:
    for name in SCANS:
        report = _report(name)
        for finding, written in zip(report.findings, report.to_dict()["findings"]):
            assert isinstance(finding.evidence, RECORDS[finding.kind]), finding.kind
            assert list(written["evidence"]) == list(finding.evidence.as_dict())


def test_optional_parts_are_left_out_and_flags_written_as_0_or_1() -> None:
    numbers = LayerNumbers(1.0, 2.0, 0.5, 0.1)
    assert StatusEvidence(numbers).as_dict() == {"grad_norm": 1.0, "weight_norm": 2.0, "grad_to_weight": 0.5,
                                                 "grad_rms": 0.1}
    run = StackRun("gradient", "decay", 0.5, 0.06, 5, "a", "e", stack_normalized=False,
                   stack_residual=True, stack_plain=False)
    full = StatusEvidence(LayerNumbers(None, 2.0, None, None, activation_rms=3.0), stack=run, margin=Margin(1.5))
    assert list(full) == ["grad_norm", "weight_norm", "grad_to_weight", "grad_rms", "activation_rms",
                          *(f"stack_{k}" for k in ("signal", "trend", "gain_per_layer", "total", "layers",
                                                   "first", "last", "normalized", "residual", "plain")),
                          "margin"]
    assert (full["grad_norm"], full["stack_residual"], full["stack_plain"]) == (None, 1, 0)
    assert NonfiniteEvidence(0, 0, 2, (), 0).as_dict() == {
        "nonfinite_grads": 0, "params": 0, "nonfinite_losses": 2, "affected_layers": "", "affected_count": 0,
        "origin": None, "cause": "unknown"}


def test_recurrent_weights_expand_into_named_keys() -> None:
    ev = ThroughTimeEvidence(LayerNumbers(1.0, 1.0, 1.0, 1.0), 3, False, "last", 1e-6, 1.0, 1e-6, 1e-3,
                             effective_horizon=2, weights=(RecurrentWeightNumbers("weight_hh_l0", None, 0.5, 1.0),))
    tail = list(ev.as_dict().items())[-4:]
    assert tail == [("effective_horizon", 2), ("weight_hh_l0.spectral_radius", None),
                    ("weight_hh_l0.largest_singular_value", 0.5), ("weight_hh_l0.bound", 1.0)]


def test_a_finding_read_back_from_json_keeps_its_plain_evidence() -> None:
    finding = Finding(FindingKind.VANISHING, "a", Severity.WARNING, "m", {"grad_norm": 1.0})
    assert recommend([finding], [], has_normalization=False) == []  # no typed evidence, nothing inferred


def test_the_mapping_view_of_evidence_is_the_records_own_json_form() -> None:
    """Renderers and Report.to_dict read evidence through the Mapping; a record whose JSON form is
    not its fields (NonfiniteEvidence joins affected_layers) must read the same through it. A NaN
    born in the loss affects no layer: affected_layers is "" and stays in the JSON."""
    evidence = NonfiniteEvidence(nonfinite_grads=0, params=0, nonfinite_losses=3, affected_layers=(),
                                 affected_count=0)
    assert dict(evidence.items()) == evidence.as_dict()
    assert evidence["affected_layers"] == "" and list(evidence)[:4] == [
        "nonfinite_grads", "params", "nonfinite_losses", "affected_layers"]
