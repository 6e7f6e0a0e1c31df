"""guard-nonfinite (and check-inputs) applied to copies of tiny seeded models.

Each model produces NaN/Inf through one unsafe op, written with plain autograd; its twin
(`guarded=True`) is the same model with the guard written by hand, as the recommendation's snippet
says. The scan names the op and its module; the applier guards a deep copy; the copy's loss and
gradients must be finite and equal the twin's. Each model also makes a call of the same op that the
guard must leave alone (outside the named module, or a safe form of the op), with an input the
guard would change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.analyse.pipeline import analyse
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.function_patch import FunctionPatch
from gradcheck_cli.measure.probe import run_probe
from gradcheck_cli.report.parameters import GuardParameters
from gradcheck_cli.report.records import Recommendation, RecommendationId, Report
from gradcheck_cli.report.verification import VerificationStatus
from gradcheck_cli.verify.applier import ApplyContext, Patch
from gradcheck_cli.verify.appliers import APPLIERS
from gradcheck_cli.verify.appliers.guards import guard_nonfinite

BATCH = 8
Batch = tuple[Any, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


# --- the models (plain autograd; guarded=True is the hand-written twin) --------------------------

class TinyLog(nn.Module):
    """A log the guard must leave alone: its input is far below the bound, yet positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.sigmoid(x.sum(-1, keepdim=True)) * 1e-9)


class LogOfRelu(nn.Module):
    """log of ReLU outputs: a dead unit gives log(0) = -inf, and the next layer NaN."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out, self.small, self.guarded = nn.Linear(4, 8), nn.Linear(8, 2), TinyLog(), guarded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(torch.log(h.clamp_min(1e-6) if self.guarded else h) + self.small(x))


class Length(nn.Module):
    """sqrt(sum v^2): a zero vector has length 0 and an infinite derivative (NaN in backward)."""

    def __init__(self, guarded: bool) -> None:
        super().__init__()
        self.guarded = guarded

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        u = (v ** 2).sum(-1)
        return torch.sqrt(u.clamp_min(1e-12) if self.guarded else u)


class MaskedLengths(nn.Module):
    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body, self.length = nn.Linear(4, 12), Length(guarded)

    def forward(self, x: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        v = self.body(x).view(-1, 3, 4) * presence.unsqueeze(-1)
        # a sqrt outside the named module, of a value below the bound: left alone
        return self.length(v) + torch.sqrt(x.abs().sum(-1, keepdim=True) * 1e-14)


class TinyRatio(nn.Module):
    """A division the guard must leave alone: its divisor is far below the bound, yet positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2)).unsqueeze(-1)
        return mean * 1e-12 / (torch.sigmoid(mean) * 1e-10)


class MeanPool(nn.Module):
    """Masked mean pooling over the real tokens; an empty sequence gives 0 / 0."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.proj, self.out, self.ratio, self.guarded = nn.Linear(4, 6), nn.Linear(6, 2), TinyRatio(), guarded

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(x))
        count = mask.sum(dim=1)
        pooled = (h * mask).sum(dim=1) / (count.clamp_min(1e-8) if self.guarded else count)
        return self.out(pooled) + self.ratio(x)


class ExpRate(nn.Module):
    """exp of a log-rate that reaches ~100: float32 exp overflows to inf (above ~88.7)."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc, self.guarded = nn.Linear(4, 1), guarded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_rate = self.fc(x).squeeze(-1)
        return torch.exp(log_rate.clamp(max=80.0) if self.guarded else log_rate)


