"""The applier interface: a recommendation applied to a copy of the model.

An applier takes an ApplyContext (the copy to patch in place, the recommendation with its typed
parameters, what the scan measured) and returns a Patch: what it changed, or why it could not
(`applied=False`). Some fixes are not changes of the model but of how it is trained
(clip-gradients, lower-lr, weight-decay, loss-scaling): those return `config` overrides for the
re-probe (steps, lr, clip_grad_norm, loss_scale, ...). Function-level changes (a `torch.sigmoid`
inside a forward, a guard around `torch.log`) are made by wrapping the copy's forward in a
TorchFunctionMode (measure/function_patch.py), so the copy carries them and the re-probe needs
nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from gradcheck_cli.config import ScanConfig
    from gradcheck_cli.measure.function_patch import Rewrite
    from gradcheck_cli.measure.records import Measurements
    from gradcheck_cli.report.records import Recommendation, Report


@dataclass(frozen=True)
class Patch:
    """What applying one recommendation to the copy did."""

    applied: bool
    reason: str = ""
    """applied: what was changed, for people ("re-initialised 3 layers: net.0 std 0.177, ...");
    not applied: why not ("no activation module follows net.0", "not verifiable in the model: the
    NaN/Inf is in the input data")."""
    config: dict[str, Any] = field(default_factory=dict)
    """ScanConfig overrides for the re-probe, e.g. {"steps": 3, "clip_grad_norm": 1.0}. The
    baseline ("before") of such a patch is probed with the same overrides minus the fix itself
    (verify/run.py asks `baseline_config`)."""
    baseline_config: dict[str, Any] = field(default_factory=dict)
    """ScanConfig overrides for the "before" probe when it differs from the scan's own (clip-gradients
    with a scan that took no steps: the before is the same steps without clipping). Empty: the scan's
    report is the before."""
    loss_rewrite: Rewrite | None = None
    """A function-level patch of the loss computation (measure/function_patch.py), for a guard
    whose op ran in the loss ("(loss)"); the re-probe runs the loss inside it."""
    renamed: dict[str, str] = field(default_factory=dict)
    """Layer names that changed in the copy (old -> new), so that before and after are compared
    layer by layer. Appliers keep names where they can."""


@dataclass
class ApplyContext:
    """What an applier gets."""

    model: nn.Module
    """The copy to patch in place (never the user's model)."""
    recommendation: Recommendation
    """With its typed `parameters` (report/parameters.py); None parameters: not applicable."""
    report: Report
    """The scan's report (the "before")."""
    measurements: Measurements
    """What the scan measured (per layer records, activation sites, loss trace)."""
    config: ScanConfig
    """The scan's options."""
    sample_inputs: Callable[[], Any]
    """The first probe batch's inputs, on the probe device, drawn under the scan's seed: for
    appliers that must measure shapes (add-normalization, add-skip) with measure/shapes.py."""
    seed: int = 0
    """Seed any random draw of the applier with it (re-initialisation), so runs are reproducible."""


Applier = Callable[[ApplyContext], Patch]
"""One per recommendation id: verify/appliers/__init__.py APPLIERS."""


def not_applicable(reason: str) -> Patch:
    return Patch(applied=False, reason=reason)
