"""gradcheck's NaN/Inf origin next to torch.autograd.detect_anomaly, on the same NaN models.

For each model the script runs the same K batches (``--batches``, default 3, the scan's default;
batch b drawn after ``torch.manual_seed(seed + b)``, as the scan draws it) three ways:

* **plain**: forward, loss (the target's loss_fn or the scan's default loss rule), ``backward()``;
* **anomaly**: the same under ``torch.autograd.detect_anomaly()``; it raises at the first backward
  function that returns NaN, and its warning holds the traceback of the forward call that created
  that function. Each batch is run to that error (caught) so both tools see all K batches;
* **scan**: one ``gradcheck_cli.api.scan`` of the target (K batches; its diagnostic replay of the
  first failing batch included), with ``build_model`` returning the model built beforehand.

Timing: each path warmed up once, then timed ``--repeats`` times alternating the order; medians.
Ratio = scan / anomaly.

Whether each names the right place, against the ground truth written in GROUND_TRUTH (where the
model's author put the unsafe op; see each model's docstring):
* gradcheck is right when its nonfinite evidence names the ground-truth module (origin) and op;
  for NaN already in the batch, when it reports nonfinite-input and blames no op;
* detect_anomaly is right when the innermost frame of its forward traceback outside torch is the
  ground-truth source line (the line that calls the op); it has no notion of a NaN in the data,
  and it does not look at forward values at all: a NaN born in the forward is reported at the
  first backward function that reads it (often the loss).

    python bench/anomaly.py                   # 8 models, 3 batches, 5 repeats (~15 s)
    python bench/anomaly.py --repeats 9 --threads 1

Not a unit test: it prints a table and exits 0 (1 when a model does not produce a NaN at all,
which would make the comparison meaningless).
"""

from __future__ import annotations

import argparse
import functools
import linecache
import math
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradcheck_cli import api
from gradcheck_cli.report.records import FindingKind, Report
from gradcheck_cli.target.batches import call_model, split_batch
from gradcheck_cli.target.losses import compute_loss
from gradcheck_cli.target.resolve import Target, resolve_target

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"


@dataclass(frozen=True)
class Truth:
    module: str
    """Where the op runs: a module name from named_modules(), "(root)", "(loss)" or "(input)"."""
    op: str | None
    line: str | None
    """A piece of the source line that calls the op (None: the data is at fault)."""


GROUND_TRUTH: dict[str, Truth] = {
    "nonfinite_div_zero": Truth("(root)", "div", "/ mask.sum(dim=1)"),
    "nonfinite_exp_overflow": Truth("(root)", "exp", "torch.exp(log_rate)"),
    "nonfinite_log_features": Truth("(root)", "log", "torch.log(self.frontend(spec))"),
    "nonfinite_log_negative": Truth("(loss)", "log", "torch.log(var)"),
    "nonfinite_nan_input": Truth("(input)", None, None),
    "nonfinite_sqrt_zero_grad": Truth("(loss)", "sqrt", "torch.sqrt((diff**2).sum(-1))"),
    "nonfinite_capsule_length_grad": Truth("lengths", "sqrt", "torch.sqrt((poses**2).sum(dim=-1))"),
    "builtin:nan-log": Truth("log", "log", "return torch.log(x)"),
}

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_FUNCTION = re.compile(r"Function '(?P<name>\w+)' returned nan")


def _target(name: str) -> str:
    return name if name.startswith("builtin:") else str(CORPUS / f"{name}.py")


def _batches(target: Target, k: int, batch_size: int, seed: int) -> list[tuple[Any, Any]]:
    out = []
    for b in range(k):
        torch.manual_seed(seed + b)
        out.append(split_batch(target.make_batch(batch_size) if target.make_batch else None))
    return out


def _run(model: torch.nn.Module, target: Target, batches: list[tuple[Any, Any]], anomaly: bool
         ) -> tuple[str | None, str | None]:
    """Forward+backward of every batch; with anomaly, the first error's function and forward frame."""
    function = frame = None
    for inputs, labels in batches:
        model.zero_grad(set_to_none=True)
        if not anomaly:
            loss, _ = compute_loss(call_model(model, inputs), labels, target.loss_fn)
            loss.backward()
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.autograd.detect_anomaly():
                    loss, _ = compute_loss(call_model(model, inputs), labels, target.loss_fn)
                    loss.backward()
            except RuntimeError as exc:
                match = _FUNCTION.search(str(exc))
                if function is None and match:
                    function = match.group("name")
                    frame = _user_frame("\n".join(str(w.message) for w in caught))
    model.zero_grad(set_to_none=True)
    return function, frame


