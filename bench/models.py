"""The models of bench/overhead.py (issue 16's table), built in code: nothing is downloaded.

* ``gpt2-small``: a GPT-2-small-sized causal pre-LN transformer (12 layers, d_model 768, 12 heads,
  MLP 3072, vocabulary 50257, 1024 positions, head tied to the token embedding, 124.4M parameters,
  GPT-2-style random init, no dropout), cross-entropy on random tokens, batch 2 x 128 tokens.
* ``gpt-4x128``: the same code at 4 layers, d_model 128, 4 heads, MLP 512, a 1024-token
  vocabulary and 256 positions (0.9M parameters), batch 8 x 128 tokens.
* ``mlp-10x256``: 10 ``Linear(256, 256)`` with ReLU between them, default init, cross-entropy over
  256 classes on N(0, 1) inputs, batch 64.
* ``stack-1000``: ``nn.Sequential`` of 1,000 ``(Linear(16, 16), Tanh)`` pairs (2,000 modules, the
  same as bench/deep_wide.py's flat-deep), loss mean(output^2), batch 16.
* ``cnn-resnet-bn`` (and any other gradcheck zoo builtin): ``gradcheck_cli.target.zoo``, batch 16.

Every model is built under ``torch.manual_seed(0)`` inside a forked RNG, so each build is the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli.target import zoo
from gradcheck_cli.target.resolve import Target


@dataclass(frozen=True)
class GPTConfig:
    vocab: int = 50257
    context: int = 1024
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    mlp: int = 3072


GPT2_SMALL = GPTConfig()
GPT_4X128 = GPTConfig(vocab=1024, context=256, layers=4, d_model=128, heads=4, mlp=512)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)) (pre-LN, as GPT-2)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder without dropout; GPT-2's random init (residual projections 1/sqrt(2L))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.Sequential(*(GPTBlock(cfg) for _ in range(cfg.layers)))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.head.weight = self.wte.weight  # tied
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, 0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            for block in self.blocks.children():
                assert isinstance(block, GPTBlock)
                for proj in (block.attn.proj, block.mlp[-1]):
                    assert isinstance(proj, nn.Linear)
                    proj.weight.normal_(0.0, 0.02 / math.sqrt(2 * cfg.layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        return self.head(self.ln_f(self.blocks(x)))


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def seeded() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build()
    return seeded


def _flat_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def _mean_square(output: torch.Tensor, target: object) -> torch.Tensor:
    return output.pow(2).mean()


def gpt_target(name: str, cfg: GPTConfig, seq_len: int) -> Target:
    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, cfg.vocab, (batch_size, seq_len + 1))
        return tokens[:, :-1], tokens[:, 1:]

    return Target(name=name, build_model=_seeded(lambda: GPT(cfg)), make_batch=make_batch,
                  loss_fn=_flat_cross_entropy)


def mlp_target(name: str = "mlp-10x256", depth: int = 10, width: int = 256) -> Target:
    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(width, width)] + ([nn.ReLU()] if i < depth - 1 else [])
        return nn.Sequential(*layers)

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, width), torch.randint(0, width, (batch_size,))

    return Target(name=name, build_model=_seeded(build), make_batch=make_batch, loss_fn=F.cross_entropy)


def stack_target(name: str = "stack-1000", depth: int = 1000, features: int = 16) -> Target:
    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(features, features), nn.Tanh()]
        return nn.Sequential(*layers)

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, features), torch.zeros(batch_size)

    return Target(name=name, build_model=_seeded(build), make_batch=make_batch, loss_fn=_mean_square)


@dataclass(frozen=True)
class BenchModel:
    """A model of the table: how to build its target, its batch size and its timed repeats."""

    name: str
    target: Callable[[], Target]
    batch_size: int
    repeats: int
    """Timed repeats per path in a full run (``--repeats`` overrides; ``--quick`` caps at 3)."""


TABLE = (
    BenchModel("gpt2-small", lambda: gpt_target("gpt2-small", GPT2_SMALL, 128), 2, 3),
    BenchModel("gpt-4x128", lambda: gpt_target("gpt-4x128", GPT_4X128, 128), 8, 9),
    BenchModel("cnn-resnet-bn", lambda: zoo.load_target("cnn-resnet-bn"), 16, 9),
    BenchModel("mlp-10x256", mlp_target, 64, 15),
    BenchModel("stack-1000", stack_target, 16, 5),
)
"""Issue 16's table, in its order."""


def bench_model_named(name: str) -> BenchModel:
    """A model of TABLE, or a zoo builtin at the scan's default batch size (KeyError: neither)."""
    for model in TABLE:
        if model.name == name:
            return model
    if name in {b.name for b in zoo.BUILTINS}:
        return BenchModel(name, lambda: zoo.load_target(name), 16, 9)
    raise KeyError(name)
