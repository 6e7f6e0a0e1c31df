"""The catalogue of finding kinds and recommendation ids: what each means, for humans.

One entry per stable id. `gradcheck explain ID`, `gradcheck list checks|fixes` and the SARIF
rules all read from here, so the wording lives in one place. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .report import FindingKind, RecommendationId


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    """A short name, e.g. "Vanishing gradient"."""
    summary: str
    """One sentence: what it means for training."""
    mechanism: str = ""
    """Why it happens (DOMAIN.md "The mechanism" / "Causes")."""
    measured: str = ""
    """What gradcheck measures to decide it, and which evidence keys the report carries."""
    thresholds: str = ""
    """The thresholds, each with its source."""
    fix: str = ""
    """What to change (finding kinds) or the change itself (recommendations)."""
    references: tuple[str, ...] = ()


K = FindingKind
R = RecommendationId

FINDINGS: dict[FindingKind, Entry] = {
    K.VANISHING: Entry(K.VANISHING.value, "Vanishing gradient",
                       "The layer receives too little gradient to learn at the pace of the rest of the model."),
    K.EXPLODING: Entry(K.EXPLODING.value, "Exploding gradient",
                       "The layer's gradient is so large that one optimizer step would wreck its weights."),
    K.NONFINITE: Entry(K.NONFINITE.value, "NaN/Inf in the forward or backward pass",
                       "An operation produced NaN or Inf, so the loss or the gradients are not finite."),
    K.VANISHING_THROUGH_TIME: Entry(K.VANISHING_THROUGH_TIME.value, "Vanishing through time",
                                    "Early time steps of a recurrent layer receive almost no gradient, "
                                    "so it cannot learn long-range dependencies."),
    K.EXPLODING_THROUGH_TIME: Entry(K.EXPLODING_THROUGH_TIME.value, "Exploding through time",
                                    "The gradient grows step after step back through a recurrent layer."),
    K.SATURATED_ACTIVATION: Entry(K.SATURATED_ACTIVATION.value, "Saturated activation",
                                  "Most units of a sigmoid/tanh-like activation sit in the flat region, "
                                  "where the derivative is nearly zero."),
    K.DEAD_RELU: Entry(K.DEAD_RELU.value, "Dead ReLU units",
                       "Units that never fire on any probe sample pass exactly zero gradient."),
    K.INIT_SCALE: Entry(K.INIT_SCALE.value, "Mis-scaled initialisation",
                        "The weight std is far from the std that preserves signal variance for the layer's "
                        "fan-in and activation."),
    K.DIVERGENCE: Entry(K.DIVERGENCE.value, "Divergence over optimizer steps",
                        "The loss rises step over step or turns NaN/Inf during the probe's optimizer steps."),
    K.NONFINITE_INPUT: Entry(K.NONFINITE_INPUT.value, "NaN/Inf in the input batch",
                             "The batch or its target already holds NaN/Inf before the model runs."),
    K.FP16_UNDERFLOW: Entry(K.FP16_UNDERFLOW.value, "fp16 gradient underflow",
                            "Many gradient elements are below fp16's smallest normal number and would flush "
                            "to zero without loss scaling."),
}

FIXES: dict[RecommendationId, Entry] = {
    R.SWAP_ACTIVATION: Entry(R.SWAP_ACTIVATION.value, "Swap the activation",
                             "Use ReLU/GELU instead of saturating activations; LeakyReLU/ELU/PReLU for dead ReLUs."),
    R.HE_INIT: Entry(R.HE_INIT.value, "He (Kaiming) init",
                     "Re-initialise ReLU-family layers with std sqrt(2/fan_in)."),
    R.XAVIER_INIT: Entry(R.XAVIER_INIT.value, "Xavier (Glorot) init",
                         "Re-initialise tanh/sigmoid/linear layers with std sqrt(2/(fan_in+fan_out))."),
    R.ADD_NORMALIZATION: Entry(R.ADD_NORMALIZATION.value, "Add normalization",
                               "BatchNorm after conv/linear layers; LayerNorm in sequence models."),
    R.ADD_SKIP: Entry(R.ADD_SKIP.value, "Add skip connections",
                      "Residual blocks y = x + F(x) give the gradient a path with factor 1."),
    R.GATED_RNN: Entry(R.GATED_RNN.value, "Use LSTM/GRU",
                       "Gated recurrent layers keep gradient flowing across many time steps."),
    R.CLIP_GRADIENTS: Entry(R.CLIP_GRADIENTS.value, "Clip gradients",
                            "torch.nn.utils.clip_grad_norm_ with a max_norm taken from measured healthy norms."),
    R.LOWER_LR: Entry(R.LOWER_LR.value, "Lower the learning rate",
                      "A learning rate that brings the largest update/weight ratio near 1e-3."),
    R.WEIGHT_DECAY: Entry(R.WEIGHT_DECAY.value, "Weight decay",
                          "An L2 penalty (AdamW weight_decay) keeps weights from growing until gradients explode."),
    R.GUARD_NONFINITE: Entry(R.GUARD_NONFINITE.value, "Guard the unsafe operation",
                             "clamp, eps, log1p, logsumexp or a stable loss where NaN/Inf first appears."),
    R.CHECK_INPUTS: Entry(R.CHECK_INPUTS.value, "Check the inputs",
                          "Clean or normalise data whose batches or targets hold NaN/Inf."),
    R.LOSS_SCALING: Entry(R.LOSS_SCALING.value, "Loss scaling",
                          "torch.amp.GradScaler (or bf16) so fp16 gradients do not underflow."),
}


def lookup(entry_id: str) -> Entry | None:
    """The entry for a finding kind or recommendation id (case-insensitive), or None."""
    wanted = entry_id.strip().lower()
    for entry in (*FINDINGS.values(), *FIXES.values()):
        if entry.id == wanted:
            return entry
    return None


def all_ids() -> list[str]:
    return [e.id for e in (*FINDINGS.values(), *FIXES.values())]
