"""Every dtype a user trains in, and gradients of any magnitude, measured as plain autograd does.

Each model is scanned and its per-layer gradient norms are compared with a plain-autograd
reference on the same batches (loss.backward(), norms taken in float64 of the stored values;
complex: the norm of |z|; sparse: of the coalesced values). Also: a layer with finite gradients
around 1e20 is exploding with its real magnitude (not NaN/Inf), a vanishing one around 1e-25 is
not read as 0, and N(0, 1) ReLU MLPs are exploding with he-init first at every depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from typed_modules import grad_of, narrow

from gradcheck_cli.api import scan
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure import norms
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.report.catalog import FINDINGS
from gradcheck_cli.report.records import FindingKind, RecommendationId, Status
from gradcheck_cli.target.forward_error import InternalError
from gradcheck_cli.target.resolve import Target

BATCHES, BATCH_SIZE = 3, 16


def _norm64(t: torch.Tensor) -> float:
    if t.is_sparse:
        t = t.coalesce().values()
    t = t.detach()
    t = t.abs() if t.is_complex() else t
    return math.hypot(*t.double().flatten().tolist())  # scaled: no overflow even at 1e200


def _reference_grad_norms(model: nn.Module, make_batch: Callable[[int], Any],
                          loss_fn: Callable[[Any, Any], torch.Tensor]) -> dict[str, float]:
    """Plain autograd: per layer, the mean over the probe's batches of its own gradients' L2 norm."""
    layers = {name or "(root)": m for name, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    sums = dict.fromkeys(layers, 0.0)
    for b in range(BATCHES):
        torch.manual_seed(b)  # the probe draws batch b after seeding with seed + b (seed 0)
        x, y = make_batch(BATCH_SIZE)
        for p in model.parameters():
            p.grad = None
        loss_fn(model(x), y).backward()
        for name, module in layers.items():
            sums[name] += math.sqrt(sum(_norm64(p.grad) ** 2 for p in module.parameters(recurse=False)
                                        if p.grad is not None))
    return {name: total / BATCHES for name, total in sums.items()}


def _probe_grad_norms(model: nn.Module, make_batch: Callable[[int], Any],
                      loss_fn: Callable[[Any, Any], torch.Tensor]) -> dict[str, float]:
    result = run_probe(model, make_batch, loss_fn, ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE))
    return {layer.name: sum(layer.grad_norms) / len(layer.grad_norms) for layer in result.layers}


def _assert_matches_plain_autograd(build: Callable[[], nn.Module], make_batch: Callable[[int], Any],
                                   loss_fn: Callable[[Any, Any], torch.Tensor], rel: float) -> None:
    probed = _probe_grad_norms(build(), make_batch, loss_fn)
    reference = _reference_grad_norms(build(), make_batch, loss_fn)
    assert probed.keys() == reference.keys()
    for name, value in reference.items():
        assert value > 0, name
        assert probed[name] == pytest.approx(value, rel=rel), name


# --- float64: an LSTMCell time-series model, as scientific code writes it ------------------------

class _Float64CellForecaster(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(3, 24)
        self.head = nn.Linear(24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[0], 24)
        c = h.clone()
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


def _float64_cell() -> nn.Module:
    torch.manual_seed(0)
    return _Float64CellForecaster().double()


def _float64_series(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 12, 3, dtype=torch.float64), torch.randn(batch_size, 1, dtype=torch.float64)


def test_float64_lstmcell_model_matches_plain_autograd() -> None:
    _assert_matches_plain_autograd(_float64_cell, _float64_series, nn.functional.mse_loss, rel=1e-9)


def test_float64_model_scans_healthy_with_finite_statistics() -> None:
    report = scan(Target("float64-cell", _float64_cell, _float64_series, nn.functional.mse_loss))
    assert report.verdict == Status.HEALTHY
    assert all(layer.grad_norm is not None and math.isfinite(layer.grad_norm) for layer in report.layers)


# --- bfloat16 as the default dtype ---------------------------------------------------------------

def test_bfloat16_default_dtype_matches_plain_autograd() -> None:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        def build() -> nn.Module:
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

        def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))

        assert narrow(build().get_submodule("0"), nn.Linear).weight.dtype == torch.bfloat16
        # Both sides compute the same bf16 gradients; the probe sums their squares in float32.
        _assert_matches_plain_autograd(build, make_batch, nn.functional.cross_entropy, rel=1e-5)
    finally:
        torch.set_default_dtype(before)
    assert torch.get_default_dtype() == before


# --- complex parameters --------------------------------------------------------------------------

class _ComplexFilter(nn.Module):
    """A complex linear filter (as in signal processing / complex-valued nets), read out by |z|."""

    def __init__(self) -> None:
        super().__init__()
        self.filter = nn.Linear(8, 16, dtype=torch.cfloat)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.filter(x.to(torch.cfloat)).abs())


def _complex_model() -> _ComplexFilter:
    torch.manual_seed(0)
    return _ComplexFilter()


def _real_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 8), torch.randn(batch_size, 1)


def test_complex_parameters_match_plain_autograd_norm_of_modulus() -> None:
    _assert_matches_plain_autograd(_complex_model, _real_batch, nn.functional.mse_loss, rel=1e-5)


def test_complex_weight_statistics_are_those_of_the_complex_values() -> None:
    model = _complex_model()
    result = run_probe(model, _real_batch, nn.functional.mse_loss, ScanConfig(batches=1, batch_size=4))
    layer = next(lp for lp in result.layers if lp.name == "filter")
    own = list(model.filter.parameters())
    assert layer.weight_norm == pytest.approx(math.sqrt(sum(_norm64(p) ** 2 for p in own)), rel=1e-6)
    assert layer.weight_std == pytest.approx(float(model.filter.weight.detach().std()), rel=1e-5)


# --- sparse gradients ----------------------------------------------------------------------------

class _SparseBagClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(200, 16, sparse=True)
        self.bag = nn.EmbeddingBag(200, 16, mode="mean", sparse=True)
        self.head = nn.Linear(32, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.embed(tokens).mean(1), self.bag(tokens)], dim=1))


def _sparse_model() -> nn.Module:
    torch.manual_seed(0)
    return _SparseBagClassifier()


def _tokens(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Repeated tokens: the sparse gradient holds duplicate indices until it is coalesced.
    return torch.randint(0, 20, (batch_size, 10)), torch.randint(0, 4, (batch_size,))


def test_sparse_embedding_gradients_match_plain_autograd() -> None:
    _assert_matches_plain_autograd(_sparse_model, _tokens, nn.functional.cross_entropy, rel=1e-5)


class _SparseAdjacencyGraphConv(nn.Module):
    """A graph convolution as GCN code writes it: features x weight, then torch.spmm with a sparse
    normalised adjacency matrix passed in as the second input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return self.head(torch.spmm(adjacency, torch.relu(self.conv(features))))


