"""Theory tests: the numbers gradcheck reports agree with the formulas of the literature.

Each test builds a network for which the gradient's behaviour is known in closed form (or in the
mean-field limit), scans it, and compares the numbers in the report (layer `output_grad_rms`,
`grad_norm`, the through-time evidence) with the formula, within a stated tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.report.records import Finding, FindingKind, LayerReport, Report
from gradcheck_cli.target.resolve import Target

WIDTH, DEPTH = 256, 10


def _target(build: Callable[[], nn.Module], make_batch: Callable[[int], object],
            loss_fn: Callable[..., torch.Tensor] = nn.functional.cross_entropy) -> Target:
    def seeded() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return Target("theory-model", seeded, make_batch, loss_fn)


def _wide_layers(report: Report) -> list[LayerReport]:
    """The hidden WIDTH x WIDTH layers, in execution order."""
    return sorted((x for x in report.layers if x.params in (WIDTH * WIDTH, WIDTH * WIDTH + WIDTH)),
                  key=lambda x: x.index)


def _per_layer_factor(layers: list[LayerReport]) -> float:
    """Geometric mean, over consecutive layers, of output-gradient RMS(layer) / RMS(next layer)."""
    og = [float(x.activation["output_grad_rms"]) for x in layers]  # type: ignore[arg-type]
    return (og[0] / og[-1]) ** (1.0 / (len(og) - 1))


def _relu_mlp(weight_variance: Callable[[int], float]) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(DEPTH):
        linear = nn.Linear(WIDTH, WIDTH)
        nn.init.normal_(linear.weight, 0.0, math.sqrt(weight_variance(WIDTH)))
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 10))


def _mlp_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, WIDTH), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("variance,factor", [
    (lambda n: 1.0 / n, 2 ** -0.5),  # LeCun / "Xavier for ReLU": half the variance lost per layer
    (lambda n: 2.0 / n, 1.0),        # He et al. 2015: variance preserved
], ids=["var-1-over-fan-in", "he-2-over-fan-in"])
def test_relu_mlp_output_gradient_changes_by_the_he_factor_per_layer(
        variance: Callable[[int], float], factor: float) -> None:
    """He et al. 2015, eq. (13): backwards, Var[delta_{l-1}] = (n/2) Var[w] Var[delta_l] for ReLU
    layers of width n, so with Var[w] = 1/n the output-gradient norm shrinks by 2^(-1/2) per layer
    going towards the input, and with Var[w] = 2/n it is preserved. Tolerance 5%: the law holds in
    the mean-field limit; at width 256 and 3 x 16 samples the geometric mean over 9 layer pairs
    fluctuates by a few percent."""
    report = scan(_target(lambda: _relu_mlp(variance), _mlp_batch))
    layers = _wide_layers(report)
    assert len(layers) == DEPTH
    assert _per_layer_factor(layers) == pytest.approx(factor, rel=0.05)


@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_orthogonal_linear_chain_keeps_every_gradient_norm(gain: float) -> None:
    """Saxe, McClelland & Ganguli 2014: with orthogonal weights (times `gain`) and no
    nonlinearity, delta_{l-1} = gain * Q^T delta_l, so the output-gradient norm changes by exactly
    `gain` per layer (1: kept). The weight gradients dW_{l-1} = Q_l^T dW_l Q_{l-1} have exactly
    equal Frobenius norms for any gain. Tolerance 1e-4 (float32 rounding)."""
    def build() -> nn.Module:
        layers = [nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)]
        for layer in layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
        return nn.Sequential(*layers)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, WIDTH), torch.randn(n, WIDTH)

    report = scan(_target(build, batch, nn.functional.mse_loss))
    layers = _wide_layers(report)
    og = [float(x.activation["output_grad_rms"]) for x in layers]  # type: ignore[arg-type]
    for earlier, later in zip(og, og[1:]):
        assert earlier / later == pytest.approx(gain, rel=1e-4)
    norms = [x.grad_norm for x in layers]
    assert all(n == pytest.approx(norms[0], rel=1e-4) for n in norms)


# ---------------------------------------------------------------------------------- through time

STEPS, FEATURES, HIDDEN = 40, 4, 16


class PositiveIRNN(nn.Module):
    """A ReLU RNN with W_hh = a * I (Le, Jaitly & Hinton 2015), positive inputs, weights and bias:
    every unit is active at every step, so relu' = 1 and the recurrence is linear."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.rnn = nn.RNN(FEATURES, HIDDEN, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)
        with torch.no_grad():
            self.rnn.get_parameter("weight_hh_l0").copy_(a * torch.eye(HIDDEN))
            self.rnn.get_parameter("weight_ih_l0").uniform_(0.0, 0.1)
            self.rnn.get_parameter("bias_ih_l0").fill_(0.1)
            self.rnn.get_parameter("bias_hh_l0").zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _positive_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, STEPS, FEATURES), torch.randint(0, 3, (n,))


