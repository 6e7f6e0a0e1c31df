"""The built-in zoo: the catalogue, the builds, and each model's documented mechanism.

The mechanism tests use a plain autograd reference (loss.backward(), then weight.grad per
Linear/Conv layer), independent of gradcheck's probe; the numbers in the comments were measured
on the seeded builds with batches of 16 drawn after torch.manual_seed(0..2).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradcheck_cli.errors import UserError
from gradcheck_cli.report.records import VERDICT_ORDER
from gradcheck_cli.target import zoo
from gradcheck_cli.target.zoo import models

REQUIRED = {
    "deep-sigmoid": "vanishing",
    "relu-he": "healthy",
    "relu-normal-init": "exploding",
    "tanh-tiny-init": "vanishing",
    "rnn-long": "vanishing",
    "lstm": "healthy",
    "cnn-plain-deep": "vanishing",
    "cnn-resnet-bn": "healthy",
    "transformer-preln": "healthy",
    "nan-log": "nonfinite",
}
SEEDS = (0, 1, 2)
BATCH = 16


# --------------------------------------------------------------------------- helpers


def _parts(name: str) -> tuple[Callable[[], Any], Callable[[int], Any], Callable[[Any, Any], Any]]:
    """build_model, make_batch and loss_fn of a builtin (every builtin defines all three)."""
    target = zoo.load_target(name)
    assert target.make_batch is not None and target.loss_fn is not None
    return target.build_model, target.make_batch, target.loss_fn


def _run(name: str, seed: int, batch_size: int = BATCH,
         input_grad: bool = False) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Build `name`, draw one seeded batch, backward; return (model, inputs, loss)."""
    build_model, make_batch, loss_fn = _parts(name)
    model = build_model()
    torch.manual_seed(seed)
    inputs, labels = make_batch(batch_size)
    if input_grad:
        inputs = inputs.clone().requires_grad_()
    loss = loss_fn(model(inputs), labels)
    loss.backward()
    return model, inputs, loss


def _grad(tensor: torch.Tensor) -> torch.Tensor:
    assert tensor.grad is not None
    return tensor.grad


def _weight_grad_norms(model: nn.Module) -> list[float]:
    """Plain reference: |weight.grad| of every Linear/Conv layer, in definition order."""
    return [
        _grad(module.weight).double().norm().item()
        for module in model.modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    ]


def _conv_grad_norms(model: nn.Module) -> list[float]:
    return [
        _grad(m.weight).double().norm().item() for m in model.modules() if isinstance(m, nn.Conv2d)
    ]


def _step_grad_norms(inputs: torch.Tensor) -> torch.Tensor:
    # float64: the first steps' gradients of rnn-long are ~1e-37 per element, and squaring them
    # in float32 underflows to 0.
    return _grad(inputs).double().norm(dim=(0, 2))


# --------------------------------------------------------------------------- catalogue


def test_names_are_unique_kebab_case() -> None:
    names = zoo.names()
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
    assert names == [b.name for b in zoo.BUILTINS]


def test_required_builtins_with_their_verdicts() -> None:
    documented = {b.name: b.verdict for b in zoo.BUILTINS}
    for name, verdict in REQUIRED.items():
        assert documented.get(name) == verdict, name
    for builtin in zoo.BUILTINS:
        assert builtin.verdict in {status.value for status in VERDICT_ORDER}
        assert builtin.summary and "\n" not in builtin.summary


@pytest.mark.parametrize("builtin", zoo.BUILTINS, ids=lambda b: b.name)
def test_factory_exists_and_documents_itself(builtin: zoo.Builtin) -> None:
    assert issubclass(getattr(models, builtin.factory), nn.Module)
    factory: Any = getattr(models, builtin.factory)
    assert callable(factory.make_batch) and callable(factory.loss_fn)
    doc = factory.__doc__ or ""
    assert doc.startswith(f"{builtin.name}:")
    assert f"Behaviour: {builtin.verdict}" in doc
    assert "docs/" in doc and "Measured" in doc  # the mechanism's page in the repository


def test_catalogue_does_not_import_torch() -> None:
    code = (
        "import sys, gradcheck_cli\n"
        "before = 'torch' in sys.modules\n"
        "import gradcheck_cli.target.zoo as z\n"
        "z.names(); z.get_builtin('lstm')\n"
        "print(before or 'torch' not in sys.modules)\n"
    )
    repo_root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo_root)
    assert out.stdout.strip() == "True", out.stderr


