"""Label: nonfinite. Bag-of-embeddings text classifier with masked mean pooling that divides by
the number of real tokens; the batch contains empty (all-padding) sequences, so that count is
exactly zero.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": division by a quantity that is exactly zero):
for an empty sequence the pooled vector is 0 / 0 = NaN, the logits and the loss are NaN and
backward spreads NaN into every gradient. Fix: "guard-nonfinite" (.clamp(min=1) on the count)
or "check-inputs" (drop empty sequences).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: nan, nan, nan
  weight-grad norm per layer, execution order: embed 0.0153, proj nan, out nan
  first/last (embed / out): grad nan, weight-grad nan
  grad/weight range: 2.69e-05 .. 2.69e-05 (weight-only 2.69e-05 .. 2.69e-05)
  non-finite: 0 input elements, 6825 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss nan, max layer grad 0.0149
  measured label: nonfinite (non-finite loss in 3/3 batches, 6825 non-finite gradient elements)
"""

import torch
import torch.nn as nn

VOCAB = 5000
PAD = 0


class BagOfEmbeddings(nn.Module):
    def __init__(self, dim=64, num_classes=3):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens):
        mask = (tokens != PAD).unsqueeze(-1).float()
        h = torch.relu(self.proj(self.embed(tokens)))
        pooled = (h * mask).sum(dim=1) / mask.sum(dim=1)  # no guard against empty sequences
        return self.out(pooled)


def build_model():
    torch.manual_seed(41)
    return BagOfEmbeddings()


def make_batch(batch_size, seq_len=20):
    tokens = torch.randint(1, VOCAB, (batch_size, seq_len))
    lengths = torch.randint(0, seq_len + 1, (batch_size,))
    lengths[::4] = 0  # some documents are empty after preprocessing
    tokens[torch.arange(seq_len).unsqueeze(0) >= lengths.unsqueeze(1)] = PAD
    labels = torch.randint(0, 3, (batch_size,))
    return tokens, labels
