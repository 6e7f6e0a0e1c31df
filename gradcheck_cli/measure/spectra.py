"""Spectra of recurrent weights: spectral radius and largest singular value per weight_hh block.

Read from the weights (no hooks). The bound they are compared with is Pascanu, Mikolov & Bengio
2013 (see analyse/recurrence.py and docs/findings/vanishing-through-time.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gradcheck_cli.measure.records import RecurrentWeight

if TYPE_CHECKING:
    import torch
    from torch import nn

# 1/gamma, the largest singular value at which Pascanu's bound stops guaranteeing vanishing.
ACTIVATION_BOUND = {"tanh": 1.0, "relu": 1.0, "sigmoid": 4.0}

# PyTorch stacks the gate blocks of weight_hh along dim 0 in these orders (torch.nn.LSTM/GRU docs).
# The candidate block ("g" of the LSTM, "n" of the GRU) goes through tanh; the gates through sigmoid.
# nn.LSTMCell / nn.GRUCell stack their weight_hh the same way.
GATE_ORDER = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"),
              "LSTMCell": ("i", "f", "g", "o"), "GRUCell": ("r", "z", "n")}
CANDIDATE = {"LSTM": "g", "GRU": "n", "LSTMCell": "g", "GRUCell": "n"}


def recurrent_weights(module: nn.Module) -> tuple[RecurrentWeight, ...]:
    """Spectral radius and largest singular value of every weight_hh_l{k}[_reverse].

    nn.RNN: the whole matrix, with the bound 1/gamma of its nonlinearity (tanh, relu: 1).
    nn.LSTM / nn.GRU: W_hh stacks one H x H block per gate. The candidate block (tanh, bound 1)
    is the one that carries h_{t-1} into the new state as in a vanilla RNN; the sigmoid gate
    blocks (bound 4) are summarised by the largest of their values. For gated cells these numbers
    are context, not a verdict: the cell state's own path c_t = f_t * c_{t-1} + ... is scaled by
    the forget gate's value, which the weights alone do not give (Hochreiter & Schmidhuber 1997).
    An LSTM with proj_size has non-square blocks: their spectral radius is None.
    """
    kind = type(module).__name__
    gates = GATE_ORDER.get(kind)
    out: list[RecurrentWeight] = []
    for name, param in module.named_parameters(recurse=False):
        if not name.startswith("weight_hh"):
            continue
        w = param.detach().double().cpu()
        if gates is None:
            bound = ACTIVATION_BOUND.get(str(getattr(module, "nonlinearity", "tanh")), 1.0)
            out.append(_spectrum(name, "all", [w], bound))
            continue
        blocks = dict(zip(gates, w.chunk(len(gates), dim=0)))
        candidate = CANDIDATE[kind]
        out.append(_spectrum(name, "cell", [blocks[candidate]], ACTIVATION_BOUND["tanh"]))
        out.append(_spectrum(name, "gates", [b for g, b in blocks.items() if g != candidate],
                             ACTIVATION_BOUND["sigmoid"]))
    return tuple(out)


def cell_state_weights(module: nn.Module, columns: str | None,
                       activation: str | None) -> tuple[RecurrentWeight, ...]:
    """The recurrent block of a user's own cell layer (cell_watch.py), where it can be identified.

    The layer's 2-D `weight` (out x in, as nn.Linear) maps the state back into itself through the
    columns that read the state: all of them when the layer's input is the (activated) previous
    output itself (`h = tanh(self.h2h(h) + self.i2h(x))`: square weight), the first or last `out`
    columns when it is a 2-way cat([h, x]) / cat([x, h]) (makemore's `Linear(cat([x_t, h]))`).
    A cell module that owns its matrices itself (`tanh(x @ self.W_xh + h @ self.W_hh + self.b)`)
    and takes the state as it is: its one square matrix is W_hh (two square ones are ambiguous).
    The bound is 1/gamma of the activation on the way (tanh, relu: 1; sigmoid: 4; none: 1).
    Anything else (a conv cell, a cat of three parts): () and no spectrum in the evidence.
    """
    import torch

    bound = ACTIVATION_BOUND.get(activation or "", 1.0)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        square = [(name, p) for name, p in module.named_parameters(recurse=False)
                  if p.dim() == 2 and p.shape[0] == p.shape[1]]
        if columns != "all" or len(square) != 1:
            return ()
        name, param = square[0]
        return (_spectrum(name, "all", [param.detach().double().cpu()], bound),)
    if columns is None or weight.dim() != 2:
        return ()
    out, width = weight.shape
    w = weight.detach().double().cpu()
    if columns == "all" and out == width:
        block, name = w, "all"
    elif columns in ("first", "last") and width > out:
        block, name = (w[:, :out] if columns == "first" else w[:, width - out:]), "state"
    else:
        return ()
    return (_spectrum("weight", name, [block], bound),)


def _spectrum(name: str, block: str, mats: list[torch.Tensor], bound: float) -> RecurrentWeight:
    """The largest spectral radius and singular value over `mats` (float64, on the CPU).

    Weights holding NaN/Inf (optimizer steps that diverged) have no spectrum: (None, NaN). LAPACK
    is never asked for one, since its eigenvalue balancing (DGEBAL) crashed the process on them."""
    import torch

    if not all(bool(torch.isfinite(m).all()) for m in mats):
        return RecurrentWeight(name=name, block=block, spectral_radius=None, largest_singular_value=math.nan,
                               bound=bound)
    radii = [float(torch.linalg.eigvals(m).abs().max()) for m in mats if m.shape[0] == m.shape[1]]
    sigmas = [float(torch.linalg.matrix_norm(m, ord=2)) for m in mats]
    return RecurrentWeight(name=name, block=block, spectral_radius=max(radii) if radii else None,
                           largest_singular_value=max(sigmas), bound=bound)
