"""Library layers judged for what they are (issue 9, parts 5 and 10).

* Hugging Face's Conv1D (GPT-2) is a linear layer whose weight is stored (in, out): its fan-in,
  fan-out and activation units are features, not sequence positions.
* The tanh inside a tanh-approximated GELU (NewGELUActivation, minGPT's NewGELU) is part of a
  GELU, not a Tanh activation of the layer before it.
* Query/key projections get small gradients at init because attention is near uniform: not
  vanishing unless the same decay is seen through depth (a broken twin still is).

Hugging Face models are built from small configs in code (no downloads); those tests skip when
transformers is not installed (the optional `hf` extra).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from stats_factory import layer_stats, with_values
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.classify import LayerVerdict, classify_layers
from gradcheck_cli.analyse.stats import LayerStats, compute_stats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.report.records import Status
from gradcheck_cli.target.resolve import Target


def _probe(build: Any, make_batch: Any) -> dict[str, Any]:
    """Per-layer statistics (LayerStats: measurements and the fans derived from them) by name, from one
    probe batch."""
    measured = run_probe(build(), make_batch, None, ScanConfig(batches=1)).layers
    return {layer.name: layer for layer in compute_stats(measured)}


def _scan(name: str, build: Any, make_batch: Any) -> Any:
    return scan(Target(name, build, make_batch, None))


# --- Hugging Face GPT-2 -------------------------------------------------------------------------

def _gpt2() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=500,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _gpt2_batch(batch_size: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 500, (batch_size, 32))
    return {"input_ids": ids, "labels": ids}


@pytest.fixture(scope="module")
def gpt2_layers() -> dict[str, Any]:
    return _probe(_gpt2, _gpt2_batch)


@pytest.fixture(scope="module")
def bert_layers() -> dict[str, Any]:
    return _probe(_bert, _bert_batch)


def test_gpt2_conv1d_fans_are_features_and_its_gelu_is_a_gelu(gpt2_layers: dict[str, Any]) -> None:
    layers = gpt2_layers
    fc, proj = layers["transformer.h.0.mlp.c_fc"], layers["transformer.h.0.mlp.c_proj"]
    assert fc.type_name == "Conv1D"
    assert (fc.fan_in, fc.fan_out) == (64, 256)  # weight (64, 256) applied as x @ W
    assert (proj.fan_in, proj.fan_out) == (256, 64)
    assert (layers["transformer.h.0.attn.c_attn"].fan_in, layers["transformer.h.0.attn.c_attn"].fan_out) == (64, 192)
    # NewGELUActivation computes a tanh inside: the activation after c_fc is a GELU, not a Tanh.
    assert fc.activation["function"] == "GELU"
    assert fc.activation["activation_module"] == "transformer.h.0.mlp.act"
    assert "saturated_fraction" not in fc.activation


def test_gpt2_is_healthy_with_no_findings() -> None:
    pytest.importorskip("transformers")  # here: a skip raised inside build_model is a user exit
    report = _scan("gpt2", _gpt2, _gpt2_batch)
    assert report.verdict == Status.HEALTHY
    assert report.findings == () and report.recommendations == ()


def test_gpt2_fused_qkv_projection_feeds_the_attention_softmax(gpt2_layers: dict[str, Any]) -> None:
    scores = {name for name, layer in gpt2_layers.items() if layer.attention_scores}
    assert scores == {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}


# --- Hugging Face BERT --------------------------------------------------------------------------

def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # hidden 256: the 0.02 init is inside init_std's band for fan-in 256 and 1024, so the value and
    # classifier layers are yardsticks, which is where query/key of layer 0 used to be flagged.
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=256, num_attention_heads=4,
                                     intermediate_size=1024, vocab_size=500, max_position_embeddings=64,
                                     num_labels=3)
    return transformers.BertForSequenceClassification(config)


def _bert_batch(batch_size: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 500, (batch_size, 16)), "labels": torch.randint(0, 3, (batch_size,))}


def test_bert_query_key_are_found_by_their_softmax(bert_layers: dict[str, Any]) -> None:
    scores = {name for name, layer in bert_layers.items() if layer.attention_scores}
    assert scores == {f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "key")}


def test_bert_at_init_is_healthy_and_query_key_are_not_vanishing() -> None:
    pytest.importorskip("transformers")  # here: a skip raised inside build_model is a user exit
    report = _scan("bert", _bert, _bert_batch)
    statuses = {layer.name: layer.status for layer in report.layers}
    query = "bert.encoder.layer.0.attention.self.query"
    value = "bert.encoder.layer.0.attention.self.value"
    gtw = {layer.name: layer.grad_to_weight for layer in report.layers}
    assert gtw[query] < 0.1 * gtw[value]  # the small gradient is there: it is judged, not missed
    assert statuses[query] == statuses["bert.encoder.layer.0.attention.self.key"] == Status.HEALTHY
    assert report.verdict == Status.HEALTHY
    assert report.findings == ()


# --- plain torch GELU forms ---------------------------------------------------------------------

class NewGELU(nn.Module):
    """minGPT's / Hugging Face's tanh approximation of GELU, written out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class TanhGate(nn.Module):
    """Parameter-free, has a tanh inside, and is no rectifier: its tanh stays a Tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.tanh(x)


class FunctionalGeluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x), approximate="tanh")
        return self.head(F.gelu(self.fc2(x), approximate="tanh"))


def _mlp_with(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), activation, nn.Linear(64, 10))


def _mlp_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return 8.0 * torch.randn(batch_size, 16), torch.randint(0, 10, (batch_size,))


@pytest.mark.parametrize(("activation", "function"), [(NewGELU(), "GELU"), (Swish(), "SiLU"),
                                                      (TanhGate(), "Tanh")])
def test_a_parameter_free_module_is_the_activation_it_computes(activation: nn.Module, function: str) -> None:
    layer = _probe(lambda: _mlp_with(activation), _mlp_batch)["0"]
    assert layer.activation["function"] == function


@pytest.mark.parametrize(("name", "function"), [
    ("gelu_new", "GELU"), ("gelu_fast", "GELU"), ("gelu_accurate", "GELU"), ("gelu_pytorch_tanh", "GELU"),
    ("quick_gelu", "GELU"), ("silu", "SiLU"), ("mish", "Mish"), ("tanh", "Tanh")])
def test_hugging_face_activations_are_what_they_compute(name: str, function: str) -> None:
    """transformers' ACT2FN modules: the tanh/sigmoid forms used to count as Tanh/Sigmoid."""
    activations = pytest.importorskip("transformers.activations")
    layer = _probe(lambda: _mlp_with(activations.ACT2FN[name]), _mlp_batch)["0"]
    assert layer.activation["function"] == function


