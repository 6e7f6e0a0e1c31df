"""The structural appliers (verify/appliers: he-init, xavier-init, swap-activation, add-normalization,
add-skip, gated-rnn) and measure/shapes.py, each against a twin written by hand with plain autograd.

Every applier gets a deep copy; the model it was copied from (the "original") must come back
unchanged. The activation sites an applier reads are those a real probe measured (run_probe).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli.analyse.pipeline import analyse
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.measure.shapes import measure_shapes
from gradcheck_cli.report.parameters import (
    ActivationSwap,
    GatedRnnParameters,
    InitParameters,
    LayerInit,
    NormalizationParameters,
    Parameters,
    SkipParameters,
    SwapActivationParameters,
)
from gradcheck_cli.report.records import Recommendation, RecommendationId, Report
from gradcheck_cli.verify.applier import ApplyContext, Patch
from gradcheck_cli.verify.appliers import APPLIERS

R = RecommendationId
M = TypeVar("M", bound=nn.Module)
SEED = 7
BATCH = 16


def _batch(in_shape: tuple[int, ...], classes: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    def make(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, *in_shape), torch.randint(0, classes, (batch_size,))
    return make


def _probe(model: nn.Module, in_shape: tuple[int, ...], classes: int) -> tuple[Measurements, Report]:
    config = ScanConfig(batches=1, batch_size=BATCH)
    measurements = run_probe(model, _batch(in_shape, classes), F.cross_entropy, config)
    return measurements, analyse(measurements, config, Thresholds(), target="test")


def _apply(model: M, rid: RecommendationId, parameters: Parameters, inputs: torch.Tensor,
           in_shape: tuple[int, ...] = (8,), classes: int = 2) -> tuple[M, Patch]:
    """Probe `model`, apply the recommendation to a deep copy, check the original is unchanged;
    return the patched copy and the patch."""
    measurements, report = _probe(model, in_shape, classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = [(n, type(m)) for n, m in model.named_modules()]
    recommendation = Recommendation(rid, rid.value, (), "test", "", parameters)
    copied = copy.deepcopy(model)
    patch = APPLIERS[rid](ApplyContext(copied, recommendation, report, measurements, ScanConfig(),
                                      lambda: inputs, seed=SEED))
    assert [(n, type(m)) for n, m in model.named_modules()] == structure
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert copied is not model
    return copied, patch


def _grads(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plain autograd: cross-entropy of the output, loss.backward(), each parameter's gradient."""
    model.zero_grad()
    F.cross_entropy(model(inputs), target).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _seeded(build: Callable[[], M]) -> M:
    torch.manual_seed(0)
    return build()


