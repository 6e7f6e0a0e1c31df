"""A 3-layer ReLU MLP regressor with PyTorch's default init (sane), for --steps tests: at SGD
lr 0.45 the steps overshoot and the loss grows by orders of magnitude, zig-zagging across the probe
batches (a step lowers the loss, the next multiplies it); at lr 0.01 it trains.
tests/test_dynamics_weights.py replays the steps with plain autograd."""

import torch
import torch.nn as nn


def build_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def make_batch(batch_size):
    x = torch.randn(batch_size, 32)
    return x, x[:, :1] * 3 + 0.1 * torch.randn(batch_size, 1)
