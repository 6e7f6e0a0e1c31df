"""NaN/Inf causes told apart: a NaN that makes a later op or loss_fn raise, a softmax over a fully
masked row, and one finding per origin however far the NaN spreads.

Ground truth comes from how each model is written (where the unsafe op and the mask are); the
corpus twins' labels come from plain autograd (tests/corpus/reference.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli import scan
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import FindingKind, RecommendationId, Status
from gradcheck_cli.target.resolve import Target

CORPUS = Path(__file__).parent / "corpus"
R = RecommendationId


def _nonfinite(report: object) -> list:
    return [f for f in report.findings if f.kind == FindingKind.NONFINITE]  # type: ignore[attr-defined]


# --- a NaN born in the forward that makes loss_fn raise ---------------------------------------

def test_bce_raising_on_a_nan_from_log_is_a_nonfinite_finding_via_the_cli() -> None:
    """The CLI in a subprocess: exit 1 via the gate (not 2, "loss_fn raised"), JSON on stdout,
    and the finding names the log in the forward, right after event_head, and what raised."""
    path = CORPUS / "nonfinite_bce_after_log_negative.py"
    done = subprocess.run([sys.executable, "-m", "gradcheck_cli", "scan", str(path), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)
    assert document["verdict"] == "nonfinite"
    findings = [f for f in document["findings"] if f["kind"] == "nonfinite"]
    assert len(findings) == 1
    ev = findings[0]["evidence"]
    assert (ev["origin"], ev["op"], ev["direction"], ev["cause"], ev["after"]) == \
        ("(root)", "log", "forward", "unsafe-op", "event_head")
    assert ev["raised"].startswith("`binary_cross_entropy` in the loss raised RuntimeError")
    assert "loss could not be computed" in findings[0]["message"]
    assert document["loss"] == {"kind": "loss_fn", "values": ["NaN"]}  # the scan stopped there
    guard = [r for r in document["recommendations"] if r["id"] == "guard-nonfinite"]
    assert len(guard) == 1 and guard[0]["layers"] == ["(root)"] and "torch.log(" in guard[0]["code"]


class _ShapeBug(nn.Module):
    """log of negative values AND a loss_fn whose own bug (a wrong reshape) raises on finite
    tensors: the raise is not the NaN's doing, so it stays a user error."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.fc(x))


def test_a_loss_fn_error_on_finite_tensors_stays_a_user_error() -> None:
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.mean(1), target.reshape(3, -1))  # 16 targets do not split in 3

    target = Target("shape-bug", _ShapeBug, lambda n: (torch.randn(n, 8), torch.randn(n)), loss_fn)
    with pytest.raises(UserError, match="loss_fn raised RuntimeError"):
        scan(target, batches=1)


def test_a_non_scalar_loss_stays_a_user_error_even_with_a_nan() -> None:
    """gradcheck's own check of what loss_fn returned is about its shape, whatever the values."""
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target.unsqueeze(1)).pow(2)  # no .mean()

    target = Target("non-scalar", _ShapeBug, lambda n: (torch.randn(n, 8), torch.randn(n)), loss_fn)
    with pytest.raises(UserError, match=r"loss_fn returned a tensor of shape \(16, 4\)"):
        scan(target, batches=1)


def test_a_healthy_model_whose_loss_fn_raises_stays_a_user_error() -> None:
    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(output, target)  # logits, not probabilities: out of [0, 1]

    target = Target("bce-on-logits", lambda: nn.Linear(8, 1),
                    lambda n: (torch.randn(n, 8) * 10, torch.ones(n, 1)), loss_fn)
    with pytest.raises(UserError, match="loss_fn raised RuntimeError.*between 0 and 1"):
        scan(target, batches=1)


