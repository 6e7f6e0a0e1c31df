"""A small classifier MLP with He init, the example model the shipped recipes scan.

It follows the model file contract (README, "The model file contract"): build_model() returns the
module, make_batch(batch_size) returns (inputs, target), and the cross-entropy loss is chosen from
the integer targets.
"""

import torch
from torch import nn


def build_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(),
        nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch_size, 32), torch.randint(0, 10, (batch_size,))