def _graph(batch_size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    adjacency = ((torch.rand(batch_size, batch_size) < 0.3).float() + torch.eye(batch_size))
    adjacency = adjacency / adjacency.sum(1, keepdim=True)
    return (torch.randn(batch_size, 8), adjacency.to_sparse()), torch.randint(0, 3, (batch_size,))


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_input_tensor_is_scanned_like_plain_autograd(layout: str) -> None:
    # Found on pytorch/examples' gcn: the probe's non-finite input check crashed on a sparse input.
    def make_batch(batch_size: int) -> Any:
        (features, adjacency), target = _graph(batch_size)
        return (features, adjacency if layout == "coo" else adjacency.to_sparse_csr()), target

    torch.manual_seed(0)
    model = _SparseAdjacencyGraphConv()
    probed = {layer.name: sum(layer.grad_norms) / len(layer.grad_norms) for layer in
              run_probe(model, make_batch, nn.functional.cross_entropy,
                        ScanConfig(batches=BATCHES, batch_size=BATCH_SIZE)).layers}
    reference = dict.fromkeys(probed, 0.0)
    for b in range(BATCHES):
        torch.manual_seed(b)
        inputs, target = make_batch(BATCH_SIZE)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(*inputs), target).backward()
        for name in reference:
            reference[name] += _norm64(torch.cat([grad_of(p).flatten() for p in
                                                  model.get_submodule(name).parameters()])) / BATCHES
    assert probed == pytest.approx(reference, rel=1e-5)


