"""Label: healthy. fastText-style text classifier: nn.EmbeddingBag(sparse=True) + Linear.

Mechanism: the mean of the token embeddings of each document, then a linear classifier, trained
with sparse gradients (`sparse=True`, the way torch's text classification tutorial builds it, for
torch.optim.SparseAdam / SGD). Two layers, no depth, PyTorch's default init (N(0, 1) embeddings):
no geometric decay or growth. The embedding's gradient is a sparse tensor with repeated indices
(a token used twice in a batch), so its norm must be taken after summing duplicates.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.36, 1.42, 1.38
  grad norm per layer, execution order: embedding 0.0919, fc 0.239
  first/last (embedding / fc): grad 0.384, weight-grad 0.97
  grad/weight range: 0.00126 .. 0.0736 (weight-only 0.00126 .. 0.0292)
  default-init baseline (same model, reset_parameters()): loss 1.39, max layer grad 0.395
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn


class BagOfEmbeddings(nn.Module):
    def __init__(self, vocab=2000, dim=32, classes=4):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab, dim, mode="mean", sparse=True)
        self.fc = nn.Linear(dim, classes)
        nn.init.uniform_(self.embedding.weight, -0.5, 0.5)  # the tutorial's init
        nn.init.uniform_(self.fc.weight, -0.5, 0.5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


def build_model():
    torch.manual_seed(0)
    return BagOfEmbeddings()


def make_batch(batch_size):
    lengths = torch.randint(5, 30, (batch_size,))
    # Zipf-like token ids: frequent tokens repeat within and across documents.
    text = (torch.rand(int(lengths.sum())) ** 3 * 2000).long()
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return (text, offsets), torch.randint(0, 4, (batch_size,))
