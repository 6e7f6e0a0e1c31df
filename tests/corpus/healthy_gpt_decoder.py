"""Label: healthy. Small GPT-2-style causal decoder written the way HF/nanoGPT code is.

Pre-LN blocks (LayerNorm -> causal self-attention -> residual; LayerNorm -> MLP(GELU) ->
residual), learned positions, final LayerNorm, LM head tied to the token embedding, N(0, 0.02)
init with the residual projections scaled by 1/sqrt(2 * n_layer) (GPT-2). forward() takes
input_ids and optional labels (HF keyword style) and returns an output object with .logits and,
when labels are given, .loss (shifted next-token cross-entropy). make_batch returns only the
inputs dict, so the loss comes from output.loss.

Mechanism: residual stream + LayerNorm (docs/fixes/add-skip.md, docs/fixes/add-normalization.md); no
cause applies.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [output.loss]: 6.24, 6.25, 6.24
  weight-grad norm per layer, execution order: wte 0.439, wpe 0.258, h.0.ln_1 0.00117,
    h.0.attn.c_attn 0.0649, h.0.attn.c_proj 0.129, h.0.ln_2 0.00276, h.0.mlp.c_fc 0.152,
    h.0.mlp.c_proj 0.299, h.1.ln_1 0.00113, h.1.attn.c_attn 0.0566, h.1.attn.c_proj 0.111,
    h.1.ln_2 0.00299, h.1.mlp.c_fc 0.139, h.1.mlp.c_proj 0.272, ln_f 0.00734
  whole-layer grad norm (weights + biases/others): wte 0.439, wpe 0.258, h.0.ln_1 0.00353,
    h.0.attn.c_attn 0.0685, h.0.attn.c_proj 0.312, h.0.ln_2 0.00457, h.0.mlp.c_fc 0.153,
    h.0.mlp.c_proj 0.386, h.1.ln_1 0.00329, h.1.attn.c_attn 0.0596, h.1.attn.c_proj 0.246,
    h.1.ln_2 0.00397, h.1.mlp.c_fc 0.14, h.1.mlp.c_proj 0.337, ln_f 0.01
  first/last (wte / ln_f): grad 43.6, weight-grad 59.8
  grad/weight range: 4.11e-04 .. 0.483 (weight-only 1.41e-04 .. 0.282)
  default-init baseline (same model, reset_parameters()): loss 6.42, max layer grad 0.363
  measured label: healthy (no rule fired)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 512
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0


@dataclass
class CausalLMOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class CausalSelfAttention(nn.Module):
    bias: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.register_buffer(
            "bias",
            torch.tril(torch.ones(config.block_size, config.block_size)).view(
                1, 1, config.block_size, config.block_size
            ),
            persistent=False,
        )

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        config = config or GPTConfig()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, input_ids, labels=None):
        B, T = input_ids.size()
        pos = torch.arange(0, T, dtype=torch.long, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1, :].contiguous()
            shift_labels = labels[:, 1:].contiguous()
            loss = F.cross_entropy(
                shift_logits.view(-1, shift_logits.size(-1)),
                shift_labels.view(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(logits=logits, loss=loss)


def build_model():
    torch.manual_seed(7)
    return GPT(GPTConfig())


def make_batch(batch_size):
    input_ids = torch.randint(0, 512, (batch_size, 32))
    return {"input_ids": input_ids, "labels": input_ids.clone()}
