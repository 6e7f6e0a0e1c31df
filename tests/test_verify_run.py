"""--verify's engine (verify/run.py, compare.py, rank.py, gauges.py, copy.py).

Unit tests of the comparison and the ranking on hand-made reports (no probe), then scans with
fake appliers (the registry replaced) on tiny seeded models whose label is confirmed with plain
autograd: each status end to end, the healthy model, determinism, copies, the user's model.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
from model_state import assert_unchanged, snapshot
from torch import nn

import gradcheck_cli.verify.appliers as appliers_module
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.api import scan
from gradcheck_cli.report.records import (
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Recommendation,
    RecommendationId,
    Report,
    Severity,
    Status,
)
from gradcheck_cli.report.verification import Verification, VerificationStatus
from gradcheck_cli.target.resolve import Target
from gradcheck_cli.verify.applier import ApplyContext, Patch
from gradcheck_cli.verify.compare import Effect, answered, compare
from gradcheck_cli.verify.copy import ModelCopier, NoCopy
from gradcheck_cli.verify.gauges import GAUGES, moved_towards
from gradcheck_cli.verify.rank import rerank

S, R, K = VerificationStatus, RecommendationId, FindingKind
T = Thresholds()


# --- hand-made reports --------------------------------------------------------------------------

def _row(name: str, status: Status, g2w: float | None, update: float | None = None) -> LayerReport:
    return LayerReport(name, "Linear", 0, 10, status, 1.0, 1.0, g2w, 0, {}, update)


def _finding(kind: FindingKind, layer: str | None, value: float, severity: Severity = Severity.ERROR) -> Finding:
    key = GAUGES[kind].key if kind in GAUGES else "x"
    return Finding(kind, layer, severity, "", {key: value})


def _report(verdict: Status, rows: list[LayerReport], findings: list[Finding], steps: int = 0,
            losses: tuple[float, ...] = (1.0,)) -> Report:
    return Report("t", "0", {"batches": 3, "steps": steps, "optimizer": "sgd"}, LossInfo("mse", losses), verdict,
                  tuple(rows), tuple(findings), ())


def _rec(rid: RecommendationId, *layers: str) -> Recommendation:
    return Recommendation(rid, "", layers, "", "")


EXPLODING = _report(Status.EXPLODING, [_row("a", Status.EXPLODING, 3e4), _row("b", Status.EXPLODING, 5e4)],
                    [_finding(K.EXPLODING, "a", 3e4), _finding(K.EXPLODING, "b", 5e4)])


def test_all_answered_findings_gone_is_verified_with_the_numbers_before_and_after() -> None:
    after = _report(Status.HEALTHY, [_row("a", Status.HEALTHY, 2e-3), _row("b", Status.HEALTHY, 1e-3)], [])
    effect = compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, after, {}, T)
    v = effect.verification
    assert v.status == S.VERIFIED
    assert v.resolved == ("exploding@a", "exploding@b") and v.remaining == () and v.introduced == ()
    assert v.summary.startswith("verdict exploding -> healthy; a grad/weight 3.0e+04 -> 2.0e-03")
    numbers = {(c.metric, c.layer): (c.before, c.after) for c in v.changes}
    assert numbers[("grad_to_weight", "b")] == (5e4, 1e-3)
    assert numbers[("status", "a")] == ("exploding", "healthy")
    assert numbers[("verdict", None)] == ("exploding", "healthy")
    assert effect.resolved == 2 and effect.verdict_gain == 2


def test_some_gone_is_partial_and_a_decade_towards_healthy_is_partial() -> None:
    one_gone = _report(Status.EXPLODING, [_row("a", Status.HEALTHY, 1.0), _row("b", Status.EXPLODING, 4e4)],
                       [_finding(K.EXPLODING, "b", 4e4)])
    assert compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, one_gone, {}, T).verification.status == S.PARTIAL
    moved = _report(Status.EXPLODING, [_row("a", Status.EXPLODING, 2e3), _row("b", Status.EXPLODING, 4e3)],
                    [_finding(K.EXPLODING, "a", 2e3), _finding(K.EXPLODING, "b", 4e3)])
    assert compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, moved, {}, T).verification.status == S.PARTIAL
    barely = _report(Status.EXPLODING, [_row("a", Status.EXPLODING, 2e4), _row("b", Status.EXPLODING, 4e4)],
                     [_finding(K.EXPLODING, "a", 2e4), _finding(K.EXPLODING, "b", 4e4)])
    v = compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, barely, {}, T).verification
    assert v.status == S.NO_EFFECT and v.remaining == ("exploding@a", "exploding@b")


def test_a_worse_verdict_or_a_new_error_is_made_worse_a_new_warning_stops_verified() -> None:
    nan = _report(Status.NONFINITE, [_row("a", Status.NONFINITE, None), _row("b", Status.NONFINITE, None)],
                  [_finding(K.NONFINITE, None, 40)])
    v = compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, nan, {}, T).verification
    assert v.status == S.MADE_WORSE and v.introduced == ("nonfinite",)
    dead = _report(Status.HEALTHY, [_row("a", Status.HEALTHY, 1e-2), _row("b", Status.HEALTHY, 1e-2)],
                   [_finding(K.DEAD_RELU, "a", 0.9, Severity.WARNING)])
    v = compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, dead, {}, T).verification
    assert v.status == S.PARTIAL and v.introduced == ("dead-relu@a",) and "new warning: dead-relu@a" in v.summary
    info = replace(dead, findings=(_finding(K.DEAD_RELU, "a", 0.9, Severity.INFO),))
    assert compare(_rec(R.HE_INIT, "a", "b"), EXPLODING, info, {}, T).verification.status == S.VERIFIED


def test_renamed_layers_are_matched_and_a_layer_the_patch_added_counts_as_new() -> None:
    after = _report(Status.EXPLODING, [_row("a.0", Status.EXPLODING, 3e4), _row("b", Status.HEALTHY, 1.0)],
                    [_finding(K.EXPLODING, "a.0", 3e4)])
    v = compare(_rec(R.ADD_NORMALIZATION, "a", "b"), EXPLODING, after, {"a": "a.0"}, T).verification
    assert v.remaining == ("exploding@a",) and v.resolved == ("exploding@b",) and v.introduced == ()
    norm = replace(after, findings=(*after.findings, _finding(K.EXPLODING, "a.1", 1e4)))
    v = compare(_rec(R.ADD_NORMALIZATION, "a", "b"), EXPLODING, norm, {"a": "a.0"}, T).verification
    assert v.status == S.MADE_WORSE and v.introduced == ("exploding@a.1",)


def test_a_recommendation_answers_its_kinds_on_its_layers_and_model_findings() -> None:
    findings = [_finding(K.EXPLODING, "a", 1e4), _finding(K.EXPLODING, "z", 1e4), _finding(K.DEAD_RELU, "a", 0.9),
                _finding(K.NONFINITE, None, 3)]
    assert [(f.kind, f.layer) for f in answered(_rec(R.HE_INIT, "a"), findings)] == [
        (K.EXPLODING, "a"), (K.DEAD_RELU, "a"), (K.NONFINITE, None)]
    assert [(f.kind, f.layer) for f in answered(_rec(R.SWAP_ACTIVATION, "a"), findings)] == [(K.DEAD_RELU, "a")]
    assert answered(_rec(R.CHECK_INPUTS), findings) == []


def test_step_fixes_are_judged_on_the_update_ratio_and_the_loss_trend() -> None:
    before = _report(Status.NONFINITE, [_row("a", Status.NONFINITE, None, 4.1)],
                     [_finding(K.DIVERGENCE, None, 1.0)], steps=3, losses=(1.0, 5.0, math.inf))
    calm = _report(Status.EXPLODING, [_row("a", Status.EXPLODING, 3e4, 9.8e-4)], [_finding(K.EXPLODING, "a", 3e4)],
                   steps=3, losses=(1.0, 0.9, 0.8))
    # the exploding gradient was reported by the scan itself: no new problem
    v = compare(_rec(R.CLIP_GRADIENTS), before, calm, {}, T, scanned=EXPLODING).verification
    assert v.status == S.VERIFIED and v.resolved == ("divergence",) and v.steps == 3
    assert "largest update/weight 4.1 -> 9.8e-04 over 3 sgd steps" in v.summary
    still_fast = replace(calm, layers=(_row("a", Status.EXPLODING, 3e4, 0.3),))
    assert compare(_rec(R.CLIP_GRADIENTS), before, still_fast, {}, T, EXPLODING).verification.status == S.PARTIAL
    calm_before = replace(before, layers=(_row("a", Status.HEALTHY, 1.0, 1e-3),), findings=(), verdict=Status.HEALTHY)
    calm_after = replace(calm, findings=(), verdict=Status.HEALTHY)
    assert compare(_rec(R.LOWER_LR), calm_before, calm_after, {}, T).verification.status == S.NO_EFFECT


def test_moved_towards_needs_a_decade_or_half_the_distance_to_the_threshold() -> None:
    exploding = GAUGES[K.EXPLODING]  # threshold 1e3
    assert moved_towards(exploding, 1e6, 1e5, T) and not moved_towards(exploding, 1e6, 2e5, T)
    assert moved_towards(exploding, 4e3, 1.9e3, T)  # 0.6 decades above: half of it suffices
    assert not moved_towards(exploding, 4e3, 3e3, T) and not moved_towards(exploding, 1e4, 1e5, T)
    assert moved_towards(GAUGES[K.NONFINITE], 40, 0, T) and not moved_towards(GAUGES[K.NONFINITE], 0, 0, T)
    init = GAUGES[K.INIT_SCALE]  # closer to 1 is healthier, band x/2..x2
    assert moved_towards(init, 0.01, 0.5, T) and moved_towards(init, 100.0, 3.0, T)
    assert not moved_towards(init, 100.0, 0.005, T)


def _effect(status: VerificationStatus, resolved: int = 0, move: float = 0.0) -> Effect:
    return Effect(Verification(status, "", "exploding", "healthy"), resolved, 0, move)


def test_rerank_verified_by_effect_then_partial_then_the_rest_ties_keep_their_order() -> None:
    measured = [(_rec(R.CHECK_INPUTS), _effect(S.MADE_WORSE)),
                (_rec(R.GUARD_NONFINITE), _effect(S.NO_EFFECT)),
                (_rec(R.CLIP_GRADIENTS), _effect(S.VERIFIED, 1, 2.0)),
                (_rec(R.LOWER_LR), _effect(S.NOT_APPLICABLE)),
                (_rec(R.HE_INIT), _effect(S.VERIFIED, 3, 1.0)),
                (_rec(R.XAVIER_INIT), _effect(S.PARTIAL, 1)),
                (_rec(R.ADD_SKIP), _effect(S.VERIFIED, 1, 5.0)),
                (_rec(R.ADD_NORMALIZATION), _effect(S.VERIFIED, 1, 5.0))]
    order = [rec.id for rec, _ in rerank(measured)]
    assert order == [R.HE_INIT, R.ADD_SKIP, R.ADD_NORMALIZATION, R.CLIP_GRADIENTS, R.XAVIER_INIT,
                     R.LOWER_LR, R.GUARD_NONFINITE, R.CHECK_INPUTS]


# --- tiny models, labelled with plain autograd --------------------------------------------------

class Mlp(nn.Module):
    """8 Linear+ReLU layers of width 32 with N(0, 1) weights: 4x He's std, ~4x growth per layer."""

    def __init__(self, std: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(16, 32), nn.ReLU()]
        for _ in range(7):
            layers += [nn.Linear(32, 32), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(32, 4))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 16), torch.randint(0, 4, (n,))


