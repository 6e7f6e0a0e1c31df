"""Plain-autograd reference measurement for the labeled model corpus.

Usage:
    python tests/corpus/reference.py [--json] [--quiet] [--seeds 0,1,2] [files...]

With no files, every ``<label>_<name>.py`` next to this script is measured. For each file it
imports the model file by path (the model-file contract of DESIGN.md: ``build_model()``,
``make_batch(batch_size)``, optional ``loss_fn(output, target)``), then for seeds 0, 1, 2:
``torch.manual_seed(seed)``, one batch of 16, forward, loss, ``loss.backward()``, and reads the
``.grad`` of every parameter. Nothing here uses gradcheck_cli: the corpus must stay independent
of the tool it is meant to judge.

Printed per file:
  * per parameterised layer (a module owning parameters directly, tied parameters counted once),
    in forward execution order (a module never called itself but whose parameters get
    gradients, like nn.MultiheadAttention.out_proj, is placed after its parent's layers):
    grad norm (L2 over the layer's own gradients), weight-grad norm (parameters whose name
    contains "weight"), weight norm, grad/weight, non-finite gradient count; each averaged
    over the 3 batches. Norms and counts are taken in float64 of the stored values
    (stored_values: a sparse gradient's coalesced values, a complex tensor's modulus |z|).
    Layers whose parameters are all frozen or that get no gradient at all
    are listed as "frozen" / "unused" and left out of the ratios;
  * first/last ratio: grad norm of the first executed trainable layer over the last one;
  * the range of grad/weight over the trainable layers;
  * the loss values, and the time of one forward+backward of a batch (best of 5, 1 thread);
  * for models containing nn.RNN / nn.LSTM / nn.GRU: the gradient w.r.t. the input of the first
    recurrent module at the first vs the last time step (norm over batch and features), and the
    spectral radius of nn.RNN's weight_hh_l0;
  * for models without those that call an nn.RNNCell / nn.GRUCell / nn.LSTMCell in a Python loop
    (watch_cell_steps): the same first-vs-last input gradient, over the calls of the first cell
    called more than once (each call's input x_t kept with retain_grad by a forward pre-hook on
    the cell; a plain leaf when x_t does not require grad), and nn.RNNCell's weight_hh radius;
  * a default-init baseline: the same build_model() with every module's reset_parameters()
    called (PyTorch's default initialisation), its loss and largest layer grad norm, so that
    "grad norms/losses > 1e3 x a healthy equivalent" can be checked;
  * the measured label, by these rules (first match wins):
      nonfinite  a non-finite loss or gradient (a loss that raises on a model output already
                 holding NaN/Inf counts as a non-finite loss: loss_unless_raised_on_nonfinite);
      exploding  first/last > 1e2, or input-grad t_first/t_last > 1e2, or largest grad norm or
                 loss > 1e3 x the default-init baseline (when that baseline is itself healthy:
                 healthy_baseline), or signal growth: the output-gradient RMS of the first
                 dense layer > 1e3 x the last's AND the output RMS of the last > 1e3 x the
                 first's (signal_growth: the mirror of signal collapse, docs/findings/init-scale.md, "weight init
                 too large": activations and gradients both grow through depth);
      vanishing  first/last < 1e-3, or every grad/weight < 1e-6, or t_first/t_last < 1e-3, or
                 signal collapse: the output-gradient RMS of the first dense layer < 1e-3 x the
                 last's AND the output RMS of the last < 1e-3 x the first's (signal_collapse);
      healthy    otherwise.
    (ratios are checked both on whole-layer and weight-only gradient norms.)

The exit status is 1 when a file's measured label differs from its filename prefix.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CORPUS_DIR = Path(__file__).resolve().parent
LABELS = ("healthy", "vanishing", "exploding", "nonfinite")
SEEDS = (0, 1, 2)
BATCH_SIZE = 16


def load_module(path: Path) -> Any:
    name = "gradcheck_corpus_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, tuple) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def compute_loss(mod: Any, output: Any, target: Any) -> tuple[torch.Tensor, str]:
    """The model-file contract's loss resolution."""
    if hasattr(mod, "loss_fn"):
        return mod.loss_fn(output, target), "loss_fn"
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss, "output.loss"
    if isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor):
        if not target.is_floating_point():
            return F.cross_entropy(output, target), "cross_entropy"
        if target.shape == output.shape:
            return F.mse_loss(output, target), "mse"
    if isinstance(output, torch.Tensor):
        return output.float().pow(2).mean(), "mean_square"
    raise TypeError("no loss_fn, no output.loss and no usable target")


