"""`gradcheck scan` under torchrun: 2 CPU processes with gloo (measure/distributed_scan.py).

The ranks are started either by torchrun itself (`python -m torch.distributed.run`) or, where each
rank's own exit code and stdout matter, as the two processes torchrun would start (the same
RANK/WORLD_SIZE/MASTER_* environment), since torchrun reports one exit code for all of them.
The expected gradient norms are computed here with plain autograd on the batches each rank draws.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from typer.testing import CliRunner

from gradcheck_cli.cli.app import app
from gradcheck_cli.errors import UserError
from gradcheck_cli.measure.distributed_scan import (
    RANK_SEED_STRIDE,
    _RankFailure,
    launched_world,
    merge_ranks,
)
from gradcheck_cli.measure.records import LayerMeasurement, Measurements
from gradcheck_cli.measure.shard_scan import shard_units, user_types

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
TIMEOUT = 180  # seconds: a hung rank fails the test instead of the suite

MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    def build_model():
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))

    def make_batch(batch_size):
        return torch.randn(batch_size, 6), torch.randn(batch_size, 3)

    def loss_fn(output, target):
        return ((output - target) ** 2).mean()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(rank: int | None = None, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if rank is not None:
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


def _ranks(args: list[str], cwd: Path | None = None,
           command: tuple[str, ...] = ("-m", "gradcheck_cli", "scan")) -> list[subprocess.CompletedProcess[str]]:
    """`gradcheck scan ARGS` as the WORLD processes torchrun would start; each rank's result."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *command, *args], env=_env(rank, port),
                              cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(WORLD)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def _torchrun(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "gradcheck_cli", "scan", *args]
    return subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


# -- end to end ---------------------------------------------------------------------------------


def test_torchrun_prints_one_report_of_both_ranks_and_fails_like_one_process() -> None:
    args = ["builtin:relu-normal-init", "--format", "json", "-q"]
    result = _torchrun(args)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # one JSON document: rank 1 printed nothing
    assert report["verdict"] == "exploding"
    assert report["config"]["ranks"] == WORLD
    assert report["config"]["seed"] == 0
    assert len(report["loss"]["values"]) == WORLD * report["config"]["batches"]
    # each rank on its own: both exit 1, rank 1 prints nothing, and the same command gives the same bytes
    ranks = _ranks(args)
    assert [r.returncode for r in ranks] == [1, 1], ranks[0].stderr + ranks[1].stderr
    assert ranks[1].stdout == ""
    assert ranks[0].stdout == result.stdout


def test_a_healthy_model_exits_0_on_every_rank() -> None:
    ranks = _ranks(["builtin:relu-he", "--format", "json", "-q"])
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert json.loads(ranks[0].stdout)["verdict"] == "healthy"
    assert ranks[1].stdout == ""


def _plain_grad_norms(ranks: int, batches: int, batch_size: int, seed: int) -> dict[str, float]:
    """Plain autograd: the model as a single scan builds it (seeded with `seed`), rank r's batch b
    drawn under seed + 1000 * r + b; each layer's gradient norm (its weight and bias together) per
    batch, averaged over the batches of ranks 0 .. ranks - 1."""
    namespace: dict[str, Any] = {}
    exec(MODEL, namespace)  # noqa: S102 - the test's own model file
    torch.manual_seed(seed)
    model = namespace["build_model"]()
    norms: dict[str, list[float]] = {}
    for rank in range(ranks):
        for b in range(batches):
            torch.manual_seed(seed + RANK_SEED_STRIDE * rank + b)
            x, y = namespace["make_batch"](batch_size)
            grads = torch.autograd.grad(namespace["loss_fn"](model(x), y), list(model.parameters()))
            squares: dict[str, float] = {}
            for (name, _), grad in zip(model.named_parameters(), grads):
                layer = name.rsplit(".", 1)[0]
                squares[layer] = squares.get(layer, 0.0) + float(grad.double().pow(2).sum())
            for layer, square in squares.items():
                norms.setdefault(layer, []).append(math.sqrt(square))
    return {layer: sum(values) / len(values) for layer, values in norms.items()}


