"""Label: nonfinite. Dialogue intent classifier that attends over the previous turns of the
dialogue, with hand-written attention: scores.masked_fill(~mask, float("-inf")), then F.softmax.

Turn encoder (Linear-ReLU) on precomputed utterance embeddings -> query from the current turn,
keys/values from the history turns -> masked dot-product attention over the history ->
[current, context] -> Linear classifier (default cross-entropy on intent labels).

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": softmax of inf): a batch holds
consecutive turns
of dialogues (8 turns each), so the first turn of every dialogue has no history and its mask row
is all False. masked_fill(-inf) makes every score of that row -inf; softmax computes
exp(-inf) / sum(exp(-inf)) = 0 / 0 = NaN. The NaN runs through the context into the logits, the
loss and every gradient. Nothing grew: the finite scores stay below ~3. Fix: "guard-nonfinite"
(mask with torch.finfo(dtype).min, or give rows with no history one position, e.g. a learned
"no history" slot).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: nan, nan, nan
  weight-grad norm per layer, execution order: turn_encoder.0 nan, query 0.00436, key 0.00518,
    value nan, classifier nan
  first/last (turn_encoder.0 / classifier): grad nan, weight-grad nan
  grad/weight range: nan .. nan (query 9.78e-04, key 0.00111: the softmax backward keeps them finite)
  non-finite: 0 input elements, 21956 gradient elements (3 batches: turn_encoder.0 7154, value
    12480, classifier 2322); 2 of 16 attention rows fully masked per batch (turns 0 and 8)
  default-init baseline (same model, reset_parameters()): loss nan, max layer grad nan
  measured label: nonfinite (non-finite loss in 3/3 batches, 21956 non-finite gradient elements)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DIM = 48
TURNS = 8
N_INTENTS = 6


class HistoryAttentionIntentClassifier(nn.Module):
    def __init__(self, dim=DIM, hidden=64, n_intents=N_INTENTS):
        super().__init__()
        self.turn_encoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(2 * hidden, n_intents)

    def forward(self, current, history, history_mask):
        # current: (batch, dim); history: (batch, turns, dim); history_mask: (batch, turns) bool
        h_now = self.turn_encoder(current)
        h_hist = self.turn_encoder(history)
        q = self.query(h_now).unsqueeze(1)  # (batch, 1, hidden)
        k, v = self.key(h_hist), self.value(h_hist)
        scores = (q @ k.transpose(1, 2)).squeeze(1) / math.sqrt(k.size(-1))  # (batch, turns)
        scores = scores.masked_fill(~history_mask, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        context = (weights.unsqueeze(-1) * v).sum(dim=1)
        return self.classifier(torch.cat([h_now, context], dim=-1))


def build_model():
    torch.manual_seed(17)
    return HistoryAttentionIntentClassifier()


def make_batch(batch_size):
    # consecutive turns of dialogues: turn t has the t previous turns as its history
    turn = torch.arange(batch_size) % TURNS
    history_mask = torch.arange(TURNS).unsqueeze(0) < turn.unsqueeze(1)
    history = torch.randn(batch_size, TURNS, DIM) * history_mask.unsqueeze(-1)
    current = torch.randn(batch_size, DIM)
    intents = torch.randint(0, N_INTENTS, (batch_size,))
    return (current, history, history_mask), intents
