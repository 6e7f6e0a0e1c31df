"""The built-in model zoo: small, seeded models that each demonstrate one gradient behaviour.

This module is the catalogue only and does not import torch, so `gradcheck list builtins` stays
fast; the models themselves live in :mod:`gradcheck_cli.target.zoo.models`, imported by
:func:`load_target`. Each model's docstring documents the mechanism (a page under docs/) and the measured
numbers behind its verdict.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gradcheck_cli.errors import UserError

if TYPE_CHECKING:
    from gradcheck_cli.target.resolve import Target

@dataclass(frozen=True)
class Builtin:
    """One entry of the catalogue."""

    name: str
    """Kebab-case name, used as ``builtin:NAME``."""
    summary: str
    """One line for `gradcheck list builtins`."""
    verdict: str
    """The documented verdict of a default scan: healthy, vanishing, exploding or nonfinite."""
    factory: str
    """Name of the nn.Module class in gradcheck_cli.target.zoo.models that builds it."""


BUILTINS: tuple[Builtin, ...] = (
    Builtin("deep-sigmoid", "10-layer sigmoid MLP, default init: each sigmoid divides the "
            "gradient by >= 4", "vanishing", "DeepSigmoidMLP"),
    Builtin("relu-he", "10-layer ReLU MLP with He init: gradient scale preserved through depth",
            "healthy", "ReluHeMLP"),
    Builtin("relu-normal-init", "the relu-he MLP with N(0, 1) weights: ~4x growth per layer",
            "exploding", "ReluNormalInitMLP"),
    Builtin("tanh-tiny-init", "8-layer tanh MLP with 0.01 * N(0, 1) weights: uniformly tiny "
            "gradients", "vanishing", "TanhTinyInitMLP"),
    Builtin("rnn-long", "vanilla RNN over 100 steps, W_hh spectral radius 0.5: vanishing "
            "through time", "vanishing", "RnnLong"),
    Builtin("lstm", "LSTM over the same 100 steps: the cell state carries the gradient",
            "healthy", "Lstm"),
    Builtin("cnn-plain-deep", "13 sigmoid conv layers, no normalization, no skip: geometric "
            "decay with depth", "vanishing", "PlainDeepCNN"),
    Builtin("cnn-resnet-bn", "the same 13 conv layers as residual blocks with BatchNorm",
            "healthy", "ResNetBN"),
    Builtin("transformer-preln", "2-block pre-LN causal transformer with a tied embedding head",
            "healthy", "PreLNTransformer"),
    Builtin("nan-log", "Linear -> log of a value that can be negative: NaN loss and gradients",
            "nonfinite", "NanLog"),
)


def names() -> list[str]:
    """The builtin names, in catalogue order."""
    return [b.name for b in BUILTINS]


def get_builtin(name: str) -> Builtin:
    """The catalogue entry called ``name``; a UserError (with a did-you-mean) when there is none."""
    for builtin in BUILTINS:
        if builtin.name == name:
            return builtin
    available = ", ".join(names())
    close = difflib.get_close_matches(name, names(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(f"unknown builtin '{name}'{hint}; available: {available}")


def load_target(name: str) -> Target:
    """The Target for ``builtin:NAME``: a seeded build, its batches and its loss."""
    builtin = get_builtin(name)
    # Imported here, not at module level: they pull in torch.
    from gradcheck_cli.target.resolve import Target

    models = importlib.import_module(f"{__name__}.models")
    factory = getattr(models, builtin.factory)

    def build_model() -> Any:
        return models.build(factory)

    return Target(
        name=f"builtin:{builtin.name}",
        build_model=build_model,
        make_batch=factory.make_batch,
        loss_fn=factory.loss_fn,
    )