def _mlp(act: type[nn.Module], width: int = 8, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 2))


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _inputs(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    return torch.randn(*shape, generator=generator), torch.randint(0, 2, (shape[0],), generator=generator)


# --- he-init / xavier-init ---------------------------------------------------------------------

def test_he_init_draws_the_recommended_std_and_matches_a_hand_initialised_twin() -> None:
    # Plain autograd: Linear(64, 64) weights N(0, 1) (exploding with ReLU), He std sqrt(2 / 64).
    model = _seeded(lambda: _mlp(nn.ReLU, width=64))
    for name in ("0", "2"):
        nn.init.normal_(_linear(model, name).weight)
    std = math.sqrt(2 / 64)
    inputs, target = _inputs(BATCH, 64)
    twin = copy.deepcopy(model)
    copied, patch = _apply(model, R.HE_INIT, InitParameters((LayerInit("0", "he", std), LayerInit("2", "he", std))),
                           inputs, in_shape=(64,))
    assert patch.applied and "re-initialised 2 layers" in patch.reason and "0 std 0.177" in patch.reason
    for name in ("0", "2"):
        weight = _linear(copied, name).weight
        # The sample std of 4096 normal draws is within 4 standard errors std / sqrt(2 n) of std.
        assert abs(float(weight.detach().std()) - std) < 4 * std / math.sqrt(2 * weight.numel())
        assert not _linear(copied, name).bias.any()
    torch.manual_seed(SEED)  # the twin: nn.init.normal_ by hand, in the recommendation's order
    for name in ("0", "2"):
        nn.init.normal_(_linear(twin, name).weight, 0.0, std)
        nn.init.zeros_(_linear(twin, name).bias)
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert got.keys() == want.keys()
    for name in ("0", "2"):
        ratio = got[f"{name}.weight"].norm() / _linear(copied, name).weight.norm()
        assert torch.equal(ratio, want[f"{name}.weight"].norm() / _linear(twin, name).weight.norm())
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_xavier_init_keeps_an_embeddings_padding_row_and_skips_a_recurrent_layer() -> None:
    class Tagger(nn.Module):  # plain autograd: embedding -> RNN -> linear head on the last step
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 8, padding_idx=0)
            self.rnn = nn.RNN(8, 8, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.embed(tokens))[0][:, -1])

    model = _seeded(Tagger)
    tokens = torch.randint(0, 10, (BATCH, 5), generator=torch.Generator().manual_seed(1))
    layers = (LayerInit("embed", "xavier", 0.3), LayerInit("rnn", "xavier", 0.3))
    measurements, report = _probe_tokens(model)
    copied = copy.deepcopy(model)
    patch = APPLIERS[R.XAVIER_INIT](ApplyContext(copied, Recommendation(R.XAVIER_INIT, "", (), "", "",
                                                 InitParameters(layers)), report, measurements,
                                                 ScanConfig(), lambda: tokens, seed=SEED))
    assert patch.applied and "embed std 0.3" in patch.reason
    assert "rnn (RNN) has 2 weight matrices (weight_ih_l0, weight_hh_l0, ...)" in patch.reason
    assert not copied.embed.weight[0].any() and copied.embed.weight[1:].std() > 0.2
    assert torch.equal(copied.rnn.get_parameter("weight_hh_l0"), model.rnn.get_parameter("weight_hh_l0"))


def _probe_tokens(model: nn.Module) -> tuple[Measurements, Report]:
    def make(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, 10, (batch_size, 5)), torch.randint(0, 2, (batch_size,))
    config = ScanConfig(batches=1, batch_size=BATCH)
    measurements = run_probe(model, make, F.cross_entropy, config)
    return measurements, analyse(measurements, config, Thresholds(), target="test")


# --- swap-activation ---------------------------------------------------------------------------

def _he_by_hand(model: nn.Module, names: tuple[str, ...]) -> None:
    torch.manual_seed(SEED)
    for name in names:
        layer = _linear(model, name)
        nn.init.normal_(layer.weight, 0.0, math.sqrt(2 / layer.weight.shape[1]))
        nn.init.zeros_(layer.bias)


def test_swap_activation_modules_equals_a_twin_written_with_relu() -> None:
    # Plain autograd: Linear -> Sigmoid -> Linear -> Sigmoid -> Linear.
    model = _seeded(lambda: _mlp(nn.Sigmoid))
    inputs, target = _inputs(BATCH, 8)
    swaps = tuple(ActivationSwap(n, "Sigmoid", "nn.ReLU()", "depth") for n in ("0", "2"))
    copied, patch = _apply(model, R.SWAP_ACTIVATION, SwapActivationParameters(swaps), inputs)
    assert patch.applied and "0 (Sigmoid -> ReLU)" in patch.reason and "He re-initialised" in patch.reason
    twin = nn.Sequential(model[0], nn.ReLU(), model[2], nn.ReLU(), model[4])
    twin = copy.deepcopy(twin)
    _he_by_hand(twin, ("0", "2"))
    assert [type(m) for m in copied] == [type(m) for m in twin]
    assert torch.equal(copied(inputs), twin(inputs))
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert all(torch.equal(got[k], want[k]) for k in want)


