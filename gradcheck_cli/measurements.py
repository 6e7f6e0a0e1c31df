"""The probe's results: plain numbers per layer and per scan (no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerProbe:
    """Raw measurements of one layer (a module owning parameters directly)."""

    name: str
    type_name: str
    params: int
    param_dim: int
    """Largest number of dimensions among the layer's parameters (2+ means a weight matrix)."""
    fan_in: int | None
    """Fan-in of the layer's weight matrix or kernel (None without one)."""
    weight_std: float | None
    """Standard deviation of that weight, to compare with the variance-preserving init."""
    trainable: bool
    order: int
    """Execution order of the first call; -1 when the module never ran."""
    weight_norm: float
    grad_norms: tuple[float, ...]
    """L2 norm of the layer's own parameter gradients, one per probe batch (empty: no gradient)."""
    nonfinite_grads: int
    output_rms: float | None
    output_grad_rms: float | None
    output_nonfinite: bool
    activation: dict[str, Any] = field(default_factory=dict)
    """Statistics of the parameter-free activation module fed by this layer, if any."""
    step_grad_rms: tuple[float, ...] = ()
    """Recurrent layers: RMS of the gradient w.r.t. the input at each time step (first → last)."""


@dataclass(frozen=True)
class ProbeResult:
    layers: tuple[LayerProbe, ...]
    losses: tuple[float, ...]
    loss_kind: str
    nonfinite_input: bool
    first_nonfinite_module: str | None
    """First module in execution order whose output turned non-finite (None: forward was finite)."""
    has_normalization: bool
    step_losses: tuple[float, ...] = ()
    loss_trace: tuple[float, ...] = ()
    """Every loss in the order computed: a probe batch, the steps after it, the next batch, ..."""