def loss_unless_raised_on_nonfinite(mod: Any, output: Any, target: Any) -> tuple[torch.Tensor | None, str]:
    """compute_loss, or (None, kind) when the loss raised on a model output that already holds
    NaN/Inf (F.binary_cross_entropy refuses NaN probabilities): the loss is then counted as
    non-finite, since no finite loss exists for that output. Any other error propagates."""
    try:
        return compute_loss(mod, output, target)
    except Exception:
        if not count_nonfinite(output):
            raise
        return None, "loss_fn" if hasattr(mod, "loss_fn") else "raised"


def stored_values(t: torch.Tensor) -> torch.Tensor:
    """What a norm or a NaN count reads of a gradient or weight, in float64: a sparse gradient
    (nn.Embedding/EmbeddingBag(sparse=True)) by its values after summing duplicate indices, a
    complex one by its modulus |z| (its L2 norm is that of |z|)."""
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce().values()
    return (t.abs() if t.is_complex() else t).double()


def count_nonfinite(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        finite_kind = obj.is_floating_point() or obj.is_complex()
        return int((~torch.isfinite(stored_values(obj))).sum()) if finite_kind else 0
    if isinstance(obj, dict):
        return sum(count_nonfinite(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(count_nonfinite(v) for v in obj)
    return 0


def param_layers(model: nn.Module) -> list[tuple[str, nn.Module, list[tuple[str, nn.Parameter]]]]:
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for _, p in own)
        if own:
            layers.append((name or "<root>", module, own))
    return layers


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    total = 0.0
    for t in tensors:
        total += float(stored_values(t).pow(2).sum())
    return math.sqrt(total)


def spectral_radius(w: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(w.detach().double()).abs().max())


def measure(mod: Any, model: nn.Module, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    layers = param_layers(model)
    order: list[str] = []
    rnn_inputs: list[tuple[torch.Tensor, int]] = []
    handles = []

    def make_fwd_hook(lname: str):
        def hook(module, args, output):
            if lname not in order:
                order.append(lname)

        return hook

    def rnn_pre_hook(module, args):
        if rnn_inputs or not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        if not x.is_floating_point():
            return None
        time_dim = 1 if getattr(module, "batch_first", False) and x.dim() == 3 else 0
        if x.requires_grad:
            x.retain_grad()
            rnn_inputs.append((x, time_dim))
            return None
        x = x.detach().requires_grad_(True)
        rnn_inputs.append((x, time_dim))
        return (x, *args[1:])

    for lname, module, _ in layers:
        handles.append(module.register_forward_hook(make_fwd_hook(lname)))
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            handles.append(module.register_forward_pre_hook(rnn_pre_hook))
    cell_inputs = watch_cell_steps(model, handles)

    per_batch: list[dict[str, dict[str, Any]]] = []
    losses: list[float] = []
    loss_kind = ""
    input_nonfinite = 0
    times_ms: list[float] = []
    time_grads: list[tuple[float, float, int]] = []
    try:
        for seed in seeds:
            for p in model.parameters():
                p.grad = None
            rnn_inputs.clear()
            cell_inputs.clear()
            torch.manual_seed(seed)
            inputs, target = split_batch(mod.make_batch(BATCH_SIZE))
            input_nonfinite += count_nonfinite(inputs) + count_nonfinite(target)
            output = call_model(model, inputs)
            loss, loss_kind = loss_unless_raised_on_nonfinite(mod, output, target)
            if loss is not None:
                loss.backward()
            losses.append(float(loss.detach()) if loss is not None else math.nan)
            rows: dict[str, dict[str, Any]] = {}
            for lname, _module, own in layers:
                trainable = [(n, p) for n, p in own if p.requires_grad]
                grads = [p.grad for _, p in trainable if p.grad is not None]
                wgrads = [p.grad for n, p in trainable if p.grad is not None and "weight" in n]
                weights = [p for _, p in trainable] or [p for _, p in own]
                rows[lname] = {
                    "status": "frozen" if not trainable else ("unused" if not grads else "ok"),
                    "grad_norm": _norm(grads),
                    "wgrad_norm": _norm(wgrads),
                    "weight_norm": _norm(weights),
                    "nonfinite": sum(count_nonfinite(g) for g in grads),
                    "has_weight": any("weight" in n for n, _ in trainable),
                }
            per_batch.append(rows)
            if rnn_inputs and rnn_inputs[0][0].grad is not None:
                x, tdim = rnn_inputs[0]
                assert x.grad is not None
                g = x.grad.detach().double().transpose(0, tdim)
                per_t = g.reshape(g.shape[0], -1).norm(dim=1)
                time_grads.append((float(per_t[0]), float(per_t[-1]), int(g.shape[0])))
            elif not rnn_inputs and (cell := cell_time_grad(cell_inputs)) is not None:
                time_grads.append(cell)
        # timing: best of 5 repeats of the first batch (robust to a busy machine)
        for _ in range(5):
            torch.manual_seed(seeds[0])
            inputs, target = split_batch(mod.make_batch(BATCH_SIZE))
            t0 = time.perf_counter()
            timed, _ = loss_unless_raised_on_nonfinite(mod, call_model(model, inputs), target)
            if timed is not None:
                timed.backward()
            times_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.grad = None

    names = list(order)
    for n, _, _ in layers:
        if n in order:
            continue
        # never called itself but may still get gradients (nn.MultiheadAttention reads
        # out_proj.weight directly): place it after the last executed layer of its parent
        parts = n.split(".")
        at = len(names)
        for k in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:k])
            hits = [i for i, m in enumerate(names) if m == prefix or m.startswith(prefix + ".")]
            if hits:
                at = hits[-1] + 1
                break
        names.insert(at, n)
    types = {n: type(m).__name__ for n, m, _ in layers}
    table = []
    for n in names:
        batch_rows = [b[n] for b in per_batch]
        status = batch_rows[0]["status"]
        entry: dict[str, Any] = {"name": n, "type": types[n], "status": status}
        for key in ("grad_norm", "wgrad_norm", "weight_norm"):
            entry[key] = sum(r[key] for r in batch_rows) / len(batch_rows)
        entry["nonfinite"] = sum(r["nonfinite"] for r in batch_rows)
        entry["has_weight"] = batch_rows[0]["has_weight"]
        w = entry["weight_norm"]
        entry["grad_to_weight"] = entry["grad_norm"] / w if w > 0 else float("nan")
        entry["wgrad_to_weight"] = entry["wgrad_norm"] / w if w > 0 else float("nan")
        table.append(entry)

    active = [e for e in table if e["status"] == "ok"]
    # Weight-only ratios over the layers that own a parameter named "weight": a tied decoder (its
    # weight is the embedding's) or a layer whose matrix is called "kernel" has no weight gradient
    # of its own, and would read as 0 (vanishing) or make first/last infinite (exploding).
    weighted = [e for e in active if e["has_weight"]]
    result: dict[str, Any] = {
        "loss_kind": loss_kind,
        "losses": losses,
        "layers": table,
        "input_nonfinite": input_nonfinite,
        "nonfinite_grads": sum(e["nonfinite"] for e in table),
        "ms_fwd_bwd": min(times_ms),
        "first_last": None,
        "first_last_weight": None,
        "g_w_range": None,
        "wg_w_range": None,
        "max_grad_norm": max((e["grad_norm"] for e in active), default=float("nan")),
    }
    if len(active) >= 2:
        first, last = active[0], active[-1]
        result["first_last"] = _ratio(first["grad_norm"], last["grad_norm"])
        result["first_last_names"] = (first["name"], last["name"])
    if len(weighted) >= 2:
        result["first_last_weight"] = _ratio(weighted[0]["wgrad_norm"], weighted[-1]["wgrad_norm"])
    if active:
        gw = [e["grad_to_weight"] for e in active]
        result["g_w_range"] = (min(gw), max(gw))
    if weighted:
        wgw = [e["wgrad_to_weight"] for e in weighted]
        result["wg_w_range"] = (min(wgw), max(wgw))
    if time_grads:
        first_t = sum(t[0] for t in time_grads) / len(time_grads)
        last_t = sum(t[1] for t in time_grads) / len(time_grads)
        result["time_grad"] = {
            "steps": time_grads[0][2],
            "first": first_t,
            "last": last_t,
            "ratio": _ratio(first_t, last_t),
        }
    finite = all(math.isfinite(v) for v in losses) and not result["nonfinite_grads"]
    result["signal_collapse"] = signal_collapse(mod, model, seeds) if finite else None
    radii = {
        n: spectral_radius(m.get_parameter("weight_hh_l0"))
        for n, m in model.named_modules()
        if isinstance(m, nn.RNN)
    }
    radii.update({n: spectral_radius(m.get_parameter("weight_hh"))
                  for n, m in model.named_modules() if isinstance(m, nn.RNNCell)})
    if radii:
        result["rnn_spectral_radius"] = radii
    return result


def watch_cell_steps(model: nn.Module, handles: list[Any]) -> dict[str, list[torch.Tensor]]:
    """Keep the input x_t of every call of every nn.RNNCellBase (one list per cell, in call order).

    A forward pre-hook on the cell calls retain_grad() on an input that requires grad, or swaps in
    a detached copy that does (a leaf: the model's data x_t does not require grad). The caller
    clears the lists before each batch.
    """
    calls: dict[str, list[torch.Tensor]] = {}

    def make_hook(name: str):
        def hook(module, args):
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return None
            x = args[0]
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            else:
                x.retain_grad()
            calls.setdefault(name, []).append(x)
            return (x, *args[1:])

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.RNNCellBase):
            handles.append(module.register_forward_pre_hook(make_hook(name)))
    return calls


