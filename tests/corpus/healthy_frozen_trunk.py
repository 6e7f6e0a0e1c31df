"""Label: healthy. Transfer learning: a frozen "pretrained" CNN backbone + a trainable MLP head.

The backbone (conv-BN-ReLU x3) has requires_grad=False on every parameter, as after
`for p in backbone.parameters(): p.requires_grad = False`; its weights are set up like a
trained checkpoint would be (Kaiming init, BN running stats warmed on data). Only the head
(Linear-ReLU-Dropout-Linear) trains.

Mechanism: frozen layers get no gradient by design: that is "frozen", not vanishing. The
trainable head is shallow with default init (none of the causes in docs/findings/ applies).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: 1.64, 1.64, 1.66
  weight-grad norm per layer, execution order: backbone.stem.0 (frozen),
    backbone.stem.1 (frozen), backbone.stage1.0 (frozen), backbone.stage1.1 (frozen),
    backbone.stage2.0 (frozen), backbone.stage2.1 (frozen), head.0 0.363, head.3 0.56
  first/last (head.0 / head.3): grad 0.63, weight-grad 0.648
  grad/weight range: 0.0578 .. 0.47 (weight-only 0.0552 .. 0.436)
  default-init baseline (same model, reset_parameters()): loss 1.62, max layer grad 0.494
  measured label: healthy (no rule fired)
"""

import torch
import torch.nn as nn


def conv_bn(c_in, c_out, stride):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 1)
        self.stage1 = conv_bn(16, 32, 2)
        self.stage2 = conv_bn(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = 64

    def forward(self, x):
        return self.pool(self.stage2(self.stage1(self.stem(x)))).flatten(1)


class FineTuneModel(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.backbone = Backbone()
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # "load pretrained weights": warm BN statistics, then freeze the trunk
        with torch.no_grad():
            self.backbone.train()
            for _ in range(4):
                self.backbone(torch.randn(32, 3, 32, 32))
        for p in self.backbone.parameters():
            p.requires_grad = False
        self.head = nn.Sequential(
            nn.Linear(self.backbone.out_features, 128),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.head(self.backbone(x))


def build_model():
    torch.manual_seed(9)
    return FineTuneModel()


def make_batch(batch_size):
    return torch.randn(batch_size, 3, 32, 32), torch.randint(0, 5, (batch_size,))
