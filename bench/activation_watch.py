"""Cost of the functional-activation watch (activation_watch.FunctionalWatch) inside a scan.

For each model the script prints

    ratio = min(scan with the watch) / min(scan with the watch replaced by a no-op)

measured in one process, the two arms alternated (and which goes first alternated) so that they
share the machine's noise. The minimum over the repeats is the least disturbed run (load only
ever adds time), which keeps the ratio usable on a busy shared machine where bench/overhead.py's
medians swing by 100%+. 1.00 = free.

Models: the gradcheck zoo (except nan-log) and a 6-block pre-LN transformer (d 256, 8 heads,
GELU MLP as F.gelu calls, residual adds), which gives the watch many functional calls and adds.

    python bench/activation_watch.py            # R = 7 repeats
    python bench/activation_watch.py --repeats 15 --models relu-he,transformer6
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradcheck_cli.api import scan
from gradcheck_cli.measure import hooks
from gradcheck_cli.target.resolve import Target, resolve_target
from gradcheck_cli.target.zoo import BUILTINS


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 8, batch_first=True)
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


def _transformer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[_Block(256) for _ in range(6)], nn.Linear(256, 10))


def _targets(names: list[str] | None) -> list[Target]:
    targets = [resolve_target(f"builtin:{b.name}") for b in BUILTINS if b.name != "nan-log"]
    targets.append(Target("transformer6", _transformer,
                          lambda n: (torch.randn(n, 32, 256), torch.randn(n, 32, 10))))
    return [t for t in targets if names is None or t.name.removeprefix("builtin:") in names]


def _time(target: Target, model: nn.Module, watch: bool) -> float:
    original = hooks._functional_watch
    if not watch:
        hooks._functional_watch = lambda state: nullcontext()  # type: ignore[assignment,return-value]
    try:
        start = time.perf_counter()
        scan(Target(target.name, lambda: model, target.make_batch, target.loss_fn))
        return time.perf_counter() - start
    finally:
        hooks._functional_watch = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default=None, help="comma-separated names (default: all)")
    args = parser.parse_args()
    print(f"activation watch overhead: torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("ratio = min(scan with the watch) / min(scan without it); 1.00 = free\n")
    for target in _targets(args.models.split(",") if args.models else None):
        model: Any = target.build_model()
        _time(target, model, True), _time(target, model, False)  # warm-up
        on: list[float] = []
        off: list[float] = []
        for r in range(args.repeats):
            for watch in ((True, False) if r % 2 == 0 else (False, True)):
                (on if watch else off).append(_time(target, model, watch))
        ratio = min(on) / min(off)
        print(f"  {target.name.removeprefix('builtin:'):18s} ratio {ratio:5.2f}   "
              f"with {min(on) * 1e3:8.1f} ms   without {min(off) * 1e3:8.1f} ms   "
              f"(medians {statistics.median(on) * 1e3:.1f} / {statistics.median(off) * 1e3:.1f})")


if __name__ == "__main__":
    main()