def cell_time_grad(calls: dict[str, list[torch.Tensor]]) -> tuple[float, float, int] | None:
    """(norm of dL/dx at the first call, at the last call, calls) for the first cell called more
    than once; a call whose input got no gradient counts as 0."""
    for inputs in calls.values():
        if len(inputs) < 2:
            continue
        norms = [float(x.grad.detach().double().norm()) if x.grad is not None else 0.0 for x in inputs]
        return norms[0], norms[-1], len(inputs)
    return None


def signal_collapse(mod: Any, model: nn.Module, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any] | None:
    """Signal collapse through depth (He et al. 2015; docs/findings/init-scale.md "ReLU init at
    half the He variance").

    The dense layers are the modules whose own `weight` has 2+ dimensions, embeddings left out
    (nn.Linear, nn.Conv*), in the order of their first forward call. For each, a forward hook
    takes the RMS of its output and a tensor hook on that output the RMS of the gradient reaching
    it (mean squares over every call and the batches of `seeds`). Returned: "grad", the
    output-gradient RMS of the first dense layer over the last one's, and "act", the output RMS of
    the last over the first's. In a plain stack at weight variance 1/fan_in both fall ~2^-1/2 per
    layer, while the weight gradients (dW = delta h^T, the two decays multiplied) stay uniform, so
    neither first/last nor grad/weight shows it. None with fewer than 4 dense layers."""
    sums: dict[str, list[float]] = {}
    order: list[str] = []
    handles = []

    def make_hook(lname: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            acc = sums.setdefault(lname, [0.0, 0, 0.0, 0])
            if lname not in order:
                order.append(lname)
            acc[0] += float(stored_values(output).pow(2).sum())
            acc[1] += output.numel()

            def grad_hook(grad: torch.Tensor) -> None:
                acc[2] += float(stored_values(grad).pow(2).sum())
                acc[3] += grad.numel()

            output.register_hook(grad_hook)

        return hook

    for lname, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2 and "Embedding" not in type(module).__name__:
            handles.append(module.register_forward_hook(make_hook(lname)))
    try:
        for seed in seeds:
            torch.manual_seed(seed)
            inputs, target = split_batch(mod.make_batch(BATCH_SIZE))
            loss, _ = compute_loss(mod, call_model(model, inputs), target)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in model.parameters():
            p.grad = None
    measured = [n for n in order if sums[n][1] and sums[n][3]]
    if len(measured) < 4:
        return None
    first, last = sums[measured[0]], sums[measured[-1]]

    def rms(total: float, count: float) -> float:
        return math.sqrt(total / count)

    return {"first": measured[0], "last": measured[-1], "layers": len(measured),
            "grad": _ratio(rms(first[2], first[3]), rms(last[2], last[3])),
            "act": _ratio(rms(last[0], last[1]), rms(first[0], first[1]))}


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return float("inf") if a > 0 else float("nan")
    return a / b


def default_init_baseline(mod: Any, seeds: tuple[int, ...] = SEEDS) -> dict[str, Any]:
    torch.manual_seed(12345)
    model = mod.build_model()
    with torch.no_grad():
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset) and m is not model:
                reset()
    return measure(mod, model, seeds)


