"""Per-unit activation statistics for the probe: flat-region (saturated) and dead units.

The session (hooks.py) feeds every output of an activation to an `ActivationSite`: the outputs of parameter-free
activation modules (nn.Sigmoid, nn.ReLU, ...) from its forward hooks, and, through
`FunctionalWatch` (a TorchFunctionMode active only during the probe's forward passes), the
functional calls a forward makes itself (torch.sigmoid, torch.tanh, F.relu, x.relu(), ...). A site
is one activation fed by one layer: (activation module or enclosing module + function, producer).

Definitions (used by checks/saturated_activation.py and checks/dead_relu.py):

* A unit is a feature or a channel: dim 1 of a conv-like output (N, C, ...) (outputs of 4+ dims, or
  of 3 dims produced by a convolution, i.e. a Conv layer with a kernel of 3+ dims, or a channel
  norm), else the last dim of (N, ..., F). Hugging Face's `Conv1D` (GPT-2) is a linear layer with a
  2-D weight: its units are its features, not the sequence positions of its (N, T, F) output.
  Counts run over every sample and position of every probe batch.
* A parameter-free leaf module whose output is, elementwise, a known rectifier of its input is that
  rectifier, whatever it computes inside: the tanh of a tanh-approximated GELU (Hugging Face's
  `NewGELUActivation`/`FastGELUActivation`, minGPT's `NewGELU`) or the sigmoid of a hand-written
  SiLU/QuickGELU is part of a GELU/SiLU, not a Tanh/Sigmoid activation of the layer before it
  (`CompositeActivations`: the inner calls of such a module's first call are held back until
  its output can be compared with GELU (exact, tanh, sigmoid forms), SiLU and Mish of its input).
  A GELU formula written inline in a larger module's forward (a function, not a module of its
  own) is not told apart: its tanh still counts as a Tanh of the layer before it.
* Flat region (docs/findings/saturated-activation.md): sigmoid outside [0.02, 0.98]; tanh |y| > 0.96. Both
  are where the derivative is below ~8% of its peak (0.0196 / 0.25 and 1 - 0.96^2 = 0.078);
  softsign uses the same level: its derivative (1 - |y|)^2 < 0.078 when |y| > 0.72. Hardtanh and
  hardsigmoid are flat (derivative exactly 0) at and beyond their clamp values.
* A unit is saturated when more than half of its outputs lie in the flat region.
* A unit fires when an output is non-zero; it is dead when it never fires on any probe sample.
  Only activations whose gradient is exactly 0 where the output is 0 are counted (ReLU, ReLU6,
  Hardswish); LeakyReLU, ELU, GELU, SiLU, ... always pass some gradient and are the fix.

No tensor leaves this module: `ActivationSite.counts()` returns plain numbers (statistics.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from gradcheck_cli.activations import DEAD_ON_ZERO, FLAT_REGION, HARD_CLAMPS
from gradcheck_cli.measure.attention_scores import ScoreTracker
from gradcheck_cli.measure.statistics import ActivationCounts

# torch function names (as TorchFunctionMode sees them) -> the module type they compute.
FUNCTIONAL = {"sigmoid": "Sigmoid", "sigmoid_": "Sigmoid", "special_expit": "Sigmoid",
              "tanh": "Tanh", "tanh_": "Tanh", "softsign": "Softsign", "hardtanh": "Hardtanh",
              "hardtanh_": "Hardtanh", "hardsigmoid": "Hardsigmoid", "relu": "ReLU", "relu_": "ReLU",
              "relu6": "ReLU6", "hardswish": "Hardswish", "leaky_relu": "LeakyReLU",
              "leaky_relu_": "LeakyReLU", "prelu": "PReLU", "rrelu": "RReLU", "elu": "ELU",
              "elu_": "ELU", "celu": "CELU", "selu": "SELU", "gelu": "GELU", "silu": "SiLU",
              "mish": "Mish", "softplus": "Softplus"}
_ADDS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_CHANNEL_NORMS = ("BatchNorm", "InstanceNorm", "GroupNorm")


def channels_first_layer(module: nn.Module) -> bool:
    """Whether a layer's 3-D output is (N, C, L): a convolution (a Conv layer whose kernel has 3+
    dims, its own or a weight-norm parametrization's; Hugging Face's 2-D `Conv1D` is a linear
    layer) or a channel norm."""
    type_name = type(module).__name__
    if type_name.startswith(_CHANNEL_NORMS):
        return True
    return "Conv" in type_name and any(p.dim() >= 3 for p in module.parameters())


def unit_dim(out: torch.Tensor, channels_first: bool) -> int:
    """The dimension that indexes units (see the module docstring); `channels_first`: the
    producing layer's channels_first_layer."""
    if out.dim() <= 1:
        return 0
    return 1 if out.dim() >= 4 or (out.dim() == 3 and channels_first) else out.dim() - 1


