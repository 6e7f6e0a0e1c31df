"""he-init / xavier-init: re-initialise each named layer's weight N(0, std^2), its bias zero.

The std is the recommendation's own (report/parameters.py InitParameters, docs/fixes), so what is
verified is exactly what the snippet tells the user to paste. "The weight" is the layer's `weight`
parameter of 2+ dims (Linear, Conv*, Embedding, Hugging Face's Conv1D). A layer with several weight
matrices of different fans (nn.RNN/LSTM/GRU: weight_ih_l*, weight_hh_l*) has no single std to
honour, and a weight computed by a parametrization (weight_norm) cannot be set: both are reported
not applicable. The draws come from a generator seeded with the verification's seed, layer after
layer in the recommendation's order, so they equal `torch.manual_seed(seed)` followed by
`nn.init.normal_` on each layer, and the process's own random state is not touched.
"""

from __future__ import annotations

import torch
from torch import nn

from gradcheck_cli.report.parameters import InitParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable
from gradcheck_cli.verify.appliers.surgery import current_name, module_at, outcome_reason


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator whose draws equal the global ones after torch.manual_seed(seed)."""
    return torch.Generator().manual_seed(seed)


def reinit_normal(model: nn.Module, name: str, std: float, generator: torch.Generator) -> str | None:
    """Draw `name`'s weight from N(0, std^2) and zero its bias; the reason it cannot, or None."""
    layer = module_at(model, current_name(model, name))  # after an add-skip applied before on this copy
    if layer is None:
        return f"{name} is not a module of the model"
    weight = layer._parameters.get("weight")  # a parametrized weight is not in _parameters
    if weight is None or weight.dim() < 2:
        matrices = [n for n, p in layer.named_parameters(recurse=False) if p.dim() >= 2]
        if len(matrices) > 1:
            return (f"{name} ({type(layer).__name__}) has {len(matrices)} weight matrices "
                    f"({', '.join(matrices[:2])}, ...) of different fans: one std cannot be honoured")
        return f"{name} ({type(layer).__name__}) has no weight matrix parameter to re-initialise"
    draw = torch.empty(weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    with torch.no_grad():
        weight.copy_(draw)
        padding = getattr(layer, "padding_idx", None)
        if isinstance(layer, nn.Embedding) and padding is not None:
            weight[padding].zero_()  # as nn.Embedding keeps its padding row
        bias = layer._parameters.get("bias")
        if bias is not None:
            bias.zero_()
    return None


def apply_init(ctx: ApplyContext) -> Patch:
    """Re-initialise every layer of the recommendation's InitParameters."""
    parameters = ctx.recommendation.parameters
    if not isinstance(parameters, InitParameters) or not parameters.layers:
        return not_applicable("the recommendation names no layer std to apply")
    generator = seeded_generator(ctx.seed)
    done, skipped = [], []
    for change in parameters.layers:
        why_not = reinit_normal(ctx.model, change.layer, change.std, generator)
        if why_not is None:
            done.append(f"{change.layer} std {change.std:.3g}")
        else:
            skipped.append(why_not)
    if not done:
        return not_applicable("; ".join(skipped))
    return Patch(applied=True, reason=outcome_reason(
        f"re-initialised {len(done)} layer{'s' if len(done) > 1 else ''} N(0, std^2), bias 0", done, skipped))


APPLIERS: dict[RecommendationId, Applier] = {
    RecommendationId.HE_INIT: apply_init,
    RecommendationId.XAVIER_INIT: apply_init,
}
