"""Overhead of a gradcheck scan over plain forward+backward passes of the same batches.

For each model the script prints

    ratio = (time of ``gradcheck_cli.api.scan`` over K batches)
            / (time of K plain forward+backward passes over the same K batches)

measured in one process: 1.0 means the scan costs no more than the training steps it probes.

Both paths do the same work a training step must do: for batch b they call
``torch.manual_seed(seed + b)`` and then ``make_batch(batch_size)`` (so they see identical
batches), run the same forward and the same loss, and a backward pass. The plain path uses
``loss.backward()`` and zeroes the gradients (``set_to_none=True``) before each batch; the scan
path is only the ``scan()`` call, whose ``build_model`` returns the already built model, so model
construction is never timed (the scan's own snapshot/restore of buffers, hooks, statistics,
checks and report are). Each path is warmed up once, then timed ``R`` times, alternating the
two paths (and which one goes first) so they share the machine's noise; the medians are reported.
The plain losses are compared with the losses the scan reports, as a check that both paths really
ran the same batches through the same model and loss.

The peak-memory ratio is the extra peak memory of one scan over the extra peak memory of one plain
run (both taken in the last timed repeat), each measured from the memory in use just before it:
CUDA's peak allocated memory on a GPU, the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs, after malloc_trim) on the CPU; "n/a" where the CPU peak cannot be reset.

Models: the gradcheck zoo (``gradcheck_cli.target.zoo.BUILTINS``, except nan-log, whose NaN loss is not a
training step) and ``gpt2-small``: a GPT-2-small-sized causal pre-LN transformer built here
(12 layers, d_model 768, 12 heads, MLP 3072, vocabulary 50257, head tied to the token embedding,
124M parameters, random init; nothing is downloaded), on random token batches.

    python bench/overhead.py                 # full run (~75 s on a quiet 2-core machine)
    python bench/overhead.py --quick         # smoke run: fewer repeats, no gpt2-small (~20 s)
    python bench/overhead.py --models relu-he,gpt2-small --batches 5 --repeats 9
    python bench/overhead.py --device cuda
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradcheck_cli import api
from gradcheck_cli.target import zoo
from gradcheck_cli.target.batches import call_model, move_to, split_batch
from gradcheck_cli.target.resolve import Target

GPT2 = "gpt2-small"
SKIPPED_BUILTINS = ("nan-log",)
"""Left out of the default list: its NaN loss makes it a failure case, not a training step."""
MIN_MEMORY_BYTES = 1 << 20
"""Below 1 MiB of extra peak in the plain run, the memory ratio is page-granularity noise: '-'."""


# --------------------------------------------------------------------------------------------------
# GPT-2-small, built in code
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPT2Config:
    vocab: int = 50257
    context: int = 1024
    layers: int = 12
    d_model: int = 768
    heads: int = 12
    mlp: int = 3072


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPT2Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)) (pre-LN, as GPT-2)."""

    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.mlp, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT2Small(nn.Module):
    """GPT-2 small (124M parameters) without dropout; random GPT-2-style init."""

    def __init__(self, cfg: GPT2Config | None = None) -> None:
        super().__init__()
        cfg = cfg or GPT2Config()
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.Sequential(*(GPT2Block(cfg) for _ in range(cfg.layers)))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        self.head.weight = self.wte.weight  # tied
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, 0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
            for block in self.blocks.children():  # GPT-2: residual projections get 1/sqrt(2 L)
                assert isinstance(block, GPT2Block)
                for proj in (block.attn.proj, block.mlp[-1]):
                    assert isinstance(proj, nn.Linear)
                    proj.weight.normal_(0.0, 0.02 / math.sqrt(2 * cfg.layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        return self.head(self.ln_f(self.blocks(x)))


def gpt2_target(seq_len: int) -> Target:
    vocab = GPT2Config.vocab

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1))
        return tokens[:, :-1], tokens[:, 1:]

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def build_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT2Small()

    return Target(name=GPT2, build_model=build_model, make_batch=make_batch, loss_fn=loss_fn)


# --------------------------------------------------------------------------------------------------
# The two timed paths
# --------------------------------------------------------------------------------------------------


