"""Synthetic inputs, what make_batch returns, calling the model, and the default loss rules."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.target.batches import (
    batch_has_nonfinite,
    call_model,
    move_to,
    parse_input_shape,
    split_batch,
    synthetic_batch_maker,
)
from gradcheck_cli.target.losses import compute_loss, primary_tensor


def message_of(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


# ------------------------------------------------------------------------------------ input shapes


@pytest.mark.parametrize("text, shape", [
    ("3x32x32", (3, 32, 32)), ("128", (128,)), ("16x64", (16, 64)), ("3,32,32", (3, 32, 32)),
    (" 3 X 32 ", (3, 32)), ("(3, 32, 32)", (3, 32, 32)), ("128,", (128,)),
])
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["3xa", "", "x", "3x", "1.5", "-1"])
def test_parse_input_shape_rejects(text: str) -> None:
    assert message_of(parse_input_shape, text) == (
        f"invalid --input-shape '{text}': expected sizes like 3x32x32")


def test_parse_input_shape_rejects_zero() -> None:
    assert "sizes must be positive" in message_of(parse_input_shape, "3x0")


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_inferred_from_linear_and_embedding() -> None:
    linear = nn.Sequential(nn.Linear(5, 3), nn.ReLU())
    x = synthetic_batch_maker(linear, None)(4)
    assert x.shape == (4, 5) and x.dtype == torch.float32
    emb = nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 2))
    tokens = synthetic_batch_maker(emb, None)(4)
    assert tokens.shape == (4, 16) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 11


def test_synthetic_with_input_shape() -> None:
    x = synthetic_batch_maker(Net(), (3, 8, 8))(2)
    assert x.shape == (2, 3, 8, 8) and x.is_floating_point()
    bag = nn.EmbeddingBag(7, 3)
    tokens = synthetic_batch_maker(bag, (5,))(2)
    assert tokens.shape == (2, 5) and not tokens.is_floating_point() and int(tokens.max()) < 7
    assert bag(tokens).shape == (2, 3)
    double = nn.Linear(2, 2).double()
    assert synthetic_batch_maker(double, (2,))(3).dtype == torch.float64


def test_synthetic_cannot_infer() -> None:
    message = message_of(synthetic_batch_maker, Net(), None)
    assert message == ("cannot infer the input shape of Net (first layer Conv2d); pass "
                       "--input-shape, e.g. --input-shape 3x32x32, or define "
                       "make_batch(batch_size) in your model file")
    message = message_of(synthetic_batch_maker, Net(), None, source="model.py:Net")
    assert message.endswith("define make_batch(batch_size) in model.py")
    message = message_of(synthetic_batch_maker, nn.ReLU(), None)
    assert "of ReLU (no layers)" in message
    message = message_of(synthetic_batch_maker, nn.GRU(6, 4), None)
    assert "--input-shape 20x6" in message


# ------------------------------------------------------------------------------------ make_batch


def test_split_batch() -> None:
    x, y = torch.zeros(2, 3), torch.zeros(2)
    assert split_batch(x) == (x, None)
    inputs, target = split_batch({"a": x})
    assert inputs == {"a": x} and target is None
    assert split_batch((x, y)) == (x, y)
    assert split_batch([x, y]) == (x, y)
    assert split_batch((x,)) == (x, None)
    both, target = split_batch(((x, x), y))
    assert isinstance(both, tuple) and target is y


def test_split_batch_errors() -> None:
    x = torch.zeros(2)
    assert message_of(split_batch, None).startswith(
        "make_batch returned None (is a `return` missing?); expected inputs")
    assert message_of(split_batch, "text").startswith("make_batch returned a str; expected")
    assert message_of(split_batch, (x, x, x)).startswith(
        "make_batch returned a tuple of 3 items; expected inputs")
    assert "whose inputs are None" in message_of(split_batch, (None, x))
    assert "whose inputs are an int" in message_of(split_batch, (3,))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, scale=1.0):
        return self.fc(x) * scale


def test_call_model() -> None:
    model = TwoInputs()
    x = torch.ones(2, 3)
    assert call_model(model, x).shape == (2, 2)
    assert torch.allclose(call_model(model, (x, 2.0)), 2 * model(x))
    assert torch.allclose(call_model(model, [x]), model(x))
    assert torch.allclose(call_model(model, {"x": x, "scale": 3.0}), 3 * model(x))
    assert "cannot pass an int to the model" in message_of(call_model, model, 3)


def test_move_to_keeps_structure() -> None:
    Pair = namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "rest": [Pair(torch.ones(1), 3), (torch.zeros(1),)],
             "od": OrderedDict(k=torch.ones(1)), "name": "n"}
    moved = move_to(batch, "meta")
    assert moved["x"].device.type == "meta"
    assert isinstance(moved["rest"][0], Pair) and moved["rest"][0].a.device.type == "meta"
    assert moved["rest"][0].b == 3 and moved["name"] == "n"
    assert isinstance(moved["rest"][1], tuple) and moved["rest"][1][0].device.type == "meta"
    assert isinstance(moved["od"], OrderedDict) and moved["od"]["k"].device.type == "meta"
    assert move_to(None, "cpu") is None


def test_batch_has_nonfinite() -> None:
    ok = torch.ones(2)
    assert not batch_has_nonfinite(ok, None)
    assert not batch_has_nonfinite({"ids": torch.arange(3), "x": [ok]}, torch.arange(2))
    assert batch_has_nonfinite({"x": [ok, torch.tensor([1.0, float("nan")])]}, None)
    assert batch_has_nonfinite((ok,), torch.tensor([float("inf")]))
    assert not batch_has_nonfinite(torch.empty(0), None)


def test_batch_has_nonfinite_reads_the_stored_values_of_sparse_tensors() -> None:
    # torch.isfinite has no sparse kernel: a GCN's sparse adjacency matrix crashed the check.
    indices = torch.tensor([[0, 1], [1, 0]])
    finite = torch.sparse_coo_tensor(indices, torch.tensor([0.5, 0.5]), (2, 2))
    nan = torch.sparse_coo_tensor(indices, torch.tensor([0.5, float("nan")]), (2, 2))
    assert not batch_has_nonfinite((torch.ones(2), finite), None)
    assert batch_has_nonfinite((torch.ones(2), nan), None)
    assert not batch_has_nonfinite(finite.to_sparse_csr(), None)
    assert batch_has_nonfinite(nan.to_sparse_csr(), None)


# ------------------------------------------------------------------------------------ outputs


@dataclass
class Output:
    loss: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def test_primary_tensor() -> None:
    t, u = torch.ones(2, 3), torch.zeros(2)
    assert primary_tensor(t) is t
    assert primary_tensor({"logits": t, "other": u}) is t
    assert primary_tensor({"loss": u, "out": t}) is t  # a loss is not the prediction
    assert primary_tensor({"loss": u}) is u
    assert primary_tensor((None, [t, u])) is t
    assert primary_tensor(SimpleNamespace(logits=t, loss=u)) is t
    assert primary_tensor(Output(loss=u, scores=t)) is t
    assert "the model returned None" in message_of(primary_tensor, None)
    assert "a tuple of 2 items without a tensor" in message_of(primary_tensor, (1, "a"))
    assert "keys: a" in message_of(primary_tensor, {"a": 1})
    assert "the model returned an object" in message_of(primary_tensor, object())


# ------------------------------------------------------------------------------------ losses


def scores(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, requires_grad=True)


def test_loss_fn_is_used() -> None:
    out = scores(4, 3)
    loss, kind = compute_loss(out, None, lambda o, t: o.sum() * 2)
    assert kind == "loss_fn" and torch.allclose(loss, out.sum() * 2) and loss.dim() == 0


def test_loss_fn_errors() -> None:
    def bad(output, target):
        raise ValueError("boom")

    message = message_of(compute_loss, scores(4, 3), None, bad)
    assert message.startswith("loss_fn raised ValueError: boom (at test_batches_losses.py:")
    assert message_of(compute_loss, scores(16, 10), None, lambda o, t: o * 2).startswith(
        "loss_fn returned a tensor of shape (16, 10); return a scalar, e.g. .mean()")
    assert message_of(compute_loss, scores(2), None, lambda o, t: 1.5).startswith(
        "loss_fn returned a float, not a tensor")
    assert "does not depend on any trainable parameter (is the output an argmax or detached?)" in (
        message_of(compute_loss, scores(2), None, lambda o, t: o.detach().sum()))
    assert "loss_fn returned an integer tensor (torch.int64)" in message_of(
        compute_loss, scores(2, 3), None, lambda o, t: o.argmax().reshape(1))


def test_model_loss() -> None:
    own = scores(1).sum()
    loss, kind = compute_loss(SimpleNamespace(loss=own, logits=scores(2, 3)), torch.zeros(2).long(),
                              None)
    assert kind == "model_loss" and loss is not None and torch.equal(loss, own)
    loss, kind = compute_loss({"loss": own, "logits": scores(2, 3)}, None, None)
    assert kind == "model_loss"
    # no loss (None, or per-sample): the other rules apply, to the logits
    loss, kind = compute_loss(Output(loss=None, scores=scores(2, 3)), None, None)
    assert kind == "mean_square"
    logits = scores(2, 3)
    loss, kind = compute_loss(SimpleNamespace(loss=None, logits=logits), torch.tensor([0, 2]), None)
    assert kind == "cross_entropy"
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 2])))


def test_cross_entropy_shapes() -> None:
    logits = scores(4, 5)
    target = torch.tensor([0, 1, 4, 2])
    loss, kind = compute_loss(logits, target, None)
    assert kind == "cross_entropy" and torch.allclose(loss, F.cross_entropy(logits, target))
    seg = scores(2, 5, 3, 3)
    seg_target = torch.randint(0, 5, (2, 3, 3))
    loss, _ = compute_loss(seg, seg_target, None)
    assert torch.allclose(loss, F.cross_entropy(seg, seg_target))
    seq = scores(2, 7, 5)  # (B, T, C) with (B, T)
    seq_target = torch.randint(0, 5, (2, 7))
    loss, kind = compute_loss((seq, None), seq_target, None)
    assert kind == "cross_entropy"
    assert torch.allclose(loss, F.cross_entropy(seq.reshape(-1, 5), seq_target.reshape(-1)))
    padded = torch.tensor([0, -100, 4, 2])  # ignore_index is not out of range
    assert compute_loss(logits, padded, None)[1] == "cross_entropy"


def test_cross_entropy_errors() -> None:
    message = message_of(compute_loss, scores(4, 5, 6), torch.zeros(4, dtype=torch.long), None)
    assert "integer target of shape (4,) does not fit the output of shape (4, 5, 6)" in message
    message = message_of(compute_loss, scores(4, 5), torch.tensor([0, 1, 5, 2]), None)
    assert "target holds class 5 but the output of shape (4, 5) has 5 classes" in message
    message = message_of(compute_loss, scores(4, 5), torch.tensor([True, False, True, True]), None)
    assert "target of shape (4,) is boolean" in message


def test_mse_and_mean_square() -> None:
    out = scores(4, 2)
    target = torch.randn(4, 2, dtype=torch.float64)
    loss, kind = compute_loss(out, target, None)
    assert kind == "mse" and loss.dtype == torch.float32
    assert torch.allclose(loss, F.mse_loss(out, target.float()))
    message = message_of(compute_loss, out, torch.randn(4), None)
    assert "float target of shape (4,) does not match the output of shape (4, 2)" in message
    loss, kind = compute_loss(out, None, None)
    assert kind == "mean_square" and torch.allclose(loss, out.pow(2).mean())
    assert "target is a list, not a tensor" in message_of(compute_loss, out, [1, 2], None)


def test_outputs_without_gradient() -> None:
    out = scores(4, 3)
    message = message_of(compute_loss, out.argmax(dim=1), None, None)
    assert "the model's output is an integer tensor (torch.int64, shape (4,))" in message
    assert "argmax" in message
    message = message_of(compute_loss, out.detach(), None, None)
    assert message.startswith("the loss does not depend on any trainable parameter "
                              "(is the output an argmax or detached?)")
    assert "is complex" in message_of(compute_loss, torch.ones(2, dtype=torch.cfloat), None, None)
