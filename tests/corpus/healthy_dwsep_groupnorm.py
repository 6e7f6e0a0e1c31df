"""Label: healthy. MobileNet-style depthwise-separable CNN with GroupNorm, timm-like structure
(stem / blocks / forward_features / forward_head), 5 separable blocks with SiLU.

Mechanism: every conv is followed by GroupNorm (batch-size independent normalisation,
docs/fixes/add-normalization.md), and the stride-1 blocks with equal widths are residual
("add-skip"); no cause applies.

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 2.34, 2.25, 2.35
  weight-grad norm per layer, execution order: stem.0 0.292, stem.1 0.0235,
    blocks.0.conv_dw 0.173, blocks.0.gn1 0.0345, blocks.0.conv_pw 0.242, blocks.0.gn2 0.0406,
    blocks.1.conv_dw 0.146, blocks.1.gn1 0.033, blocks.1.conv_pw 0.283, blocks.1.gn2 0.038,
    blocks.2.conv_dw 0.247, blocks.2.gn1 0.0588, blocks.2.conv_pw 0.453, blocks.2.gn2 0.0846,
    blocks.3.conv_dw 0.207, blocks.3.gn1 0.0591, blocks.3.conv_pw 0.621, blocks.3.gn2 0.0831,
    blocks.4.conv_dw 0.23, blocks.4.gn1 0.0732, blocks.4.conv_pw 0.781, blocks.4.gn2 0.0756,
    classifier 1.28
  whole-layer grad norm (weights + biases/others): stem.0 0.292, stem.1 0.033,
    blocks.0.conv_dw 0.173, blocks.0.gn1 0.0467, blocks.0.conv_pw 0.242, blocks.0.gn2 0.0516,
    blocks.1.conv_dw 0.146, blocks.1.gn1 0.0482, blocks.1.conv_pw 0.283, blocks.1.gn2 0.0549,
    blocks.2.conv_dw 0.247, blocks.2.gn1 0.0883, blocks.2.conv_pw 0.453, blocks.2.gn2 0.116,
    blocks.3.conv_dw 0.207, blocks.3.gn1 0.0989, blocks.3.conv_pw 0.621, blocks.3.gn2 0.126,
    blocks.4.conv_dw 0.23, blocks.4.gn1 0.122, blocks.4.conv_pw 0.781, blocks.4.gn2 0.136,
    classifier 1.3
  first/last (stem.0 / classifier): grad 0.225, weight-grad 0.229
  grad/weight range: 0.00825 .. 0.686 (weight-only 0.00583 .. 0.673)
  default-init baseline (same model, reset_parameters()): loss 2.34, max layer grad 1.35
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


class DepthwiseSeparable(nn.Module):
    def __init__(self, c_in, c_out, stride=1, groups=8):
        super().__init__()
        self.conv_dw = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False)
        self.gn1 = nn.GroupNorm(groups, c_in)
        self.act1 = nn.SiLU()
        self.conv_pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, c_out)
        self.act2 = nn.SiLU()
        self.has_skip = stride == 1 and c_in == c_out

    def forward(self, x):
        shortcut = x
        x = self.act1(self.gn1(self.conv_dw(x)))
        x = self.gn2(self.conv_pw(x))
        if self.has_skip:
            x = x + shortcut
        return self.act2(x)


class SeparableNet(nn.Module):
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False),
            nn.GroupNorm(8, 16),
            nn.SiLU(),
        )
        self.blocks = nn.Sequential(
            DepthwiseSeparable(16, 32, stride=2),
            DepthwiseSeparable(32, 32),
            DepthwiseSeparable(32, 64, stride=2),
            DepthwiseSeparable(64, 64),
            DepthwiseSeparable(64, 64),
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(0.2)
        self.classifier = nn.Linear(64, num_classes)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward_head(self, x):
        x = self.global_pool(x).flatten(1)
        return self.classifier(self.head_drop(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def build_model():
    torch.manual_seed(12)
    return SeparableNet()


def make_batch(batch_size):
    return torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
