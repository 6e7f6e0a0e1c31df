"""Pure: the activation types gradcheck knows, by class name (no torch here, so the catalogue,
fixes and init targets can use them without importing torch).

Flat regions (docs/findings/saturated-activation.md): sigmoid outside ~[0.02, 0.98], tanh with |y| > ~0.96; softsign at
the same ~8%-of-peak derivative level; hardtanh/hardsigmoid at their clamp values.
"""

from __future__ import annotations

# Flat region (low, high): an output <= low or >= high is saturated (strict for the soft ones).
FLAT_REGION = {"Sigmoid": (0.02, 0.98), "Tanh": (-0.96, 0.96), "Softsign": (-0.72, 0.72),
               "Hardtanh": (-1.0, 1.0), "Hardsigmoid": (0.0, 1.0)}
SATURATING = frozenset(FLAT_REGION)
HARD_CLAMPS = {"Hardtanh", "Hardsigmoid"}
DEAD_ON_ZERO = {"ReLU", "ReLU6", "Hardswish"}
"""Activations whose gradient is exactly 0 wherever their output is 0."""
RELU_FAMILY = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "GELU", "SiLU",
               "Mish", "Softplus", "Hardswish"}
"""Rectifiers whose variance-preserving init is He's (SELU has LeCun's)."""
RECTIFIERS = RELU_FAMILY | {"SELU"}
KNOWN = set(FLAT_REGION) | RECTIFIERS
