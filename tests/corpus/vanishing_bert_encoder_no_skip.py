"""Label: vanishing. The BERT-style classifier of healthy_bert_encoder_init.py written without its
residual connections and LayerNorms, at the same init.

Word + position Embeddings -> 2 x (attention: query/key/value Linear, softmax, output dense; GELU
FFN 256 -> 512 -> 256), each sub-layer's output replacing its input -> tanh pooler -> Linear.
N(0, 0.02) weights, zero biases (BertPreTrainedModel._init_weights).

Mechanism: weight init too small + depth without a short path (docs/findings/init-scale.md). With
std 0.02 each
Linear scales the signal by ~0.02 sqrt(fan_in) = 0.32 (0.45 for fan-in 512), and near-uniform
attention averages the positions, so the gradient decays geometrically towards the input: every
layer of block 0 (value path included) gets ~7e-3 of block 1's and the embeddings ~1e-6 of the
classifier's. Here the query/key projections' small gradient is the decay, not the design.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.39, 1.39, 1.39
  whole-layer grad norm per layer, execution order: word 5.62e-07, position 5.97e-07,
    layers.0.attention.query 1.45e-10, .key 2.51e-11, .value 4.40e-06, .dense 1.29e-05,
    layers.0.intermediate 4.16e-05, layers.0.output 1.82e-04, layers.1.attention.query 2.40e-20,
    .key 2.45e-20, .value 5.92e-04, .dense 0.00182, layers.1.intermediate 0.0056,
    layers.1.output 0.0238, pooler 0.0727, classifier 0.229
  first/last (word / classifier): grad 2.45e-06, weight-grad 0.763
  grad/weight range: 4.68e-21 .. 0.356 (weight-only 7.37e-24 .. 1.15e-06)
  default-init baseline (same model, reset_parameters()): loss 1.39, max layer grad 0.275
  measured label: vanishing (first/last 2.45e-06 < 1e-3); also with seeds 10, 11, 12
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

    def split(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        return x.view(batch, seq, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        context = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape)
        return self.dense(context)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = SelfAttention(WIDTH, HEADS)
        self.intermediate = nn.Linear(WIDTH, FFN)
        self.output = nn.Linear(FFN, WIDTH)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(F.gelu(self.intermediate(x)))


class BertClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.position = nn.Embedding(SEQ, WIDTH)
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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != 0
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions)
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