@dataclass
class ActivationSite:
    """Counts for one activation fed by one layer, accumulated on the device."""

    where: str
    """The activation module ("layers.1"), or the enclosing module and function ("block:tanh")."""
    function: str
    producer: str
    flat: tuple[float, float] | None = None
    saturated: torch.Tensor | None = None
    """Per unit: outputs in the flat region."""
    fired: torch.Tensor | None = None
    """Per unit: fired at least once (DEAD_ON_ZERO activations only)."""
    per_unit: int = 0
    """Outputs seen per unit (samples x positions, over all batches)."""
    calls: int = 0

    def record(self, out: torch.Tensor, channels_first: bool) -> None:
        if not out.is_floating_point() or out.dim() == 0:
            return
        dim = unit_dim(out, channels_first)
        units = out.shape[dim]
        known = self.saturated if self.saturated is not None else self.fired
        if known is not None and known.shape[0] != units:
            return  # the same site with another width: keep the first one's units
        other = [d for d in range(out.dim()) if d != dim]
        self.per_unit += out.numel() // max(units, 1)
        self.calls += 1
        if self.flat is not None:
            low, high = self.flat
            if self.function in HARD_CLAMPS:
                flat = (out <= low) | (out >= high)
            else:
                flat = (out < low) | (out > high)
            counts = flat.sum(dim=other, dtype=torch.float32) if other else flat.float()
            self.saturated = counts if self.saturated is None else self.saturated + counts
        if self.function in DEAD_ON_ZERO:
            fired = (out != 0).any(dim=other) if other else out != 0
            self.fired = fired if self.fired is None else self.fired | fired

    def counts(self) -> ActivationCounts:
        """The counts in plain numbers (records: ActivationCounts; one host transfer per tensor)."""
        return ActivationCounts(
            self.function, self.where, self.per_unit,
            saturated=tuple(self.saturated.tolist()) if self.saturated is not None and self.per_unit else None,
            fired=tuple(self.fired.tolist()) if self.fired is not None and self.per_unit else None)


def new_site(where: str, function: str, producer: str, module: Any = None,
             args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> ActivationSite:
    """A site with the flat region of its activation (a Hardtanh's own clamp values)."""
    flat = FLAT_REGION.get(function)
    if function == "Hardtanh":
        kwargs = kwargs or {}
        low = getattr(module, "min_val", kwargs.get("min_val", args[1] if len(args) > 1 else -1.0))
        high = getattr(module, "max_val", kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
        flat = (float(low), float(high))
    return ActivationSite(where, function, producer, flat)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)  # QuickGELU (CLIP, Hendrycks & Gimpel 2016's sigmoid form)


# What a parameter-free module may compute with a tanh or a sigmoid inside, as (type, form).
COMPOSITE_FORMS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("GELU", F.gelu), ("GELU", _gelu_tanh), ("GELU", _gelu_sigmoid), ("SiLU", F.silu), ("Mish", F.mish))


def identify_activation(x: Any, y: Any) -> str | None:
    """The rectifier (COMPOSITE_FORMS) that y is of x elementwise, or None.

    Compared in float32 with a tolerance of 8 ulps of y's dtype (1e-4 at least): implementations
    of one formula differ by rounding only, while the forms differ by 1e-2 or more somewhere on
    any input spread over [-3, 3].
    """
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.shape != y.shape:
        return None
    if not (x.is_floating_point() and y.is_floating_point()) or y.numel() == 0:
        return None
    xf, yf = x.detach().float(), y.detach().float()
    tol = max(1e-4, 8 * torch.finfo(y.dtype).eps)
    for function, form in COMPOSITE_FORMS:
        if torch.allclose(form(xf), yf, rtol=tol, atol=tol):
            return function
    return None