def _finding(report: Report, kind: FindingKind) -> Finding:
    (found,) = [f for f in report.findings if f.kind == kind and f.layer == "rnn"]
    return found


@pytest.mark.parametrize("a", [0.8, 1.0, 1.2])
def test_linear_recurrence_changes_the_gradient_by_exactly_a_per_step(a: float) -> None:
    """With the loss on the last step only, dL/dh_t = (W_hh^T)^(T-t) dL/dh_T = a^(T-t) dL/dh_T and
    dL/dx_t = W_ih^T dL/dh_t: the per-step gradient changes by exactly `a` per step, the first
    step gets a^(T-1) of the last, and the effective horizon is the smallest k with a^k < 1e-3.
    a < 1 is vanishing through time, a > 1 exploding (Pascanu et al. 2013, with gamma = 1 and
    sigma_max = spectral radius = a). Tolerance 1e-4 on the factor (float32 rounding)."""
    report = scan(_target(lambda: PositiveIRNN(a), _positive_batch))
    rnn = next(x for x in report.layers if x.name == "rnn")
    expected_ratio = a ** (STEPS - 1)
    if a == 1.0:
        assert rnn.status.value == "healthy"
        assert not [f for f in report.findings if f.layer == "rnn"]
        return
    kind = FindingKind.VANISHING_THROUGH_TIME if a < 1 else FindingKind.EXPLODING_THROUGH_TIME
    ev = _finding(report, kind).evidence
    assert ev["per_step_factor"] == pytest.approx(a, rel=1e-4)
    assert ev["far_over_near"] == pytest.approx(expected_ratio, rel=1e-3)
    assert ev["weight_hh_l0.spectral_radius"] == pytest.approx(a, rel=1e-6)
    assert ev["weight_hh_l0.largest_singular_value"] == pytest.approx(a, rel=1e-6)
    if a < 1:
        assert ev["effective_horizon"] == math.ceil(math.log(1e-3) / math.log(a))  # 31 for 0.8
    else:
        assert ev["effective_horizon"] == "all"


def test_tanh_rnn_with_spectral_norm_below_one_vanishes_at_least_that_fast() -> None:
    """Pascanu et al. 2013, section 3.2: tanh' <= 1, so ||dL/dh_t|| <= sigma_max(W_hh)^(T-t)
    ||dL/dh_T||; with sigma_max = 0.5 < 1/gamma = 1 the gradient must vanish through time. The
    measured per-step factor (far/near)^(1/(T-1)) must be at most 0.5; tolerance 10% for the
    constant factors W_ih and tanh' at the two ends (a factor C contributes C^(1/39))."""
    def build() -> nn.Module:
        model = PositiveIRNN(1.0)
        model.rnn = nn.RNN(FEATURES, HIDDEN, batch_first=True)  # tanh, default init
        with torch.no_grad():
            w = model.rnn.get_parameter("weight_hh_l0")
            w.mul_(0.5 / torch.linalg.matrix_norm(w, ord=2))
        return model

    report = scan(_target(build, lambda n: (torch.randn(n, STEPS, FEATURES), torch.randint(0, 3, (n,)))))
    ev = _finding(report, FindingKind.VANISHING_THROUGH_TIME).evidence
    assert ev["weight_hh_l0.largest_singular_value"] == pytest.approx(0.5, rel=1e-5)
    assert float(ev["weight_hh_l0.largest_singular_value"]) < float(ev["weight_hh_l0.bound"])  # type: ignore[arg-type]
    assert float(ev["per_step_factor"]) <= 0.5 * 1.1  # type: ignore[arg-type]
    assert int(ev["effective_horizon"]) <= math.ceil(math.log(1e-3) / math.log(0.5)) + 3  # type: ignore[arg-type]
