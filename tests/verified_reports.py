"""Hand-built reports of a `--verify` scan, for the render, gate and CLI tests of --verify.

Built on format_reports.exploding_report (no scan runs): one recommendation per verification status,
in the order verify/rank.py gives them (verified, partial, not applicable, no effect, made worse), and the
combined line of the verified set applied together.
"""

from __future__ import annotations

from dataclasses import replace

from format_reports import exploding_report

from gradcheck_cli.report.records import Recommendation, RecommendationId, Report, ScanResult
from gradcheck_cli.report.verification import (
    CombinedVerification,
    MetricChange,
    Verification,
    VerificationStatus,
)

HE_INIT = Recommendation(
    RecommendationId.HE_INIT, "Initialise the Linear layers with He init", ("net.0", "net.2"),
    "weight std 0.5 is 2.8x He's 0.177 for fan_in 64: each layer multiplies the gradient by about 4",
    "for m in model.modules():\n    if isinstance(m, nn.Linear):\n"
    "        nn.init.kaiming_normal_(m.weight, nonlinearity=\"relu\")\n        nn.init.zeros_(m.bias)",
    verification=Verification(
        VerificationStatus.VERIFIED, "verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03",
        "exploding", "healthy",
        (MetricChange("verdict", None, "exploding", "healthy"),
         MetricChange("grad_to_weight", "net.0", 3.0e3, 2.1e-3)),
        resolved=("exploding@net.0", "exploding@net.2"), batches=3),
)

CLIP = Recommendation(
    RecommendationId.CLIP_GRADIENTS, "Clip the gradient norm", ("net.0", "net.2"),
    "grad_norm 1.2e+04 at net.0, 300x the healthy head",
    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
    verification=Verification(
        VerificationStatus.PARTIAL, "largest update/weight 4.1 -> 9.8e-04 over 2 sgd steps; divergence remains",
        "exploding", "exploding",
        (MetricChange("update_to_weight", "net.0", 4.1, 9.8e-4),),
        resolved=("exploding@net.0",), remaining=("divergence",), batches=3, steps=2),
)

NORMALIZATION = Recommendation(
    RecommendationId.ADD_NORMALIZATION, "Add LayerNorm after the exploding layers", ("net.0",),
    "grad/weight 3.0e+03 at net.0", "net[0] = nn.Sequential(net[0], nn.LayerNorm(64))",
    verification=Verification(
        VerificationStatus.NO_EFFECT, "verdict exploding -> exploding; net.0 grad/weight 3.0e+03 -> 2.9e+03",
        "exploding", "exploding", remaining=("exploding@net.0",), batches=3),
)

LOWER_LR = Recommendation(
    RecommendationId.LOWER_LR, "Lower the learning rate", (), "the loss diverged at lr 0.1",
    "optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)",
    verification=Verification(
        VerificationStatus.MADE_WORSE, "verdict exploding -> nonfinite; new: nonfinite@net.2",
        "exploding", "nonfinite", introduced=("nonfinite@net.2",), batches=3, steps=2),
)

CHECK_INPUTS = Recommendation(
    RecommendationId.CHECK_INPUTS, "Check the input batches", (), "the first batch holds NaN",
    "assert torch.isfinite(batch).all()",
    verification=Verification(
        VerificationStatus.NOT_APPLICABLE, "not verifiable in the model: the cause is in the data",
        "exploding", None),
)

COMBINED = CombinedVerification(("he-init", "clip-gradients"), "exploding", "healthy",
                                "verdict exploding -> healthy", batches=3)


def verified_report() -> Report:
    """The exploding report scanned with --verify: every status once, and the combined line."""
    report = exploding_report()
    return replace(report, config={**report.config, "verify": True},
                   recommendations=(HE_INIT, CLIP, CHECK_INPUTS, NORMALIZATION, LOWER_LR),
                   verification=COMBINED)


def all_verified_report() -> Report:
    """Every recommendation verified (--fail-on unverified passes)."""
    report = exploding_report()
    return replace(report, config={**report.config, "verify": True}, recommendations=(HE_INIT,),
                   verification=CombinedVerification(("he-init",), "exploding", "healthy",
                                                      "verdict exploding -> healthy", batches=3))


def nothing_helped_report() -> Report:
    """No recommendation helped: no fix is presented, the combined line says why."""
    report = exploding_report()
    return replace(report, config={**report.config, "verify": True},
                   recommendations=(NORMALIZATION, CHECK_INPUTS),
                   verification=CombinedVerification((), "exploding", None, "no recommendation was verified"))


def verified_result() -> ScanResult:
    return ScanResult("mlp", "models/mlp.py:build_model", verified_report())
