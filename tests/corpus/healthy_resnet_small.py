"""Label: healthy. CIFAR-style ResNet-14 (3 stages x 2 BasicBlocks, BatchNorm, identity/1x1
shortcuts).

Mechanism: residual blocks y = x + F(x) give the gradient a path with factor 1
(docs/fixes/add-skip.md) and BatchNorm keeps the activation scale fixed
(docs/fixes/add-normalization.md); Kaiming-normal init for convs, BN weight 1 / bias 0 (torchvision's recipe).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.38, 2.51, 2.25
  weight-grad norm per layer, execution order: conv1 1.28, bn1 0.12, layer1.0.conv1 1.02,
    layer1.0.bn1 0.107, layer1.0.conv2 0.803, layer1.0.bn2 0.0691, layer1.1.conv1 0.695,
    layer1.1.bn1 0.0691, layer1.1.conv2 0.56, layer1.1.bn2 0.0509, layer2.0.conv1 0.757,
    layer2.0.bn1 0.0512, layer2.0.conv2 0.629, layer2.0.bn2 0.0511, layer2.0.shortcut.0 0.21,
    layer2.0.shortcut.1 0.0414, layer2.1.conv1 0.584, layer2.1.bn1 0.0422, layer2.1.conv2 0.49,
    layer2.1.bn2 0.035, layer3.0.conv1 0.676, layer3.0.bn1 0.035, layer3.0.conv2 0.571,
    layer3.0.bn2 0.0474, layer3.0.shortcut.0 0.182, layer3.0.shortcut.1 0.0458,
    layer3.1.conv1 0.513, layer3.1.bn1 0.0242, layer3.1.conv2 0.432, layer3.1.bn2 0.0516,
    linear 1.61
  whole-layer grad norm (weights + biases/others): conv1 1.28, bn1 0.159, layer1.0.conv1 1.02,
    layer1.0.bn1 0.141, layer1.0.conv2 0.803, layer1.0.bn2 0.0932, layer1.1.conv1 0.695,
    layer1.1.bn1 0.0915, layer1.1.conv2 0.56, layer1.1.bn2 0.062, layer2.0.conv1 0.757,
    layer2.0.bn1 0.0663, layer2.0.conv2 0.629, layer2.0.bn2 0.0654, layer2.0.shortcut.0 0.21,
    layer2.0.shortcut.1 0.0584, layer2.1.conv1 0.584, layer2.1.bn1 0.0536, layer2.1.conv2 0.49,
    layer2.1.bn2 0.044, layer3.0.conv1 0.676, layer3.0.bn1 0.0452, layer3.0.conv2 0.571,
    layer3.0.bn2 0.0777, layer3.0.shortcut.0 0.182, layer3.0.shortcut.1 0.0767,
    layer3.1.conv1 0.513, layer3.1.bn1 0.0324, layer3.1.conv2 0.432, layer3.1.bn2 0.106,
    linear 1.63
  first/last (conv1 / linear): grad 0.787, weight-grad 0.795
  grad/weight range: 0.00405 .. 0.863 (weight-only 0.00303 .. 0.854)
  default-init baseline (same model, reset_parameters()): loss 2.41, max layer grad 2.33
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2), widths=(16, 32, 64), num_classes=10):
        super().__init__()
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[0], num_blocks[0], stride=1)
        self.layer2 = self._make_layer(widths[1], num_blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], num_blocks[2], stride=2)
        self.linear = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def build_model():
    torch.manual_seed(3)
    return ResNet()


def make_batch(batch_size):
    x = torch.randn(batch_size, 3, 16, 16)
    y = torch.randint(0, 10, (batch_size,))
    return x, y
