"""What a program needs to apply a recommendation: one frozen record per recommendation id.

analyse/fixes.py fills them from the typed evidence; the recommendation's `code` snippet is
rendered from them (`snippet()`), so the numbers a user pastes are the numbers a program applies
(docs/fixes describes each recommendation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Parameters:
    """Base of every parameters record."""

    def snippet(self) -> str:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (tuples as lists, nested records as objects)."""
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def literal(value: float) -> str:
    """A float as Python source, exponent without its leading zero: 1e-06 -> 1e-6, 80.0 stays."""
    return repr(value).replace("e-0", "e-").replace("e+0", "e+")


# --- init --------------------------------------------------------------------------------------

FORMULAS = {"he": "sqrt(2 / fan_in)", "xavier": "sqrt(2 / (fan_in + fan_out))", "lecun": "sqrt(1 / fan_in)"}


@dataclass(frozen=True)
class LayerInit:
    layer: str
    scheme: str
    """he | xavier | lecun"""
    std: float
    """The std to draw the layer's weight from, N(0, std^2); its bias is set to zero."""


@dataclass(frozen=True)
class InitParameters(Parameters):
    """he-init / xavier-init: per layer the scheme and the exact std."""

    layers: tuple[LayerInit, ...]

    def snippet(self) -> str:
        # One entry per line and the equivalent init call on its own comment line, so that every
        # line stays short enough to be printed (and pasted) without wrapping.
        stds = "".join(f'    "{c.layer}": {c.std:.4g},\n' for c in self.layers)
        formula = " / ".join(dict.fromkeys(FORMULAS[c.scheme] for c in self.layers))
        same = ""
        if all(c.scheme == "he" for c in self.layers):
            same = '    # same as: nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")\n'
        elif all(c.scheme == "xavier" for c in self.layers):
            same = "    # same as: nn.init.xavier_normal_(layer.weight)\n"
        return (f"# std = {formula} per layer\n"
                f"stds = {{\n{stds}}}\n"
                "for name, std in stds.items():\n"
                "    layer = model.get_submodule(name)\n"
                f"{same}"
                "    nn.init.normal_(layer.weight, mean=0.0, std=std)\n"
                "    if layer.bias is not None:\n"
                "        nn.init.zeros_(layer.bias)")


# --- optimisation ------------------------------------------------------------------------------

_WARMUP = "# torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, total_iters=1000)"


@dataclass(frozen=True)
class ClipParameters(Parameters):
    """clip-gradients: the max_norm for torch.nn.utils.clip_grad_norm_."""

    max_norm: float

    def snippet(self) -> str:
        return (f"loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), "
                f"max_norm={self.max_norm:g})\noptimizer.step()")


@dataclass(frozen=True)
class LowerLrParameters(Parameters):
    """lower-lr: the rate to use, or the factor to divide the current one by."""

    lr: float | None
    """The learning rate to use; None when only the factor is known."""
    divide_by: float | None = None
    """Divide the current rate by this when `lr` is None."""
    optimizer: str | None = None
    """The optimizer class the probe stepped (SGD, Adam, AdamW); None when it took no steps."""

    def snippet(self) -> str:
        if self.lr is None:
            factor = self.divide_by or 10.0
            return (f"optimizer = torch.optim.SGD(model.parameters(), lr=lr / {factor:g})  # a learning rate "
                    f"{factor:g}x lower\n# or warmup:\n{_WARMUP}")
        if self.optimizer is None:
            return f"optimizer = torch.optim.SGD(model.parameters(), lr={self.lr:g})\n# or Adam with warmup:\n{_WARMUP}"
        return (f"optimizer = torch.optim.{self.optimizer}(model.parameters(), lr={self.lr:g})\n"
                f"# then warm up to it:\n{_WARMUP}")


@dataclass(frozen=True)
class WeightDecayParameters(Parameters):
    """weight-decay: the value that offsets the weights' measured growth (analyse/fix_timeline.py)."""

    weight_decay: float
    """The value to set: (growth per step) / lr plus the decay the run had, within AdamW's usual range."""
    growth_per_step: float
    """The measured slope of the log weight norm per step that the decay offsets."""
    lr: float | None
    """The run's learning rate (None: the watch had no optimizer)."""
    optimizer: str | None
    """The optimizer class of the run: SGD keeps SGD (its weight_decay shrinks by lr x value per
    step too); any other becomes AdamW (decoupled decay; Adam's own weight_decay is an L2 term
    that its step normalises away)."""

    def snippet(self) -> str:
        lr = f"{self.lr:g}" if self.lr is not None else "lr"
        name = "SGD" if self.optimizer == "SGD" else "AdamW"
        return (f"optimizer = torch.optim.{name}(model.parameters(), lr={lr}, weight_decay={self.weight_decay:g})\n"
                "# each step shrinks the weights by lr x weight_decay, which offsets\n"
                f"# the measured growth of {self.growth_per_step:.3g} per step (in log)")