@dataclass
class CompositeActivations:
    """Parameter-free leaf modules (`candidates`) that call an activation function inside.

    Their inner activation calls are held back (`pending`) on the module's first call, until its
    output tells whether the module is itself a rectifier (`identify_activation`); `identified`
    keeps the answer per module (None: not one; the inner calls count as before).
    """

    candidates: set[str]
    identified: dict[str, str | None] = field(default_factory=dict)
    pending: dict[str, list[Callable[[], None]]] = field(default_factory=dict)

    def holds(self, module: str) -> bool:
        """Whether an activation call inside `module` waits for the module's output."""
        return module in self.candidates and module not in self.identified

    def finish(self, module: str, args: Sequence[Any], output: Any) -> str | None:
        """At the end of a candidate's call: the rectifier it is (its inner calls are dropped),
        or None (its inner calls are recorded now)."""
        if module not in self.identified:
            pending = self.pending.pop(module, [])
            if not pending:
                return None  # no activation inside: nothing to decide
            self.identified[module] = identify_activation(args[0] if args else None, output)
            if self.identified[module] is None:
                for record in pending:
                    record()
        return self.identified[module]


class FunctionalWatch(TorchFunctionMode):
    """Sees the functional activations and residual adds of the user's forward.

    `where()` returns (innermost module running, the layer that finished last, whether that layer's
    3-D outputs are channels-first, whether the running module is itself a recorded activation
    module); `inputs()` (module, input tensor) for the modules running now, innermost first (read
    lazily from the Python frames: hooks.py); `ignore()` the tensors
    the probe itself adds (the recurrent-step leaves). Sites are shared with the module activations
    (`sites`, keyed (where, function, producer)). A functional activation called inside an
    activation module (nn.ReLU calls F.relu) is that module's and is not counted twice; one called
    inside a parameter-free module waits for `composites` to tell whether that module is a GELU or
    SiLU written out. An add whose operand is the input of a module that is still running is a
    residual path y = x + F(x) (He et al. 2016); `residual_in` names the modules. Every call also
    goes to `scores` (attention_scores.py), which follows layer outputs into softmax inputs.
    """

    def __init__(self, where: Callable[[], tuple[str, str | None, bool, bool]],
                 inputs: Callable[[], Iterable[tuple[str, Any]]],
                 ignore: Callable[[], Sequence[Any]], sites: dict[tuple[str, str, str], ActivationSite],
                 residual_in: set[str], composites: CompositeActivations | None = None,
                 scores: ScoreTracker | None = None) -> None:
        super().__init__()
        self.where = where
        self.inputs = inputs
        self.ignore = ignore
        self.sites = sites
        self.residual_in = residual_in
        self.composites = composites or CompositeActivations(set())
        self.scores = scores
        self._names: dict[Any, str] = {}

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            name = self._names.get(func)
            if name is None:
                name = self._names[func] = getattr(func, "__name__", "")
        except TypeError:  # an unhashable callable: name it without the cache
            name = getattr(func, "__name__", "")
        function = FUNCTIONAL.get(name)
        if function is not None and isinstance(out, torch.Tensor):
            self._activation(function, name, out, args, kwargs)
        elif name in _ADDS:
            self._residual(args)
        if self.scores is not None:
            self.scores.observe(name, args, kwargs, out)
        return out

    def _activation(self, function: str, name: str, out: torch.Tensor, args: Sequence[Any],
                    kwargs: dict[str, Any]) -> None:
        module, producer, channels_first, inside_activation = self.where()
        if inside_activation or producer is None or self.composites.identified.get(module):
            return  # inside an activation module (a recognised composite one too): it is the module's
        detached = out.detach()

        def record() -> None:
            key = (module, name.rstrip("_"), producer)
            site = self.sites.get(key)
            if site is None:
                site = self.sites[key] = new_site(f"{module}:{name.rstrip('_')}", function, producer,
                                                  args=args, kwargs=kwargs)
            site.record(detached, channels_first)

        if self.composites.holds(module):
            self.composites.pending.setdefault(module, []).append(record)
        else:
            record()

    def _residual(self, args: Sequence[Any]) -> None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors or any(a is leaf for a in tensors for leaf in self.ignore()):
            return
        for module, value in self.inputs():  # the innermost module whose input it is
            if any(a is value for a in tensors):
                self.residual_in.add(module)
                return
