"""Label: nonfinite. Sound-event tagger with geometric-mean pooling over frames, trained with
F.binary_cross_entropy on clip-level probabilities.

Frame encoder (Linear-ReLU-Linear-ReLU) -> per-frame event presence squashed with torch.tanh (the
author meant sigmoid: tanh's range is (-1, 1), not (0, 1)) -> geometric-mean pooling over frames,
exp(mean(log p)) -> clip probabilities -> loss_fn: F.binary_cross_entropy.

Mechanism (docs/findings/nonfinite.md, "numerically unsafe ops": log of non-positive values): about
half of the
tanh outputs are negative, so torch.log turns them into NaN inside forward(); with 32 frames every
clip gets a NaN. F.binary_cross_entropy then refuses the NaN probabilities ("all elements of input
should be between 0 and 1") and raises: the raise is the consequence, the log in forward() (right
after `event_head`) is the origin. Fix: "guard-nonfinite" (torch.sigmoid for presence
probabilities, or log(p.clamp_min(1e-6))).

Reference measurement (tests/corpus/reference.py; plain autograd, loss.backward() on 3
batches of 16, seeds 0, 1, 2; torch 2.13.0, CPU; per-layer numbers are means over the 3 batches):
  loss [loss_fn]: raises on 3/3 batches (RuntimeError from F.binary_cross_entropy), every clip
    probability NaN; counted as a non-finite loss (reference.py loss_unless_raised_on_nonfinite)
  non-finite: 0 input elements; no backward (no loss)
  default-init baseline (same model, reset_parameters()): raises the same way
  measured label: nonfinite (non-finite loss in 3/3 batches, 0 non-finite gradient elements)
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

N_MELS = 40
FRAMES = 32
EVENTS = 10


class SoundEventTagger(nn.Module):
    def __init__(self, n_mels=N_MELS, hidden=64, n_events=EVENTS):
        super().__init__()
        self.frame_encoder = nn.Sequential(
            nn.Linear(n_mels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.event_head = nn.Linear(hidden, n_events)

    def forward(self, mels):  # (batch, frames, n_mels) log-mel features
        presence = torch.tanh(self.event_head(self.frame_encoder(mels)))  # per-frame "probability"
        # geometric-mean pooling over frames: robust to a few loud frames
        return torch.exp(torch.log(presence).mean(dim=1))


def build_model():
    torch.manual_seed(91)
    return SoundEventTagger()


def make_batch(batch_size):
    mels = torch.randn(batch_size, FRAMES, N_MELS)
    labels = (torch.rand(batch_size, EVENTS) < 0.2).float()  # multi-label clip tags
    return mels, labels


def loss_fn(output, target):
    return F.binary_cross_entropy(output, target)
