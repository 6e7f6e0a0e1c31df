"""The record of issue 16: what a gradcheck scan costs next to training, and next to the ways people
watch gradients today, on the models of the issue's table.

For each model, in one process, every path runs the same K batches (``--batches``, default 3, the
scan's default) and is timed against **plain**, K ordinary forward+backward passes:

    time ratio = median time of the path over K batches / median time of the K plain passes
    mem ratio  = extra peak memory of one run of the path / extra peak memory of one plain run

1.0 means no cost beyond the training passes themselves. The paths (bench/anchors.py):

* ``scan``: one ``gradcheck_cli.api.scan`` of the prebuilt model (its ``build_model`` returns the
  model built beforehand, so construction is never timed; the snapshot/restore, hooks, statistics,
  checks and report are);
* ``anomaly``: the plain passes under ``torch.autograd.detect_anomaly()``;
* ``naive``: forward hooks (output norms) on every module and gradient hooks (gradient norms) on
  every parameter, one host transfer per batch;
* ``lightning``: Lightning's ``grad_norm``: each parameter's gradient norm after the backward;
* ``wandb``: ``wandb.watch``'s gradient histograms (``torch.histc``, 64 bins) on every parameter.

All paths call ``torch.manual_seed(seed + b)`` and then ``make_batch(batch_size)``, as the scan
does, so they see identical batches; the losses of every path are compared with the plain ones
(``loss ok``). Each path is warmed up once, then timed R times, the order of the paths rotating
from one repeat to the next so that they share the machine's noise; the medians are reported.
The last repeat also measures each path's peak memory above what was in use just before it: CUDA's
peak allocated memory on a GPU, the process's peak RSS on the CPU (VmHWM, reset through
/proc/self/clear_refs after malloc_trim; "n/a" where the CPU peak cannot be reset). Under 1 MiB
of extra peak in the plain run (the tiny models), the memory ratio is page noise: '-'.

Models (bench/models.py): gpt2-small (124M parameters, 2 x 128 tokens), gpt-4x128 (a 4-layer
128-wide GPT), cnn-resnet-bn (the zoo's), mlp-10x256 (batch 64) and stack-1000 (1,000 x
(Linear(16, 16), Tanh)); any other zoo builtin by name. Torch runs 2 intra-op threads unless
``--threads`` says otherwise; the load average is printed with the table.

    python bench/overhead.py                  # the issue's table (~10 min on 2 quiet CPU cores)
    python bench/overhead.py --quick          # smoke run: 3 smaller models, 3 repeats (~1 min)
    python bench/overhead.py --models mlp-10x256,relu-he --repeats 9 --anchors naive,lightning
    python bench/overhead.py --device cuda
    PYTHONPATH=/path/to/other/checkout python bench/overhead.py   # measure another gradcheck_cli
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from anchors import ANCHORS, plain
from models import TABLE, bench_model_named
from torch import nn

import gradcheck_cli
from gradcheck_cli import api
from gradcheck_cli.target.resolve import Target

PLAIN, SCAN = "plain", "scan"
QUICK = ("gpt-4x128", "cnn-resnet-bn", "mlp-10x256")
"""--quick: the smaller models of the table."""
MIN_MEMORY_BYTES = 1 << 20
"""Below 1 MiB of extra peak in the plain run, the memory ratio is page-granularity noise: '-'."""


# --------------------------------------------------------------------------------------------------
# The timed paths
# --------------------------------------------------------------------------------------------------


def scan_call(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
              device: torch.device) -> list[float]:
    """One gradcheck scan of the prebuilt model (build_model returns it: construction is not
    timed); its losses."""
    prebuilt = Target(name=target.name, build_model=lambda: model, make_batch=target.make_batch,
                      loss_fn=target.loss_fn)
    report = api.scan(prebuilt, batches=batches, batch_size=batch_size, seed=seed, device=str(device))
    return list(report.loss.values)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""--clock: wall time, or the CPU time of the whole process (all its threads): the work done,
which other processes competing for the cores change much less than the wall time."""