def _target(model: nn.Module | None = None, build: Callable[[], nn.Module] | None = None) -> Target:
    def built() -> nn.Module:
        torch.manual_seed(0)
        return Mlp()
    return Target("mlp", build or ((lambda: model) if model is not None else built), _batch)


def _plain_grad_to_weight(model: nn.Module) -> float:
    """The first layer's grad/weight with a plain loss.backward() (the label of the model)."""
    model.zero_grad()
    x, y = _batch(16)
    nn.functional.cross_entropy(model(x), y).backward()
    first = model.get_submodule("net.0")
    assert isinstance(first, nn.Linear) and first.weight.grad is not None
    value = float(first.weight.grad.norm() / first.weight.detach().norm())
    model.zero_grad()
    return value


def _he_init(context: ApplyContext) -> Patch:
    """A fake he-init applier in plain torch: kaiming normal on every hidden Linear, bias zero."""
    for name in context.recommendation.layers:
        layer = context.model.get_submodule(name)
        assert isinstance(layer, nn.Linear)
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.zeros_(layer.bias)
    return Patch(applied=True, reason="he init")


def _nothing(context: ApplyContext) -> Patch:
    return Patch(applied=True, reason="changed nothing")


def _nan_weight(context: ApplyContext) -> Patch:
    with torch.no_grad():
        layer = context.model.get_submodule("net.0")
        assert isinstance(layer, nn.Linear)
        layer.weight[0, 0] = math.nan
    return Patch(applied=True, reason="NaN")


