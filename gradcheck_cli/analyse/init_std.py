"""Pure: the weight std that preserves signal variance for a layer, and the band accepted as sane.

Variance-preserving std for the activation that follows the layer (docs/findings/init-scale.md):
* ReLU family (ReLU, LeakyReLU, PReLU, GELU, SiLU, ELU, ...): He, sqrt(2 / fan_in)
  (He, Zhang, Ren & Sun 2015, "Delving deep into rectifiers").
* SELU: LeCun, sqrt(1 / fan_in) (Klambauer et al. 2017, self-normalizing networks).
* tanh, sigmoid, softsign, hardtanh or none (linear): Xavier/Glorot, sqrt(2 / (fan_in + fan_out))
  (Glorot & Bengio 2010); sqrt(1 / fan_in) when the fan-out is unknown.

PyTorch's own default init (nn.Linear / nn.Conv*: kaiming_uniform_ with a = sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)) is a sane init too: models built with it
train, and the tool must stay silent on them. So the accepted band runs from the smaller of the
two stds divided by a margin to the larger times the margin (Thresholds.init_band_margin,
analyse/thresholds.py). The margin is 2: a std off by 2x scales the
signal by 2x per layer, which compounds to 2^depth (the same factor the recommendation catalogue
used before this module existed); every standard init (He, Xavier, LeCun, PyTorch default, their
uniform variants, Xavier with tanh gain 5/3) lies inside the band for square layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradcheck_cli.activations import RELU_FAMILY
from gradcheck_cli.analyse.thresholds import DEFAULTS

SCHEME_NAMES = {"he": "He", "xavier": "Xavier", "lecun": "LeCun"}


@dataclass(frozen=True)
class InitTarget:
    scheme: str
    """he | lecun | xavier: the variance-preserving init for the activation that follows."""
    std: float
    """The std that scheme gives for this layer."""
    default_std: float
    """PyTorch's default-init std, 1 / sqrt(3 fan_in)."""
    low: float
    high: float
    """The accepted band [min(sane stds) / margin, max(sane stds) * margin] (init_target)."""

    def mismatch(self, measured: float) -> float:
        """How many times outside the band: < 1 too small (measured / low), > 1 too large
        (measured / high), exactly 1 inside."""
        if measured < self.low:
            return measured / self.low
        if measured > self.high:
            return measured / self.high
        return 1.0


def init_target(fan_in: int, fan_out: int | None, follower: str | None,
                margin: float = DEFAULTS.init_band_margin) -> InitTarget:
    """The variance-preserving std for a layer of this fan-in/fan-out followed by `follower`, and
    the band of sane stds widened by `margin` (Thresholds.init_band_margin) on both sides."""
    if follower in RELU_FAMILY:
        scheme, std = "he", math.sqrt(2.0 / fan_in)
    elif follower == "SELU":
        scheme, std = "lecun", math.sqrt(1.0 / fan_in)
    else:
        scheme = "xavier"
        std = math.sqrt(2.0 / (fan_in + fan_out)) if fan_out else math.sqrt(1.0 / fan_in)
    default = 1.0 / math.sqrt(3.0 * fan_in)
    # He with mode="fan_out" (torchvision's ResNet/EfficientNet/RegNet convs) preserves the
    # gradient's variance instead of the activation's; it is as standard as fan_in mode.
    sane = [std, default]
    if scheme == "he" and fan_out:
        sane.append(math.sqrt(2.0 / fan_out))
    return InitTarget(scheme, std, default, min(sane) / margin, max(sane) * margin)
