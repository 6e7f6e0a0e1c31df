"""Issue 13 part 6: what the training watch costs per training step, next to the ways people watch
gradients during training today.

For each model, in one process, every path runs the same S training steps (``--steps``, default
50: one flush of the ring at every=50; a shorter run is charged one flush at its end) from the
same state and is timed against **plain**, the same steps without any monitor:

    ratio = median over R repeats of the path's time for S steps / the same median of plain

A training step is what a user's loop does: forward, the loss, ``loss.backward()``,
``optimizer.step()`` (AdamW, lr 1e-4, weight decay 0.01), ``optimizer.zero_grad()``. The paths:

* ``watch@1``, ``watch@10``, ``watch@50``: ``gradcheck_cli.watch(model, optimizer, every=k,
  sample_every=0, output=None, quiet=True)`` and ``w.step(loss)`` after each step (activation
  sampling off, the issue's setting for its targets: <= 1.05x at every=1, <= 1.02x at every=50).
  The watch is made before the timer starts and closed (its report built) after it stops: a run
  pays those once, not per step.
* ``wandb@1000``, ``wandb@1``: ``wandb.watch(model, log="gradients", log_freq=...)``'s hook on every
  parameter: wandb's step counter per parameter (``log_track_update``) and, every log_freq-th
  call, ``log_tensor_stats`` of the gradient (bench/anchors.py: a clone, min/max to the host, a
  64-bin ``histc``). At wandb's default log_freq=1000 a histogram falls on 1 step in 1000, so an
  S-step run times the per-parameter hooks alone; the histograms add (wandb@1 - 1) / 1000 to it.
* ``lightning``: ``lightning.pytorch.utilities.grad_norm(model, 2)`` after every backward, each value
  read as a float (bench/anchors.py), as ``on_before_optimizer_step`` + ``log_dict`` does.

The batches are drawn once, outside the timer (``torch.manual_seed(seed + s)``, ``make_batch``);
before every timed run the weights, buffers and AdamW's state are put back to the same snapshot,
so all paths and repeats compute the same steps, and each path's losses must equal the plain
ones exactly, in every run (``loss ok``: the watch changes nothing in the loop). Each path is warmed
up by a run of 2 steps, then the R repeats are interleaved, the order of the paths rotating from
one repeat to the next.

Models (bench/models.py): ``gpt2-small`` (124M parameters, 2 x 128 tokens) and ``cnn-resnet-bn`` (the
zoo's small ResNet-style CNN with BatchNorm, batch 16); any model bench/overhead.py knows by name.
Torch runs 2 intra-op threads unless ``--threads`` says otherwise; the load average is printed.
``--clock cpu`` times the process's CPU time (bench/overhead.py's CLOCKS), steadier than the wall
clock on a machine shared with other jobs (set OMP_WAIT_POLICY=PASSIVE so waiting threads do not
spin). ``--parts N`` prints the fastest of N calls of each part of the watch's per-step work (its
gradient norms and finite read, a row and a flush, the update ratio), a breakdown that the load
disturbs far less than the ratios; ``--profile N`` the N functions with the most own time in one
watch@1 run.

    python bench/watch_overhead.py                      # both models (~15 min on 2 quiet cores)
    python bench/watch_overhead.py --models cnn-resnet-bn --repeats 9
    OMP_WAIT_POLICY=PASSIVE python bench/watch_overhead.py --clock cpu
    python bench/watch_overhead.py --quick              # smoke run: mlp-10x256, 10 steps, 2 repeats
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from anchors import _histogram, lightning_grad_norm
from models import BenchModel, bench_model_named
from overhead import CLOCKS, _all_models, _load_text, _params_text, _print_aligned, sync
from torch import nn

import gradcheck_cli
from gradcheck_cli.measure.watch import UPDATE_EVERY
from gradcheck_cli.target.batches import call_model, move_to, split_batch
from gradcheck_cli.target.resolve import Target

PLAIN = "plain"
WATCH_EVERY = (1, 10, 50)
WANDB_LOG_FREQ = (1000, 1)
"""wandb.watch's default log_freq, then a histogram on every step."""
DEFAULT_MODELS = ("gpt2-small", "cnn-resnet-bn")
QUICK_MODELS = ("mlp-10x256",)


# --------------------------------------------------------------------------------------------------
# The paths: what each adds to the training loop
# --------------------------------------------------------------------------------------------------


@dataclass
class Monitor:
    """A path's additions to the loop: after the backward, after the step's w.step, and its end."""

    after_backward: Callable[[], None] | None = None
    after_step: Callable[[torch.Tensor], None] | None = None
    end_of_run: Callable[[], object] = lambda: None
    """Timed: the watch's flush of the rows left in its ring (S not a multiple of every)."""
    close: Callable[[], object] = lambda: None