def _break_shape(context: ApplyContext) -> Patch:
    context.model.get_submodule("net").insert(0, nn.Linear(3, 3))  # type: ignore[operator]
    return Patch(applied=True, reason="broken")


def _refuse(context: ApplyContext) -> Patch:
    return Patch(applied=False, reason="not verifiable in the model")


@pytest.fixture
def fake_appliers(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[RecommendationId, Any]], None]:
    def install(registry: dict[RecommendationId, Any]) -> None:
        monkeypatch.setattr(appliers_module, "APPLIERS", registry)
    return install


def _statuses(report: Report) -> dict[str, str]:
    return {r.id.value: r.verification.status.value for r in report.recommendations if r.verification}


def test_the_fixture_model_explodes_with_plain_autograd_and_he_init_calms_it() -> None:
    torch.manual_seed(0)
    model = Mlp()
    assert _plain_grad_to_weight(model) > 1e3
    torch.manual_seed(0)
    healthy = Mlp()
    for m in healthy.net:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    assert _plain_grad_to_weight(healthy) < 10


def test_each_status_end_to_end_with_fake_appliers(fake_appliers: Callable[..., None]) -> None:
    fake_appliers({R.HE_INIT: _he_init, R.XAVIER_INIT: _nan_weight, R.ADD_NORMALIZATION: _nothing,
                   R.ADD_SKIP: _break_shape, R.CLIP_GRADIENTS: _refuse})
    report = scan(_target(), batches=2, batch_size=8, verify=True)
    statuses = _statuses(report)
    assert statuses["he-init"] == "verified"
    assert statuses["xavier-init"] == "made worse"
    assert statuses["add-normalization"] == "no effect"
    assert statuses["add-skip"] == "not applicable"
    assert statuses["clip-gradients"] == "not applicable"
    assert statuses["lower-lr"] == "not applicable"  # no applier in the registry
    by_id = {r.id.value: r.verification for r in report.recommendations}
    assert by_id["add-skip"] is not None and by_id["add-skip"].summary.startswith(
        "applied, but the patched model failed: ")
    assert by_id["clip-gradients"] is not None and by_id["clip-gradients"].summary == "not verifiable in the model"
    assert report.recommendations[0].id == R.HE_INIT  # the verified fix first
    assert [s for s in statuses.values()][-1] == "made worse"
    assert report.verification is not None and report.verification.applied == ("he-init",)
    assert report.verification.verdict_before == "exploding" and report.verification.verdict_after == "healthy"
    document = report.to_dict()
    assert document["recommendations"][0]["verification"]["status"] == "verified"
    assert document["verification"]["verdict_after"] == "healthy"