def _user_frame(text: str) -> str | None:
    """The innermost traceback frame outside torch: "path:line"."""
    frames = [m for m in _FRAME.finditer(text) if "site-packages/torch" not in m.group("file")
              and m.group("file") != "<string>"]
    if not frames:
        return None
    last = frames[-1]
    return f"{last.group('file')}:{last.group('line')}"


def _anomaly_right(frame: str | None, truth: Truth) -> bool:
    if frame is None or truth.line is None:
        return False
    path, line = frame.rsplit(":", 1)
    return truth.line in linecache.getline(path, int(line))


def _gradcheck_names(report: Report, truth: Truth) -> tuple[str, bool]:
    kinds = {f.kind for f in report.findings}
    evidence = next((f.evidence for f in report.findings if f.kind == FindingKind.NONFINITE), {})
    if FindingKind.NONFINITE_INPUT in kinds and evidence.get("op") is None:
        return "nonfinite-input (the batch)", truth.module == "(input)"
    origin, op = evidence.get("origin"), evidence.get("op")
    named = f"{op} in {origin} ({evidence.get('direction')}, {evidence.get('cause')})" if origin else "-"
    return named, (origin, op) == (truth.module, truth.op)


def _median_times(paths: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    for run in paths.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            paths[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


Row = tuple[str, str, str, bool, str, bool, dict[str, float]]


def _measure(name: str, args: argparse.Namespace) -> Row | None:
    truth = GROUND_TRUTH[name]
    resolved = resolve_target(_target(name))
    model = resolved.build_model()
    target = Target(resolved.name, lambda: model, resolved.make_batch, resolved.loss_fn)
    batches = _batches(resolved, args.batches, args.batch_size, args.seed)
    options = {"batches": args.batches, "batch_size": args.batch_size, "seed": args.seed}
    report = api.scan(target, **options)
    if report.verdict.value != "nonfinite":
        print(f"{name}: no NaN/Inf at all (verdict {report.verdict.value}); skipped", file=sys.stderr)
        return None
    function, frame = _run(model, resolved, batches, anomaly=True)
    timings = _median_times({
        "plain": functools.partial(_run, model, resolved, batches, anomaly=False),
        "anomaly": functools.partial(_run, model, resolved, batches, anomaly=True),
        "scan": functools.partial(api.scan, target, **options),
    }, args.repeats)
    named, right = _gradcheck_names(report, truth)
    where = f"{Path(frame.rsplit(':', 1)[0]).name}:{frame.rsplit(':', 1)[1]}" if frame else "-"
    return (name.removeprefix("nonfinite_"), f"{truth.op or 'data'} in {truth.module}", named, right,
            f"{function or 'no error'} @ {where}", _anomaly_right(frame, truth), timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a busy machine)")
    parser.add_argument("--models", default=",".join(GROUND_TRUTH))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Anomaly Detection has been enabled")

    rows = [row for row in (_measure(name, args) for name in args.models.split(",")) if row]
    status = 0 if len(rows) == len(args.models.split(",")) else 1
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.batches} batches x "
          f"{args.batch_size}, median of {args.repeats}")
    header = ("model", "truth", "gradcheck names", "ok", "detect_anomaly names", "ok",
              "plain ms", "anomaly ms", "scan ms", "scan/anomaly")
    table = [header] + [
        (m, t, g, "yes" if gr else "NO", a, "yes" if ar else "NO", f"{tm['plain']:.1f}",
         f"{tm['anomaly']:.1f}", f"{tm['scan']:.1f}", f"{tm['scan'] / tm['anomaly']:.2f}")
        for m, t, g, gr, a, ar, tm in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 6 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths))))
    right_g = sum(1 for r in rows if r[3])
    right_a = sum(1 for r in rows if r[5])
    ratios = [r[6]["scan"] / r[6]["anomaly"] for r in rows]
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else float("nan")
    print(f"right place: gradcheck {right_g}/{len(rows)}, detect_anomaly {right_a}/{len(rows)}; "
          f"scan/anomaly time ratio: geometric mean {geo:.2f}")
    return status


if __name__ == "__main__":
    sys.exit(main())