def timed(fn: Callable[[], Any], device: torch.device,
          clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    sync(device)
    start = clock()
    result = fn()
    sync(device)
    return clock() - start, result


def _timed_into(sink: list[float], fn: Callable[[], Any], device: torch.device,
                clock: Callable[[], float]) -> None:
    sink.append(timed(fn, device, clock)[0])


# --------------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------------


_libc: Any = None


def _malloc_trim() -> None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    if _libc and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Run fn(); its peak memory above what was in use just before it (None: cannot be measured)."""
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    _malloc_trim()  # hand freed heap pages back, so that RSS is the memory really in use
    rss_kb: int | None
    try:
        rss_kb = _status_kb("VmRSS")
    except (OSError, KeyError):
        rss_kb = None
    if rss_kb is None or not _reset_peak_rss():  # not Linux, or /proc/self/clear_refs refused
        fn()
        return None
    fn()
    return float(_status_kb("VmHWM") - rss_kb) * 1024.0


# --------------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    params: int
    batches: int
    batch_size: int
    repeats: int
    times: dict[str, list[float]]
    """Seconds of each timed repeat, per path (plain first)."""
    peaks: dict[str, float | None] = field(default_factory=dict)
    """Extra peak bytes of one run, per path (None: not measured)."""
    mismatched: tuple[str, ...] = ()
    """Paths whose losses differ from the plain ones."""

    @property
    def losses_match(self) -> bool:
        return not self.mismatched

    def median(self, path: str) -> float:
        return statistics.median(self.times[path])

    @property
    def ratio(self) -> float:
        return self.time_ratio(SCAN)

    def time_ratio(self, path: str) -> float:
        return self.median(path) / self.median(PLAIN)

    def mem_ratio(self, path: str) -> float | None:
        """None where unmeasured, or where the plain run's extra peak is too small to divide by."""
        base, peak = self.peaks.get(PLAIN), self.peaks.get(path)
        if base is None or peak is None or base < MIN_MEMORY_BYTES:
            return None
        return peak / base

    @property
    def noise(self) -> float:
        """The largest (max - min) / median over the paths: how noisy the timings were."""
        return max(((max(t) - min(t)) / statistics.median(t) for t in self.times.values()), default=0.0)


def _losses_match(reference: Sequence[float], losses: Sequence[float]) -> bool:
    return len(reference) == len(losses) and all(
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(reference, losses))


def _as_floats(losses: Sequence[Any]) -> list[float]:
    return [float(x) for x in losses]


def bench_model(name: str, target: Target, batches: int, batch_size: int, repeats: int, seed: int,
                device: torch.device, memory: bool, anchors: Sequence[str] = (),
                clock: Callable[[], float] = time.perf_counter) -> Row:
    """Time plain, scan and the named anchors on one model (bench/anchors.py), interleaved."""
    model = target.build_model().to(device)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    passes: dict[str, Callable[..., Sequence[Any]]] = {PLAIN: plain, SCAN: scan_call}
    passes.update({anchor: ANCHORS[anchor] for anchor in anchors})
    paths = {key: functools.partial(fn, model, target, batches, batch_size, seed, device)
             for key, fn in passes.items()}

    # Warm up every path once (allocator, kernels, lazy imports) and check that they all ran the
    # same batches through the same model and loss.
    reference = _as_floats(paths[PLAIN]())
    mismatched = tuple(key for key, fn in paths.items()
                       if key != PLAIN and not _losses_match(reference, _as_floats(fn())))

    # Timed runs; the order rotates. The last repeat also measures each path's peak memory (its
    # preparation, gc and malloc_trim, happens outside the timer), which saves a run of each.
    keys = list(paths)
    times: dict[str, list[float]] = {key: [] for key in keys}
    peaks: dict[str, float | None] = {}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            if memory and r == repeats - 1:
                peaks[key] = peak_extra_bytes(
                    functools.partial(_timed_into, times[key], paths[key], device, clock), device)
            else:
                gc.collect()
                times[key].append(timed(paths[key], device, clock)[0])
    del model, paths
    gc.collect()
    return Row(name, n_params, batches, batch_size, repeats, times, peaks, mismatched)


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def _params_text(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _load_text() -> str:
    """'load average 1.23' (Unix): other processes on the machine make the timings noisy."""
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "load average n/a"


def _print_aligned(lines: list[tuple[str, ...]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                        for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_table(rows: list[Row]) -> None:
    """Two tables: the time ratios, then the peak-memory ratios, one column per path."""
    paths = [p for p in dict.fromkeys(key for row in rows for key in row.times) if p != PLAIN]
    lines: list[tuple[str, ...]] = [("model", "params", "K", "B", "R", "plain ms", *paths, "noise", "loss ok")]
    for row in rows:
        lines.append((row.model, _params_text(row.params), str(row.batches), str(row.batch_size),
                      str(row.repeats), f"{row.median(PLAIN) * 1e3:.1f}",
                      *(f"{row.time_ratio(p):.2f}" if p in row.times else "" for p in paths),
                      f"{row.noise:.0%}", "yes" if row.losses_match else "NO: " + ",".join(row.mismatched)))
    print("time / plain (medians)")
    _print_aligned(lines)
    if not any(row.peaks for row in rows):
        return
    lines = [("model", "plain MB", *paths)]
    for row in rows:
        lines.append((row.model, _mb(row.peaks.get(PLAIN)), *(_mem_text(row, p) for p in paths)))
    print("\npeak memory / plain (extra peak of one run)")
    _print_aligned(lines)


def _mem_text(row: Row, path: str) -> str:
    ratio = row.mem_ratio(path)
    if ratio is not None:
        return f"{ratio:.2f}"
    return "n/a" if row.peaks.get(PLAIN) is None or row.peaks.get(path) is None else "-"


def profile_scan(target: Target, batches: int, batch_size: int, seed: int, device: torch.device,
                 top: int, clock: Callable[[], float] = time.perf_counter) -> str:
    """cProfile of one scan (after a warm-up scan): where its time goes, by own time per function,
    timed with `clock` (--clock cpu: the process's CPU time, steady on a busy machine)."""
    import cProfile
    import io
    import pstats

    model = target.build_model().to(device)
    scan_call(model, target, batches, batch_size, seed, device)
    profiler = cProfile.Profile(clock)
    profiler.runcall(scan_call, model, target, batches, batch_size, seed, device)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    return text[text.index("   ncalls"):] if "   ncalls" in text else text


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _names(text: str | None, choices: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(choices)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time gradcheck's scan and the usual gradient monitors against plain "
                    "forward+backward passes of the same batches (ratio 1.0 = no overhead).")
    parser.add_argument("--models", default=None,
                        help="comma-separated: " + ", ".join(m.name for m in TABLE) +
                             " or a zoo builtin; default: the table (--quick: " + ", ".join(QUICK) + ")")
    parser.add_argument("--anchors", default=",".join(ANCHORS),
                        help=f"comma-separated paths timed besides the scan (default {','.join(ANCHORS)}; "
                             "'' for none)")
    parser.add_argument("--batches", "-K", type=int, default=3, help="batches per run (default 3)")
    parser.add_argument("--repeats", "-R", type=int, default=None,
                        help="timed repeats per path (default: per model, 3 to 15; --quick: at most 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: per model")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (default) or the process's CPU time, steadier on a busy machine "
                             "(CPU only; set OMP_WAIT_POLICY=PASSIVE so that waiting threads do not spin)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(QUICK) + ", 3 repeats")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the N functions with the most own time in one scan of each model")
    args = parser.parse_args(argv)
    if args.batches < 1 or (args.repeats is not None and args.repeats < 1) or args.threads < 1:
        parser.error("--batches, --repeats and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    if device.type == "cuda" and args.clock == "cpu":
        print("--clock cpu does not see the GPU's time: use the wall clock with --device cuda", file=sys.stderr)
        return 2
    try:
        anchors = _names(args.anchors, list(ANCHORS), "anchor")
        names = _names(args.models, _all_models(), "model") or (QUICK if args.quick else [m.name for m in TABLE])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    models = [bench_model_named(name) for name in names]
    torch.set_num_threads(args.threads)
    device_text = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gradcheck overhead: {gradcheck_cli.__file__}, torch {torch.__version__}, device {device_text}, "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, K={args.batches}, "
          f"{args.clock} clock, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {_load_text()}")
    print(flush=True)
    rows = []
    started = time.perf_counter()
    for model in models:
        t0 = time.perf_counter()
        repeats = args.repeats or (min(model.repeats, 3) if args.quick else model.repeats)
        row = bench_model(model.name, model.target(), args.batches, args.batch_size or model.batch_size,
                          repeats, args.seed, device, not args.no_memory, anchors, CLOCKS[args.clock])
        rows.append(row)
        print(f"  {model.name}: scan {row.ratio:.2f} ({time.perf_counter() - t0:.1f} s, {_load_text()})",
              file=sys.stderr, flush=True)
    print_table(rows)
    for model in models if args.profile else []:
        print(f"\ncProfile of one scan of {model.name} (own time, top {args.profile}):")
        print(profile_scan(model.target(), args.batches, args.batch_size or model.batch_size, args.seed,
                           device, args.profile, CLOCKS[args.clock]), end="")
    print(f"\ntotal {time.perf_counter() - started:.1f} s, {_load_text()}")
    if not all(row.losses_match for row in rows):
        print("WARNING: some paths' losses differ from the plain ones: they did not run the same batches",
              file=sys.stderr)
        return 1
    return 0


def _all_models() -> list[str]:
    from gradcheck_cli.target import zoo

    return [m.name for m in TABLE] + [b.name for b in zoo.BUILTINS]


if __name__ == "__main__":
    sys.exit(main())