def test_the_verified_fixes_are_combined_on_one_copy(fake_appliers: Callable[..., None]) -> None:
    calls: list[str] = []

    def counting(context: ApplyContext) -> Patch:
        calls.append(context.recommendation.id.value)
        return _he_init(context)

    fake_appliers({R.HE_INIT: counting, R.ADD_NORMALIZATION: counting})
    report = scan(_target(), batches=2, batch_size=8, verify=True)
    assert _statuses(report)["he-init"] == "verified"
    assert report.verification is not None
    assert set(report.verification.applied) == {"he-init", "add-normalization"}
    assert report.verification.verdict_after == "healthy"
    assert len(calls) == 4  # each alone, then both on one copy


def test_nothing_verified_gives_a_combined_line_without_a_verdict(fake_appliers: Callable[..., None]) -> None:
    fake_appliers({})
    report = scan(_target(), batches=2, batch_size=8, verify=True)
    assert set(_statuses(report).values()) == {"not applicable"}
    assert report.verification is not None and report.verification.verdict_after is None
    assert report.verification.applied == () and "nothing was verified" in report.verification.summary


def test_a_healthy_model_gets_no_verification(fake_appliers: Callable[..., None]) -> None:
    fake_appliers({R.HE_INIT: _he_init})

    def healthy() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    plain = scan(_target(build=healthy), batches=2, batch_size=8)
    verified = scan(_target(build=healthy), batches=2, batch_size=8, verify=True)
    assert plain.recommendations == () and verified.verification is None
    expected = plain.to_dict()
    expected["config"]["verify"] = True
    assert verified.to_dict() == expected


def test_same_seed_same_bytes_with_verify() -> None:
    def run() -> str:
        return json.dumps(scan(_target(), batches=2, batch_size=8, verify=True).to_dict(), sort_keys=True)
    first = run()
    torch.manual_seed(99)  # the caller's RNG state does not matter
    random.seed(5)
    assert run() == first and '"verification"' in first