class _Squash(nn.Module):
    """Plain autograd: a parameter-free module that calls torch.sigmoid itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


class _FunctionalNet(nn.Module):
    """Plain autograd: sigmoid called in forward after fc1 (and, inside `squash`, on fc1's output
    too) and after fc2, then a head."""

    def __init__(self, first: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.squash = _Squash()
        self.first = first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.fc1(x)
        return self.head(torch.sigmoid(self.fc2(self.first(a) + self.squash(a))))


def test_swap_activation_rewrites_only_the_functional_call_after_the_named_layer() -> None:
    model = _seeded(_FunctionalNet)
    inputs, target = _inputs(BATCH, 8)
    swap = ActivationSwap("fc1", "Sigmoid", "nn.GELU()", "saturated")
    copied, patch = _apply(model, R.SWAP_ACTIVATION, SwapActivationParameters((swap,)), inputs)
    assert patch.applied and "fc1 (Sigmoid -> GELU)" in patch.reason
    twin = copy.deepcopy(model)
    twin.first = F.gelu  # written by hand: gelu after fc1; squash's own sigmoid and fc2's stay
    _he_by_hand(twin, ("fc1",))
    assert torch.equal(copied(inputs), twin(inputs))
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(copied(inputs), model(inputs))


def test_dead_relu_becomes_leaky_relu_and_keeps_its_weights() -> None:
    # Plain autograd: a bias of -10 keeps the first ReLU's units off (dead).
    model = _seeded(lambda: _mlp(nn.ReLU))
    nn.init.constant_(_linear(model, "0").bias, -10.0)
    inputs, target = _inputs(BATCH, 8)
    swap = ActivationSwap("0", "ReLU", "nn.LeakyReLU(0.01)", "dead")
    copied, patch = _apply(model, R.SWAP_ACTIVATION, SwapActivationParameters((swap,)), inputs)
    assert patch.applied and "He re-initialised" not in patch.reason
    assert isinstance(copied[1], nn.LeakyReLU) and copied[1].negative_slope == 0.01
    assert isinstance(copied[3], nn.ReLU)  # the activation after layer 2 was not named
    twin = nn.Sequential(copy.deepcopy(model[0]), nn.LeakyReLU(0.01), *copy.deepcopy(list(model)[2:]))
    assert torch.equal(copied(inputs), twin(inputs))
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert all(torch.equal(got[k], want[k]) for k in want) and got["0.weight"].abs().sum() > 0


def test_swap_activation_without_an_activation_says_why() -> None:
    model = _seeded(lambda: nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)))  # plain autograd, no activation
    inputs, _ = _inputs(BATCH, 8)
    swap = ActivationSwap("0", "Sigmoid", "nn.ReLU()", "depth")
    copied, patch = _apply(model, R.SWAP_ACTIVATION, SwapActivationParameters((swap,)), inputs)
    assert not patch.applied
    assert patch.reason == "no activation follows 0 in the scan's measurements"
    assert torch.equal(copied(inputs), model(inputs))


# --- add-normalization -------------------------------------------------------------------------

def test_add_normalization_batchnorm1d_after_each_named_layer_keeps_the_names() -> None:
    model = _seeded(lambda: _mlp(nn.Tanh))  # plain autograd: Linear -> Tanh -> Linear -> Tanh -> Linear
    inputs, target = _inputs(BATCH, 8)
    parameters = NormalizationParameters(("0", "2"), "BatchNorm1d", "features")
    copied, patch = _apply(model, R.ADD_NORMALIZATION, parameters, inputs)
    assert patch.applied and "0 -> BatchNorm1d(8), 2 -> BatchNorm1d(8)" in patch.reason and not patch.renamed
    names = [n for n, _ in copied.named_parameters()]
    assert {"0.weight", "2.weight", "0.verify_norm.weight", "2.verify_norm.bias"} <= set(names)
    twin = nn.Sequential(model[0], nn.BatchNorm1d(8), nn.Tanh(), model[2], nn.BatchNorm1d(8), nn.Tanh(), model[4])
    twin = copy.deepcopy(twin)
    assert torch.equal(copied(inputs), twin(inputs))
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert torch.equal(got["2.weight"], want["3.weight"]) and torch.equal(got["0.verify_norm.weight"], want["1.weight"])


class _Conv(nn.Module):
    """Plain autograd: conv (N, 3, 6, 6) -> (N, 4, 6, 6) -> relu -> mean over space -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _Sequence(nn.Module):
    """Plain autograd: a Linear over each position of (N, L, D), tanh, mean over positions, head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)).mean(dim=1))


@pytest.mark.parametrize(("build", "layer", "in_shape", "norm", "expected"), [
    (_Conv, "conv", (3, 6, 6), "BatchNorm2d", nn.BatchNorm2d(4)),
    (_Sequence, "proj", (5, 8), "BatchNorm1d", nn.LayerNorm(6)),  # (N, L, D) from a Linear: LayerNorm(D)
    (_Sequence, "proj", (5, 8), "LayerNorm", nn.LayerNorm(6)),
])
def test_add_normalization_chooses_the_norm_from_the_measured_output_shape(
        build: Callable[[], nn.Module], layer: str, in_shape: tuple[int, ...], norm: str, expected: nn.Module) -> None:
    model = _seeded(build)
    inputs, _ = _inputs(BATCH, *in_shape)
    copied, patch = _apply(model, R.ADD_NORMALIZATION, NormalizationParameters((layer,), norm, "features"),
                           inputs, in_shape=in_shape)
    assert patch.applied
    added = copied.get_submodule(f"{layer}.verify_norm")
    assert type(added) is type(expected) and repr(added) == repr(expected)
    twin = copy.deepcopy(model)
    twin_layer = twin.get_submodule(layer)
    setattr(twin, layer, nn.Sequential(twin_layer, copy.deepcopy(expected)))
    assert torch.equal(copied(inputs), twin(inputs))


# --- add-skip ----------------------------------------------------------------------------------

def test_add_skip_makes_layer_and_activation_residual_where_shapes_match() -> None:
    model = _seeded(lambda: _mlp(nn.Tanh))  # plain autograd: Linear(8, 8) -> Tanh, twice, Linear(8, 2)
    inputs, target = _inputs(BATCH, 8)
    copied, patch = _apply(model, R.ADD_SKIP, SkipParameters(("0", "2", "4")), inputs)
    assert patch.applied and "0 + 1, 2 + 3" in patch.reason
    assert "not applied: 4: input (16, 8) -> output (16, 2), no identity path of that shape" in patch.reason
    assert patch.renamed == {"0": "0.block.0", "2": "2.block.0"}

    def twin(x: torch.Tensor) -> torch.Tensor:  # written by hand: y = x + tanh(W x + b)
        x = x + torch.tanh(model[0](x))
        x = x + torch.tanh(model[2](x))
        return model[4](x)
    assert torch.equal(copied(inputs), twin(inputs))
    got = _grads(copied, inputs, target)
    model.zero_grad()
    F.cross_entropy(twin(inputs), target).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert torch.equal(got["0.block.0.weight"], want["0.weight"]) and torch.equal(got["2.block.0.bias"], want["2.bias"])


def test_add_skip_around_a_layer_alone_when_its_activation_is_functional() -> None:
    class Net(nn.Module):  # plain autograd: relu(fc(x)) in forward, then a head
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.fc(x)))

    model = _seeded(Net)
    inputs, _ = _inputs(BATCH, 8)
    copied, patch = _apply(model, R.ADD_SKIP, SkipParameters(("fc",)), inputs)
    assert patch.applied and patch.renamed == {"fc": "fc.block"}
    assert torch.equal(copied(inputs), model.head(torch.relu(inputs + model.fc(inputs))))


def test_add_skip_not_applicable_names_the_shapes() -> None:
    model = _seeded(lambda: nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)))  # plain autograd
    inputs, _ = _inputs(BATCH, 8)
    copied, patch = _apply(model, R.ADD_SKIP, SkipParameters(("0", "2")), inputs)
    assert not patch.applied
    assert patch.reason == ("0: input (16, 8) -> output (16, 4), no identity path of that shape; "
                            "2: input (16, 4) -> output (16, 2), no identity path of that shape")
    assert torch.equal(copied(inputs), model(inputs))


def test_a_forward_that_fails_on_the_sample_batch_makes_structure_not_applicable() -> None:
    model = _seeded(lambda: _mlp(nn.Tanh))  # plain autograd
    measurements, report = _probe(model, (8,), 2)
    for rid, parameters in ((R.ADD_SKIP, SkipParameters(("0",))),
                            (R.ADD_NORMALIZATION, NormalizationParameters(("0",), "BatchNorm1d", "features"))):
        context = ApplyContext(copy.deepcopy(model), Recommendation(rid, "", (), "", "", parameters), report,
                               measurements, ScanConfig(), lambda: torch.zeros(4, 3), seed=SEED)
        patch = APPLIERS[rid](context)
        assert not patch.applied
        assert patch.reason.startswith("the model's forward failed while measuring its shapes (RuntimeError: ")


# --- gated-rnn ---------------------------------------------------------------------------------

class _Recurrent(nn.Module):
    """Plain autograd: a 2-layer bidirectional nn.RNN over (N, 6, 4), a head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        return self.head(output[:, -1])


