"""Scan time and peak memory of very deep and very wide models, next to plain forward+backward.

Three models, built here (nothing is downloaded):

* ``flat-deep``: ``nn.Sequential`` of 1,000 ``Linear(16, 16)`` + ``Tanh`` pairs (2,000 modules,
  2,000 parameter tensors).
* ``nested-deep``: 1,000 levels of ``Nest(Linear(16, 16), inner)``, each calling the next from its
  forward: 1,000 modules nested 1,000 deep (torch's ``named_modules``, ``train``, ``to`` and
  ``state_dict`` recurse once per level, the forward about four frames per level).
* ``wide``: a ``ModuleList`` of 5,000 ``Linear(4, 4)`` branches whose outputs are summed (10,000
  parameter tensors).

Each uses the loss mean(output^2) on N(0, 1) inputs. The timing is ``bench/overhead.py``'s
(``bench_model``): the same K batches through both paths, a warm-up of each, then R timed repeats
alternating the paths, medians, and in the last repeat each path's extra peak memory (VmHWM on
Linux). ``ratio`` = scan / plain; ``loss ok`` checks both paths computed the same losses.

Python's default recursion limit (1,000) is too low for the nested model's own forward (~4 frames
per level): the script raises it for the whole process, so both paths run with the same limit
(the scan itself makes room for deep nesting on its own, see gradcheck_cli/target/guards.py).

    python bench/deep_wide.py                   # all three, 5 repeats (~2 min on a quiet 2-core machine)
    python bench/deep_wide.py --models wide --repeats 3
    python bench/deep_wide.py --depth 300 --width 1000   # a smaller smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import bench_model, print_table  # noqa: E402  (the shared timing method)

from gradcheck_cli.target.resolve import Target  # noqa: E402

FEATURES = 16
WIDE_FEATURES = 4
MODELS = ("flat-deep", "nested-deep", "wide")


class Nest(nn.Module):
    """One level of the nested model: tanh(fc(x)), then the inner level (if any)."""

    def __init__(self, inner: nn.Module | None, features: int = FEATURES) -> None:
        super().__init__()
        self.fc = nn.Linear(features, features)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.fc(x))
        return self.inner(x) if self.inner is not None else x


class Wide(nn.Module):
    """`width` parallel Linear(4, 4) branches, summed."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(WIDE_FEATURES, WIDE_FEATURES) for _ in range(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def flat_deep(depth: int, features: int = FEATURES) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(features, features), nn.Tanh()]
    return nn.Sequential(*layers)


def nested_deep(depth: int, features: int = FEATURES) -> nn.Module:
    node: nn.Module | None = None
    for _ in range(depth):  # built inside out: no recursion at construction
        node = Nest(node, features)
    assert node is not None
    return node


def _mean_square(output: torch.Tensor, target: object) -> torch.Tensor:
    return output.pow(2).mean()


def target(name: str, depth: int, width: int, features: int = FEATURES) -> Target:
    builders: dict[str, Callable[[], nn.Module]] = {
        "flat-deep": lambda: flat_deep(depth, features),
        "nested-deep": lambda: nested_deep(depth, features),
        "wide": lambda: Wide(width),
    }
    features = WIDE_FEATURES if name == "wide" else features

    def build() -> nn.Module:
        torch.manual_seed(0)
        return builders[name]()

    def make_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(batch_size, features), torch.zeros(batch_size)

    return Target(name, build, make_batch, _mean_square)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--depth", type=int, default=1000, help="layers of the deep models (default 1000)")
    parser.add_argument("--width", type=int, default=5000,
                        help="Linear branches of the wide model: 2 tensors each (default 5000)")
    parser.add_argument("--features", type=int, default=FEATURES,
                        help=f"width of each layer of the deep models (default {FEATURES}: the worst case, "
                             "where per-module bookkeeping outweighs the arithmetic)")
    parser.add_argument("--batches", "-K", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", "-R", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 8 * args.depth + 2000))

    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"gradcheck deep/wide models: torch {torch.__version__}, {torch.get_num_threads()} intra-op "
          f"threads, {os.cpu_count()} CPUs{load}")
    print("ratio = median(scan of K batches) / median(K plain forward+backward passes); 1.0 = no overhead")
    print(flush=True)
    rows = []
    for name in names:
        started = time.perf_counter()
        row = bench_model(name, target(name, args.depth, args.width, args.features), args.batches,
                          args.batch_size,
                          args.repeats, 0, torch.device("cpu"), not args.no_memory)
        rows.append(row)
        print(f"  {name}: ratio {row.ratio:.2f} ({time.perf_counter() - started:.1f} s)",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print_table(rows)
    return 0 if all(row.losses_match for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
