"""Each classification rule, pinned on hand-built statistics (no torch)."""

from __future__ import annotations

from stats_factory import layer_stats, with_values

from gradcheck_cli.analyse.classify import classify_layers, verdict
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import Status

T = Thresholds()


def _layer(name: str, gtw: float | None, *, role: str = "dense", type_name: str = "Linear",
           params: int = 1024, og: float | None = 1e-3, steps: tuple[float, ...] = ()) -> LayerStats:
    weight_norm = 10.0
    grad_norm = None if gtw is None else gtw * weight_norm
    return layer_stats(
        name=name, type_name=type_name, index=0, params=params, role=role, fan_in=32, weight_std=0.1,
        trainable=True, received=True, grad_norm=grad_norm, weight_norm=weight_norm, grad_to_weight=gtw,
        grad_rms=None if grad_norm is None else grad_norm / params ** 0.5, nonfinite_grads=0,
        output_rms=1.0, output_grad_rms=og, output_nonfinite=False, step_grad_rms=steps)


def _statuses(layers: list[LayerStats]) -> list[Status]:
    return [v.status for v in classify_layers(layers, T)]


def test_geometric_decay_from_the_output_is_vanishing() -> None:
    # grad/weight shrinks 10x per layer towards the input: the first three are < 1e-3 of the best
    layers = [_layer(f"l{i}", 10.0 ** (i - 5)) for i in range(6)]
    assert _statuses(layers) == [Status.VANISHING] * 2 + [Status.HEALTHY] * 4


def test_a_side_branch_dip_is_not_vanishing() -> None:
    # an attention gate with a small gradient while the layers before it learn well
    layers = [_layer("enc", 0.03), _layer("gate", 3e-5), _layer("head", 0.4)]
    assert _statuses(layers) == [Status.HEALTHY] * 3


def test_uniformly_tiny_gradients_are_vanishing() -> None:
    layers = [_layer(f"l{i}", 1e-8) for i in range(4)]
    assert _statuses(layers) == [Status.VANISHING] * 4


def test_huge_grad_to_weight_is_exploding() -> None:
    layers = [_layer("a", 5e3), _layer("b", 0.5)]
    assert _statuses(layers) == [Status.EXPLODING, Status.HEALTHY]
    assert verdict(_statuses(layers)) == Status.EXPLODING


def test_growth_through_a_stack_of_identical_layers_is_exploding() -> None:
    layers = [_layer(f"l{i}", 0.5, og=10.0 ** (3 - i)) for i in range(4)]  # 1000x growth back
    assert _statuses(layers) == [Status.EXPLODING, Status.EXPLODING, Status.HEALTHY, Status.HEALTHY]


def test_growth_needs_a_stack_and_like_layers() -> None:
    # three layers are no stack; a head of another size is not compared
    short = [_layer(f"l{i}", 0.5, og=10.0 ** (3 - i)) for i in range(3)]
    mixed = [_layer("l0", 0.5, og=1e3), _layer("l1", 0.5, og=1e2, params=99),
             _layer("l2", 0.5, og=10.0, params=77), _layer("head", 0.5, og=1e-3, params=10)]
    assert _statuses(short) == [Status.HEALTHY] * 3
    assert _statuses(mixed) == [Status.HEALTHY] * 4


def test_normalization_and_embedding_are_not_judged_relatively() -> None:
    layers = [_layer("emb", 1e-6, role="embedding", type_name="Embedding"),
              _layer("ln", 1e-6, role="normalization", type_name="LayerNorm"),
              _layer("fc", 1e-6), _layer("head", 0.9)]
    assert _statuses(layers) == [Status.HEALTHY, Status.HEALTHY, Status.VANISHING, Status.HEALTHY]


def test_zero_weights_have_no_ratio_and_use_the_gradient_floor() -> None:
    zero_head = with_values(_layer("head", None), grad_norm=0.5, grad_rms=0.5 / 32)
    dead = with_values(_layer("dead", None), grad_norm=1e-9, grad_rms=1e-9 / 32)
    assert _statuses([_layer("fc", 0.3), zero_head, dead]) == [Status.HEALTHY, Status.HEALTHY,
                                                               Status.VANISHING]


def test_frozen_unused_and_nonfinite() -> None:
    frozen = with_values(_layer("f", None), trainable=False, received=False)
    unused = with_values(_layer("u", None), received=False)
    nan = with_values(_layer("n", float("nan")), grad_norm=float("nan"), nonfinite_grads=3)
    statuses = _statuses([frozen, unused, nan, _layer("ok", 0.3)])
    assert statuses == [Status.FROZEN, Status.UNUSED, Status.NONFINITE, Status.HEALTHY]
    assert verdict(statuses) == Status.NONFINITE
    assert verdict([Status.FROZEN, Status.UNUSED, Status.HEALTHY]) == Status.HEALTHY


def test_through_time_vanilla_rnn_vanishes_gated_cells_do_not() -> None:
    decaying = tuple(0.5 ** (20 - t) for t in range(20))  # 1e-6 at the first step
    rnn = _layer("rnn", 0.2, type_name="RNN", steps=decaying)
    lstm = _layer("lstm", 0.2, type_name="LSTM", steps=decaying)
    assert _statuses([rnn, _layer("head", 0.3)])[0] == Status.VANISHING
    assert _statuses([lstm, _layer("head", 0.3)])[0] == Status.HEALTHY


def test_through_time_growth_is_exploding_for_any_recurrent_layer() -> None:
    growing = tuple(2.0 ** (10 - t) for t in range(10))  # the first step gets 512x the last
    for type_name in ("RNN", "LSTM", "GRU"):
        layer = _layer("rnn", 0.2, type_name=type_name, steps=growing)
        assert _statuses([layer, _layer("head", 0.3)])[0] == Status.EXPLODING