class _Loop(nn.Module):
    """Plain autograd: an nn.RNNCell and a hand-written tanh cell, each stepped in a Python loop."""

    def __init__(self) -> None:
        super().__init__()
        self.cell, self.hand = nn.RNNCell(4, 5), nn.Linear(9, 5)
        self.head = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = g = torch.zeros(x.shape[0], 5)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            g = torch.tanh(self.hand(torch.cat([x[:, t], g], dim=1)))
        return self.head(torch.cat([h, g], dim=1))


def test_gated_rnn_is_a_gru_of_the_same_sizes_built_under_the_seed() -> None:
    model = _seeded(_Recurrent)
    inputs, target = _inputs(BATCH, 6, 4)
    copied, patch = _apply(model, R.GATED_RNN, GatedRnnParameters(("rnn",), in_loop=False), inputs, in_shape=(6, 4))
    assert patch.applied and patch.reason == "replaced by a gated layer of the same sizes: rnn (RNN -> GRU)"
    torch.manual_seed(SEED)
    twin = copy.deepcopy(model)
    twin.rnn = nn.GRU(4, 5, num_layers=2, batch_first=True, bidirectional=True)  # type: ignore[assignment]
    assert torch.equal(copied(inputs), twin(inputs))
    got, want = _grads(copied, inputs, target), _grads(twin, inputs, target)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_gated_rnn_swaps_an_rnn_cell_and_says_why_not_for_a_hand_written_cell() -> None:
    model = _seeded(_Loop)
    inputs, _ = _inputs(BATCH, 6, 4)
    copied, patch = _apply(model, R.GATED_RNN, GatedRnnParameters(("cell", "hand"), in_loop=True), inputs,
                           in_shape=(6, 4))
    assert patch.applied and "cell (RNNCell -> GRUCell)" in patch.reason
    assert "not applied: hand is a Linear, not an nn.RNN or nn.RNNCell" in patch.reason
    torch.manual_seed(SEED)
    twin = copy.deepcopy(model)
    twin.cell = nn.GRUCell(4, 5)  # type: ignore[assignment]
    assert torch.equal(copied(inputs), twin(inputs))