def healthy_baseline(base: dict[str, Any]) -> dict[str, Any] | None:
    """The default-init baseline when it is a healthy equivalent (its own label, without a
    baseline, is healthy), else None: a deep bias-free ReLU stack at PyTorch's default init
    collapses by ~0.41x per layer, and comparing with its ~1e-13 gradients would call any working
    init of the same stack "exploding"."""
    return base if classify(base, None)[0] == "healthy" else None


def classify(res: dict[str, Any], base: dict[str, Any] | None) -> tuple[str, str]:
    losses = res["losses"]
    bad_losses = sum(not math.isfinite(v) for v in losses)
    if res["nonfinite_grads"] or bad_losses:
        n = res["nonfinite_grads"]
        return "nonfinite", (
            f"non-finite loss in {bad_losses}/{len(losses)} batches, "
            f"{n} non-finite gradient elements"
        )
    ratios = [r for r in (res["first_last"], res["first_last_weight"]) if r is not None]
    t = res.get("time_grad", {}).get("ratio")
    if any(r > 1e2 for r in ratios):
        return "exploding", f"first/last {max(ratios):.3g} > 1e2"
    if t is not None and t > 1e2:
        return "exploding", f"input-grad t_first/t_last {t:.3g} > 1e2"
    if base is not None and math.isfinite(base["max_grad_norm"]) and base["max_grad_norm"] > 0:
        g = res["max_grad_norm"] / base["max_grad_norm"]
        lb = sum(base["losses"]) / len(base["losses"])
        lr = (sum(losses) / len(losses)) / lb if lb > 0 else float("nan")
        if g > 1e3 or lr > 1e3:
            return "exploding", f"vs default-init baseline: grad x{g:.3g}, loss x{lr:.3g} (> 1e3)"
    if (growth := signal_growth(res)) is not None:
        return "exploding", growth
    if any(r < 1e-3 for r in ratios):
        return "vanishing", f"first/last {min(ratios):.3g} < 1e-3"
    for key in ("g_w_range", "wg_w_range"):
        rng = res[key]
        if rng is not None and rng[1] < 1e-6:
            return "vanishing", f"every grad/weight < 1e-6 ({key}: max {rng[1]:.3g})"
    if t is not None and t < 1e-3:
        return "vanishing", f"input-grad t_first/t_last {t:.3g} < 1e-3"
    sc = res.get("signal_collapse")
    if sc is not None and sc["grad"] < 1e-3 and sc["act"] < 1e-3:
        return "vanishing", (f"signal collapse: output-grad first/last {sc['grad']:.3g}, "
                             f"activation last/first {sc['act']:.3g} (both < 1e-3)")
    return "healthy", "no rule fired"


