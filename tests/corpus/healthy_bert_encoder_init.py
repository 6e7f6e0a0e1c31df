"""Label: healthy. BERT-style text classifier written in plain torch, at BERT's own init.

Word + learned position Embeddings -> LayerNorm -> 2 x post-LN encoder layer (query/key/value
Linear, scaled dot-product softmax attention with a padding mask, output dense, GELU FFN 256 ->
512 -> 256) -> tanh pooler on [CLS] -> Linear. `_init_weights` is BertPreTrainedModel's:
N(0, 0.02) for Linear and Embedding weights, zero biases, LayerNorm 1/0.

Mechanism: residual + LayerNorm after each sub-layer, no gradient problem (docs/findings/). The
query/key projections get ~0.1x the value projection's grad/weight because the scores are near
zero at this init, attention is near uniform and the softmax passes little gradient back to them
("designed small gradients": query/key projections at init). The same ratio holds in both blocks:
no decay through depth. The broken twin is vanishing_bert_encoder_no_skip.py.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.39, 1.38, 1.40
  whole-layer grad norm per layer, execution order: word 0.755, position 0.802, embed_norm 0.0328,
    layers.0.attention.query 0.0046, .key 0.00482, .value 0.049, .dense 0.0535, .norm 0.0327,
    layers.0.intermediate 0.0911, layers.0.output 0.0883, layers.0.norm 0.0326,
    layers.1.attention.query 0.00449, .key 0.00456, .value 0.0474, .dense 0.0524, .norm 0.0325,
    layers.1.intermediate 0.0925, layers.1.output 0.0879, layers.1.norm 0.0321, pooler 1.09,
    classifier 1.1
  grad/weight: query/key 8.8e-4..9.4e-4 in both blocks, value 9.2e-3..9.6e-3, classifier 1.72
  first/last (word / classifier): grad 0.685, weight-grad 0.701
  grad/weight range: 8.77e-04 .. 1.72 (weight-only 8.75e-04 .. 1.68)
  default-init baseline (same model, reset_parameters()): loss 1.49, max layer grad 1.99
  measured label: healthy (no rule fired); also with seeds 10, 11, 12
"""


import math

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, WIDTH, HEADS, FFN, LAYERS, SEQ, CLASSES = 500, 256, 4, 512, 2, 8, 4


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        return x.view(batch, seq, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        context = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape)
        return self.norm(x + self.dense(context))


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = SelfAttention(WIDTH, HEADS)
        self.intermediate = nn.Linear(WIDTH, FFN)
        self.output = nn.Linear(FFN, WIDTH)
        self.norm = nn.LayerNorm(WIDTH, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.norm(x + self.output(F.gelu(self.intermediate(x))))


class BertClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.position = nn.Embedding(SEQ, WIDTH)
        self.embed_norm = nn.LayerNorm(WIDTH, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.pooler = nn.Linear(WIDTH, WIDTH)
        self.classifier = nn.Linear(WIDTH, CLASSES)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:  # BertPreTrainedModel._init_weights
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.word(input_ids) + self.position(positions))
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return BertClassifier()


def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (batch_size, SEQ))
    lengths = torch.randint(SEQ // 2, SEQ + 1, (batch_size,))
    ids[torch.arange(SEQ)[None, :] >= lengths[:, None]] = 0  # right padding
    return ids, torch.randint(0, CLASSES, (batch_size,))
