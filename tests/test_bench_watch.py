"""bench/watch_overhead.py, the record of issue 13 part 6, still runs: a smoke run in seconds on a tiny
builtin, every path computes the plain run's losses (the check that the watch changes nothing in
the loop can fail), and every path leaves the model without hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import watch_overhead  # noqa: E402
from models import bench_model_named  # noqa: E402

SMOKE = ["--models", "relu-he", "--steps", "3", "--repeats", "1", "--threads", "1"]


@pytest.fixture(autouse=True)
def keep_threads() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smoke_run_prints_every_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert watch_overhead.main(SMOKE) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("model ") and "plain ms/step" in line)
    assert header.split()[7:-3] == ["watch@1", "watch@10", "watch@50", "wandb@1000", "wandb@1", "lightning"]
    row = next(line for line in out.splitlines() if line.startswith("relu-he "))
    assert row.split()[-1] == "yes"  # every path computed the plain losses, step for step
    assert all(float(cell) > 0 for cell in row.split()[6:12])
    assert "load average" in out and "AdamW" in out


def test_parts_name_each_part_of_the_watchs_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert watch_overhead.main([*SMOKE, "--paths", "watch@1", "--parts", "2"]) == 0
    out = capsys.readouterr().out
    parts = out[out.index("the watch's parts on relu-he"):].splitlines()[1:6]
    assert parts[0].strip().startswith("plain step")
    assert [line.split(":")[0].strip() for line in parts[1:]] == [
        "gradient norms + finite read (every step)", "row + flush with its weight norms (every=1)",
        "update ratio (1 step in 10)", "timeline per block (analyse/, median)"]
    assert all(line.endswith("of a step") for line in parts[1:])


def _perturbing(model: nn.Module, optimizer: torch.optim.Optimizer) -> watch_overhead.Monitor:
    def nudge() -> None:
        with torch.no_grad():
            next(model.parameters()).mul_(1.5)

    return watch_overhead.Monitor(after_backward=nudge)


def test_a_path_that_changes_the_training_is_reported(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(watch_overhead.PATHS, "watch@1", _perturbing)
    assert watch_overhead.main([*SMOKE, "--paths", "watch@1,lightning"]) == 1
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("relu-he "))
    assert row.endswith("NO: watch@1")
    assert "losses differ" in captured.err


def test_unknown_names_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert watch_overhead.main(["--models", "no-such-model"]) == 2
    assert watch_overhead.main(["--paths", "watch@7"]) == 2
    err = capsys.readouterr().err
    assert "unknown model: no-such-model" in err and "unknown path: watch@7" in err


@pytest.mark.parametrize("path", list(watch_overhead.PATHS))
def test_every_path_leaves_no_hook_behind(path: str) -> None:
    bench = bench_model_named("relu-he")
    target = bench.target()
    model = target.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = watch_overhead.make_batches(target, 2, 4, 0, torch.device("cpu"))
    monitor = watch_overhead.PATHS[path](model, optimizer)
    losses = watch_overhead.train(model, optimizer, batches, target, monitor)
    monitor.end_of_run()
    monitor.close()
    assert len(losses) == 2
    assert all(not p._backward_hooks for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_snapshot_restores_weights_and_optimizer_state() -> None:
    target = bench_model_named("relu-he").target()
    model = target.build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = watch_overhead.make_batches(target, 3, 4, 0, torch.device("cpu"))
    watch_overhead.train(model, optimizer, batches[:1], target, watch_overhead.Monitor())
    snapshot = watch_overhead.Snapshot(model, optimizer)
    first = [float(x) for x in watch_overhead.train(model, optimizer, batches, target, watch_overhead.Monitor())]
    snapshot.restore(model, optimizer)
    again = [float(x) for x in watch_overhead.train(model, optimizer, batches, target, watch_overhead.Monitor())]
    assert first == again and first[0] != first[-1]