class _MaskedLogThenTypo(nn.Module):
    """T5's relative-position buckets take the log of |position| (log(0) = -inf) and discard that
    entry with torch.where; the forward then fails on a Python mistake unrelated to any NaN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        position = torch.arange(x.shape[1], dtype=torch.float32).abs()
        buckets = torch.where(position < 1, position, torch.log(position))  # -inf at 0, discarded
        h = self.fc(x + buckets)
        return h * self.config.scale  # type: ignore[union-attr]  # AttributeError: the model has no config


def test_a_python_error_after_an_inf_the_model_masks_stays_a_user_error() -> None:
    target = Target("masked-log", _MaskedLogThenTypo, lambda n: (torch.randn(n, 8), torch.randn(n, 4)), None)
    with pytest.raises(UserError, match="AttributeError.*config"):
        scan(target, batches=1)


class _SampleFromNaN(nn.Module):
    """A NaN from sqrt of a negative variance reaches torch.multinomial inside the forward,
    which raises: a later op of the forward, not loss_fn."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.var = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.sqrt(self.var(x)).softmax(-1)
        picks = torch.multinomial(probs, 1)
        return probs.gather(1, picks)


def test_a_later_op_of_the_forward_raising_on_the_nan_is_reported_at_the_origin() -> None:
    report = scan(Target("sample", _SampleFromNaN, lambda n: torch.randn(n, 8), None), batches=2)
    assert report.verdict == Status.NONFINITE
    (finding,) = _nonfinite(report)
    ev = finding.evidence
    assert (ev["origin"], ev["op"], ev["cause"], ev["after"]) == ("(root)", "sqrt", "unsafe-op", "var")
    assert str(ev["raised"]).startswith("`multinomial` in '(root)' raised RuntimeError")


# --- a softmax over a fully masked row ---------------------------------------------------------

def test_fully_masked_attention_rows_are_their_own_cause() -> None:
    report = scan(str(CORPUS / "nonfinite_fully_masked_attention.py"))
    (finding,) = _nonfinite(report)
    ev = finding.evidence
    assert (ev["origin"], ev["op"], ev["cause"], ev["produced"]) == ("(root)", "softmax", "all-masked", "nan")
    assert (ev["masked_rows"], ev["rows"]) == (2, 16)  # turns 0 and 8 of the batch have no history
    assert isinstance(ev["input_max_abs"], float) and ev["input_max_abs"] < 10  # nothing grew
    assert "all positions masked" in finding.message and "overflow" not in finding.message
    ids = [r.id for r in report.recommendations]
    assert ids == [R.GUARD_NONFINITE]  # no clip-gradients, no lower-lr: nothing grew
    guard = report.recommendations[0]
    assert guard.layers == ("(root)",) and "torch.finfo(scores.dtype).min" in guard.code
    assert "overflow" not in guard.why.replace("Not an overflow", "")


class _PaddedMHA(nn.Module):
    """nn.MultiheadAttention with a key_padding_mask; a sequence that is all padding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h, _ = self.attn(h, h, h, key_padding_mask=pad)  # need_weights=True: softmax inside
        return self.head(h.mean(1))


def _padded_batch(n: int, empty: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    pad = torch.zeros(n, 6, dtype=torch.bool)
    pad[:, 4:] = True
    if empty:
        pad[1] = True  # the second sequence is all padding
    return (torch.randn(n, 6, 8), pad), torch.randint(0, 3, (n,))


def test_a_fully_padded_sequence_in_multihead_attention_is_all_masked() -> None:
    report = scan(Target("mha", _PaddedMHA, lambda n: _padded_batch(n, True), None), batches=1)
    (finding,) = _nonfinite(report)
    ev = finding.evidence
    assert (ev["origin"], ev["op"], ev["cause"]) == ("attn", "multi_head_attention_forward", "all-masked")
    assert (ev["masked_rows"], ev["rows"]) == (6, 16 * 6)  # the 6 queries of one sequence
    assert finding.layer == "attn"
    assert [r.id for r in report.recommendations] == [R.GUARD_NONFINITE]
    assert "key_padding_mask" in report.recommendations[0].code


def test_partially_masked_multihead_attention_stays_healthy() -> None:
    report = scan(Target("mha", _PaddedMHA, lambda n: _padded_batch(n, False), None), batches=1)
    assert report.verdict == Status.HEALTHY and not _nonfinite(report)


class _MaskThenLog(nn.Module):
    """A -inf padding mask (partially masked rows, fine) and, later, log of a negative value:
    the mask is written on purpose and is no origin; the log is."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.score = nn.Linear(8, 1)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).masked_fill(torch.arange(x.shape[1]) >= 3, float("-inf"))
        pooled = (F.softmax(scores, dim=-1).unsqueeze(-1) * x).sum(1)
        return torch.log(self.out(pooled))


