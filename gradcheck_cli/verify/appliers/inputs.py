"""Applier for check-inputs: NaN/Inf in the data is no property of the model.

A patched copy of the model cannot show that the batches are fixed: the same seeded batches bring
the same NaN/Inf into any model. So the applier never claims an effect; it says why it cannot
(docs/fixes/check-inputs.md).
"""

from __future__ import annotations

from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable


def check_inputs(context: ApplyContext) -> Patch:
    return not_applicable("not verifiable in the model: the NaN/Inf is in the input data (the batch or "
                          "its target), which the same probe batches bring to any patched copy; "
                          "fix the data or the loader")


APPLIERS: dict[RecommendationId, Applier] = {RecommendationId.CHECK_INPUTS: check_inputs}
