"""Label: healthy. Weight sharing: the same residual block is applied twice (ALBERT/universal-
transformer style recurrence in depth), with nn.ReLU(inplace=True) inside the block.

Mechanism: the block is one module (one row) called twice, so its gradient is the sum of two
contributions; the residual connection and LayerNorm keep the gain near 1 (docs/fixes/add-skip.md,
docs/fixes/add-normalization.md). In-place ReLU is fine for autograd (and breaks full backward
hooks, which is why a probe must not use them).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.52, 1.57, 1.51
  weight-grad norm per layer, execution order: inp 0.673, block.norm 0.0587, block.fc1 0.746,
    block.fc2 1.33, out 1.36
  whole-layer grad norm (weights + biases/others): inp 0.699, block.norm 0.0882,
    block.fc1 0.753, block.fc2 1.37, out 1.38
  first/last (inp / out): grad 0.505, weight-grad 0.496
  grad/weight range: 0.011 .. 1.22 (weight-only 0.00734 .. 1.2)
  default-init baseline (same model, reset_parameters()): loss 1.5, max layer grad 1.34
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


class SharedBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 2)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class RecurrentDepthNet(nn.Module):
    def __init__(self, in_dim=20, dim=64, num_classes=4, n_repeats=2):
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.block = SharedBlock(dim)
        self.n_repeats = n_repeats
        self.out = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.inp(x)
        for _ in range(self.n_repeats):
            h = self.block(h)  # same weights every time
        return self.out(h)


def build_model():
    torch.manual_seed(11)
    return RecurrentDepthNet()


def make_batch(batch_size):
    return torch.randn(batch_size, 20), torch.randint(0, 4, (batch_size,))