# --- several appliers on one copy (the combined verification) ----------------------------------

def test_appliers_after_add_skip_find_the_moved_layers_and_activations() -> None:
    model = _seeded(lambda: _mlp(nn.Sigmoid))  # plain autograd: Linear -> Sigmoid, twice, Linear(8, 2)
    inputs, target = _inputs(BATCH, 8)
    measurements, report = _probe(model, (8,), 2)
    copied = copy.deepcopy(model)
    steps: list[tuple[RecommendationId, Parameters]] = [
        (R.ADD_SKIP, SkipParameters(("0", "2"))),
        (R.SWAP_ACTIVATION, SwapActivationParameters(tuple(ActivationSwap(n, "Sigmoid", "nn.ReLU()", "depth")
                                                           for n in ("0", "2")))),
        (R.ADD_NORMALIZATION, NormalizationParameters(("0", "2"), "BatchNorm1d", "features")),
    ]
    for rid, parameters in steps:
        context = ApplyContext(copied, Recommendation(rid, "", (), "", "", parameters), report, measurements,
                               ScanConfig(), lambda: inputs, seed=SEED)
        patch = APPLIERS[rid](context)
        assert patch.applied and "not applied" not in patch.reason, patch.reason
    twin = copy.deepcopy(model)
    _he_by_hand(twin, ("0", "2"))
    norms = [nn.BatchNorm1d(8), nn.BatchNorm1d(8)]

    def by_hand(x: torch.Tensor) -> torch.Tensor:  # y = x + relu(BN(W x + b)), twice, then the head
        x = x + torch.relu(norms[0](_linear(twin, "0")(x)))
        x = x + torch.relu(norms[1](_linear(twin, "2")(x)))
        return _linear(twin, "4")(x)
    assert torch.equal(copied(inputs), by_hand(inputs))
    got = _grads(copied, inputs, target)
    F.cross_entropy(by_hand(inputs), target).backward()
    want = {"0.weight": _linear(twin, "0").weight.grad, "norm.weight": norms[1].weight.grad}
    assert want["0.weight"] is not None and want["norm.weight"] is not None
    assert torch.equal(got["0.block.0.weight"], want["0.weight"])
    assert torch.equal(got["2.block.0.verify_norm.weight"], want["norm.weight"])


