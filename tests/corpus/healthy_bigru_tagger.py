"""Label: healthy. Sequence tagger (NER/POS style): Embedding -> 2-layer bidirectional GRU
(batch_first) -> Linear over the tags, cross-entropy at every token of a 24-token sentence.

Mechanism: gated recurrence in both directions (docs/fixes/gated-rnn.md) with a loss at every
position, so every token has a short path to the loss from both sides; PyTorch default init.
A bidirectional layer sums the gradients of its two directions at every input step, and the
forward direction's far end (the first token) is the reverse direction's near end: neither end
is starved.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 2.2, 2.21, 2.21
  whole-layer grad norm per layer, execution order: embed 0.0038, gru 0.0736, tagger 0.103
  weight-grad norm: embed 0.0038, gru 0.0593, tagger 0.0809
  first/last (embed / tagger): grad 0.037, weight-grad 0.047
  grad/weight range: 4.21e-05 .. 0.0574 (weight-only 4.21e-05 .. 0.0453)
  input grad of the GRU over 24 steps: t_first 6.84e-04, t_last 6.08e-04, t_first/t_last 1.13
  default-init baseline (same model, reset_parameters()): loss 2.2, max layer grad 0.0953
  measured label: healthy (no rule fired); also with seeds 10, 11, 12
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 500
TAGS = 9
SENTENCE = 24


class BiGRUTagger(nn.Module):
    def __init__(self, vocab=VOCAB, embed=16, hidden=32, tags=TAGS):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.tagger = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):  # (batch, time)
        out, _ = self.gru(self.embed(tokens))  # (batch, time, 2 * hidden)
        return self.tagger(out)  # (batch, time, tags)


def build_model():
    torch.manual_seed(41)
    return BiGRUTagger()


def make_batch(batch_size):
    tokens = torch.randint(1, VOCAB, (batch_size, SENTENCE))
    return tokens, torch.randint(0, TAGS, (batch_size, SENTENCE))


def loss_fn(output, target):
    return F.cross_entropy(output.reshape(-1, TAGS), target.reshape(-1))
