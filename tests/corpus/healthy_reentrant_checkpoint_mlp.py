"""Label: healthy. A residual MLP whose blocks run under torch.utils.checkpoint(use_reentrant=True).

Mechanism: four pre-LN residual blocks (LayerNorm, Linear, GELU, Linear, x + F(x)) of width 64,
each wrapped in the reentrant activation checkpoint that older training code (and
`gradient_checkpointing_enable()` in older library versions) uses to save memory; default init.
Residual paths and LayerNorm keep the scale, nothing vanishes or explodes. The checkpoint is the
point: its backward re-runs each block and calls .backward() itself, which
torch.autograd.grad refuses; plain autograd (loss.backward()) gives the numbers below.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.87, 1.85, 1.73
  grad norm per layer, execution order (first 3 and last 3 of 14): embed 0.665, blocks.0.norm
    0.0419, blocks.0.fc1 0.416, blocks.3.fc1 0.354, blocks.3.fc2 0.505, head 1.28
  first/last (embed / head): grad 0.519, weight-grad 0.513
  grad/weight range: 0.0045 .. 0.9 (weight-only 0.00305 .. 0.885)
  signal through the dense layers: output-grad first/last 1.05, activation last/first 0.365
  default-init baseline (same model, reset_parameters()): loss 1.94, max layer grad 1.37
  measured label: healthy (no rule fired)
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm(x))))


class CheckpointedResMLP(nn.Module):
    def __init__(self, features=20, width=64, blocks=4, classes=6):
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=True)
        return self.head(h)


def build_model():
    torch.manual_seed(0)
    return CheckpointedResMLP()


def make_batch(batch_size):
    return torch.randn(batch_size, 20), torch.randint(0, 6, (batch_size,))
