"""Label: healthy. LeNet-5 style CNN (conv-relu-pool x2, three Linear layers) on 1x32x32 images.

Mechanism: shallow (5 parameterised layers) with PyTorch default init and ReLU; no saturating
activation, no mis-scaled init, no depth problem (none of the causes in docs/findings/ applies).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: 2.31, 2.31, 2.32
  weight-grad norm per layer, execution order: conv1 0.0537, conv2 0.156, fc1 0.272, fc2 0.163,
    fc3 0.149
  whole-layer grad norm (weights + biases/others): conv1 0.0541, conv2 0.157, fc1 0.275,
    fc2 0.193, fc3 0.297
  first/last (conv1 / fc3): grad 0.183, weight-grad 0.359
  grad/weight range: 0.0365 .. 0.163 (weight-only 0.0309 .. 0.0822)
  default-init baseline (same model, reset_parameters()): loss 2.31, max layer grad 0.319
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet5(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model():
    torch.manual_seed(2)
    return LeNet5()


def make_batch(batch_size):
    # MNIST-like: normalised with mean 0.1307, std 0.3081
    images = (torch.rand(batch_size, 1, 32, 32) - 0.1307) / 0.3081
    labels = torch.randint(0, 10, (batch_size,))
    return images, labels


def loss_fn(output, target):
    return F.cross_entropy(output, target)