def test_a_minus_inf_mask_is_not_an_origin() -> None:
    report = scan(Target("mask-log", _MaskThenLog, lambda n: torch.randn(n, 5, 8), None), batches=1)
    (finding,) = _nonfinite(report)
    ev = finding.evidence
    assert (ev["op"], ev["cause"], ev["after"]) == ("log", "unsafe-op", "out")


# --- one origin, one finding ---------------------------------------------------------------------

class _DeepAfterLog(nn.Module):
    """log of raw signed features in front of a 28-layer tanh MLP: the NaN spreads to all 28."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(28))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def test_a_nan_spreading_to_28_layers_is_one_finding_at_its_origin() -> None:
    report = scan(Target("deep", _DeepAfterLog, lambda n: (torch.randn(n, 16), torch.randn(n, 16)), None))
    assert [layer.status for layer in report.layers] == [Status.NONFINITE] * 28
    (finding,) = _nonfinite(report)
    ev = finding.evidence
    assert (ev["origin"], ev["op"], ev["cause"]) == ("(root)", "log", "unsafe-op")
    assert ev["affected_count"] == 28
    assert str(ev["affected_layers"]).split(", ") == [f"layers.{i}" for i in range(28)]
    assert ev["nonfinite_grads"] == sum(layer.nonfinite_grads for layer in report.layers) > 0
    assert "28 layers" in finding.message and "25 more" in finding.message
    guard = next(r for r in report.recommendations if r.id == R.GUARD_NONFINITE)
    assert guard.layers == ("(root)",)


def test_fully_masked_rows_reads_each_mask_convention() -> None:
    """softmax: -inf along `dim`; sdpa: bool True = attend, float -inf = masked; MHA: bool True =
    masked, float -inf = masked, key_padding_mask (B, S) with attn_mask (B * heads, L, S)."""
    from gradcheck_cli.measure.nonfinite_origin import fully_masked_rows

    scores = torch.zeros(2, 3, 4)
    scores[0, 1] = float("-inf")  # one row of the last dim
    assert fully_masked_rows("softmax", (scores, -1), {}) == (1, 6)
    assert fully_masked_rows("softmax", (scores,), {"dim": 1}) == (0, 8)  # no column is all -inf
    query = torch.zeros(2, 2, 3, 8)  # (batch, heads, L, E)
    keep = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    keep[1, 0, 2] = False
    assert fully_masked_rows("scaled_dot_product_attention", (query, query, query, keep), {}) == (2, 12)
    additive = torch.zeros(3, 5).masked_fill(torch.tensor([True, False, False]).unsqueeze(1), float("-inf"))
    assert fully_masked_rows("scaled_dot_product_attention", (query, query, query), {"attn_mask": additive}) == (4, 12)
    mha_args = (torch.zeros(3, 2, 8), None, None, 8, 2, None, None, None, None, False)  # query (L, B, E)
    padding = torch.tensor([[False, True], [True, True]])  # batch 1 is all padding
    assert fully_masked_rows("multi_head_attention_forward", mha_args, {"key_padding_mask": padding}) == (3, 6)
    per_head = torch.zeros(2 * 2, 3, 2, dtype=torch.bool)
    per_head[1, 0] = True  # batch 0, head 1, query 0 masks both keys
    assert fully_masked_rows("multi_head_attention_forward", mha_args, {"attn_mask": per_head}) == (1, 12)
    assert fully_masked_rows("linear", (scores,), {}) == (0, 0)