def signal_growth(res: dict[str, Any]) -> str | None:
    """The exploding rule for an init too large in a deep plain stack, whose default-init
    baseline is no healthy equivalent (it collapses, so healthy_baseline drops it): both the
    gradient reaching the first dense layer's output and the last dense layer's activation are
    more than 1e3 x their value at the other end (signal_collapse's measurement, mirrored)."""
    sc = res.get("signal_collapse")
    if sc is None or not (sc["grad"] > 1e3 and sc["act"] > 1e3):
        return None
    return (f"signal growth: output-grad first/last {sc['grad']:.3g}, activation last/first "
            f"{sc['act']:.3g} (both > 1e3)")


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if (x == 0 or not math.isfinite(x) or 1e-3 <= abs(x) < 1e4) else f"{x:.2e}"


def report(
    path: Path, res: dict[str, Any], base: dict[str, Any], measured: str, why: str, quiet: bool
) -> str:
    label = path.stem.split("_", 1)[0]
    ok = "OK" if measured == label else "MISMATCH"
    out = [f"== {path.name}  label={label}  measured={measured}  {ok}  ({why})"]
    out.append(
        f"   loss[{res['loss_kind']}]: "
        + " ".join(fmt(v) for v in res["losses"])
        + f"   fwd+bwd {res['ms_fwd_bwd']:.1f} ms   non-finite inputs: {res['input_nonfinite']}"
        + f"   non-finite grads: {res['nonfinite_grads']}"
    )
    if not quiet:
        out.append(
            f"   {'#':>2} {'layer':<28} {'type':<20} {'status':<7} {'grad':>9} "
            f"{'w-grad':>9} {'weight':>9} {'grad/w':>9} {'nonfin':>6}"
        )
        for i, e in enumerate(res["layers"]):
            out.append(
                f"   {i:>2} {e['name'][:28]:<28} {e['type'][:20]:<20} {e['status']:<7} "
                f"{fmt(e['grad_norm']):>9} {fmt(e['wgrad_norm']):>9} {fmt(e['weight_norm']):>9} "
                f"{fmt(e['grad_to_weight']):>9} {e['nonfinite']:>6}"
            )
    if res["first_last"] is not None:
        a, b = res["first_last_names"]
        out.append(
            f"   first/last ({a} / {b}): grad {fmt(res['first_last'])}, "
            f"weight-grad {fmt(res['first_last_weight'])}"
        )
    if res["g_w_range"] is not None:
        lo, hi = res["g_w_range"]
        wlo, whi = res["wg_w_range"] or (math.nan, math.nan)
        out.append(
            f"   grad/weight range: {fmt(lo)} .. {fmt(hi)}   (weight-only {fmt(wlo)} .. {fmt(whi)})"
        )
    if "time_grad" in res:
        tg = res["time_grad"]
        out.append(
            f"   input grad over {tg['steps']} steps: t_first {fmt(tg['first'])}, "
            f"t_last {fmt(tg['last'])}, ratio {fmt(tg['ratio'])}"
        )
    if res.get("signal_collapse"):
        sc = res["signal_collapse"]
        out.append(
            f"   signal through {sc['layers']} dense layers ({sc['first']} .. {sc['last']}): output-grad "
            f"first/last {fmt(sc['grad'])}, activation last/first {fmt(sc['act'])}"
        )
    if "rnn_spectral_radius" in res:
        out.append(
            "   nn.RNN weight_hh_l0 / nn.RNNCell weight_hh spectral radius: "
            + ", ".join(f"{k}={v:.3g}" for k, v in res["rnn_spectral_radius"].items())
        )
    bl = sum(base["losses"]) / len(base["losses"])
    out.append(
        f"   default-init baseline: loss {fmt(bl)}, max grad norm "
        f"{fmt(base['max_grad_norm'])}; this model: max grad norm "
        f"{fmt(res['max_grad_norm'])}"
    )
    return "\n".join(out)


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS_DIR.glob("*.py") if p.stem.split("_", 1)[0] in LABELS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--quiet", action="store_true", help="omit the per-layer tables")
    parser.add_argument(
        "--seeds", default="0,1,2", help="comma-separated batch seeds (default 0,1,2)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # deterministic summation order; timing without thread contention
    files = args.files or corpus_files()
    seeds = tuple(int(v) for v in args.seeds.split(","))
    summary = []
    documents = {}
    mismatches = 0
    for path in files:
        mod = load_module(path)
        torch.manual_seed(0)
        model = mod.build_model()
        res = measure(mod, model, seeds)
        base = default_init_baseline(mod, seeds)
        measured, why = classify(res, healthy_baseline(base))
        label = path.stem.split("_", 1)[0]
        mismatches += measured != label
        if args.json:
            documents[path.name] = {
                "label": label,
                "measured": measured,
                "why": why,
                "result": res,
                "baseline_losses": base["losses"],
                "baseline_max_grad_norm": base["max_grad_norm"],
            }
        else:
            print(report(path, res, base, measured, why, args.quiet), flush=True)
        summary.append((path.name, label, measured, why))
    if args.json:
        print(json.dumps(documents, indent=1, default=str))
    else:
        print("\n== summary")
        for name, label, measured, why in summary:
            flag = "ok " if label == measured else "BAD"
            print(f"   {flag} {name:<42} {label:<10} measured {measured:<10} {why}")
        print(f"   {len(summary) - mismatches}/{len(summary)} labels confirmed")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
