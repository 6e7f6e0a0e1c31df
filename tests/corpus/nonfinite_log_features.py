"""Label: nonfinite. Audio classifier with a learnable filterbank followed by log compression
(a "learnable log-mel front end"): log(filterbank(power_spectrum)) without a floor, then a small
MLP.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": log of non-positive values): the
filterbank is a
plain nn.Linear (default init, weights of both signs), so about half of its outputs are
negative and torch.log turns them into NaN inside forward(); the NaN propagates through the
classifier to the logits and the loss, and backward makes every gradient NaN. The first module
whose output is non-finite is right after `frontend` (the log is a functional op). Fix:
"guard-nonfinite" (log(relu(x) + 1e-6), or softplus / squared filterbank weights).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [cross_entropy]: nan, nan, nan
  weight-grad norm per layer, execution order: frontend nan, classifier.0 nan, classifier.2 nan
  first/last (frontend / classifier.2): grad nan, weight-grad nan
  grad/weight range: nan .. nan (weight-only nan .. nan)
  non-finite: 0 input elements, 24912 gradient elements (3 batches)
  default-init baseline (same model, reset_parameters()): loss nan, max layer grad nan
  measured label: nonfinite (non-finite loss in 3/3 batches, 24912 non-finite gradient elements)
"""

import torch
import torch.nn as nn


class LogFilterbankClassifier(nn.Module):
    def __init__(self, n_freq=129, n_filters=40, n_classes=8):
        super().__init__()
        self.frontend = nn.Linear(n_freq, n_filters, bias=False)  # learnable filterbank
        self.classifier = nn.Sequential(
            nn.Linear(n_filters, 64), nn.ReLU(), nn.Linear(64, n_classes)
        )

    def forward(self, spec):  # spec: (batch, frames, n_freq) power spectrogram
        feats = torch.log(self.frontend(spec))
        return self.classifier(feats.mean(dim=1))


def build_model():
    torch.manual_seed(45)
    return LogFilterbankClassifier()


def make_batch(batch_size):
    spec = torch.randn(batch_size, 50, 129).pow(2)  # non-negative power spectrum
    labels = torch.randint(0, 8, (batch_size,))
    return spec, labels