class FractionalPower(nn.Module):
    """x ** 0.5 of a signed value is NaN for x < 0; x ** 2 in the same forward is safe and stays."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.fc, self.out, self.guarded = nn.Linear(4, 6), nn.Linear(6, 2), guarded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        root = (h.clamp_min(1e-12) if self.guarded else h) ** 0.5
        return self.out(root + (h * 1e-7) ** 2)


class HistoryAttention(nn.Module):
    """Hand-written attention over a history with masked_fill(-inf): a row with no history is all
    -inf and its softmax 0 / 0. The twin masks with finfo.min (the snippet's finite mask value)."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.query, self.key, self.out, self.guarded = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2), guarded

    def forward(self, now: torch.Tensor, history: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        scores = (self.query(now).unsqueeze(1) * self.key(history)).sum(-1)
        fill = torch.finfo(scores.dtype).min if self.guarded else float("-inf")
        weights = F.softmax(scores.masked_fill(~keep, fill), dim=-1)
        return self.out((weights.unsqueeze(-1) * history).sum(1))


class PaddedSelfAttention(nn.Module):
    """nn.MultiheadAttention with a key_padding_mask that masks every key of an empty sequence."""

    def __init__(self, guarded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.attn, self.out, self.guarded = nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 2), guarded

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        if self.guarded:
            padding = padding.clone()
            padding[padding.all(dim=-1), 0] = False
        y, _ = self.attn(x, x, x, key_padding_mask=padding)
        return self.out(y.mean(1))


class GaussianNll(nn.Module):
    """The variance head is a plain Linear: log(var) of a negative variance is NaN in the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _saturating(rate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (rate / (1 + rate) - target).pow(2).mean()  # finite for any finite rate; inf / inf is NaN


def _nll(output: torch.Tensor, target: torch.Tensor, guarded: bool = False) -> torch.Tensor:
    mean, var = output[:, 0], output[:, 1]
    return (torch.log(var.clamp_min(1e-6) if guarded else var) + (target - mean) ** 2 / 4.0).mean()


# --- batches -------------------------------------------------------------------------------------

def _log_batch(n: int) -> Batch:
    return torch.randn(n, 4), torch.randn(n, 2)


def _lengths_batch(n: int) -> Batch:
    presence = (torch.arange(3 * n).view(n, 3) % 4 != 0).float()  # some capsules absent: length 0
    return (torch.randn(n, 4), presence), torch.randn(n, 3)


def _nll_batch(n: int) -> Batch:
    return torch.randn(n, 4), torch.randn(n)


def _pool_batch(n: int) -> Batch:
    lengths = torch.arange(n) % 5  # every fifth sequence is empty
    mask = (torch.arange(4).unsqueeze(0) < lengths.unsqueeze(1)).float().unsqueeze(-1)
    return (torch.randn(n, 4, 4), mask), torch.randn(n, 2)


def _exp_batch(n: int) -> Batch:
    return torch.randn(n, 4) * 300.0, torch.rand(n)


def _attention_batch(n: int) -> Batch:
    turn = torch.arange(n) % 4  # the first turn of each dialogue has no history
    keep = torch.arange(4).unsqueeze(0) < turn.unsqueeze(1)
    return (torch.randn(n, 4), torch.randn(n, 4, 4), keep), torch.randn(n, 2)


def _padding_batch(n: int) -> Batch:
    padding = torch.arange(5).unsqueeze(0) >= (torch.arange(n) % 4).unsqueeze(1)  # length 0 every 4th
    return (torch.randn(n, 5, 4), padding), torch.randn(n, 2)


# --- the check -----------------------------------------------------------------------------------

def _scanned(model: nn.Module, make_batch: Callable[[int], Batch],
             loss_fn: LossFn) -> tuple[Recommendation, ApplyContext]:
    """The scan's guard-nonfinite recommendation for `model`, and an ApplyContext on a deep copy."""
    config = ScanConfig(batches=1, batch_size=BATCH)
    measurements = run_probe(model, make_batch, loss_fn, config)
    report: Report = analyse(measurements, config, Thresholds(), target="test")
    rec = next(r for r in report.recommendations if r.id == RecommendationId.GUARD_NONFINITE)
    return rec, ApplyContext(copy.deepcopy(model), rec, report, measurements, config, lambda: None)


def _loss_and_grads(model: nn.Module, batch: Batch, loss_fn: LossFn,
                    loss_rewrite: Any = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    inputs, target = batch
    output = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    if loss_rewrite is None:
        loss = loss_fn(output, target)
    else:
        with FunctionPatch(loss_rewrite):
            loss = loss_fn(output, target)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return loss.detach(), [torch.zeros(()) if g is None else g for g in grads]


def _finite(loss: torch.Tensor, grads: list[torch.Tensor]) -> bool:
    return bool(torch.isfinite(loss).all()) and all(bool(torch.isfinite(g).all()) for g in grads)


def _check(patch: Patch, copy_model: nn.Module, twin: nn.Module, user: nn.Module,
           make_batch: Callable[[int], Batch], loss_fn: LossFn, twin_loss: LossFn | None = None) -> None:
    assert patch.applied, patch.reason
    torch.manual_seed(123)
    batch = make_batch(BATCH)
    plain = _loss_and_grads(user, batch, loss_fn)
    assert not _finite(*plain)  # the model as it is: NaN/Inf (the user's model is not patched)
    guarded_loss, guarded_grads = _loss_and_grads(copy_model, batch, loss_fn, patch.loss_rewrite)
    twin_loss_value, twin_grads = _loss_and_grads(twin, batch, twin_loss or loss_fn)
    assert _finite(guarded_loss, guarded_grads)
    assert torch.equal(guarded_loss, twin_loss_value)
    for mine, theirs in zip(guarded_grads, twin_grads, strict=True):
        assert torch.allclose(mine, theirs, rtol=1e-6, atol=0.0)


CASES = {
    "log": (LogOfRelu, _log_batch, _mse, "log", "(root)"),
    "sqrt": (MaskedLengths, _lengths_batch, _mse, "sqrt", "length"),
    "div": (MeanPool, _pool_batch, _mse, "div", "(root)"),
    "exp": (ExpRate, _exp_batch, _saturating, "exp", "(root)"),
    "pow": (FractionalPower, _log_batch, _mse, "pow", "(root)"),
    "softmax": (HistoryAttention, _attention_batch, _mse, "softmax", "(root)"),
    "multi_head_attention_forward": (PaddedSelfAttention, _padding_batch, _mse, "multi_head_attention_forward",
                                     "attn"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guarded_copy_equals_a_hand_guarded_twin(case: str) -> None:
    build, make_batch, loss_fn, op, module = CASES[case]
    user = build()
    rec, context = _scanned(user, make_batch, loss_fn)
    params = rec.parameters
    assert isinstance(params, GuardParameters) and (params.op, params.module) == (op, module)
    patch = guard_nonfinite(context)
    _check(patch, context.model, build(guarded=True), user, make_batch, loss_fn)
    assert patch.loss_rewrite is None


def test_a_guard_in_the_loss_is_a_loss_rewrite() -> None:
    user = GaussianNll()
    rec, context = _scanned(user, _nll_batch, _nll)
    assert isinstance(rec.parameters, GuardParameters) and rec.parameters.module == "(loss)"
    patch = guard_nonfinite(context)
    assert patch.loss_rewrite is not None
    _check(patch, context.model, copy.deepcopy(user), user, _nll_batch, _nll,
           twin_loss=lambda output, target: _nll(output, target, guarded=True))
    # the model itself is not patched: outside the loss rewrite its forward is the user's
    torch.manual_seed(0)
    x = torch.randn(4, 4)
    assert torch.equal(context.model(x), user(x))


def test_the_scaled_dot_product_attention_guard_gives_masked_queries_every_key() -> None:
    """torch's CPU kernels return 0 (no NaN) for a boolean row that masks every key, so no scan
    names this op here; the guard is checked against its twin on a mask with such a row."""
    class Attend(nn.Module):
        def forward(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, q, q, attn_mask=mask)

    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of sample 0: no key
    q = torch.randn(2, 3, 4)
    rec = Recommendation(RecommendationId.GUARD_NONFINITE, "t", ("(root)",), "", "",
                         GuardParameters("scaled_dot_product_attention", "(root)", "scaled_dot_product_attention"))
    model = Attend()
    patch = guard_nonfinite(ApplyContext(model, rec, _no_report(), _no_measurements(), ScanConfig(), lambda: None))
    assert patch.applied
    twin = F.scaled_dot_product_attention(q, q, q, attn_mask=mask | ~mask.any(-1, keepdim=True))
    assert torch.equal(model(q, mask), twin)
    assert not torch.equal(Attend()(q, mask), twin)  # the guard changed the empty row


@pytest.mark.parametrize("params, why", [
    (GuardParameters(None, None, "generic"), "could not be named"),
    (GuardParameters("logit", "(root)", "log", 1e-6), "no guard for `logit`"),
    (GuardParameters("log", "nowhere", "log", 1e-6), "no module of the model"),
])
def test_a_guard_that_cannot_be_placed_is_not_applicable(params: GuardParameters, why: str) -> None:
    rec = Recommendation(RecommendationId.GUARD_NONFINITE, "t", (), "", "", params)
    model = LogOfRelu()
    patch = guard_nonfinite(ApplyContext(model, rec, _no_report(), _no_measurements(), ScanConfig(), lambda: None))
    assert not patch.applied and why in patch.reason
    x = torch.randn(3, 4)
    assert torch.allclose(model(x), LogOfRelu()(x), rtol=0, atol=0, equal_nan=True)  # nothing was patched


def test_check_inputs_is_never_claimed() -> None:
    rec = Recommendation(RecommendationId.CHECK_INPUTS, "t", (), "", "")
    patch = APPLIERS[RecommendationId.CHECK_INPUTS](
        ApplyContext(LogOfRelu(), rec, _no_report(), _no_measurements(), ScanConfig(), lambda: None))
    assert not patch.applied and patch.reason.startswith("not verifiable in the model")


def test_the_float16_clamp_keeps_a_representable_bound() -> None:
    """1e-12 is 0 in float16: the sqrt guard clamps at float16's smallest normal instead."""
    class Root(nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(u)

    rec = Recommendation(RecommendationId.GUARD_NONFINITE, "t", ("(root)",), "", "",
                         GuardParameters("sqrt", "(root)", "sqrt", 1e-12))
    model = Root()
    guard_nonfinite(ApplyContext(model, rec, _no_report(), _no_measurements(), ScanConfig(), lambda: None))
    u = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    (grad,) = torch.autograd.grad(model(u).float().sum(), u)
    assert torch.isfinite(grad).all()
    assert math.isclose(float(model(u.detach())[0]), math.sqrt(float(torch.finfo(torch.float16).tiny)), rel_tol=1e-2)


def _no_report() -> Any:
    return None  # the guard applier reads only the recommendation and the model


def _no_measurements() -> Any:
    return None


# --- the corpus -----------------------------------------------------------------------------------

CORPUS = Path(__file__).parent / "corpus"
NONFINITE = sorted(p.name for p in CORPUS.glob("nonfinite_*.py"))


@pytest.mark.parametrize("name", NONFINITE)
def test_every_guard_the_nonfinite_corpus_gets_is_applied_and_removes_the_nan(name: str) -> None:
    """Each guard-nonfinite recommendation of a broken corpus model is placed on its op, and the
    re-probe of the guarded copy has no NaN/Inf left; check-inputs is never claimed."""
    report = scan(str(CORPUS / name), verify=True)
    recs = {rec.id: rec for rec in report.recommendations}
    assert RecommendationId.GUARD_NONFINITE in recs or RecommendationId.CHECK_INPUTS in recs
    for rec_id, rec in recs.items():
        verification = rec.verification
        assert verification is not None
        if rec_id == RecommendationId.GUARD_NONFINITE:
            assert verification.status != VerificationStatus.NOT_APPLICABLE, verification.summary
            assert "nonfinite" in verification.resolved and "nonfinite" not in verification.remaining
        if rec_id == RecommendationId.CHECK_INPUTS:
            assert verification.status == VerificationStatus.NOT_APPLICABLE