# --- activations and structure -----------------------------------------------------------------

@dataclass(frozen=True)
class ActivationSwap:
    layer: str
    """The layer whose activation is replaced (the activation follows it)."""
    replaces: str
    """The activation's class name today: Sigmoid, Tanh, ReLU, ..."""
    use: str
    """The module to use instead, as Python: nn.ReLU(), nn.LeakyReLU(0.01)."""
    cause: str
    """depth (sigmoid/tanh dividing the gradient layer after layer) | saturated | dead"""


@dataclass(frozen=True)
class SwapActivationParameters(Parameters):
    """swap-activation: per layer the activation it has and the one to use (the first saturated
    swap is the worst, named in the snippet)."""

    swaps: tuple[ActivationSwap, ...]

    def snippet(self) -> str:
        causes = {s.cause: s for s in reversed(self.swaps)}  # the first swap of each cause
        lines = []
        if "depth" in causes:
            lines += ["# in place of nn.Sigmoid()/nn.Tanh() in hidden layers:",
                      f"{causes['depth'].use}  # or nn.GELU()"]
        if "saturated" in causes:
            first = causes["saturated"]
            lines.append(f"{first.use}  # or nn.GELU(), in place of nn.{first.replaces}() in hidden layers")
        if "dead" in causes:
            lines.append(f"{causes['dead'].use}  # or nn.ELU() / nn.PReLU(): a negative slope keeps a gradient")
        return "\n".join(lines)


@dataclass(frozen=True)
class NormalizationParameters(Parameters):
    """add-normalization: the layers of the run and the normalization module to put after each."""

    layers: tuple[str, ...]
    norm: str
    """BatchNorm1d | BatchNorm2d | BatchNorm3d | LayerNorm"""
    size: str
    """What its argument is: features or channels."""

    def snippet(self) -> str:
        return f"# after each layer of the stack:\nnn.Sequential(layer, nn.{self.norm}({self.size}), activation)"


@dataclass(frozen=True)
class SkipParameters(Parameters):
    """add-skip: the layers of the run to wrap in a residual block y = x + F(x)."""

    layers: tuple[str, ...]

    def snippet(self) -> str:
        return ("class Residual(nn.Module):\n    def __init__(self, block):\n        super().__init__()\n"
                "        self.block = block\n    def forward(self, x):\n        return x + self.block(x)")


@dataclass(frozen=True)
class GatedRnnParameters(Parameters):
    """gated-rnn: the vanilla recurrent layers to replace, and with what."""

    layers: tuple[str, ...]
    in_loop: bool
    """A cell called once per step in a Python loop (replaced by a gated cell in the same loop)."""

    @property
    def use(self) -> str:
        return "GRUCell" if self.in_loop else "LSTM"

    def snippet(self) -> str:
        if self.in_loop:
            return ("self.cell = nn.GRUCell(input_size, hidden_size)\n"
                    "# in the loop: h = self.cell(x_t, h); or nn.LSTMCell:\n"
                    "# h, c = self.cell(x_t, (h, c)); the cell state gives\n"
                    "# the gradient a path with factor ~1")
        return ("self.rnn = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)\n"
                "# or nn.GRU(...): the cell state gives the gradient a path with factor ~1")


# --- non-finite values -------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckInputsParameters(Parameters):
    """check-inputs: assert finite inputs and targets, or replace NaN/Inf before the model."""

    def snippet(self) -> str:
        return ("assert torch.isfinite(inputs).all() and torch.isfinite(target).all()\n"
                "inputs = torch.nan_to_num(inputs)  # or drop the bad samples / fix the loader")


_GUARDS = {
    "log": "x = torch.log(x.clamp_min({b}))  # instead of torch.log(x)\n"
           "# a learned positive quantity: F.softplus(raw) + {b}, or predict its log",
    "sqrt": "d = torch.sqrt(u + {b})  # instead of torch.sqrt(u): finite slope at 0\n"
            "# distances: torch.cdist(a, b), or mask the diagonal before the sqrt",
    "div": "y = a / b.clamp_min({b})  # instead of a / b (for counts: b.clamp(min=1))",
    "exp": "y = torch.exp(x.clamp(max={b}))  # float32 exp overflows above ~88.7\n"
           "# or stay in log space: torch.logsumexp, F.log_softmax, F.poisson_nll_loss(log_input=True)",
    "pow": "y = x.clamp_min({b}) ** p  # a fractional or negative power needs x > 0",
    "scaled_dot_product_attention":
        "# attn_mask (True = attend) leaves some queries no key: guard those rows\n"
        "attn_mask = attn_mask | ~attn_mask.any(dim=-1, keepdim=True)",
    "multi_head_attention_forward":
        "# a sequence that is all padding leaves its queries no key to attend to:\n"
        "# unmask one position (e.g. the first) in rows that mask every key\n"
        "empty = key_padding_mask.all(dim=-1)\n"
        "key_padding_mask[empty, 0] = False  # or drop empty sequences from the batch",
    "softmax":
        "# a finite mask value: a fully masked row gets uniform weights, not 0/0\n"
        "scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)\n"
        "# or guard rows with no position left: keep = keep | ~keep.any(-1, True)",
    "generic": "x = torch.log(x.clamp_min(1e-6))        # instead of torch.log(x)\n"
               "x = torch.sqrt(x.clamp_min(0) + 1e-12)  # instead of torch.sqrt(x)\n"
               "y = a / (b + 1e-8)                      # instead of a / b\n"
               "loss = F.cross_entropy(logits, target)  # instead of log(softmax(...))",
}
GUARD_BOUNDS = {"log": 1e-6, "sqrt": 1e-12, "div": 1e-8, "exp": 80.0, "pow": 1e-12}
"""The clamp of each guard: the smallest value log/sqrt/div/pow may see, the largest exp may."""


