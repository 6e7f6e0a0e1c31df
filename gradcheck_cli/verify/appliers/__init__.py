"""The appliers, one per recommendation id (verify/applier.py); every RecommendationId has one.

Each family lives in its own module and exports APPLIERS, a dict from recommendation id to applier.
"""

from __future__ import annotations

from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier
from gradcheck_cli.verify.appliers import (
    activation,
    guards,
    initialisation,
    inputs,
    precision,
    recurrent,
    structure,
    training,
)

APPLIERS: dict[RecommendationId, Applier] = {
    **initialisation.APPLIERS,   # he-init, xavier-init
    **activation.APPLIERS,       # swap-activation
    **structure.APPLIERS,        # add-normalization, add-skip
    **recurrent.APPLIERS,        # gated-rnn
    **training.APPLIERS,         # clip-gradients, lower-lr, weight-decay
    **guards.APPLIERS,           # guard-nonfinite
    **inputs.APPLIERS,           # check-inputs
    **precision.APPLIERS,        # loss-scaling
}