# --- reentrant activation checkpointing ----------------------------------------------------------

class _CheckpointedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # use_reentrant=True needs an input that requires grad for the segment to get gradients
        h = checkpoint(self.block, x.requires_grad_(), use_reentrant=True)
        return self.head(torch.relu(h))


def _checkpointed() -> nn.Module:
    torch.manual_seed(0)
    return _CheckpointedMLP()


def _float_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 8), torch.randint(0, 4, (batch_size,))


def test_reentrant_checkpoint_matches_plain_autograd() -> None:
    _assert_matches_plain_autograd(_checkpointed, _float_batch, nn.functional.cross_entropy, rel=1e-5)


def test_reentrant_checkpoint_leaves_the_users_grad_as_it_was() -> None:
    model = _checkpointed()
    sentinels = {name: torch.full_like(p, 7.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = sentinels[name]
    run_probe(model, _float_batch, nn.functional.cross_entropy, ScanConfig(batches=2, batch_size=4))
    for name, p in model.named_parameters():
        assert p.grad is sentinels[name] and bool((p.grad == 7.0).all()), name


# --- magnitudes float32 squares cannot hold -------------------------------------------------------

def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_finite_gradients_around_1e20_are_exploding_with_their_real_magnitude() -> None:
    def huge_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y) * 1e20  # finite loss, finite gradients ~1e20

    reference = _reference_grad_norms(_mlp(), _float_batch, huge_loss)
    assert all(1e18 < v < 1e23 for v in reference.values())
    report = scan(Target("huge", _mlp, _float_batch, huge_loss))
    for layer in report.layers:
        assert layer.status == Status.EXPLODING
        assert layer.nonfinite_grads == 0
        assert layer.grad_norm == pytest.approx(reference[layer.name], rel=1e-5)
    assert report.verdict == Status.EXPLODING
    assert not [f for f in report.findings if f.kind == FindingKind.NONFINITE]
    assert RecommendationId.GUARD_NONFINITE not in [r.id for r in report.recommendations]


def test_gradients_around_1e_25_are_not_read_as_zero() -> None:
    def tiny_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y) * 1e-25  # squares of ~1e-26 underflow float32

    reference = _reference_grad_norms(_mlp(), _float_batch, tiny_loss)
    probed = _probe_grad_norms(_mlp(), _float_batch, tiny_loss)
    for name, value in reference.items():
        assert 0 < value < 1e-22
        assert probed[name] == pytest.approx(value, rel=1e-5), name


def test_norms_of_every_kind_of_tensor_match_float64() -> None:
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 0, 3]]), torch.tensor([1.0, 2.0, 4.0]), (5,),
                                     check_invariants=True)
    cases = [torch.full((10,), 3e20), torch.full((10,), 1e-30), torch.zeros(4),
             torch.randn(6, dtype=torch.float64) * 1e200, torch.randn(5, dtype=torch.cfloat),
             torch.randn(7).half() * 1e4, torch.randn(7).bfloat16(), sparse]
    expected = [_norm64(t) for t in cases]
    for t, want in zip(cases, expected):
        assert float(norms.tensor_norm(t)) == pytest.approx(want, rel=1e-3)
    squared = norms.squared_norms(cases, torch.device("cpu")).tolist()
    assert squared == pytest.approx([w * w for w in expected], rel=2e-3)
    for t, want in zip(cases, expected):  # the path an accelerator always takes (no host sync)
        assert float(norms._scaled_norm(norms._dense_values(t))) == pytest.approx(want, rel=1e-3)
    assert math.isnan(float(norms.tensor_norm(torch.tensor([1.0, math.nan]))))
    assert float(norms.tensor_norm(torch.tensor([1.0, math.inf]))) == math.inf
    assert norms.count_nonfinite(torch.tensor([1.0, math.nan, math.inf])) == 2