def test_an_internal_error_of_an_applier_propagates(fake_appliers: Callable[..., None]) -> None:
    def broken(context: ApplyContext) -> Patch:
        raise RuntimeError("bug in the applier")
    fake_appliers({R.HE_INIT: broken})
    with pytest.raises(RuntimeError, match="bug in the applier"):
        scan(_target(), batches=2, batch_size=8, verify=True)


def test_each_verification_is_a_stage_and_inner_stages_name_it(fake_appliers: Callable[..., None]) -> None:
    fake_appliers({R.HE_INIT: _he_init})
    stages: list[str] = []
    report = scan(_target(), batches=2, batch_size=8, verify=True, on_stage=lambda s, b, n: stages.append(s))
    count = len(report.recommendations)
    assert sum(s in (f"verifying he-init ({i}/{count})" for i in range(1, count + 1)) for s in stages) == 1
    assert any(s.startswith("verifying he-init (") and s.endswith(": forward pass") for s in stages)
    assert stages.count("restoring the model") >= 2  # the scan's and the copy's restore, unprefixed


def test_the_applier_gets_a_copy_and_the_first_probe_batch(fake_appliers: Callable[..., None]) -> None:
    seen: dict[str, Any] = {}

    def look(context: ApplyContext) -> Patch:
        seen["model"], seen["inputs"], seen["seed"] = context.model, context.sample_inputs(), context.seed
        return _he_init(context)
    fake_appliers({R.HE_INIT: look})
    torch.manual_seed(0)
    model = Mlp()
    scan(_target(model), batches=2, batch_size=8, seed=3, verify=True)
    assert seen["model"] is not model and seen["seed"] == 3
    torch.manual_seed(3)  # run_probe seeds the first batch with the scan's seed
    assert torch.equal(seen["inputs"], _batch(8)[0])


# --- copies and the user's model ----------------------------------------------------------------

class NoDeepcopy(Mlp):
    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise TypeError("holds a file handle")


def test_a_model_that_cannot_be_deep_copied_is_built_again_from_the_same_seed() -> None:
    def build() -> nn.Module:
        return NoDeepcopy()
    torch.manual_seed(0)
    original = build()
    copier = ModelCopier(original, build, seed=0)
    first, second = copier(), copier()
    assert first is not original and second is not first
    for a, b in zip(first.state_dict().values(), original.state_dict().values()):
        assert torch.equal(a, b)
    same = ModelCopier(original, lambda: original, seed=0)
    with pytest.raises(NoCopy, match="cannot be deep-copied"):
        same()


def test_no_copy_makes_every_recommendation_not_applicable(fake_appliers: Callable[..., None]) -> None:
    fake_appliers({R.HE_INIT: _he_init})
    torch.manual_seed(0)
    model = NoDeepcopy()
    report = scan(_target(model), batches=2, batch_size=8, verify=True)
    assert set(_statuses(report).values()) == {"not applicable"}
    assert all("cannot be deep-copied" in r.verification.summary for r in report.recommendations if r.verification)


def _prepared_user_model() -> nn.Module:
    """The restore tests' witness: mixed train/eval, the user's own .grad and hook."""
    torch.manual_seed(0)
    model = Mlp()
    model.eval()
    model.net[2].train()  # type: ignore[index]
    model(torch.randn(5, 16)).sum().backward()
    model.net[0].register_forward_hook(lambda m, a, o: None)  # type: ignore[index]
    return model


def test_the_users_model_is_untouched_by_verify_with_the_real_appliers() -> None:
    model = _prepared_user_model()
    before = snapshot(model)
    report = scan(_target(model), batches=2, batch_size=8, steps=1, verify=True)
    assert any(r.verification is not None and r.verification.status != S.NOT_APPLICABLE
               for r in report.recommendations)  # copies were patched and probed
    assert_unchanged(before, model)


def test_precision_findings_are_compared_on_their_own_numbers() -> None:
    before = _report(Status.HEALTHY, [_row("a", Status.HEALTHY, 1e-2)],
                     [_finding(K.FP16_UNDERFLOW, "a", 0.9, Severity.WARNING)])
    fewer = replace(before, findings=(_finding(K.FP16_UNDERFLOW, "a", 0.05, Severity.WARNING),))
    v = compare(_rec(R.LOSS_SCALING, "a"), before, fewer, {}, T).verification
    assert v.status == S.PARTIAL and "a gradients below fp16's normal range 0.9 -> 0.05" in v.summary
    gone = replace(before, findings=())
    assert compare(_rec(R.LOSS_SCALING, "a"), before, gone, {}, T).verification.status == S.VERIFIED
