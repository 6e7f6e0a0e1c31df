"""Label: healthy. Text classifier on nn.TransformerEncoder (post-LN, the PyTorch default).

Token Embedding scaled by sqrt(d_model) + sinusoidal positions -> 2 x nn.TransformerEncoderLayer
(norm_first=False, ReLU FFN, batch_first) with a key-padding mask -> masked mean pool -> Linear.

Mechanism: residual + LayerNorm after each sub-layer; at depth 2 post-LN has no gradient
problem (none of the causes in docs/findings/ applies).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.37, 1.45, 1.44
  weight-grad norm per layer, execution order: embedding 0.086, encoder.layers.0.self_attn 0.92,
    encoder.layers.0.self_attn.out_proj 0.252, encoder.layers.0.norm1 0.0328,
    encoder.layers.0.linear1 0.104, encoder.layers.0.linear2 0.299,
    encoder.layers.0.norm2 0.0353, encoder.layers.1.self_attn 0.168,
    encoder.layers.1.self_attn.out_proj 0.183, encoder.layers.1.norm1 0.0383,
    encoder.layers.1.linear1 0.111, encoder.layers.1.linear2 0.308,
    encoder.layers.1.norm2 0.0502, classifier 0.672
  whole-layer grad norm (weights + biases/others): embedding 0.086,
    encoder.layers.0.self_attn 0.92, encoder.layers.0.self_attn.out_proj 0.252,
    encoder.layers.0.norm1 0.109, encoder.layers.0.linear1 0.109,
    encoder.layers.0.linear2 0.316, encoder.layers.0.norm2 0.111,
    encoder.layers.1.self_attn 0.182, encoder.layers.1.self_attn.out_proj 0.212,
    encoder.layers.1.norm1 0.111, encoder.layers.1.linear1 0.115,
    encoder.layers.1.linear2 0.324, encoder.layers.1.norm2 0.125, classifier 0.703
  first/last (embedding / classifier): grad 0.122, weight-grad 0.128
  grad/weight range: 2.40e-04 .. 0.608 (weight-only 2.40e-04 .. 0.581)
  default-init baseline (same model, reset_parameters()): loss 1.4, max layer grad 0.916
  measured label: healthy (no rule fired)
"""

import math

import torch
import torch.nn as nn

VOCAB = 2000
PAD = 0
SEQ = 24


class PositionalEncoding(nn.Module):
    pe: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, d_model, max_len=512):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, : x.size(1)]


class TransformerClassifier(nn.Module):
    def __init__(self, d_model=64, nhead=4, num_layers=2, num_classes=4):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.pos = PositionalEncoding(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=128, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, tokens):
        pad_mask = tokens == PAD
        x = self.pos(self.embedding(tokens) * math.sqrt(self.d_model))
        x = self.encoder(x, src_key_padding_mask=pad_mask)
        keep = (~pad_mask).unsqueeze(-1).float()
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.classifier(pooled)


def build_model():
    torch.manual_seed(8)
    return TransformerClassifier()


def make_batch(batch_size):
    tokens = torch.randint(1, VOCAB, (batch_size, SEQ))
    lengths = torch.randint(SEQ // 2, SEQ + 1, (batch_size,))
    tokens[torch.arange(SEQ).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD  # right padding
    labels = torch.randint(0, 4, (batch_size,))
    return tokens, labels