# --- N(0, 1) ReLU MLPs: exploding with he-init first, whatever the depth --------------------------

def _normal_init_mlp(depth: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(30)
        layers: list[nn.Module] = []
        width_in = 64
        for _ in range(depth - 1):
            layers += [nn.Linear(width_in, 128), nn.ReLU()]
            width_in = 128
        layers.append(nn.Linear(128, 10))
        model = nn.Sequential(*layers)
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
                nn.init.zeros_(m.bias)
        return model
    return build


def _tokens_of_64(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))


@pytest.mark.parametrize("depth", [8, 32, 64])
def test_normal_init_relu_mlp_is_exploding_with_he_init_first(depth: int) -> None:
    report = scan(Target(f"relu-n01-{depth}", _normal_init_mlp(depth), _tokens_of_64))
    exploding = [f for f in report.findings if f.kind == FindingKind.EXPLODING]
    assert exploding
    first = report.recommendations[0]
    assert first.id == RecommendationId.HE_INIT
    assert "0.125" in first.code  # sqrt(2 / 128), the std to use for the hidden layers
    if depth < 40:  # finite gradients (up to ~1e28 at depth 32): exploding layers, not NaN
        assert report.verdict == Status.EXPLODING
        assert all(layer.status == Status.EXPLODING for layer in report.layers)
    else:  # the forward overflows float32 near layer 42: NaN is where the explosion ends
        growth = [f for f in exploding if f.layer is None]
        assert growth and growth[0].evidence["stack_trend"] == "growth"
        documented = FINDINGS[FindingKind.EXPLODING].measured  # `gradcheck explain exploding`
        assert all(key.split("_")[0] in documented for key in growth[0].evidence)
        assert all(key in documented for key in growth[0].evidence if not key.startswith("stack_"))


def test_overflow_of_the_loss_after_finite_growth_is_exploding() -> None:
    """Depth 24 with MSE: the activations stay finite (~1e21) and the loss overflows to Inf."""
    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 64), torch.randn(batch_size, 10)

    report = scan(Target("relu-n01-mse", _normal_init_mlp(24), make_batch))
    growth = [f for f in report.findings if f.kind == FindingKind.EXPLODING and f.layer is None]
    assert growth and growth[0].evidence["origin"] == "(loss)"
    assert growth[0].evidence["stack_signal"] == "activation"
    assert report.recommendations[0].id == RecommendationId.HE_INIT


# --- gradcheck's own errors are not the user's ------------------------------------------------------

def test_an_error_in_gradchecks_hook_code_is_internal_not_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms, "_FAST_RANGE", {})  # every norm taken in a hook now raises KeyError
    with pytest.raises(InternalError) as raised:
        run_probe(_mlp(), _float_batch, None, ScanConfig(batches=1, batch_size=4))
    assert not isinstance(raised.value, UserError)
    assert "gradcheck_cli/measure/norms.py" in str(raised.value) and "not in the model" in str(raised.value)


def test_an_error_in_the_users_forward_is_still_the_users() -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(12, 4))  # 16 != 12

    with pytest.raises(UserError, match="the model failed on the probe batch in module '2'"):
        run_probe(build(), _float_batch, None, ScanConfig(batches=1, batch_size=4))


class _CheckpointedGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = checkpoint(lambda t: self.rnn(t)[0], x.requires_grad_(), use_reentrant=True)
        return self.head(out.mean(1))


def test_recurrent_layer_inside_a_reentrant_checkpoint_matches_plain_autograd() -> None:
    """The checkpoint's first pass runs under no_grad: the probe's per-step watch of the GRU's
    input must leave it alone there (it watches the recompute instead)."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        return _CheckpointedGRU()

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, 10, 8), torch.randint(0, 4, (batch_size,))

    _assert_matches_plain_autograd(build, make_batch, nn.functional.cross_entropy, rel=1e-5)
