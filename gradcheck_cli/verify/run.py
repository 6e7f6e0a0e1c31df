"""--verify: apply each recommendation to a copy of the model, probe it again, compare (docs/verify.md).

For each recommendation of the scan's report, in the analysis's order: a fresh copy of the model
(copy.py), the applier of its id (appliers/, seeded with the scan's seed so that re-initialisations
are reproducible), then the scan's own probe (measure/probe.py) and analysis (analyse/pipeline.py)
on the patched copy, with the same batches, seed and options plus the patch's config overrides.
The "before" is the scan's report, or, for a patch that changes how the probe trains (steps,
clipping), a probe of an unpatched copy with the same steps (Patch.baseline_config). compare.py
gives each recommendation its Verification, rank.py re-ranks them, and the verified ones are
applied together to one more copy for the combined verdict (CombinedVerification).

Runs inside the scan (api.py): the same isolation and --timeout clock, each verification announced
as a stage. The user's model is never patched, only copies of it. A patched copy whose probe fails
with a user error (a shape a patch broke) is "not applicable" with the reason; any other error is
ours and propagates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from gradcheck_cli.analyse.pipeline import analyse
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import Recommendation, Report
from gradcheck_cli.report.verification import CombinedVerification, VerificationStatus
from gradcheck_cli.verify.applier import ApplyContext, Patch
from gradcheck_cli.verify.compare import Effect, compare, not_applicable
from gradcheck_cli.verify.copy import NoCopy
from gradcheck_cli.verify.rank import rerank

if TYPE_CHECKING:
    from torch import nn

    from gradcheck_cli.measure.function_patch import Rewrite
    from gradcheck_cli.measure.probe import StageCallback
    from gradcheck_cli.measure.records import Measurements

RESTORING = "restoring the model"
"""guards.RESTORING: passed through unprefixed, so that a --timeout never interrupts a restore."""


def verify_report(report: Report, measurements: Measurements, copy_model: Callable[[], nn.Module],
                  make_batch: Callable[[int], Any], loss_fn: Any, config: ScanConfig,
                  thresholds: Thresholds, stage: StageCallback) -> Report:
    """The report with each recommendation verified and re-ranked, and the combined verification.
    A report without recommendations (a healthy model) comes back as it is."""
    if not report.recommendations:
        return report
    verifier = _Verifier(report, measurements, copy_model, make_batch, loss_fn, config, thresholds, stage)
    measured: list[tuple[Recommendation, Effect]] = []
    count = len(report.recommendations)
    for number, rec in enumerate(report.recommendations, 1):
        label = f"verifying {rec.id.value} ({number}/{count})"
        stage(label, 0, config.batches)
        measured.append((rec, verifier.verify(rec, label)))
    ranked = rerank(measured)
    verified = [(rec, effect) for rec, effect in ranked
                if effect.verification.status == VerificationStatus.VERIFIED]
    return replace(report,
                   recommendations=tuple(replace(rec, verification=effect.verification) for rec, effect in ranked),
                   verification=verifier.combine(verified))


@dataclass
class _Verifier:
    report: Report
    measurements: Measurements
    copy_model: Callable[[], nn.Module]
    make_batch: Callable[[int], Any]
    loss_fn: Any
    config: ScanConfig
    thresholds: Thresholds
    stage: StageCallback
    baselines: dict[str, Report] = field(default_factory=dict)
    """The "before" probes of unpatched copies, by their config overrides."""

    def verify(self, rec: Recommendation, label: str) -> Effect:
        """`rec` applied alone to a fresh copy and probed again."""
        try:
            model = self.copy_model()
        except NoCopy as exc:
            return not_applicable(rec, self.report, str(exc))
        patch = self.apply(model, rec)
        if not patch.applied:
            return not_applicable(rec, self.report, patch.reason or f"{rec.id.value} could not be applied")
        before = self.baseline(patch.baseline_config, label)
        try:
            after = self.probe(model, patch.config, patch.loss_rewrite, label)
        except UserError as exc:
            _reraise_out_of_memory(exc)
            return not_applicable(rec, self.report, f"applied, but the patched model failed: {_line(exc)}")
        return compare(rec, before, after, patch.renamed, self.thresholds, self.report)

    def apply(self, model: nn.Module, rec: Recommendation) -> Patch:
        from gradcheck_cli.target.isolation import seed_all
        from gradcheck_cli.verify.appliers import APPLIERS

        applier = APPLIERS.get(rec.id)
        if applier is None:
            return Patch(applied=False, reason=f"no applier for {rec.id.value}: it cannot be applied automatically")
        context = ApplyContext(model, rec, self.report, self.measurements, self.config, self.sample_inputs,
                               seed=self.config.seed)
        seed_all(self.config.seed)  # a re-initialisation draws the same weights on every run
        return applier(context)

    def sample_inputs(self) -> Any:
        """The first probe batch's inputs, drawn exactly as run_probe draws them."""
        import torch

        from gradcheck_cli.target.batches import move_to, split_batch
        from gradcheck_cli.target.isolation import seed_all

        seed_all(self.config.seed)
        inputs, _ = split_batch(self.make_batch(self.config.batch_size))
        return move_to(inputs, torch.device(self.config.device))

    def baseline(self, overrides: dict[str, Any], label: str) -> Report:
        """The scan's report, or a probe of an unpatched copy with `overrides` (cached)."""
        if not overrides:
            return self.report
        cache_key = repr(sorted(overrides.items()))
        if cache_key not in self.baselines:
            self.baselines[cache_key] = self.probe(self.copy_model(), overrides, None, f"{label}: before")
        return self.baselines[cache_key]

    def probe(self, model: nn.Module, overrides: dict[str, Any], loss_rewrite: Rewrite | None,
              label: str) -> Report:
        """The scan's probe and analysis of `model` with the config `overrides`."""
        from gradcheck_cli.measure.probe import run_probe

        config = replace(self.config, **{**overrides, "verify": False})
        loss_fn = self.loss_fn if loss_rewrite is None else _rewritten_loss(self.loss_fn, loss_rewrite)
        measurements = run_probe(model, self.make_batch, loss_fn, config, self._inner_stage(label))
        return analyse(measurements, config, self.thresholds, target=self.report.target)

    def _inner_stage(self, label: str) -> StageCallback:
        def inner(name: str, batch: int, batches: int) -> None:
            self.stage(name if name == RESTORING else f"{label}: {name}", batch, batches)
        return inner

    def combine(self, verified: list[tuple[Recommendation, Effect]]) -> CombinedVerification:
        """The verified recommendations applied together, in rank order, to one copy."""
        before = self.report.verdict.value
        if not verified:
            return CombinedVerification((), before, None, "nothing was verified, so there is no combined fix "
                                        "to measure", batches=self.config.batches)
        if len(verified) == 1:  # the same copy, patch and probe as its own verification: reuse it
            only = verified[0][1].verification
            return CombinedVerification((verified[0][0].id.value,), before, only.verdict_after,
                                        f"only {verified[0][0].id.value} was verified: verdict "
                                        f"{before} -> {only.verdict_after}", batches=only.batches)
        label = "verifying the verified fixes together"
        self.stage(label, 0, self.config.batches)
        return self._combined_probe([rec for rec, _ in verified], label)

    def _combined_probe(self, recs: list[Recommendation], label: str) -> CombinedVerification:
        model = self.copy_model()
        applied: list[str] = []
        skipped: list[str] = []
        overrides: dict[str, Any] = {}
        rewrites: list[Rewrite] = []
        for rec in recs:
            patch = self.apply(model, rec)
            if not patch.applied:
                skipped.append(f"{rec.id.value} ({patch.reason})")
                continue
            applied.append(rec.id.value)
            overrides.update(patch.config)
            if patch.loss_rewrite is not None:
                rewrites.append(patch.loss_rewrite)
        before = self.report.verdict.value  # the verdict the user was shown: what the fixes together change
        together = " + ".join(applied)
        not_applied = f"; not applicable after the others: {', '.join(skipped)}" if skipped else ""
        if not applied:  # each applied alone, but none on this copy: nothing to probe
            return CombinedVerification((), before, None, f"the verified fixes could not be applied together: "
                                        f"{', '.join(skipped)}", self.config.batches)
        try:
            after = self.probe(model, overrides, _chain(rewrites), label).verdict.value
        except UserError as exc:
            _reraise_out_of_memory(exc)
            return CombinedVerification(tuple(applied), before, None, f"{together} applied together: the "
                                        f"patched model failed: {_line(exc)}{not_applied}", self.config.batches)
        return CombinedVerification(tuple(applied), before, after,
                                    f"{together} applied together: verdict {before} -> {after}{not_applied}",
                                    batches=self.config.batches)