@dataclass(frozen=True)
class GuardParameters(Parameters):
    """guard-nonfinite: the op that produced NaN/Inf, its module, and the guard to put around it."""

    op: str | None
    module: str | None
    """Where the op ran ((loss) for the loss); None when no single op could be named."""
    guard: str
    """log | sqrt | div | exp | pow (a clamp at `bound`), scaled_dot_product_attention |
    multi_head_attention_forward | softmax (fully masked rows), generic (no op named)."""
    bound: float | None = None

    def snippet(self) -> str:
        template = _GUARDS[self.guard]
        return template.format(b=literal(self.bound)) if self.bound is not None else template


# --- mixed precision ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LossScalingParameters(Parameters):
    """loss-scaling: the initial scale for torch.amp.GradScaler (a power of two)."""

    init_scale: float
    """The largest power of two that keeps the largest measured gradient under fp16's max with
    margin (analyse/fix_precision.py)."""
    clears_underflow: bool
    """At init_scale no layer's gradients underflow any more; False when no single scale keeps
    both ends of the measured gradients in fp16's range."""
    backoff: bool = False
    """The scaled gradients were Inf, so no safe scale could be measured: init_scale is half the
    one that overflowed, and GradScaler's backoff finds the rest (--verify re-probes "dynamic")."""

    def snippet(self) -> str:
        return (f'scaler = torch.amp.GradScaler("cuda", init_scale={_power(self.init_scale)})\n'
                'with torch.autocast("cuda", dtype=torch.float16):\n'
                "    loss = loss_fn(model(inputs), target)\n"
                "scaler.scale(loss).backward()\n"
                "scaler.step(optimizer)  # unscales; skips the step on Inf/NaN\n"
                "scaler.update()")


def _power(value: float) -> str:
    """A power of two as Python source (2.0 ** 20), any other scale as a literal."""
    exponent = math.log2(value) if value > 0 else 0.5
    return f"2.0 ** {int(exponent)}" if exponent == int(exponent) else literal(value)


@dataclass(frozen=True)
class UseBf16Parameters(Parameters):
    """use-bf16: autocast in bfloat16 instead of float16; the layers whose outputs exceed fp16's range."""

    layers: tuple[str, ...]

    def snippet(self) -> str:
        return ('with torch.autocast("cuda", dtype=torch.bfloat16):\n'
                "    loss = loss_fn(model(inputs), target)\n"
                "loss.backward()  # no GradScaler: bf16 has float32's exponent range\n"
                "optimizer.step()")


@dataclass(frozen=True)
class KeepFp32Parameters(Parameters):
    """keep-fp32: the layers to run in float32 inside the autocast region (the overflow sites)."""

    layers: tuple[str, ...]

    def snippet(self) -> str:
        names = ", ".join(f'"{name}"' for name in self.layers)
        return ("def in_fp32(forward):  # run a layer in float32 inside autocast\n"
                "    def run(*args, **kwargs):\n"
                '        with torch.autocast("cuda", enabled=False):\n'
                "            args = [a.float() if torch.is_tensor(a) and a.is_floating_point()\n"
                "                    else a for a in args]\n"
                "            return forward(*args, **kwargs)\n"
                "    return run\n"
                f"for name in [{names}]:\n"
                "    layer = model.get_submodule(name)\n"
                "    layer.forward = in_fp32(layer.forward)")


@dataclass(frozen=True)
class Fp32MasterWeightsParameters(Parameters):
    """fp32-master-weights: keep float32 weights (and optimizer state) and compute in bf16 under autocast."""

    layers: tuple[str, ...]

    def snippet(self) -> str:
        return ("model = model.float()  # float32 master weights and optimizer state\n"
                "optimizer = torch.optim.AdamW(model.parameters(), lr=lr)\n"
                'with torch.autocast("cuda", dtype=torch.bfloat16):  # bf16 compute only\n'
                "    loss = loss_fn(model(inputs), target)\n"
                "loss.backward()\n"
                "optimizer.step()")
