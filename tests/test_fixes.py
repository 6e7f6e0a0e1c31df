"""The recommendation catalogue: every fix is justified by a finding and quotes derived numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest
from stats_factory import layer_stats, with_values

from gradcheck_cli.analyse.checks import CHECKS
from gradcheck_cli.analyse.checks.parts import layer_numbers
from gradcheck_cli.analyse.fixes import RANK, TITLES, recommend
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.report.evidence import NonfiniteEvidence, OriginFacts, StackRun, StatusEvidence
from gradcheck_cli.report.records import Finding, FindingKind, RecommendationId, Severity


def _layer(name: str, *, gtw: float = 0.5, function: str = "ReLU", fan_in: int = 64,
           weight_std: float = math.sqrt(2 / 64), type_name: str = "Linear") -> LayerStats:
    return layer_stats(
        name=name, type_name=type_name, index=0, params=4096, role="dense", fan_in=fan_in,
        weight_std=weight_std, trainable=True, received=True, grad_norm=gtw * 8.0, weight_norm=8.0,
        grad_to_weight=gtw, grad_rms=gtw / 8, nonfinite_grads=0, output_rms=1.0, output_grad_rms=1e-3,
        output_nonfinite=False, activation={"function": function} if function else {})


def _finding(kind: FindingKind, layer: str | None) -> Finding:
    return Finding(kind, layer, Severity.ERROR, "m", {})


def test_every_recommendation_id_has_a_title_and_a_rank() -> None:
    assert set(TITLES) == set(RecommendationId)
    assert sorted(RANK, key=lambda r: r.value) == sorted(RecommendationId, key=lambda r: r.value)


def test_registered_checks_are_known_finding_kinds() -> None:
    assert {FindingKind.VANISHING, FindingKind.EXPLODING, FindingKind.NONFINITE,
            FindingKind.NONFINITE_INPUT} <= set(CHECKS)


def test_no_finding_no_recommendation() -> None:
    assert recommend([], [_layer("a"), _layer("b")], has_normalization=False) == []


def test_oversized_relu_init_gets_he_init_clip_and_lr_with_derived_numbers() -> None:
    big = [_layer(f"l{i}", gtw=5e4, weight_std=1.0) for i in range(3)]
    healthy = _layer("head", gtw=0.5, function="")
    recs = recommend([_finding(FindingKind.EXPLODING, x.name) for x in big], [*big, healthy], False)
    by_id = {r.id: r for r in recs}
    assert [r.id for r in recs][:2] == [RecommendationId.CLIP_GRADIENTS, RecommendationId.LOWER_LR]
    assert RecommendationId.HE_INIT in by_id and RecommendationId.XAVIER_INIT not in by_id
    assert by_id[RecommendationId.HE_INIT].layers == ("l0", "l1", "l2")
    # max_norm: twice the total norm of the healthy layers (4.0), one significant digit
    assert "max_norm=8" in by_id[RecommendationId.CLIP_GRADIENTS].code
    # lr bringing the largest update ratio (lr * 5e4) to 1e-3
    assert "lr=2e-08" in by_id[RecommendationId.LOWER_LR].code


def test_sigmoid_vanishing_gets_swap_activation_and_tiny_tanh_init_gets_xavier() -> None:
    sig = [_layer(f"s{i}", gtw=1e-9, function="Sigmoid") for i in range(3)]
    recs = recommend([_finding(FindingKind.VANISHING, x.name) for x in sig], sig, False)
    assert RecommendationId.SWAP_ACTIVATION in [r.id for r in recs]
    tiny = [_layer(f"t{i}", gtw=1e-9, function="Tanh", weight_std=0.01) for i in range(3)]
    tiny = [with_values(x, activation={"function": "Tanh", "saturated_fraction": 0.0}) for x in tiny]
    ids = [r.id for r in recommend([_finding(FindingKind.VANISHING, x.name) for x in tiny], tiny, False)]
    assert RecommendationId.XAVIER_INIT in ids
    assert RecommendationId.SWAP_ACTIVATION not in ids  # unsaturated tanh is not the cause


def test_normalization_is_not_recommended_to_a_normalized_model() -> None:
    stack = [_layer(f"l{i}", gtw=1e-9) for i in range(4)]
    run = StackRun(stack_signal="gradient", stack_trend="decay", stack_gain_per_layer=0.1,
                   stack_total=1e-3, stack_layers=4, stack_first="l0", stack_last="l3",
                   stack_normalized=False, stack_residual=False, stack_plain=True)
    findings = [Finding(FindingKind.VANISHING, x.name, Severity.WARNING, "m",
                        StatusEvidence(layer_numbers(x), stack=run)) for x in stack]
    assert RecommendationId.ADD_NORMALIZATION in [r.id for r in recommend(findings, stack, False)]
    assert RecommendationId.ADD_NORMALIZATION not in [r.id for r in recommend(findings, stack, True)]
    # Without a measured geometric run (stack_* evidence) neither structural fix is offered.
    bare = [_finding(FindingKind.VANISHING, x.name) for x in stack]
    ids = [r.id for r in recommend(bare, stack, False)]
    assert RecommendationId.ADD_NORMALIZATION not in ids and RecommendationId.ADD_SKIP not in ids


def test_vanilla_rnn_gets_gated_rnn() -> None:
    rnn = with_values(_layer("rnn", function="", type_name="RNN"), step_grad_rms=(1e-9, 1e-3, 1.0))
    recs = recommend([_finding(FindingKind.VANISHING_THROUGH_TIME, "rnn")], [rnn], False)
    gated = [r for r in recs if r.id == RecommendationId.GATED_RNN]
    assert gated and gated[0].layers == ("rnn",) and "1e-09" in gated[0].why
    # An RNN vanishing for another reason (e.g. a tiny init) is not told to become an LSTM.
    recs = recommend([_finding(FindingKind.VANISHING, "rnn")], [rnn], False)
    assert RecommendationId.GATED_RNN not in [r.id for r in recs]


def test_rnn_exploding_through_time_gets_clip_gradients_with_a_max_norm() -> None:
    rnn = with_values(_layer("rnn", gtw=30.0, function="", type_name="RNN"), step_grad_rms=(5e3, 10.0, 1.0))
    head = _layer("head", gtw=0.5, function="")  # grad norm 4.0
    recs = recommend([_finding(FindingKind.EXPLODING_THROUGH_TIME, "rnn")], [rnn, head], False)
    clip = next(r for r in recs if r.id == RecommendationId.CLIP_GRADIENTS)
    assert clip.layers == ("rnn",) and "max_norm=8" in clip.code and "5e+03x" in clip.why


def test_nan_input_gets_check_inputs_and_unsafe_op_gets_guard() -> None:
    recs = recommend([_finding(FindingKind.NONFINITE_INPUT, None)], [_layer("a")], False)
    assert [r.id for r in recs] == [RecommendationId.CHECK_INPUTS]
    origin = Finding(FindingKind.NONFINITE, "a", Severity.ERROR, "m", NonfiniteEvidence(
        0, 0, 0, ("a",), 1, OriginFacts("log", "", "", "forward", "unsafe-op", None, 1.0, "nan")))
    recs = recommend([origin], [_layer("a")], False)
    assert [r.id for r in recs] == [RecommendationId.GUARD_NONFINITE] and recs[0].layers == ("log",)


@pytest.mark.parametrize(("builtin", "options"), [
    ("relu-normal-init", {}), ("deep-sigmoid", {}), ("tanh-tiny-init", {}), ("rnn-long", {}),
    ("cnn-plain-deep", {}), ("nan-log", {}), ("relu-he", {"batches": 2, "steps": 3, "lr": 10.0}),
])
def test_every_snippet_is_python_that_fits_a_terminal(builtin: str, options: dict[str, Any]) -> None:
    """Snippets are pasted as they are: they must parse, and fit an 80-column table (4 of indent)."""
    from gradcheck_cli import scan

    report = scan(f"builtin:{builtin}", **({"batches": 1} | options))
    assert report.recommendations
    for rec in report.recommendations:
        compile(rec.code, f"<{rec.id.value}>", "exec")
        assert max(len(line) for line in rec.code.splitlines()) <= 76, rec.code