def _rewritten_loss(loss_fn: Any, rewrite: Rewrite) -> Callable[[Any, Any], Any]:
    """The loss (the user's loss_fn, or the default rule) computed inside FunctionPatch(rewrite)."""
    from gradcheck_cli.measure.function_patch import FunctionPatch
    from gradcheck_cli.target.losses import compute_loss

    def loss(output: Any, target: Any) -> Any:
        with FunctionPatch(rewrite):
            return compute_loss(output, target, loss_fn)[0]
    return loss


def _chain(rewrites: list[Rewrite]) -> Rewrite | None:
    """Several loss rewrites as one: the first that handles a call wins."""
    if len(rewrites) <= 1:
        return rewrites[0] if rewrites else None
    from gradcheck_cli.measure.function_patch import NOT_HANDLED

    def chained(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for rewrite in rewrites:
            result = rewrite(func, args, kwargs)
            if result is not NOT_HANDLED:
                return result
        return NOT_HANDLED
    return chained


def _reraise_out_of_memory(exc: UserError) -> None:
    """Running out of memory is no fault of the patch: the scan reports it (api.py)."""
    from gradcheck_cli.target.guards import is_out_of_memory

    if exc.__cause__ is not None and is_out_of_memory(exc.__cause__):
        raise exc


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
