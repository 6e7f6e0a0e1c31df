"""Label: healthy. Word-level LSTM language model (PyTorch word_language_model style).

Embedding(1000, 64) -> 2-layer LSTM(128) with dropout -> Linear decoder over the vocabulary;
next-token cross-entropy at every position of a 30-token BPTT window.

Mechanism: gated recurrence (docs/fixes/gated-rnn.md) with a loss at every step; uniform
init(-0.1, 0.1) for the encoder/decoder as in the PyTorch example. Only the ~380 distinct tokens
in a batch (480 positions) get embedding gradient (vocab 1000 >> tokens seen), so the
embedding's gradient is sparse by rows; that is normal, not vanishing.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 6.91, 6.91, 6.91
  weight-grad norm per layer, execution order: encoder 0.00101, rnn 0.0106, decoder 0.0214
  whole-layer grad norm (weights + biases/others): encoder 0.00101, rnn 0.0292, decoder 0.0507
  first/last (encoder / decoder): grad 0.0199, weight-grad 0.0472
  grad/weight range: 6.92e-05 .. 0.00245 (weight-only 6.92e-05 .. 0.00104)
  input grad of the RNN over 30 steps: t_first 1.69e-04, t_last 9.47e-05, t_first/t_last 1.78
  default-init baseline (same model, reset_parameters()): loss 6.91, max layer grad 0.0525
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 1000
BPTT = 30


class RNNModel(nn.Module):
    def __init__(self, ntoken=VOCAB, ninp=64, nhid=128, nlayers=2, dropout=0.2):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input):  # input: (seq_len, batch) token ids
        emb = self.drop(self.encoder(input))
        output, _hidden = self.rnn(emb)
        output = self.drop(output)
        return self.decoder(output)  # (seq_len, batch, ntoken)


def build_model():
    torch.manual_seed(6)
    return RNNModel()


def make_batch(batch_size):
    stream = torch.randint(0, VOCAB, (BPTT + 1, batch_size))
    return stream[:-1], stream[1:]


def loss_fn(output, target):
    return F.cross_entropy(output.reshape(-1, output.size(-1)), target.reshape(-1))