def test_gradient_norms_are_the_mean_over_every_ranks_batches(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    ranks = _ranks(["model.py", "--format", "json", "-q", "--batches", "2", "--batch-size", "4", "--seed", "3"],
                   cwd=tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    measured = {layer["name"]: layer["grad_norm"] for layer in json.loads(ranks[0].stdout)["layers"]}
    expected = _plain_grad_norms(WORLD, batches=2, batch_size=4, seed=3)
    assert set(measured) == set(expected) == {"0", "2", "4"}
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=1e-6), name
    rank_zero_alone = _plain_grad_norms(1, batches=2, batch_size=4, seed=3)  # the ranks' batches differ
    assert all(measured[n] != pytest.approx(rank_zero_alone[n], rel=1e-3) for n in expected)


FAILS_ON_RANK_1 = MODEL + textwrap.dedent('''
    import os

    _make_batch = make_batch

    def make_batch(batch_size):
        if os.environ.get("RANK") == "1":
            raise ValueError("no data on this rank")
        return _make_batch(batch_size)
''')


def test_a_rank_whose_probe_fails_stops_every_rank_naming_it(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(FAILS_ON_RANK_1)
    ranks = _ranks(["model.py", "--format", "json", "-q"], cwd=tmp_path)
    assert [r.returncode for r in ranks] == [2, 2]
    assert [r.stdout for r in ranks] == ["", ""]
    assert "rank 1:" in ranks[0].stderr and "no data on this rank" in ranks[0].stderr
    assert "Traceback" not in ranks[0].stderr + ranks[1].stderr


SLOW_ON_RANK_1 = MODEL + textwrap.dedent('''
    import os
    import time

    _make_batch = make_batch

    def make_batch(batch_size):
        if os.environ.get("RANK") == "1":
            time.sleep(60)
        return _make_batch(batch_size)
''')


def test_a_rank_that_runs_out_of_time_stops_every_rank(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(SLOW_ON_RANK_1)
    ranks = _ranks(["model.py", "--format", "json", "-q", "--timeout", "5"], cwd=tmp_path)
    assert [r.returncode for r in ranks] == [2, 2]
    # rank 0 is told why (not only that rank 1's connection closed)
    assert all("--timeout" in r.stderr and "Traceback" not in r.stderr for r in ranks)


USER_GROUP = MODEL + textwrap.dedent('''
    import atexit
    import sys

    import torch.distributed as dist

    dist.init_process_group("gloo")  # the user's own group, started at import

    @atexit.register
    def _still_up():
        print(f"user group alive at exit: {dist.is_initialized()}", file=sys.stderr)
        if dist.is_initialized():  # the user's own teardown: a gloo group left alive at interpreter
            dist.barrier()          # exit can abort the process ("terminate called without an
            dist.destroy_process_group()  # active exception"), with or without gradcheck
''')


def test_the_users_own_process_group_is_used_and_left_running(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(USER_GROUP)
    ranks = _ranks(["model.py", "--format", "json", "-q"], cwd=tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert json.loads(ranks[0].stdout)["config"]["ranks"] == WORLD
    assert all("user group alive at exit: True" in r.stderr for r in ranks)


def test_shard_gives_the_single_process_scan_of_the_same_batches(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    args = ["model.py", "--format", "json", "-q", "--batches", "2", "--batch-size", "4", "--seed", "3"]
    ranks = _ranks([*args, "--shard"], cwd=tmp_path)
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert ranks[1].stdout == ""
    report = json.loads(ranks[0].stdout)
    assert report["config"]["shard"] is True and report["config"]["ranks"] == WORLD
    measured = {layer["name"]: layer["grad_norm"] for layer in report["layers"]}
    expected = _plain_grad_norms(1, batches=2, batch_size=4, seed=3)  # every rank probed --seed's batches
    assert set(measured) == set(expected)
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=1e-6), name
    assert {layer["type"] for layer in report["layers"]} == {"Linear"}  # not fully_shard's FSDPLinear


def _same_numbers(sharded: Any, single: Any, where: str = "report") -> None:
    """The two JSON values are equal, their floats to 1e-6 relative."""
    if isinstance(single, dict):
        assert set(sharded) == set(single), where
        for key in single:
            _same_numbers(sharded[key], single[key], f"{where}.{key}")
    elif isinstance(single, list):
        assert len(sharded) == len(single), where
        for k, (a, b) in enumerate(zip(sharded, single)):
            _same_numbers(a, b, f"{where}[{k}]")
    elif isinstance(single, float):
        assert sharded == pytest.approx(single, rel=1e-6, abs=1e-12, nan_ok=True), where
    else:
        assert sharded == single, where


@pytest.mark.parametrize("builtin", ["transformer-preln", "nan-log"])
def test_shard_reports_what_one_process_does(builtin: str) -> None:
    """A tied-embedding transformer (tied modules share one FSDP group) and a model whose gradients
    turn NaN (the non-finite counts add over the shards; the replay finds the same op)."""
    args = [f"builtin:{builtin}", "--format", "json", "-q"]
    sharded = _ranks([*args, "--shard"])
    one = subprocess.run([sys.executable, "-m", "gradcheck_cli", "scan", *args], env=_env(),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert [r.returncode for r in sharded] == [one.returncode] * WORLD, sharded[0].stderr + sharded[1].stderr
    report, single = json.loads(sharded[0].stdout), json.loads(one.stdout)
    assert report.pop("config") == {**single.pop("config"), "ranks": WORLD, "shard": True}
    _same_numbers(report, single)


API_SCAN = textwrap.dedent('''
    import torch.distributed as dist

    import gradcheck_cli

    report = gradcheck_cli.scan("builtin:relu-he")
    print(report.verdict.value, report.config["ranks"], len(report.loss.values), dist.is_initialized())
''')


def test_the_python_api_scans_on_every_rank_and_destroys_the_group_it_started() -> None:
    ranks = _ranks([], command=("-c", API_SCAN))
    assert [r.returncode for r in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    assert [r.stdout for r in ranks] == [f"healthy {WORLD} {WORLD * 3} False\n"] * WORLD


# -- in one process -----------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "message"), [
    (["--steps", "1"], "--steps is not supported under torchrun"),
    (["--verify"], "--verify is not supported under torchrun"),
    (["--shard", "--precision", "bf16"], "--shard measures in fp32 only"),
])
def test_what_torchrun_cannot_do_is_refused(monkeypatch: pytest.MonkeyPatch, option: list[str],
                                            message: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(app, ["scan", "builtin:relu-he", "-q", *option])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output
    assert not dist.is_initialized()  # refused before any process group was started


def test_a_recipe_is_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(app, ["run", str(Path(__file__).parents[1] / "recipes" / "quick.yaml"), "-q"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "does not run under torchrun" in result.output


def test_shard_without_torchrun_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(app, ["scan", "builtin:relu-he", "-q", "--shard"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--shard" in result.output and "torchrun" in result.output


def test_shard_units_are_the_children_each_block_and_tied_modules_together() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)])
            self.head = nn.Linear(4, 5, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    assert shard_units(model) == [[model.blocks[0]], [model.blocks[2]], [model.embed, model.head]]
    assert user_types(model)["(root)"] == "Tied" and user_types(model)["blocks.0"] == "Linear"


def test_launched_world_reads_torchruns_environment() -> None:
    assert launched_world({}) is None
    assert launched_world({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launched_world({"WORLD_SIZE": "4", "RANK": "3"}) == (3, 4)
    with pytest.raises(UserError, match="outside WORLD_SIZE"):
        launched_world({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(UserError, match="must be integers"):
        launched_world({"WORLD_SIZE": "two"})


def _measured(loss: float, grad_sq: float) -> Measurements:
    layer = LayerMeasurement(name="fc", type_name="Linear", params=6, param_dim=2, weight_shape=(2, 3),
                             weight_std=0.5, trainable=True, order=0, weight_sq=1.5, grad_sq=(grad_sq,),
                             nonfinite_grads=0)
    return Measurements(layers=(layer,), losses=(loss,), batches=1)


def test_ranks_merge_in_rank_order_and_a_failed_rank_is_named() -> None:
    merged = merge_ranks([_measured(1.0, 4.0), _measured(2.0, 9.0)])
    assert merged.losses == (1.0, 2.0)
    assert merged.layers[0].grad_norms == (2.0, 3.0)
    assert merged.batches == 2
    with pytest.raises(UserError, match="^rank 1: out of data$"):
        merge_ranks([_measured(1.0, 4.0), _RankFailure("out of data")])
    assert merge_ranks([_measured(1.0, 4.0), _measured(1.0, 4.0)], rank_zero_only=True).batches == 1  # --shard
    with pytest.raises(UserError, match="^rank 1: out of data$"):  # --shard: a failed rank is named too
        merge_ranks([_measured(1.0, 4.0), _RankFailure("out of data")], rank_zero_only=True)
