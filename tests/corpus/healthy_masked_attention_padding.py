"""Label: healthy. Sentence classifier with one hand-written multi-head self-attention block over
padded token sequences: scores.masked_fill(pad, float("-inf")), F.softmax, residual + LayerNorm,
masked mean pooling, Linear head.

Mechanism: the twin of nonfinite_fully_masked_attention. Here every sequence holds at least one
token, so each attention row has at least one unmasked key: the -inf entries get weight exactly 0
and each row's softmax is finite (partially masked rows). Padding masks written with -inf are the
standard idiom, not a NaN source; nothing else in the block is unsafe, and at depth 1 with a
residual and LayerNorm there is no gradient problem (none of the causes in docs/findings/ applies).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.5, 1.64, 1.58
  weight-grad norm per layer, execution order: embed 0.0558, attn.qkv 0.253, attn.out 0.261,
    norm 0.0517, head 0.811
  whole-layer grad norm (weights + biases/others): embed 0.0558, attn.qkv 0.261, attn.out 0.284,
    norm 0.125, head 0.836
  first/last (embed / head): grad 0.0668, weight-grad 0.0689
  grad/weight range: 2.22e-04 .. 0.644 (weight-only 2.22e-04 .. 0.625)
  non-finite: 0 input elements, 0 gradient elements
  default-init baseline (same model, reset_parameters()): loss 1.61, max layer grad 0.879
  measured label: healthy (no rule fired)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 1000
SEQ = 20
PAD = 0


class MaskedSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, pad):  # x: (batch, seq, dim); pad: (batch, seq) True at padding
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (batch, heads, seq, seq)
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        attn = F.softmax(scores, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, d))


class PaddedSentenceClassifier(nn.Module):
    def __init__(self, dim=64, heads=4, n_classes=5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.attn = MaskedSelfAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens):
        pad = tokens == PAD
        x = self.embed(tokens)
        x = self.norm(x + self.attn(x, pad))
        keep = (~pad).unsqueeze(-1).float()
        return self.head((x * keep).sum(1) / keep.sum(1))


def build_model():
    torch.manual_seed(23)
    return PaddedSentenceClassifier()


def make_batch(batch_size):
    lengths = torch.randint(1, SEQ + 1, (batch_size,))  # every sentence has at least one token
    tokens = torch.randint(1, VOCAB, (batch_size, SEQ))
    tokens[torch.arange(SEQ).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD
    labels = torch.randint(0, 5, (batch_size,))
    return tokens, labels