def test_typo_suggests_the_close_name() -> None:
    with pytest.raises(UserError) as err:
        zoo.get_builtin("deep-sigmod")
    message = str(err.value)
    assert "'deep-sigmod'" in message and "did you mean 'deep-sigmoid'" in message
    assert "available: " + ", ".join(zoo.names()) in message
    assert "\n" not in message


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(UserError, match="unknown builtin 'zzz'; available: deep-sigmoid, "):
        zoo.load_target("zzz")


# --------------------------------------------------------------------------- builds and batches


@pytest.mark.parametrize("name", zoo.names())
def test_builds_and_runs(name: str) -> None:
    assert zoo.load_target(name).name == f"builtin:{name}"
    build_model, make_batch, loss_fn = _parts(name)
    model = build_model()
    assert isinstance(model, nn.Module)
    for batch_size in (BATCH, 3):
        torch.manual_seed(0)
        batch = make_batch(batch_size)
        assert isinstance(batch, tuple) and len(batch) == 2
        inputs, labels = batch
        assert isinstance(inputs, torch.Tensor) and inputs.shape[0] == batch_size
        assert labels.shape[0] == batch_size
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), labels)
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        loss.backward()
        grads = [_grad(p) for p in model.parameters() if p.requires_grad]
        assert grads
        finite = math.isfinite(loss.item()) and all(bool(g.isfinite().all()) for g in grads)
        # Only the nonfinite demonstration may (and must) produce NaN/Inf.
        assert finite == (zoo.get_builtin(name).verdict != "nonfinite"), name


@pytest.mark.parametrize("name", zoo.names())
def test_build_is_deterministic_and_leaves_the_rng_alone(name: str) -> None:
    build_model = zoo.load_target(name).build_model
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first, second = build_model(), build_model()
    assert torch.equal(torch.get_rng_state(), state)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first is not second
    assert all(p is not q for p, q in zip(first.parameters(), second.parameters(), strict=True))


@pytest.mark.parametrize("name", zoo.names())
def test_make_batch_draws_from_the_callers_rng(name: str) -> None:
    _, make_batch, _ = _parts(name)
    torch.manual_seed(0)
    x0, _ = make_batch(4)
    torch.manual_seed(0)
    x0_again, _ = make_batch(4)
    torch.manual_seed(1)
    x1, _ = make_batch(4)
    assert torch.equal(x0, x0_again)
    assert not torch.equal(x0, x1)


@pytest.mark.parametrize("name", zoo.names())
def test_models_stay_small(name: str) -> None:
    # A scan (build + 3 batches of 16, forward and backward) measured 2 ms (nan-log) to 45 ms
    # (cnn-resnet-bn) on 2 idle CPU cores. Wall time flakes on a shared CI box, so the guard is
    # on size: the largest model has 28.6k parameters, the largest batch of 16 12.8k elements.
    build_model, make_batch, _ = _parts(name)
    model = build_model()
    assert sum(p.numel() for p in model.parameters()) < 50_000
    torch.manual_seed(0)
    inputs, _ = make_batch(BATCH)
    assert inputs.numel() < 20_000


# --------------------------------------------------------------------------- mechanisms


@pytest.mark.parametrize("seed", SEEDS)
def test_deep_sigmoid_decays_geometrically(seed: int) -> None:
    model, _, _ = _run("deep-sigmoid", seed)
    norms = _weight_grad_norms(model)
    # Measured (seed 0): 2.8e-08, 1.1e-07, ..., 0.11, 0.75; first/last 3.3e-08 to 3.9e-08.
    assert norms[0] / norms[-1] < 1e-3
    assert norms == sorted(norms)  # grows monotonically from the input to the head


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_he_keeps_the_scale(seed: int) -> None:
    model, _, loss = _run("relu-he", seed)
    norms = _weight_grad_norms(model)
    # Measured: first/last 0.44 to 0.63; norms 2.9 to 10.4; loss 4.2 to 4.5.
    assert 0.1 <= norms[0] / norms[-1] <= 10
    assert max(norms) / min(norms) < 10


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_normal_init_explodes_relative_to_he(seed: int) -> None:
    normal, _, normal_loss = _run("relu-normal-init", seed)
    he, _, he_loss = _run("relu-he", seed)
    big, ref = _weight_grad_norms(normal), _weight_grad_norms(he)
    # Measured: loss 3.9e+06 to 4.3e+06 vs 4.2 to 4.5; grad norms >= 8.5e+05 vs <= 10.4.
    assert normal_loss.item() > 1e3 * he_loss.item()
    assert min(big) > 1e3 * max(ref)
    assert all(math.isfinite(n) for n in big)  # exploding, not (yet) non-finite