Path = Callable[[nn.Module, torch.optim.Optimizer], Monitor]


def _plain(model: nn.Module, optimizer: torch.optim.Optimizer) -> Monitor:
    return Monitor()


def _watch(every: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> Monitor:
    w = gradcheck_cli.watch(model, optimizer, every=every, sample_every=0, output=None, quiet=True)
    # A run of S < every steps is charged one flush, as if a block ended there (an over-count).
    return Monitor(after_step=w.step, end_of_run=w._engine._flush, close=w.close)


def _wandb_hook(grad: torch.Tensor, track: list[int], logged: list[Any]) -> None:
    """wandb's per-parameter gradient hook: log_track_update, then log_tensor_stats when due."""
    track[0] += 1
    if track[0] < track[1]:
        return
    track[0] = 0
    _histogram(grad, logged)


def _wandb(log_freq: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> Monitor:
    logged: list[Any] = []
    handles = [p.register_hook(functools.partial(_wandb_hook, track=[0, log_freq], logged=logged))
               for p in model.parameters() if p.requires_grad]
    return Monitor(close=lambda: [handle.remove() for handle in handles])


def _lightning(model: nn.Module, optimizer: torch.optim.Optimizer) -> Monitor:
    logged: list[dict[str, float]] = []
    return Monitor(after_backward=lambda: logged.append(lightning_grad_norm(model)))


PATHS: dict[str, Path] = {
    PLAIN: _plain,
    **{f"watch@{k}": functools.partial(_watch, k) for k in WATCH_EVERY},
    **{f"wandb@{f}": functools.partial(_wandb, f) for f in WANDB_LOG_FREQ},
    "lightning": _lightning,
}
"""The table's columns, in order."""


# --------------------------------------------------------------------------------------------------
# The training steps, from one snapshot
# --------------------------------------------------------------------------------------------------


Batch = tuple[Any, Any]


def make_batches(target: Target, steps: int, batch_size: int, seed: int, device: torch.device) -> list[Batch]:
    assert target.make_batch is not None
    batches = []
    for s in range(steps):
        torch.manual_seed(seed + s)
        inputs, labels = split_batch(target.make_batch(batch_size))
        batches.append((move_to(inputs, device), move_to(labels, device)))
    return batches


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Sequence[Batch], target: Target,
          monitor: Monitor) -> list[torch.Tensor]:
    """The user's loop: forward, loss, backward, (monitor), step, zero_grad, (w.step(loss))."""
    assert target.loss_fn is not None
    losses = []
    for inputs, labels in batches:
        loss = target.loss_fn(call_model(model, inputs), labels)
        loss.backward()
        if monitor.after_backward is not None:
            monitor.after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if monitor.after_step is not None:
            monitor.after_step(loss)
        losses.append(loss.detach())
    return losses


class Snapshot:
    """The weights, buffers and optimizer state, put back in place before every timed run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.tensors = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
        self.state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                      for p, s in optimizer.state.items()}

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for live, saved in zip((*model.parameters(), *model.buffers()), self.tensors):
                live.copy_(saved)
            for p, saved_state in self.state.items():
                for key, value in saved_state.items():
                    if isinstance(value, torch.Tensor):
                        optimizer.state[p][key].copy_(value)
                    else:
                        optimizer.state[p][key] = value
        optimizer.zero_grad(set_to_none=True)


@dataclass
class Row:
    model: str
    params: int
    batch_size: int
    steps: int
    repeats: int
    times: dict[str, list[float]] = field(default_factory=dict)
    """Seconds of each timed run of S steps, per path (plain first)."""
    mismatched: tuple[str, ...] = ()
    """Paths whose losses were not exactly the plain ones."""

    def median(self, path: str) -> float:
        return statistics.median(self.times[path])

    def ratio(self, path: str) -> float:
        return self.median(path) / self.median(PLAIN)

    @property
    def noise(self) -> float:
        """The largest (max - min) / median over the paths: how noisy the timings were."""
        return max(((max(t) - min(t)) / statistics.median(t) for t in self.times.values()), default=0.0)


def bench_model(bench: BenchModel, steps: int, batch_size: int, repeats: int, seed: int,
                device: torch.device, clock: Callable[[], float], paths: Sequence[str]) -> Row:
    """Time every path on one model: warm-up runs, then R interleaved timed runs of S steps."""
    target = bench.target()
    model = target.build_model().to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batches = make_batches(target, steps, batch_size, seed, device)
    train(model, optimizer, batches[:1], target, Monitor())  # AdamW's state exists from here on
    snapshot = Snapshot(model, optimizer)
    n_params = sum(p.numel() for p in model.parameters())

    def run(path: str, steps: Sequence[Batch]) -> tuple[float, list[float]]:
        snapshot.restore(model, optimizer)
        monitor = PATHS[path](model, optimizer)
        gc.collect()
        sync(device)
        start = clock()
        losses = train(model, optimizer, steps, target, monitor)
        monitor.end_of_run()
        sync(device)
        elapsed = clock() - start
        monitor.close()
        return elapsed, [float(x) for x in losses]

    for path in paths:  # warm-up: allocator, kernels, lazy imports (2 steps: a GPT-2 step is seconds)
        run(path, batches[:2])
    row = Row(bench.name, n_params, batch_size, steps, repeats, {path: [] for path in paths})
    losses: dict[str, list[list[float]]] = {path: [] for path in paths}
    for r in range(repeats):
        for path in [*paths[r % len(paths):], *paths[:r % len(paths)]]:
            elapsed, run_losses = run(path, batches)
            row.times[path].append(elapsed)
            losses[path].append(run_losses)
    reference = losses[PLAIN][0]
    row.mismatched = tuple(path for path in paths if any(run_losses != reference for run_losses in losses[path]))
    snapshot.restore(model, optimizer)
    return row


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], paths: Sequence[str]) -> None:
    columns = [p for p in paths if p != PLAIN]
    lines: list[tuple[str, ...]] = [("model", "params", "B", "S", "R", "plain ms/step", *columns, "noise",
                                     "loss ok")]
    for row in rows:
        lines.append((row.model, _params_text(row.params), str(row.batch_size), str(row.steps),
                      str(row.repeats), f"{row.median(PLAIN) / row.steps * 1e3:.1f}",
                      *(f"{row.ratio(p):.3f}" for p in columns), f"{row.noise:.0%}",
                      "yes" if not row.mismatched else "NO: " + ",".join(row.mismatched)))
    print("step time / plain (medians of the runs of S steps)")
    _print_aligned(lines)


def profile_watch(bench: BenchModel, steps: int, batch_size: int, seed: int, device: torch.device,
                  top: int, every: int = 1) -> str:
    """cProfile of one watched run of S steps (after a warm-up run), by own time per function."""
    import cProfile
    import io
    import pstats

    target = bench.target()
    model = target.build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batches = make_batches(target, steps, batch_size, seed, device)
    profiler = cProfile.Profile()
    for profiled in (False, True):
        monitor = _watch(every, model, optimizer)
        if profiled:
            profiler.runcall(train, model, optimizer, batches, target, monitor)
        else:
            train(model, optimizer, batches, target, monitor)
        monitor.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    return text[text.index("   ncalls"):] if "   ncalls" in text else text


def watch_parts(bench: BenchModel, batch_size: int, seed: int, device: torch.device, clock: Callable[[], float],
                calls: int) -> str:
    """Where a watched step's extra time goes, part by part: the fastest of `calls` calls of each
    (load only ever adds time, so the minimum is steadier than a ratio of two noisy medians).
    The parts are the engine's own methods (measure/watch.py), called as the hooks call them."""
    target = bench.target()
    model = target.build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    batch = make_batches(target, 1, batch_size, seed, device)
    train(model, optimizer, batch, target, Monitor())

    def fastest(fn: Callable[[], object]) -> float:
        return min(timed_once(fn, device, clock) for _ in range(calls))

    step = fastest(lambda: train(model, optimizer, batch, target, Monitor()))
    w = gradcheck_cli.watch(model, optimizer, every=1, sample_every=0, output=None, quiet=True)
    engine = w._engine
    assert target.loss_fn is not None
    loss = target.loss_fn(call_model(model, batch[0][0]), batch[0][1])
    loss.backward()  # (the hooks queue a read; the parts below are timed on their own)

    def row_and_flush() -> None:
        engine.ring.write(loss, engine._pending)
        engine.ring.advance()
        engine._flush()

    def update_ratio() -> None:
        engine.steps = 0  # a step the ratio is measured on
        engine._before_step(optimizer, (), {})
        engine._after_step(optimizer, (), {})

    on_block, engine.on_block = engine.on_block, lambda block: None  # (the timeline: below)
    engine.steps = 1  # not step 0, whose gradients the watch also copies for the session
    parts = {"gradient norms + finite read (every step)": fastest(engine._after_backward),
             "row + flush with its weight norms (every=1)": fastest(row_and_flush),
             f"update ratio (1 step in {UPDATE_EVERY})": fastest(update_ratio)}
    engine.on_block, engine.steps = on_block, 0
    w.close()
    optimizer.zero_grad(set_to_none=True)
    parts["timeline per block (analyse/, median)"] = _timeline_per_block(model, optimizer, target, batch, calls,
                                                                         clock)
    lines = [f"  plain step {step * 1e3:.1f} ms"]
    lines += [f"  {name}: {t * 1e6:.0f} us = {t / step:.2%} of a step" for name, t in parts.items()]
    return "\n".join(lines)


def _timeline_per_block(model: nn.Module, optimizer: torch.optim.Optimizer, target: Target, batch: list[Batch],
                        steps: int, clock: Callable[[], float]) -> float:
    """The analysis of each block (analyse/timeline.py) in a real run of `steps` steps at every=1
    (the same batch again: losses and norms move as training goes; loss windows fill after 100)."""
    w = gradcheck_cli.watch(model, optimizer, every=1, sample_every=0, output=None, quiet=True)
    timeline, times = w._timeline, []
    add = timeline.add

    def timed_add(block: Any) -> None:
        start = clock()
        add(block)
        times.append(clock() - start)

    timeline.add = timed_add
    train(model, optimizer, batch * steps, target, Monitor(after_step=w.step))
    w.close()
    return statistics.median(times)


def timed_once(fn: Callable[[], object], device: torch.device, clock: Callable[[], float]) -> float:
    sync(device)
    start = clock()
    fn()
    sync(device)
    return clock() - start


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time full training steps with gradcheck's watch, wandb.watch-style histograms and "
                    "Lightning-style grad norms against the same steps without a monitor (1.0 = free).")
    parser.add_argument("--models", default=None,
                        help="comma-separated (default " + ",".join(DEFAULT_MODELS) + "; any bench/overhead.py model)")
    parser.add_argument("--paths", default=",".join(p for p in PATHS if p != PLAIN),
                        help="comma-separated paths besides plain (default: all)")
    parser.add_argument("--steps", "-S", type=int, default=None,
                        help="training steps per timed run (default 50; --quick: 10)")
    parser.add_argument("--repeats", "-R", type=int, default=None, help="timed runs per path (default 3; --quick: 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the model's (bench/models.py)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (default) or the process's CPU time (steadier on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + ",".join(QUICK_MODELS) + ", 10 steps, 2 repeats, unless given")
    parser.add_argument("--parts", type=int, default=0, metavar="N",
                        help="also print the fastest of N calls of each part of the watch's per-step work")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the N functions with the most own time in one watch@1 run per model")
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ",".join(QUICK_MODELS)
    args.steps = args.steps or (10 if args.quick else 50)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if min(args.steps, args.repeats, args.threads) < 1:
        parser.error("--steps, --repeats and --threads must be at least 1")
    return args


def _choose(text: str | None, choices: Sequence[str], default: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()] if text is not None else list(default)
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and (args.clock == "cpu" or not torch.cuda.is_available()):
        print("--device cuda needs a CUDA device and the wall clock", file=sys.stderr)
        return 2
    try:
        names = _choose(args.models, _all_models(), DEFAULT_MODELS, "model")
        paths = [PLAIN, *_choose(args.paths, [p for p in PATHS if p != PLAIN], (), "path")]
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"gradcheck watch overhead: {gradcheck_cli.__file__}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, S={args.steps} steps, "
          f"R={args.repeats}, AdamW, {args.clock} clock, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {_load_text()}", flush=True)
    rows, started = [], time.perf_counter()
    for name in names:
        bench, t0 = bench_model_named(name), time.perf_counter()
        row = bench_model(bench, args.steps, args.batch_size or bench.batch_size, args.repeats, args.seed,
                          device, CLOCKS[args.clock], paths)
        rows.append(row)
        print(f"  {name}: {time.perf_counter() - t0:.1f} s, {_load_text()}", file=sys.stderr, flush=True)
    print()
    print_table(rows, paths)
    for name in names if args.parts else []:
        bench = bench_model_named(name)
        print(f"\nthe watch's parts on {name} (fastest of {args.parts} calls, {args.clock} clock):")
        print(watch_parts(bench, args.batch_size or bench.batch_size, args.seed, device, CLOCKS[args.clock],
                          args.parts))
    for name in names if args.profile else []:
        bench = bench_model_named(name)
        print(f"\ncProfile of one watch@1 run of {name} ({args.steps} steps, own time, top {args.profile}):")
        print(profile_watch(bench, args.steps, args.batch_size or bench.batch_size, args.seed, device,
                            args.profile), end="")
    print(f"\ntotal {time.perf_counter() - started:.1f} s, {_load_text()}")
    if any(row.mismatched for row in rows):
        print("WARNING: some paths' losses differ from the plain ones: the monitor changed the training",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