def test_new_gelu_on_large_inputs_is_not_a_saturated_tanh() -> None:
    """Inputs of scale 8 put most of the inner tanh's outputs beyond 0.96: it used to be reported
    as a saturated Tanh of layer 0 (and its init judged against Xavier instead of He)."""
    report = _scan("newgelu", lambda: _mlp_with(NewGELU()), _mlp_batch)
    assert report.findings == () and report.verdict == Status.HEALTHY


def test_functional_tanh_gelu_is_a_gelu() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return FunctionalGeluMLP()
    layers = _probe(build, _mlp_batch)
    assert layers["fc1"].activation["function"] == layers["fc2"].activation["function"] == "GELU"


# --- Conv1D-like layers: weight stored (in, out) -----------------------------------------------

class XW(nn.Module):
    """A linear layer applied as x @ W + b with W of shape (in, out), as Hugging Face's Conv1D."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * n_in ** -0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class Conv1D(XW):
    """Named as Hugging Face names it: the name must not make it a convolution."""


class SequenceTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = Conv1D(8, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)))


def test_units_of_a_conv1d_are_its_features_not_positions() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return SequenceTagger()

    def batch(batch_size: int) -> torch.Tensor:
        return torch.randn(batch_size, 24, 8)  # (N, T=24, F=8): 24 positions, 32 features after proj
    layer = _probe(build, batch)["proj"]
    assert (layer.fan_in, layer.fan_out) == (8, 32)
    assert layer.activation["function"] == "Tanh" and layer.activation["units"] == 32


def test_a_real_conv1d_keeps_channels_as_units() -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(4, 6, 3), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 22, 3))
    layer = _probe(build, lambda n: torch.randn(n, 4, 24))["0"]
    assert layer.activation["units"] == 6 and (layer.fan_in, layer.fan_out) == (12, 18)


def test_a_weight_normed_conv1d_keeps_channels_as_units() -> None:
    """Its kernel lives in a parametrization (WaveNet/TCN/HiFi-GAN style), not in the conv itself."""
    def build() -> nn.Module:
        torch.manual_seed(0)
        conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 3))
        return nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(6 * 22, 3))
    assert _probe(build, lambda n: torch.randn(n, 4, 24))["0"].activation["units"] == 6


def test_a_square_xw_layer_has_equal_fans_either_way() -> None:
    layer = _probe(lambda: nn.Sequential(XW(16, 16), nn.ReLU(), nn.Linear(16, 2)),
                   lambda n: torch.randn(n, 16))["0"]
    assert (layer.fan_in, layer.fan_out) == (16, 16)


# --- the attention exemption and its guards (pure) ---------------------------------------------

def _layer(name: str, index: int, gtw: float, scores: bool = False) -> LayerStats:
    return layer_stats(name=name, type_name="Linear", index=index, params=4096, role="dense", fan_in=64,
                      weight_std=0.125, trainable=True, received=True, grad_norm=gtw * 8.0,
                      weight_norm=8.0, grad_to_weight=gtw, grad_rms=gtw / 8.0, nonfinite_grads=0,
                      output_rms=1.0, output_grad_rms=1e-3, output_nonfinite=False, fan_out=64,
                      attention_scores=scores)


def _encoder(q0: float, v0: float, q1: float) -> list[LayerStats]:
    """Two blocks of q, k, v, out, then a head; grad/weight per layer as given."""
    ratios = [("0.q", q0, True), ("0.k", q0, True), ("0.v", v0, False), ("0.o", v0, False),
              ("1.q", q1, True), ("1.k", q1, True), ("1.v", 3e-2, False), ("1.o", 3e-2, False),
              ("head", 1.0, False)]
    return [_layer(name, i, gtw, scores) for i, (name, gtw, scores) in enumerate(ratios)]


def _statuses(layers: list[LayerStats]) -> dict[str, Status]:
    verdicts: list[LayerVerdict] = classify_layers(layers, Thresholds())
    return {layer.name: v.status for layer, v in zip(layers, verdicts)}


def test_query_key_below_the_relative_rule_at_init_are_healthy() -> None:
    statuses = _statuses(_encoder(q0=4e-4, v0=3e-2, q1=5e-4))
    assert statuses["0.q"] == statuses["0.k"] == Status.HEALTHY
    # the same numbers on layers that do not feed a softmax are vanishing: the exemption is what acts
    plain = _statuses([with_values(x, attention_scores=False) for x in _encoder(q0=4e-4, v0=3e-2, q1=5e-4)])
    assert plain["0.q"] == Status.VANISHING


def test_query_key_stay_vanishing_when_the_value_path_vanishes_too() -> None:
    statuses = _statuses(_encoder(q0=4e-7, v0=5e-6, q1=5e-4))
    assert statuses["0.v"] == statuses["0.q"] == Status.VANISHING


def test_query_key_stay_vanishing_when_they_decay_across_blocks() -> None:
    statuses = _statuses(_encoder(q0=3e-7, v0=3e-2, q1=4e-3))  # above the 1e-7 floor, 1e-4 of block 1's
    assert statuses["0.q"] == statuses["0.k"] == Status.VANISHING


def test_query_key_with_too_large_weights_stay_vanishing() -> None:
    """Large scores saturate the softmax (one-hot attention): small gradients that are no design."""
    layers = [with_values(x, weight_std=1.0) if x.attention_scores else x for x in _encoder(q0=4e-4, v0=3e-2, q1=5e-4)]
    assert _statuses(layers)["0.q"] == Status.VANISHING