@pytest.mark.parametrize("seed", SEEDS)
def test_tanh_tiny_init_is_uniformly_tiny(seed: int) -> None:
    model, _, _ = _run("tanh-tiny-init", seed)
    norms = _weight_grad_norms(model)
    # Measured: every norm between 2.3e-09 and 4.4e-09, first/last 0.57 to 1.1.
    assert max(norms) < 1e-6
    assert max(norms) / min(norms) < 10  # uniform, not a decay over depth


def test_rnn_long_vanishes_through_time_and_lstm_does_not() -> None:
    model = zoo.load_target("rnn-long").build_model()
    radius = torch.linalg.eigvals(model.rnn.weight_hh_l0.detach()).abs().max().item()
    assert radius == pytest.approx(0.5, rel=1e-4)
    for seed in SEEDS:
        _, rnn_x, _ = _run("rnn-long", seed, input_grad=True)
        _, lstm_x, _ = _run("lstm", seed, input_grad=True)
        rnn_steps, lstm_steps = _step_grad_norms(rnn_x), _step_grad_norms(lstm_x)
        rnn_ratio = (rnn_steps[0] / rnn_steps[-1]).item()
        lstm_ratio = (lstm_steps[0] / lstm_steps[-1]).item()
        # Measured: rnn-long 2.3e-35 to 3.2e-35 (6e-18 at step 50); lstm 0.11 to 0.20.
        assert rnn_ratio < 1e-3
        assert rnn_steps[50] < 1e-6 * rnn_steps[-1]
        assert lstm_ratio > 1e-2
        assert lstm_ratio > 1e6 * rnn_ratio


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_cnn_vanishes_and_resnet_bn_does_not(seed: int) -> None:
    plain, _, _ = _run("cnn-plain-deep", seed)
    resnet, _, _ = _run("cnn-resnet-bn", seed)
    plain_norms, resnet_norms = _weight_grad_norms(plain), _weight_grad_norms(resnet)
    plain_convs, resnet_convs = _conv_grad_norms(plain), _conv_grad_norms(resnet)
    assert len(plain_convs) == len(resnet_convs) == 13
    # Measured: plain first/head 4.7e-13 to 7.6e-13, first conv/last conv ~1e-12;
    # resnet first/head 0.082 to 0.094, first conv/last conv ~2.
    assert plain_norms[0] / plain_norms[-1] < 1e-3
    assert plain_convs[0] / plain_convs[-1] < 1e-3
    assert 1e-2 <= resnet_norms[0] / resnet_norms[-1] <= 1e2
    assert 1e-2 <= resnet_convs[0] / resnet_convs[-1] <= 1e2


@pytest.mark.parametrize("seed", SEEDS)
def test_transformer_is_tied_and_healthy(seed: int) -> None:
    model, _, loss = _run("transformer-preln", seed)
    assert model.head.weight is model.embed.weight
    assert sum(1 for _ in model.parameters()) < sum(1 for _ in model.named_parameters(
        remove_duplicate=False))
    norms = _weight_grad_norms(model)
    # Measured: loss 3.47 to 3.48 (ln 32 = 3.47); Linear grad norms 0.029 to 0.73;
    # first/last 0.14 to 0.17.
    assert loss.item() == pytest.approx(math.log(32), abs=0.5)
    assert 1e-2 <= norms[0] / norms[-1] <= 1e2
    assert 1e-3 < min(norms) and max(norms) < 10


def test_nan_log_turns_non_finite_at_the_log() -> None:
    build_model, make_batch, loss_fn = _parts("nan-log")
    model = build_model()
    torch.manual_seed(0)
    inputs, labels = make_batch(BATCH)
    encoded = model.encoder(inputs)
    # Measured: 54% of the log's inputs are negative; loss and every gradient element NaN.
    assert encoded.isfinite().all() and (encoded < 0).any()
    assert not model.log(encoded).isfinite().all()
    loss = loss_fn(model(inputs), labels)
    loss.backward()
    assert math.isnan(loss.item())
    assert all(bool(_grad(p).isnan().any()) for p in model.parameters())