def plain_passes(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
                 device: torch.device) -> list[torch.Tensor]:
    """K plain training passes: same batches, forward, loss and a backward pass; no optimizer step.

    The losses stay device tensors (no host sync inside the loop); the gradients are dropped at the
    end so the model goes into the scan as it came.
    """
    assert target.make_batch is not None and target.loss_fn is not None
    model.train()
    losses = []
    for b in range(batches):
        torch.manual_seed(seed + b)
        inputs, labels = split_batch(target.make_batch(batch_size))
        inputs, labels = move_to(inputs, device), move_to(labels, device)
        model.zero_grad(set_to_none=True)
        loss = target.loss_fn(call_model(model, inputs), labels)
        loss.backward()
        losses.append(loss.detach())
    model.zero_grad(set_to_none=True)
    return losses


def scan_call(model: nn.Module, target: Target, batches: int, batch_size: int, seed: int,
              device: torch.device) -> Any:
    """One gradcheck scan of the prebuilt model (build_model returns it: construction is not timed)."""
    prebuilt = Target(name=target.name, build_model=lambda: model, make_batch=target.make_batch,
                      loss_fn=target.loss_fn)
    return api.scan(prebuilt, batches=batches, batch_size=batch_size, seed=seed, device=str(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def _timed_into(sink: list[float], fn: Callable[[], Any], device: torch.device) -> None:
    sink.append(timed(fn, device)[0])


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
    plain_s: float
    scan_s: float
    plain_spread: float
    scan_spread: float
    mem_plain: float | None
    mem_scan: float | None
    losses_match: bool

    @property
    def ratio(self) -> float:
        return self.scan_s / self.plain_s

    @property
    def mem_ratio(self) -> float | None:
        """None where unmeasured, or where the plain run's extra peak is too small to divide by."""
        if self.mem_plain is None or self.mem_scan is None or self.mem_plain < MIN_MEMORY_BYTES:
            return None
        return self.mem_scan / self.mem_plain


def _spread(times: list[float]) -> float:
    """(max - min) / median: how noisy the timings were."""
    med = statistics.median(times)
    return (max(times) - min(times)) / med if med > 0 else 0.0


def bench_model(name: str, target: Target, batches: int, batch_size: int, repeats: int, seed: int,
                device: torch.device, memory: bool) -> Row:
    model = target.build_model().to(device)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    plain = functools.partial(plain_passes, model, target, batches, batch_size, seed, device)
    scan = functools.partial(scan_call, model, target, batches, batch_size, seed, device)

    # Warm up both paths once (allocator, kernels, lazy imports) and check that they ran the same
    # batches through the same model and loss.
    plain_losses = [float(x) for x in plain()]
    scan_losses = list(scan().loss.values)
    losses_match = len(plain_losses) == len(scan_losses) and all(
        math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(plain_losses, scan_losses))

    # Timed runs, alternating the paths and which goes first. The last repeat also measures each
    # path's peak memory (its preparation, gc and malloc_trim, happens outside the timer), which
    # saves two more runs of the big model.
    times: dict[str, list[float]] = {"plain": [], "scan": []}
    peaks: dict[str, float | None] = {"plain": None, "scan": None}
    for r in range(repeats):
        order = [("plain", plain), ("scan", scan)]
        for key, fn in (order if r % 2 == 0 else order[::-1]):
            if memory and r == repeats - 1:
                peaks[key] = peak_extra_bytes(
                    functools.partial(_timed_into, times[key], fn, device), device)
            else:
                gc.collect()
                times[key].append(timed(fn, device)[0])
    plain_times, scan_times = times["plain"], times["scan"]
    mem_plain, mem_scan = peaks["plain"], peaks["scan"]

    del model, plain, scan
    gc.collect()
    return Row(name, n_params, batches, batch_size, repeats,
               statistics.median(plain_times), statistics.median(scan_times),
               _spread(plain_times), _spread(scan_times), mem_plain, mem_scan, losses_match)


# --------------------------------------------------------------------------------------------------
# Command line
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
    """', load average 1.23' (Unix): other processes on the machine make the timings noisy."""
    try:
        return f", load average {os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return ""


def print_table(rows: list[Row]) -> None:
    header = ("model", "params", "K", "B", "R", "plain ms", "scan ms", "ratio", "noise p/s",
              "peak MB p/s", "mem ratio", "loss ok")
    lines = [header]
    for row in rows:
        mem_ratio = row.mem_ratio
        lines.append((
            row.model, _params_text(row.params), str(row.batches), str(row.batch_size),
            str(row.repeats), f"{row.plain_s * 1e3:.1f}", f"{row.scan_s * 1e3:.1f}",
            f"{row.ratio:.2f}", f"{row.plain_spread:.0%}/{row.scan_spread:.0%}",
            f"{_mb(row.mem_plain)}/{_mb(row.mem_scan)}",
            ("n/a" if row.mem_plain is None or row.mem_scan is None else "-")
            if mem_ratio is None else f"{mem_ratio:.2f}",
            "yes" if row.losses_match else "NO"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0}
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if j in left else cell.rjust(w)
                        for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time gradcheck's scan against plain forward+backward passes of the same "
                    "batches (ratio 1.0 = no overhead).")
    parser.add_argument("--batches", "-K", type=int, default=3,
                        help="batches per scan / per plain run (default 3, the scan's default)")
    parser.add_argument("--repeats", "-R", type=int, default=None,
                        help="timed repeats per path for the zoo models (default 21; 7 with --quick)")
    parser.add_argument("--gpt2-repeats", type=int, default=3,
                        help="timed repeats per path for gpt2-small (default 3)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="batch size for the zoo models (default 16, the scan's default)")
    parser.add_argument("--gpt2-batch-size", type=int, default=2, help="default 2")
    parser.add_argument("--gpt2-seq-len", type=int, default=64, help="default 64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated model names (zoo names and {GPT2}); default: the "
                             f"zoo except {', '.join(SKIPPED_BUILTINS)}, and {GPT2} unless --quick")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, usually one per core)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: 7 repeats, zoo models only (no {GPT2})")
    args = parser.parse_args(argv)
    if args.batches < 1 or (args.repeats is not None and args.repeats < 1) or args.gpt2_repeats < 1:
        parser.error("--batches and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    zoo_names = [b.name for b in zoo.BUILTINS]
    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        unknown = [n for n in names if n != GPT2 and n not in zoo_names]
        if unknown:
            print(f"unknown model(s): {', '.join(unknown)}; choose from "
                  f"{', '.join(zoo_names + [GPT2])}", file=sys.stderr)
            return 2
    else:
        names = [n for n in zoo_names if n not in SKIPPED_BUILTINS]
        if not args.quick:
            names.append(GPT2)
    repeats = args.repeats if args.repeats is not None else (7 if args.quick else 21)
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))

    device_text = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gradcheck scan overhead: torch {torch.__version__}, device {device_text}, "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs{_load_text()}")
    print("ratio = median(scan of K batches) / median(K plain forward+backward passes); "
          "1.0 = no overhead")
    print(flush=True)

    rows = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        if name == GPT2:
            target = gpt2_target(args.gpt2_seq_len)
            row = bench_model(name, target, args.batches, args.gpt2_batch_size, args.gpt2_repeats,
                              args.seed, device, not args.no_memory)
        else:
            row = bench_model(name, zoo.load_target(name), args.batches, args.batch_size, repeats,
                              args.seed, device, not args.no_memory)
        rows.append(row)
        print(f"  {name}: ratio {row.ratio:.2f} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print_table(rows)
    if GPT2 in names:
        print(f"\n{GPT2}: batch {args.gpt2_batch_size} x {args.gpt2_seq_len} tokens, "
              f"{args.gpt2_repeats} repeats; zoo models: batch {args.batch_size}, {repeats} repeats")
    print("noise p/s: (max - min) / median of the plain / scan timings; peak MB p/s: extra peak "
          f"{'CUDA memory' if device.type == 'cuda' else 'RSS'} of one plain run / one scan "
          "(mem ratio '-': under 1 MiB, too small to compare)")
    print(f"total {time.perf_counter() - started:.1f} s{_load_text()}")
    if not all(row.losses_match for row in rows):
        print("WARNING: the plain losses differ from the scan's: the two paths did not run the "
              "same batches", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
