"""A 6-layer ReLU MLP classifier whose weights were drawn from N(0, 1) (init too large: He would be
std sqrt(2/64) = 0.18), for --steps tests: its first SGD step already moves the head by more than
its own norm, and the loss turns NaN/Inf within the probe's steps. tests/test_dynamics_weights.py
checks with plain autograd that the built weights have std ~1 and that the steps diverge."""

import torch
import torch.nn as nn


def build_model():
    torch.manual_seed(5)
    layers, width = [], 64
    for _ in range(5):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def make_batch(batch_size):
    return torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
