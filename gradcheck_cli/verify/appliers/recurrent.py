"""gated-rnn: a vanilla recurrent layer becomes a gated one of the same sizes (docs/fixes).

nn.RNN -> nn.GRU with the same input_size, hidden_size, num_layers, bias, batch_first, dropout and
bidirectional; nn.RNNCell -> nn.GRUCell with the same input_size, hidden_size and bias. Both keep
the call signature ((output, h_n) for the layer, h' for the cell), so the model's forward runs
unchanged; an LSTM (the snippet's other suggestion) returns (h_n, c_n) and would not. The new
module is registered under the old name and initialised as torch initialises it, under a fresh
generator state seeded with the verification's seed (the process's random state is kept). A cell
written by hand (a Linear and a tanh in a loop) cannot be swapped for a gated one without
rewriting the loop: not applicable.
"""

from __future__ import annotations

import torch
from torch import nn

from gradcheck_cli.report.parameters import GatedRnnParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable
from gradcheck_cli.verify.appliers.surgery import current_name, module_at, outcome_reason, placed_like, replace_module


def gated_twin(module: nn.Module) -> nn.Module | None:
    """The gated module of the same sizes and call signature (built under the current RNG), or None."""
    if type(module) is nn.RNN:
        rnn: nn.RNN = module
        return nn.GRU(rnn.input_size, rnn.hidden_size, num_layers=rnn.num_layers, bias=rnn.bias,
                      batch_first=rnn.batch_first, dropout=float(rnn.dropout),
                      bidirectional=rnn.bidirectional)
    if type(module) is nn.RNNCell:
        cell: nn.RNNCell = module
        return nn.GRUCell(cell.input_size, cell.hidden_size, bias=cell.bias)
    return None


def apply_gated_rnn(ctx: ApplyContext) -> Patch:
    parameters = ctx.recommendation.parameters
    if not isinstance(parameters, GatedRnnParameters) or not parameters.layers:
        return not_applicable("the recommendation names no recurrent layer")
    done, skipped = [], []
    for name in parameters.layers:
        name = current_name(ctx.model, name)  # after an add-skip applied before on this copy
        old = module_at(ctx.model, name)
        if old is None or old is ctx.model:
            skipped.append(f"{name} is not a replaceable module of the model")
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            new = gated_twin(old)
        if new is None:
            skipped.append(f"{name} is a {type(old).__name__}, not an nn.RNN or nn.RNNCell: a hand-written "
                           "cell needs its loop rewritten for a gated cell")
            continue
        replace_module(ctx.model, name, placed_like(new, old))
        done.append(f"{name} ({type(old).__name__} -> {type(new).__name__})")
    if not done:
        return not_applicable("; ".join(skipped))
    return Patch(applied=True, reason=outcome_reason("replaced by a gated layer of the same sizes", done, skipped))


APPLIERS: dict[RecommendationId, Applier] = {RecommendationId.GATED_RNN: apply_gated_rnn}