def test_a_functional_swap_after_add_skip_follows_the_moved_layer() -> None:
    model = _seeded(_FunctionalNet)
    inputs, _ = _inputs(BATCH, 8)
    measurements, report = _probe(model, (8,), 2)
    copied = copy.deepcopy(model)
    swap = ActivationSwap("fc1", "Sigmoid", "nn.ReLU()", "depth")
    for rid, parameters in ((R.ADD_SKIP, SkipParameters(("fc1",))),
                            (R.SWAP_ACTIVATION, SwapActivationParameters((swap,)))):
        patch = APPLIERS[rid](ApplyContext(copied, Recommendation(rid, "", (), "", "", parameters), report,
                                           measurements, ScanConfig(), lambda: inputs, seed=SEED))
        assert patch.applied and "not applied" not in patch.reason, patch.reason
    twin = copy.deepcopy(model)
    _he_by_hand(twin, ("fc1",))
    a = inputs + twin.fc1(inputs)  # written by hand: the skip around fc1, then relu and squash's sigmoid
    assert torch.equal(copied(inputs), twin.head(torch.sigmoid(twin.fc2(torch.relu(a) + torch.sigmoid(a)))))


# --- measure/shapes.py -------------------------------------------------------------------------

def test_measure_shapes_reads_each_modules_shapes_and_leaves_the_model_as_it_was() -> None:
    model = _seeded(lambda: nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)))
    inputs, _ = _inputs(BATCH, 8)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    shapes = measure_shapes(model, inputs)
    assert shapes["0"].input == (BATCH, 8) and shapes["3"].output == (BATCH, 2) and shapes[""].output == (BATCH, 2)
    assert [shapes[n].order for n in ("0", "1", "2", "3", "")] == [0, 1, 2, 3, 4]
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # running stats kept
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_hooks for m in model.modules())


# --- the real scan of built-ins ----------------------------------------------------------------

@pytest.mark.parametrize(("builtin", "rids"), [
    ("deep-sigmoid", (R.SWAP_ACTIVATION, R.ADD_NORMALIZATION, R.ADD_SKIP)),
    ("relu-normal-init", (R.HE_INIT, R.XAVIER_INIT)),
    ("rnn-long", (R.GATED_RNN,)),
])
def test_each_structural_recommendation_of_a_builtin_applies(builtin: str, rids: tuple[RecommendationId, ...]) -> None:
    from gradcheck_cli.target.isolation import fresh_start
    from gradcheck_cli.target.resolve import resolve_target

    config = ScanConfig()
    target = resolve_target(f"builtin:{builtin}")
    fresh_start(config.seed)
    model = target.build_model()
    assert target.make_batch is not None
    measurements = run_probe(model, target.make_batch, target.loss_fn, config)
    report = analyse(measurements, config, Thresholds(), target=target.name)
    torch.manual_seed(config.seed)
    inputs: Any = target.make_batch(config.batch_size)[0]
    recommended = {r.id: r for r in report.recommendations}
    assert set(rids) <= recommended.keys()
    for rid in rids:
        copied = copy.deepcopy(model)
        patch = APPLIERS[rid](ApplyContext(copied, recommended[rid], report, measurements, config,
                                           lambda: inputs, seed=config.seed))
        assert patch.applied, patch.reason
        assert copied(inputs).shape == model(inputs).shape
